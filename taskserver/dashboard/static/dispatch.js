// The dispatch form: the type's fields come from its data schema (GET /api/task-types); the target is a device,
// any device, or the devices with some tags; "作为批次创建" makes it a batch (POST /api/batches: each or spread,
// max_in_flight, abort); "作为定时任务创建" makes either a schedule instead (POST /api/schedules: name, cron, time
// zone), whose fire times each create it. The server's answer, errors included, is shown as it came.

import { api, HttpError } from "./api.js";
import { tasksOfBatch } from "./batches.js";
import { fleetTags, shownStatus, sortedDevices } from "./fleet.js";
import { scheduleCreated } from "./schedules.js";
import { $, $$, answerNotice, enc, flatten, h, parseTags, state, tagChip } from "./ui.js";

const ANY_DEVICE = { task: "任意设备（最空闲的在线设备）", batch: "全部设备（未停用的）" };

export async function loadTaskTypes() {
  const { body } = await api("/api/task-types");
  state.taskTypes = body.task_types;
  const names = state.taskTypes.map((type) => type.task_type);
  const typeSelect = $("#dispatch-type");
  const chosen = typeSelect.value || names[0];
  typeSelect.replaceChildren(...names.map((name) => h("option", { value: name, text: name })));
  typeSelect.value = chosen;
  const filter = $("#task-filters").elements.task_type;
  const filtered = filter.value;
  filter.replaceChildren(h("option", { value: "", text: "全部" }), ...names.map((name) => h("option", { value: name, text: name })));
  filter.value = filtered;
  renderFields();
  renderOptions();
}

// ---- fields from a JSON Schema ----

function hint(prop) {
  const parts = [];
  if (prop.default !== undefined && prop.default !== null) parts.push(`默认 ${JSON.stringify(prop.default)}`);
  if (prop.minimum !== undefined || prop.maximum !== undefined) parts.push(`${prop.minimum ?? ""}–${prop.maximum ?? ""}`);
  if (prop.maxItems !== undefined) parts.push(`最多 ${prop.maxItems} 项`);
  if (prop.format === "url") parts.push("http 或 https 地址");
  return parts.join(" · ");
}

function input(prop) {
  switch (prop.type) {
    case "array":
      return h("textarea", { rows: 3, placeholder: "每行一个（也可用逗号分隔）" });
    case "boolean": {
      const box = h("input", { type: "checkbox" });
      box.checked = prop.default === true;
      return box;
    }
    case "integer":
    case "number":
      return h("input", {
        type: "number",
        step: prop.type === "integer" ? "1" : "any",
        min: prop.minimum,
        max: prop.maximum,
        placeholder: prop.default ?? "",
      });
    default:
      return h("input", { type: prop.format === "url" ? "url" : "text", placeholder: prop.format === "url" ? "https://" : "" });
  }
}

function field(path, prop, required) {
  const name = path.split(".").pop();
  if (prop.type === "object" && prop.properties) {
    return h("fieldset", { class: "nested", dataset: { field: path } }, h("legend", { text: name }), ...fields(prop, `${path}.`));
  }
  const control = input(prop);
  control.name = `data.${path}`;
  control.dataset.path = path;
  control.dataset.kind = prop.type || "string";
  return h(
    "label",
    { class: "row", dataset: { field: path } },
    h("span", { class: "field-name" }, name, required ? h("b", { class: "required", title: "必填", text: " *" }) : null),
    control,
    h("small", { class: "hint", text: hint(prop) }),
    h("small", { class: "field-error" }),
  );
}

function fields(schema, prefix = "") {
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, prop]) => field(`${prefix}${name}`, prop, required.has(name)));
}

function renderFields() {
  const type = state.taskTypes.find((item) => item.task_type === $("#dispatch-type").value);
  const box = $("#dispatch-fields");
  box.replaceChildren(h("legend", { text: type ? `data（${type.task_type}）` : "data" }));
  if (!type) return;
  box.append(...fields(type.data_schema));
  box.append(
    h(
      "label",
      { class: "row", dataset: { field: "extra" } },
      h("span", { class: "field-name", text: type.data_schema.properties ? "其他字段" : "data（JSON 对象）" }),
      h("textarea", { name: "extra", rows: 3, placeholder: '{"key": "value"}', dataset: { kind: "extra" } }),
      h("small", { class: "hint", text: "可选，JSON 对象，原样传给设备" }),
      h("small", { class: "field-error" }),
    ),
  );
}

