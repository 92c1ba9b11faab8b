// The fleet view: every device with its tags, counts by status, filters (status, tags, search), disable / enable,
// and the operator's tags of a device (PUT /api/device/{id}/tags).

import { api, HttpError } from "./api.js";
import {
  $, $$, ago, answerNotice, badge, enc, fill, flatten, h, onNextFrame, parseTags, patchRows, state, tagChip, throttle,
} from "./ui.js";

const ORDER = { busy: 0, online: 1, disabled: 2, offline: 3 };
const filter = { status: "", search: "", tags: new Set() }; // tags: a device must have all of them

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

/** Every tag some device has, sorted. */
export function fleetTags() {
  const tags = new Set();
  for (const device of state.devices.values()) for (const tag of device.tags || []) tags.add(tag);
  return [...tags].sort();
}

/** Does the device have every tag the filter names? (Checked on each render, so it follows the live feed.) */
const hasFilterTags = (device) => [...filter.tags].every((tag) => (device.tags || []).includes(tag));

function matches(device) {
  if (filter.status && shownStatus(device) !== filter.status) return false;
  if (!filter.search) return true;
  const haystack = `${device.device_id} ${device.device_name} ${model(device)} ${(device.tags || []).join(" ")}`;
  return haystack.toLowerCase().includes(filter.search);
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

/** Where a tag of the device came from: its registration (``device``), an operator (``operator``), or both. */
function tagSource(device, tag) {
  const operator = (device.operator_tags || []).includes(tag);
  const registered = (device.device_tags || []).includes(tag);
  return operator && registered ? "both" : operator ? "operator" : "device";
}

const SOURCE_TITLES = {
  operator: "运营者设置的标签（可编辑）",
  device: "设备注册时带来的标签（device_info.tags）",
  both: "设备注册时带来，运营者也设置了",
};

function deviceTags(device) {
  return h(
    "div",
    { class: "tags" },
    (device.tags || []).map((tag) => {
      const source = tagSource(device, tag);
      return tagChip(tag, { source, title: `${SOURCE_TITLES[source]}；点击按此标签筛选`, onclick: () => toggleTag(tag) });
    }),
  );
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
    h("td", { class: "tags-cell" }, deviceTags(device)),
    h("td", { class: "num" }, h("a", { href: `#/tasks?device_id=${enc(device.device_id)}`, text: device.task_count })),
    h("td", {}, capacity(device)),
    h("td", { class: "ago", title: device.last_heartbeat || "", dataset: { time: device.last_heartbeat || "" } }, ago(device.last_heartbeat)),
    h(
      "td",
      { class: "actions" },
      h("button", {
        type: "button",
        class: "small",
        dataset: { action: "tags" },
        text: "标签",
        title: "编辑运营者标签",
        onclick: () => openTagEditor(device.device_id),
      }),
      " ",
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

/** The tag filter's chips: every tag of the fleet, and those chosen even if no device has them any more. */
function renderTagFilter() {
  const tags = [...new Set([...fleetTags(), ...filter.tags])].sort();
  const box = $("#device-tags");
  const signature = JSON.stringify([tags, [...filter.tags]]);
  box.hidden = tags.length === 0;
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  const chips = tags.map((tag) => {
    const chip = tagChip(tag, { title: "只显示同时具有所选全部标签的设备", onclick: () => toggleTag(tag) });
    chip.setAttribute("aria-pressed", String(filter.tags.has(tag)));
    return chip;
  });
  const clear = h("button", { type: "button", class: "link", id: "device-tags-clear", text: "清除", onclick: () => setFleetTags([]) });
  fill(box, h("span", { class: "muted", text: "标签" }), chips, filter.tags.size ? clear : null);
}

function render() {
  const devices = sortedDevices();
  const tagged = devices.filter(hasFilterTags); // the counts are those of the devices with the chosen tags
  const counts = { all: tagged.length, online: 0, busy: 0, offline: 0, disabled: 0 };
  for (const device of tagged) counts[shownStatus(device)] += 1;
  for (const [key, count] of Object.entries(counts)) $(`#device-counts [data-count="${key}"]`).textContent = count;
  const shown = tagged.filter(matches);
  patchRows($("#devices tbody"), shown, (device) => device.device_id, deviceRow);
  renderTagFilter();
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

/** Filter the fleet by these tags (devices with all of them); ``#/fleet?tag=a&tag=b`` does the same. */
export function setFleetTags(tags) {
  filter.tags = new Set(tags);
  renderFleet();
}

function toggleTag(tag) {
  const tags = new Set(filter.tags);
  if (tags.has(tag)) tags.delete(tag);
  else tags.add(tag);
  setFleetTags(tags);
}

// ---- the operator's tags of a device ----

function openTagEditor(deviceId) {
  const device = state.devices.get(deviceId);
  if (!device) return;
  const dialog = $("#tag-editor");
  dialog.dataset.deviceId = deviceId;
  $("#tag-device").textContent = `${device.device_name} (${deviceId})`;
  const registered = device.device_tags || [];
  $("#tag-registered").replaceChildren(
    ...(registered.length ? registered.map((tag) => tagChip(tag, { source: "device" })) : [h("span", { class: "muted", text: "无" })]),
  );
  $("#tag-form").elements.tags.value = (device.operator_tags || []).join(", ");
  $("#tag-answer").hidden = true;
  dialog.showModal();
  $("#tag-form").elements.tags.focus();
}

async function saveTags(event) {
  event.preventDefault();
  const dialog = $("#tag-editor");
  const deviceId = dialog.dataset.deviceId;
  const tags = parseTags($("#tag-form").elements.tags.value);
  const label = `设置设备 ${deviceId} 的标签`;
  const button = $("#tag-save");
  button.disabled = true;
  try {
    const { status, body } = await api(`/api/device/${enc(deviceId)}/tags`, { method: "PUT", body: { tags } });
    state.devices.set(deviceId, body.device);
    renderFleet();
    dialog.close();
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    const answer = $("#tag-answer");
    const errors = flatten(error.body.errors).map(([path, messages]) => `${path}：${messages.join("；")}`);
    fill(
      answer,
      h("strong", { text: `HTTP ${error.status || "—"} · ${error.message}` }),
      error.body.error_code ? h("p", { class: "error-code", text: error.body.error_code }) : null,
      errors.length ? h("p", { text: errors.join("；") }) : null,
    );
    answer.hidden = false;
    answerNotice(label, error.status, error.body);
  } finally {
    button.disabled = false;
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
  $("#tag-form").addEventListener("submit", saveTags);
  $("#tag-close").addEventListener("click", () => $("#tag-editor").close());
}
