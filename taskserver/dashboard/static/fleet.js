// The fleet view: every device, counts by status, filter and search, disable / enable.

import { api, HttpError } from "./api.js";
import { $, $$, ago, answerNotice, badge, enc, h, onNextFrame, patchRows, state, throttle } from "./ui.js";

const ORDER = { busy: 0, online: 1, disabled: 2, offline: 3 };
const filter = { status: "", search: "" };

/** What the console calls a device's status: ``disabled`` wins over the connection's online / busy / offline. */
export const shownStatus = (device) => (device.disabled ? "disabled" : device.status);

export async function loadDevices() {
  const { body } = await api("/api/devices");
  state.devices = new Map(body.devices.map((device) => [device.device_id, device]));
  renderFleet();
}

/** Reload the whole list (when too many devices changed at once for the live feed to describe them). */
export const reloadDevices = throttle(() => loadDevices().catch(() => {}), 2000);

function model(device) {
  const info = device.device_info || {};
  const name = [info.manufacturer, info.model].filter(Boolean).join(" ");
  const android = info.version ? `Android ${info.version}` : "";
  return [name || info.type || "—", android].filter(Boolean).join(" · ");
}

function matches(device) {
  if (filter.status && shownStatus(device) !== filter.status) return false;
  if (!filter.search) return true;
  const haystack = `${device.device_id} ${device.device_name} ${model(device)}`.toLowerCase();
  return haystack.includes(filter.search);
}

export function sortedDevices() {
  return [...state.devices.values()].sort(
    (a, b) => ORDER[shownStatus(a)] - ORDER[shownStatus(b)] || a.device_id.localeCompare(b.device_id),
  );
}

function capacity(device) {
  const used = Math.min(device.task_count, device.capacity);
  const meter = h("div", { class: "meter", title: `${device.task_count} / ${device.capacity}` }, h("span"));
  meter.firstChild.style.width = `${device.capacity ? (100 * used) / device.capacity : 0}%`;
  return h("div", { class: "capacity" }, meter, h("small", { text: `${device.task_count} / ${device.capacity}` }));
}

function deviceRow(device) {
  const shown = shownStatus(device);
  const action = device.disabled ? "enable" : "disable";
  return h(
    "tr",
    { dataset: { deviceId: device.device_id, status: device.status, shown, disabled: String(device.disabled) } },
    h("td", {}, badge(shown), device.disabled ? h("small", { class: "muted", text: ` ${device.status}` }) : null),
    h("td", {}, h("div", { class: "name", text: device.device_name }), h("small", { class: "mono muted", text: device.device_id })),
    h("td", { text: model(device) }),
    h("td", { class: "num" }, h("a", { href: `#/tasks?device_id=${enc(device.device_id)}`, text: device.task_count })),
    h("td", {}, capacity(device)),
    h("td", { class: "ago", title: device.last_heartbeat || "", dataset: { time: device.last_heartbeat || "" } }, ago(device.last_heartbeat)),
    h(
      "td",
      { class: "actions" },
      h("button", {
        type: "button",
        class: device.disabled ? "small" : "small warn",
        dataset: { action },
        text: device.disabled ? "启用" : "停用",
        title: device.disabled ? "重新给它分配任务" : "不再给它分配新任务，正在执行的任务照常完成",
        onclick: () => setDisabled(device.device_id, !device.disabled),
      }),
    ),
  );
}

function render() {
  const devices = sortedDevices();
  const counts = { all: devices.length, online: 0, busy: 0, offline: 0, disabled: 0 };
  for (const device of devices) counts[shownStatus(device)] += 1;
  for (const [key, count] of Object.entries(counts)) $(`#device-counts [data-count="${key}"]`).textContent = count;
  const shown = devices.filter(matches);
  patchRows($("#devices tbody"), shown, (device) => device.device_id, deviceRow);
  $("#devices-empty").hidden = devices.length > 0;
  $("#device-shown").textContent = shown.length === devices.length ? "" : `显示 ${shown.length} / ${devices.length}`;
}

export const renderFleet = onNextFrame(render);

async function setDisabled(deviceId, disabled) {
  const label = disabled ? `停用设备 ${deviceId}` : `启用设备 ${deviceId}`;
  try {
    const { status, body } = await api(`/api/device/${enc(deviceId)}/${disabled ? "disable" : "enable"}`, { method: "POST" });
    state.devices.set(deviceId, body.device);
    renderFleet();
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    answerNotice(label, error.status, error.body);
  }
}

export function setupFleet() {
  for (const button of $$("#device-counts .count")) {
    button.addEventListener("click", () => {
      filter.status = button.dataset.status;
      for (const other of $$("#device-counts .count")) other.setAttribute("aria-pressed", String(other === button));
      renderFleet();
    });
  }
  $("#device-search").addEventListener("input", (event) => {
    filter.search = event.target.value.trim().toLowerCase();
    renderFleet();
  });
}
