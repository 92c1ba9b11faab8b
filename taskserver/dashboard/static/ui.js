// Shared state, DOM helpers and formatting for the console's views.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export const state = {
  devices: new Map(), // device_id -> the device as GET /api/devices lists it
  tasks: [], // the task list's current page, as GET /api/tasks lists it
  batches: [], // the batch list's current page, as GET /api/batches lists it
  batchTotal: 0,
  schedules: [], // the schedule list's current page, as GET /api/schedules lists it, each with its last_run
  scheduleTotal: 0,
  taskIndex: new Map(), // task_id -> index in tasks
  taskTotal: 0,
  taskTypes: [], // [{task_type, data_schema}]
  view: "fleet",
  taskId: null, // the task the detail view shows
  skew: 0, // server clock minus browser clock, in ms (the server's times carry no time zone)
};

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") element.textContent = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key === "className" ? "class" : key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** An HTML element: h("td", {class: "num", text: "3"}); text always goes in as text, never as HTML. */
export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);

/** Replace ``element``'s children with ``children``, leaving out null, undefined and false (as ``h`` does). */
export const fill = (element, ...children) =>
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));

/** An SVG element. */
export const svg = (tag, attrs, ...children) =>
  build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);

// ---- time: the server sends local time text ("2025-09-17T14:30:00") ----

export function parseTime(text) {
  const ms = text ? new Date(text).getTime() : NaN;
  return Number.isFinite(ms) ? ms : null;
}

export function ago(text) {
  const at = parseTime(text);
  if (at === null) return "—";
  const seconds = Math.max(0, Math.round((Date.now() + state.skew - at) / 1000));
  if (seconds < 5) return "刚刚";
  if (seconds < 60) return `${seconds} 秒前`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} 分钟前`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} 小时前`;
  return `${Math.floor(seconds / 86400)} 天前`;
}

export const clock = (text) => (text ? text.slice(11, 19) : "—");
export const shortId = (id) => (id && id.length > 14 ? `${id.slice(0, 13)}…` : id || "—");
export const enc = encodeURIComponent;

// ---- small pieces ----

export const badge = (status) => h("span", { class: `badge s-${status}`, text: status });

/** Tags typed by an operator: separated by commas (also "，") or new lines, trimmed, without repeats. */
export function parseTags(text) {
  return [...new Set(text.split(/[,，\n]/).map((tag) => tag.trim()).filter(Boolean))];
}

/** One tag as a chip: a button when it does something (``onclick``); ``source`` says where the tag came from. */
export function tagChip(tag, { source = "", title = null, onclick = null } = {}) {
  const attrs = { class: "tag", dataset: { tag }, title, text: tag };
  if (source) attrs.dataset.source = source;
  return onclick ? h("button", { type: "button", onclick, ...attrs }) : h("span", attrs);
}

export function progressBar(task, extraClass = "") {
  const progress = Math.max(0, Math.min(100, Number(task.progress) || 0));
  const bar = h(
    "div",
    { class: `progress s-${task.status} ${extraClass}`, dataset: { progress, status: task.status } },
    h("span"),
    h("small", { text: `${progress}%` }),
  );
  bar.firstChild.style.width = `${progress}%`;
  return bar;
}

/** Show ``items`` as the rows of ``tbody``, building rows only for new or changed items and moving the DOM only
 * where it differs (so a row under the pointer survives updates of the others). */
export function patchRows(tbody, items, keyOf, build) {
  const previous = tbody.rowCache || new Map();
  const next = new Map();
  const rows = items.map((item) => {
    const key = keyOf(item);
    const signature = JSON.stringify(item);
    let entry = previous.get(key);
    if (!entry || entry.signature !== signature) entry = { signature, row: build(item) };
    next.set(key, entry);
    return entry.row;
  });
  tbody.rowCache = next;
  rows.forEach((row, index) => {
    const present = tbody.children[index];
    if (present !== row) tbody.insertBefore(row, present || null);
  });
  while (tbody.children.length > rows.length) tbody.lastElementChild.remove();
}

/** Run ``fn`` at most once every ``ms`` milliseconds, the last call always honoured. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, Math.max(0, last + ms - Date.now()));
  };
}

/** Call ``render`` once in the next animation frame, however often it is asked for before. */
export function onNextFrame(render) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      render();
    });
  };
}

// ---- notices: every action's answer from the server ----

const KEEP_NOTICES = 4;

export function notice(ok, title, detail = "") {
  const box = $("#notices");
  const close = h("button", { type: "button", class: "close", "aria-label": "关闭", text: "×" });
  const item = h("div", { class: "notice", dataset: { ok: String(ok) } }, close, h("strong", { text: title }));
  if (detail) item.append(h("small", { text: detail }));
  close.addEventListener("click", () => item.remove());
  box.prepend(item);
  for (const old of $$(".notice", box).slice(KEEP_NOTICES)) old.remove();
  setTimeout(() => item.remove(), ok ? 8000 : 20000);
  return item;
}

/** Every leaf of a validation ``errors`` object as [dotted path, messages]. */
export function flatten(errors, prefix = "") {
  return Object.entries(errors || {}).flatMap(([key, value]) =>
    Array.isArray(value) || typeof value !== "object" ? [[`${prefix}${key}`, [].concat(value)]] : flatten(value, `${prefix}${key}.`),
  );
}

/** A notice with the server's answer to an action: its message, HTTP status and error code. */
export function answerNotice(action, status, body) {
  const ok = status >= 200 && status < 300;
  const message = (body && body.message) || (ok ? "成功" : "失败");
  const code = body && body.error_code ? ` · ${body.error_code}` : "";
  return notice(ok, `${action}：${message}`, `HTTP ${status || "—"}${code}`);
}
