// The dispatch form: the type's fields come from its data schema (GET /api/task-types); the server's answer,
// errors included, is shown as it came.

import { api, HttpError } from "./api.js";
import { shownStatus, sortedDevices } from "./fleet.js";
import { $, $$, answerNotice, enc, h, state } from "./ui.js";

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

/** The device choices: any device, then every known device with its status. */
export function renderDeviceOptions() {
  const select = $("#dispatch-device");
  const chosen = select.value;
  const options = sortedDevices().map((device) =>
    h("option", { value: device.device_id, text: `${device.device_name} (${device.device_id}) · ${shownStatus(device)}` }),
  );
  select.replaceChildren(h("option", { value: "", text: "任意设备（最空闲的在线设备）" }), ...options);
  if (chosen && state.devices.has(chosen)) select.value = chosen;
}

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

function readBody() {
  const form = $("#dispatch-form");
  const body = { task_type: form.elements.task_type.value, data: readData() };
  if (form.elements.device_id.value) body.device_id = form.elements.device_id.value;
  for (const name of ["priority", "timeout", "max_retries"]) {
    const text = form.elements[name].value.trim();
    if (text) body[name] = Number(text);
  }
  return body;
}

// ---- the answer ----

/** Every leaf of a validation ``errors`` object as [dotted path, messages]. */
function flatten(errors, prefix = "") {
  return Object.entries(errors || {}).flatMap(([key, value]) =>
    Array.isArray(value) || typeof value !== "object" ? [[`${prefix}${key}`, [].concat(value)]] : flatten(value, `${prefix}${key}.`),
  );
}

function showFieldErrors(errors) {
  for (const [path, messages] of flatten(errors)) {
    const where = path.startsWith("data.") ? path.slice(5) : path;
    const slot = $(`#dispatch-fields [data-field="${CSS.escape(where)}"] .field-error`) || $(`#dispatch-form [name="${CSS.escape(where)}"]`)?.closest("label")?.querySelector(".field-error");
    if (slot) slot.textContent = messages.join("；");
  }
}

function showAnswer(status, body) {
  const ok = status >= 200 && status < 300;
  const box = $("#dispatch-answer");
  box.hidden = false;
  box.dataset.ok = String(ok);
  box.dataset.status = String(status);
  const lines = [h("p", {}, h("strong", { text: `HTTP ${status || "—"} · ${body.message || ""}` }))];
  if (body.task_id) {
    lines.push(
      h("p", {}, "任务 ", h("a", { href: `#/task/${enc(body.task_id)}`, class: "mono", dataset: { taskLink: body.task_id }, text: body.task_id }),
        ` · ${body.status}`, body.device_id ? ` · 设备 ${body.device_name || ""} (${body.device_id})` : ""),
    );
  }
  if (body.error_code) lines.push(h("p", { class: "error-code", text: body.error_code }));
  lines.push(h("pre", { class: "json", text: JSON.stringify(body, null, 2) }));
  box.replaceChildren(...lines);
}

async function submit(event) {
  event.preventDefault();
  for (const slot of $$("#dispatch-form .field-error")) slot.textContent = "";
  let body;
  try {
    body = readBody();
  } catch (error) {
    showAnswer(0, { message: error.message, error_code: "INVALID_FORM" });
    return;
  }
  const button = $("#dispatch-submit");
  button.disabled = true;
  try {
    const { status, body: answer } = await api("/api/dispatch-task", { method: "POST", body });
    showAnswer(status, answer);
    answerNotice("分发任务", status, answer);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    showAnswer(error.status, error.body);
    showFieldErrors(error.body.errors);
    answerNotice("分发任务", error.status, error.body);
  } finally {
    button.disabled = false;
  }
}

export function setupDispatch() {
  $("#dispatch-type").addEventListener("change", renderFields);
  $("#dispatch-form").addEventListener("submit", submit);
}
