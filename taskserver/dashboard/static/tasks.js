// The task views: the list (filters like GET /api/tasks, live progress) and one task (data, result, attempts,
// history as a timeline), with cancel.

import { api, HttpError, query } from "./api.js";
import { loadBatchStrip, reloadBatchStrip } from "./batches.js";
import {
  $, TERMINAL, ago, answerNotice, badge, clock, enc, h, onNextFrame, patchRows, progressBar, shortId, state, throttle,
} from "./ui.js";

const PAGE = 100;
const MAX_JSON = 20000; // characters of data / result shown before "…"
let limit = PAGE;

// ---- the list ----

/** The filters as GET /api/tasks takes them (status may name several, comma-separated). */
export function taskFilters() {
  const form = $("#task-filters");
  const value = (name) => form.elements[name].value.trim();
  return {
    status: value("status"),
    task_type: value("task_type"),
    device_id: value("device_id"),
    batch_id: value("batch_id"),
    created_after: value("created_after"),
    created_before: value("created_before"),
  };
}

/** Does the task pass the status, type, device and batch filters? (A task's creation time never changes, so the time
 * filters only matter for tasks new to the list, and for those the reload asks the server.) */
export function matchesFilters(task) {
  const filters = taskFilters();
  if (filters.status && !filters.status.split(",").includes(task.status)) return false;
  if (filters.task_type && task.task_type !== filters.task_type) return false;
  if (filters.batch_id && task.batch_id !== filters.batch_id) return false;
  return !filters.device_id || task.device_id === filters.device_id;
}

export async function loadTasks() {
  const filters = taskFilters();
  const [{ body }] = await Promise.all([api(`/api/tasks${query({ ...filters, limit })}`), loadBatchStrip(filters.batch_id)]);
  state.tasks = body.tasks.map(({ data, ...brief }) => brief); // data can be large; the detail view shows it
  state.taskIndex = new Map(state.tasks.map((task, index) => [task.task_id, index]));
  state.taskTotal = body.total;
  renderTasks();
}

export const reloadTasks = throttle(() => loadTasks().catch(() => {}), 1000);

function taskRow(task) {
  const open = (event) => {
    if (!event.target.closest("button, a")) location.hash = `#/task/${enc(task.task_id)}`;
  };
  return h(
    "tr",
    { class: "clickable", dataset: { taskId: task.task_id, status: task.status }, onclick: open },
    h("td", { class: "mono", title: task.task_id }, h("a", { href: `#/task/${enc(task.task_id)}`, text: shortId(task.task_id) })),
    h("td", { text: task.task_type }),
    h(
      "td",
      {},
      badge(task.status),
      task.attempt > 1 ? h("small", { class: "muted", text: ` 第 ${task.attempt} 次` }) : null,
      task.error_code ? h("small", { class: "error-code", text: ` ${task.error_code}` }) : null,
    ),
    h("td", { class: "mono", text: task.device_id || "—" }),
    h("td", {}, progressBar(task)),
    h("td", { class: "ago", title: task.created_at, dataset: { time: task.created_at } }, ago(task.created_at)),
    h("td", { class: "actions" }, TERMINAL.has(task.status) ? null : cancelButton(task.task_id, "small")),
  );
}

function cancelButton(taskId, size = "") {
  return h("button", {
    type: "button",
    class: `danger ${size}`,
    dataset: { action: "cancel" },
    text: "取消",
    onclick: () => cancelTask(taskId),
  });
}

function render() {
  patchRows($("#tasks tbody"), state.tasks, (task) => task.task_id, taskRow);
  $("#tasks-empty").hidden = state.tasks.length > 0;
  $("#tasks-more").hidden = state.tasks.length >= state.taskTotal;
  $("#task-shown").textContent = `显示 ${state.tasks.length} / 共 ${state.taskTotal}`;
}

export const renderTasks = onNextFrame(render);

/** Apply the live feed's task briefs: update rows in place; reload when the list itself may have changed. */
export function applyTaskChanges(briefs, reloadAll) {
  let reload = reloadAll;
  const batchId = taskFilters().batch_id;
  if (batchId && (reloadAll || briefs.some((brief) => brief.batch_id === batchId))) reloadBatchStrip();
  for (const brief of briefs) {
    const index = state.taskIndex.get(brief.task_id);
    if (index !== undefined) {
      state.tasks[index] = { ...state.tasks[index], ...brief };
      reload ||= !matchesFilters(state.tasks[index]); // it leaves the list
    } else {
      reload ||= matchesFilters(brief); // it may join the list (a new task, or one that moved into the filter)
    }
    if (brief.task_id === state.taskId) reloadDetail();
  }
  if (reload) reloadTasks();
  if (briefs.length) renderTasks();
}