const asBatch = () => $("#dispatch-as-batch").checked;
const asSchedule = () => $("#dispatch-as-schedule").checked;

/** The device choices: any device (all of them, for a batch), then every known device with its status; and the
 * fleet's tags, to pick for the tag target. */
export function renderDeviceOptions() {
  const select = $("#dispatch-device");
  const chosen = select.value;
  const options = sortedDevices().map((device) =>
    h("option", { value: device.device_id, text: `${device.device_name} (${device.device_id}) · ${shownStatus(device)}` }),
  );
  select.replaceChildren(h("option", { value: "", text: ANY_DEVICE[asBatch() ? "batch" : "task"] }), ...options);
  if (chosen && state.devices.has(chosen)) select.value = chosen;
  renderTagPicks();
}

function renderTagPicks() {
  const tags = fleetTags();
  const box = $("#dispatch-known-tags");
  if (box.dataset.tags === tags.join(",")) return;
  box.dataset.tags = tags.join(",");
  box.hidden = tags.length === 0;
  const picks = tags.map((tag) => tagChip(tag, { title: "加入目标标签", onclick: () => pickTag(tag) }));
  box.replaceChildren(h("span", { class: "tags" }, h("small", { class: "hint", text: "设备的标签，点选加入：" }), ...picks));
}

function pickTag(tag) {
  const input = $("#dispatch-tags");
  const tags = parseTags(input.value);
  if (!tags.includes(tag)) input.value = [...tags, tag].join(", ");
  chooseTarget("tags");
}

function chooseTarget(value) {
  for (const radio of $$('#dispatch-form [name="target"]')) radio.checked = radio.value === value;
}

/** Show the batch's options (and those of its mode) and the schedule's, and say what the submit button does. */
function renderOptions() {
  const batch = asBatch();
  const mode = $("#dispatch-form").elements.mode.value;
  const itemsFormat = $("#dispatch-form").elements.items_format.value;
  $("#batch-options").hidden = !batch;
  for (const part of $$("#batch-options [data-mode]")) part.hidden = part.dataset.mode !== mode;
  $('#batch-options [data-items="lines"]').hidden = itemsFormat !== "lines";
  $("#items-key").textContent = itemsKey();
  $("#schedule-options").hidden = !asSchedule();
  $("#dispatch-submit").textContent = action();
  const any = $('#dispatch-device option[value=""]');
  if (any) any.textContent = ANY_DEVICE[batch ? "batch" : "task"];
}

/** The data field that "one value per line" items fill: the type's first list field (DELIST: product_ids). */
function itemsKey() {
  const type = state.taskTypes.find((item) => item.task_type === $("#dispatch-type").value);
  const properties = (type && type.data_schema.properties) || {};
  return Object.keys(properties).find((name) => properties[name].type === "array") || "product_ids";
}

const action = () => (asSchedule() ? "创建定时任务" : asBatch() ? "创建批次" : "分发任务");

// ---- reading the form ----

function read(control) {
  if (control.dataset.kind === "boolean") return control.checked;
  const text = control.value.trim();
  if (!text) return undefined;
  if (control.dataset.kind === "array") return text.split(/[\n,]/).map((item) => item.trim()).filter(Boolean);
  if (control.dataset.kind === "integer" || control.dataset.kind === "number") return Number(text);
  return text;
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) node = node[key] ??= {};
  node[keys.at(-1)] = value;
}

function readData() {
  const data = {};
  for (const control of $$("#dispatch-fields [data-path]")) {
    const value = read(control);
    if (value !== undefined) setPath(data, control.dataset.path, value);
  }
  const extra = $("#dispatch-fields [data-kind=extra]").value.trim();
  if (extra) {
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch {
      throw new Error("其他字段不是有效的 JSON");
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("其他字段必须是 JSON 对象");
    Object.assign(data, parsed);
  }
  return data;
}

const byTags = () => $("#dispatch-form").elements.target.value === "tags";

/** The numbers among ``names`` that are filled in, as ``{name: number}``. */
function numbers(names) {
  const form = $("#dispatch-form");
  const found = {};
  for (const name of names) {
    const text = form.elements[name].value.trim();
    if (text) found[name.split(".").pop()] = Number(text);
  }
  return found;
}

/** POST /api/dispatch-task: to the device chosen, to any device with all the tags, or to any device. */
function readTaskBody() {
  const form = $("#dispatch-form");
  const body = { task_type: form.elements.task_type.value, data: readData() };
  if (byTags()) {
    body.tags = parseTags(form.elements.tags.value);
    if (!body.tags.length) throw new Error("按标签分发：请至少填一个标签"); // the server takes no tags as "any device"
  } else if (form.elements.device_id.value) body.device_id = form.elements.device_id.value;
  return { ...body, ...numbers(["priority", "timeout", "max_retries"]) };
}

/** The items of a spread batch: a JSON array of data objects, or values one per line cut into lists of
 * ``per_task``; either way each laid over the form's data fields. */
function readItems(data) {
  const form = $("#dispatch-form");
  const text = form.elements.items.value.trim();
  if (form.elements.items_format.value === "json") {
    let items;
    try {
      items = JSON.parse(text || "[]");
    } catch {
      throw new Error("条目不是有效的 JSON");
    }
    if (!Array.isArray(items) || items.some((item) => !item || typeof item !== "object" || Array.isArray(item))) {
      throw new Error("条目必须是 JSON 对象的数组");
    }
    return items.map((item) => ({ ...data, ...item }));
  }
  const values = text.split(/[\n,]/).map((value) => value.trim()).filter(Boolean);
  const size = Math.max(1, Math.floor(Number(form.elements.per_task.value)) || 1);
  const key = itemsKey();
  const items = [];
  for (let start = 0; start < values.length; start += size) items.push({ ...data, [key]: values.slice(start, start + size) });
  return items;
}

/** POST /api/batches: its target is the tags, the device chosen, or every device. */
function readBatchBody() {
  const form = $("#dispatch-form");
  const mode = form.elements.mode.value;
  const data = readData();
  const body = { task_type: form.elements.task_type.value, mode };
  if (byTags()) body.target = { tags: parseTags(form.elements.tags.value) };
  else if (form.elements.device_id.value) body.target = { device_ids: [form.elements.device_id.value] };
  else body.target = { all: true };
  if (mode === "spread") body.items = readItems(data);
  else body.data = data;
  if (mode === "each" && form.elements.online_only.checked) body.online_only = true;
  Object.assign(body, numbers(["priority", "timeout", "max_retries", "max_in_flight"]));
  const abort = numbers(["abort.failure_ratio", "abort.min_finished"]);
  if (Object.keys(abort).length) body.abort = abort;
  return body;
}

/** POST /api/schedules: each fire time of ``cron`` in the time zone (the server's default UTC if empty) creates the
 * task or batch ``made`` (a body of POST /api/dispatch-task or /api/batches). */
function readScheduleBody(made) {
  const form = $("#dispatch-form");
  const value = (name) => form.elements[`schedule.${name}`].value.trim();
  const body = { name: value("name"), cron: value("cron"), [asBatch() ? "batch" : "task"]: made };
  if (value("timezone")) body.timezone = value("timezone");
  return body;
}

// ---- the answer ----

// the fields of a batch and of a schedule that the form shows elsewhere
const FIELD_OF = {
  "target.tags": "tags",
  "target.device_ids": "device_id",
  "target.all": "device_id",
  target: "device_id",
  name: "schedule.name",
  cron: "schedule.cron",
  timezone: "schedule.timezone",
};

/** The error slot of a field the server named: ``data.x`` is a data field, others a control of the form, tried
 * from the whole path to its first part (``items.3.product_ids`` shows at ``items``, with its path). */
function errorSlot(path) {
  if (path.startsWith("data.")) return $(`#dispatch-fields [data-field="${CSS.escape(path.slice(5))}"] .field-error`);
  const parts = path.split(".");
  for (let end = parts.length; end > 0; end -= 1) {
    const prefix = parts.slice(0, end).join(".");
    const name = FIELD_OF[prefix] || prefix;
    const control = $(`#dispatch-form [name="${CSS.escape(name)}"]`);
    const slot = control && (control.closest("label")?.querySelector(".field-error") || control.closest(".row")?.querySelector(".field-error"));
    if (slot) return slot;
  }
  return null;
}

/** Each field error the server named next to its field; a schedule's ``task.`` or ``batch.`` is the form's task or
 * batch. */
function showFieldErrors(errors) {
  for (const [named, messages] of flatten(errors)) {
    const path = named.replace(/^(task|batch)\./, "");
    const slot = errorSlot(path);
    if (!slot) continue;
    const where = path.includes(".") && !path.startsWith("data.") ? `${path}：` : "";
    slot.textContent = [slot.textContent, `${where}${messages.join("；")}`].filter(Boolean).join("；");
  }
}

function showAnswer(status, body) {
  const ok = status >= 200 && status < 300;
  const box = $("#dispatch-answer");
  box.hidden = false;
  box.dataset.ok = String(ok);
  box.dataset.status = String(status);
  const lines = [h("p", {}, h("strong", { text: `HTTP ${status || "—"} · ${body.message || ""}` }))];
  if (body.batch_id) {
    lines.push(
      h("p", {}, "批次 ", h("a", { href: tasksOfBatch(body.batch_id), class: "mono", dataset: { batchLink: body.batch_id }, text: body.batch_id }),
        ` · 共 ${body.total} 个任务 · `, h("a", { href: "#/batches", text: "所有批次" })),
    );
  }
  if (body.task_id) {
    lines.push(
      h("p", {}, "任务 ", h("a", { href: `#/task/${enc(body.task_id)}`, class: "mono", dataset: { taskLink: body.task_id }, text: body.task_id }),
        ` · ${body.status}`, body.device_id ? ` · 设备 ${body.device_name || ""} (${body.device_id})` : ""),
    );
  }
  if (body.schedule) lines.push(scheduleCreated(body.schedule));
  if (body.error_code) lines.push(h("p", { class: "error-code", text: body.error_code }));
  lines.push(h("pre", { class: "json", text: JSON.stringify(body, null, 2) }));
  box.replaceChildren(...lines);
}

async function submit(event) {
  event.preventDefault();
  for (const slot of $$("#dispatch-form .field-error")) slot.textContent = "";
  const batch = asBatch();
  const schedule = asSchedule();
  const label = action();
  let body;
  try {
    body = batch ? readBatchBody() : readTaskBody();
    if (schedule) body = readScheduleBody(body);
  } catch (error) {
    showAnswer(0, { message: error.message, error_code: "INVALID_FORM" });
    return;
  }
  const button = $("#dispatch-submit");
  button.disabled = true;
  try {
    const path = schedule ? "/api/schedules" : batch ? "/api/batches" : "/api/dispatch-task";
    const { status, body: answer } = await api(path, { method: "POST", body });
    if (batch && !answer.message) answer.message = `批次已创建，共 ${answer.total} 个任务`;
    showAnswer(status, answer);
    answerNotice(label, status, answer);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    showAnswer(error.status, error.body);
    showFieldErrors(error.body.errors);
    answerNotice(label, error.status, error.body);
  } finally {
    button.disabled = false;
  }
}

export function setupDispatch() {
  const form = $("#dispatch-form");
  $("#dispatch-type").addEventListener("change", () => {
    renderFields();
    renderOptions();
  });
  form.addEventListener("submit", submit);
  $("#dispatch-device").addEventListener("change", () => chooseTarget("device"));
  $("#dispatch-tags").addEventListener("input", () => chooseTarget("tags"));
  form.elements["schedule.timezone"].value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  for (const name of ["as_batch", "as_schedule", "mode", "items_format"]) {
    for (const control of $$(`#dispatch-form [name="${name}"]`)) control.addEventListener("change", renderOptions);
  }
  renderOptions();
}