async function cancelTask(taskId) {
  const label = `取消任务 ${shortId(taskId)}`;
  try {
    const { status, body } = await api(`/api/task/${enc(taskId)}/cancel`, { method: "POST" });
    applyTaskChanges([body.task], false);
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    answerNotice(label, error.status, error.body);
  }
}

// ---- one task ----

export async function loadTaskDetail() {
  const taskId = state.taskId;
  if (!taskId) return;
  try {
    const [detail, history] = await Promise.all([
      api(`/api/task/${enc(taskId)}`),
      api(`/api/task/${enc(taskId)}/events`),
    ]);
    if (taskId === state.taskId) renderDetail(detail.body.task, history.body.events);
  } catch (error) {
    if (!(error instanceof HttpError) || taskId !== state.taskId) throw error;
    $("#task-title").textContent = `${taskId}：${error.message}`;
  }
}

export const reloadDetail = throttle(() => loadTaskDetail().catch(() => {}), 500);

export function clearDetail() {
  $("#task-title").textContent = "加载中…";
  for (const id of ["#task-facts", "#task-data", "#task-result", "#task-attempts tbody", "#task-timeline"]) {
    $(id).replaceChildren();
  }
  $("#task-cancel").hidden = true;
}

function json(value) {
  if (value === null || value === undefined) return "—";
  const text = JSON.stringify(value, null, 2);
  return text.length > MAX_JSON ? `${text.slice(0, MAX_JSON)}\n…（共 ${text.length} 个字符）` : text;
}

function facts(task) {
  const rows = [
    ["状态", badge(task.status)],
    ["设备", task.device_id || (task.target_device_id ? `${task.target_device_id}（指定）` : "—")],
    ["执行", `第 ${task.attempt} 次，最多 ${task.max_retries + 1} 次`],
    ["优先级", task.priority],
    ["超时", `${task.timeout} 秒`],
    ["创建", task.created_at],
    ["分发", task.dispatched_at],
    ["开始", task.started_at],
    ["结束", task.finished_at],
    ["超时于", task.timeout_at],
    ["排期", task.not_before],
    ["错误码", task.error_code],
    ["进度说明", task.progress_message],
  ];
  return rows
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([name, value]) => [h("dt", { text: name }), h("dd", {}, value)]);
}

function attemptRow(attempt) {
  return h(
    "tr",
    { dataset: { attempt: attempt.attempt } },
    h("td", { text: attempt.attempt }),
    h("td", { class: "mono", text: attempt.device_id || "—" }),
    h("td", { text: clock(attempt.dispatched_at) }),
    h("td", { text: clock(attempt.delivered_at) }),
    h("td", { text: clock(attempt.ended_at) }),
    h("td", {}, attempt.outcome ? badge(attempt.outcome) : "进行中", attempt.error_code ? ` ${attempt.error_code}` : ""),
  );
}

function timelineItem(event) {
  return h(
    "li",
    { dataset: { kind: event.kind } },
    h("time", { title: event.at, text: clock(event.at) }),
    h("b", { text: event.kind }),
    h("span", { text: event.message }),
    h("small", { class: "muted", text: event.actor + (event.attempt > 1 ? ` · 第 ${event.attempt} 次` : "") }),
  );
}

function renderDetail(task, events) {
  const view = $("#view-task");
  view.dataset.taskId = task.task_id;
  view.dataset.status = task.status;
  $("#task-title").replaceChildren(h("span", { text: task.task_type }), " ", h("small", { class: "mono", text: task.task_id }));
  $("#task-facts").replaceChildren(...facts(task));
  $("#task-progress").replaceWith(Object.assign(progressBar(task, "big"), { id: "task-progress" }));
  $("#task-data").textContent = json(task.data);
  $("#task-result").textContent = json(task.result);
  $("#task-attempts tbody").replaceChildren(...task.attempts.map(attemptRow));
  $("#task-timeline").replaceChildren(...events.map(timelineItem));
  const cancel = $("#task-cancel");
  cancel.hidden = TERMINAL.has(task.status);
  cancel.onclick = () => cancelTask(task.task_id);
}

export function setupTasks() {
  const form = $("#task-filters");
  const reload = () => {
    limit = PAGE;
    loadTasks().catch((error) => answerNotice("筛选任务", error.status, error.body));
  };
  form.addEventListener("change", reload);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    reload();
  });
  $("#tasks-more").addEventListener("click", () => {
    limit += PAGE;
    loadTasks().catch(() => {});
  });
}

/** Set the list's filters from a route's query (``#/tasks?device_id=...``); those it does not name are cleared. */
export function setTaskFilters(params) {
  const form = $("#task-filters");
  for (const control of form.elements) if (control.name) control.value = "";
  for (const [name, value] of params) {
    if (form.elements[name]) form.elements[name].value = value;
  }
}
