// The schedules view: every recurring schedule with its cron expression and time zone, what each fire time creates,
// its next run and its last run (the task or batch it made, or why it made nothing); pause / resume (PATCH enabled)
// and delete. Kept fresh by polling while the view is shown, and sooner when the live feed reports tasks (a fire time
// makes one).

import { api, HttpError, query } from "./api.js";
import { batchTarget, tasksOfBatch } from "./batches.js";
import { $, answerNotice, badge, enc, h, onNextFrame, patchRows, state, tagChip, throttle } from "./ui.js";

const PAGE = 50;
export const SCHEDULE_REFRESH = 5000; // ms between two polls while the view is shown
let limit = PAGE;
let edits = 0; // pauses, resumes and deletes made here: a list read before one of them is not shown

/** A time as the server shows it ("2030-01-01T09:00:00", its local time) with a space; "—" for none. */
const when = (text) => (text ? text.replace("T", " ") : "—");

export async function loadSchedules() {
  const before = edits;
  const { body } = await api(`/api/schedules${query({ limit })}`);
  if (before !== edits) return; // paused, resumed or deleted here meanwhile: what was read may be older
  state.schedules = body.schedules;
  state.scheduleTotal = body.total;
  renderSchedules();
}

export const reloadSchedules = throttle(() => loadSchedules().catch(() => {}), 1000);

// ---- pieces of a schedule ----

/** What each fire time creates: a task of a type (for a device, devices with tags, or any) or a batch. */
function creates(schedule) {
  if (schedule.batch) {
    const { task_type: type, mode } = schedule.batch;
    return h("div", {}, h("div", { text: `批次 ${type} · ${mode}` }), batchTarget(schedule.batch));
  }
  const { task_type: type, device_id: deviceId, tags } = schedule.task;
  let target = h("span", { class: "muted", text: "任意设备" });
  if (deviceId) target = h("span", { class: "mono", text: deviceId });
  else if (tags && tags.length) target = h("span", { class: "tags" }, ...tags.map((tag) => tagChip(tag)));
  return h("div", {}, h("div", { text: `任务 ${type}` }), target);
}

/** The last run: its fire time, and a link to the task or batch it made, or its error. */
function lastRun(run) {
  if (!run) return h("span", { class: "muted", text: "尚未运行" });
  const { error, batch_id: batchId, task_id: taskId } = run;
  let made;
  if (error) made = h("span", { class: "error-code", dataset: { runError: error.error_code }, text: `${error.error_code}：${error.message}` });
  else if (batchId) made = h("a", { href: tasksOfBatch(batchId), class: "mono", dataset: { runBatch: batchId }, text: batchId });
  else made = h("a", { href: `#/task/${enc(taskId)}`, class: "mono", dataset: { runTask: taskId }, text: taskId });
  return h("div", { class: "last-run" }, h("div", { title: `运行于 ${when(run.ran_at)}`, text: when(run.fire_at) }), made);
}

function actions(schedule) {
  const [action, text] = schedule.enabled ? ["pause", "暂停"] : ["resume", "恢复"];
  return [
    h("button", { type: "button", class: "small warn", dataset: { action }, text, onclick: () => setEnabled(schedule, !schedule.enabled) }),
    h("button", { type: "button", class: "small danger", dataset: { action: "delete" }, text: "删除", onclick: () => remove(schedule) }),
  ];
}

function scheduleRow(schedule) {
  return h(
    "tr",
    { dataset: { scheduleId: schedule.schedule_id, enabled: String(schedule.enabled) } },
    h("td", {}, h("div", { class: "name", text: schedule.name }), h("small", { class: "mono muted", text: schedule.schedule_id })),
    h(
      "td",
      {},
      h("code", { text: schedule.cron }),
      h("small", { class: "muted rules", text: schedule.misfire === "skip" ? `${schedule.timezone} · 错过即跳过` : schedule.timezone }),
    ),
    h("td", {}, creates(schedule)),
    h("td", {}, badge(schedule.enabled ? "enabled" : "paused")),
    h("td", { class: "next-run", text: schedule.enabled ? when(schedule.next_run_at) : "—（已暂停）" }),
    h("td", {}, lastRun(schedule.last_run)),
    h("td", { class: "actions" }, actions(schedule)),
  );
}

function render() {
  patchRows($("#schedules tbody"), state.schedules, (schedule) => schedule.schedule_id, scheduleRow);
  $("#schedules-empty").hidden = state.schedules.length > 0;
  $("#schedules-more").hidden = state.schedules.length >= state.scheduleTotal;
  $("#schedule-shown").textContent = state.schedules.length ? `显示 ${state.schedules.length} / 共 ${state.scheduleTotal}` : "";
}

export const renderSchedules = onNextFrame(render);

// ---- pause, resume, delete ----

async function setEnabled(schedule, enabled) {
  const label = `${enabled ? "恢复" : "暂停"}定时任务 ${schedule.name}`;
  edits += 1;
  try {
    const { status, body } = await api(`/api/schedule/${enc(schedule.schedule_id)}`, { method: "PATCH", body: { enabled } });
    const index = state.schedules.findIndex((listed) => listed.schedule_id === schedule.schedule_id);
    if (index >= 0) state.schedules[index] = body.schedule;
    renderSchedules();
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    answerNotice(label, error.status, error.body);
  }
}

async function remove(schedule) {
  if (!window.confirm(`删除定时任务「${schedule.name}」？它的运行记录一并删除，它已创建的任务和批次保留。`)) return;
  const label = `删除定时任务 ${schedule.name}`;
  edits += 1;
  try {
    const { status, body } = await api(`/api/schedule/${enc(schedule.schedule_id)}`, { method: "DELETE" });
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    answerNotice(label, error.status, error.body);
  }
  loadSchedules().catch(() => {});
}

// ---- created from the dispatch form ----

/** The answer's schedule as the dispatch form shows it: a link to the schedules view, and its next run. */
export function scheduleCreated(schedule) {
  return h(
    "p",
    {},
    "定时任务 ",
    h("a", { href: "#/schedules", class: "mono", dataset: { scheduleLink: schedule.schedule_id }, text: schedule.schedule_id }),
    ` · 下次运行 ${when(schedule.next_run_at)}`,
  );
}

export function setupSchedules() {
  $("#schedules-more").addEventListener("click", () => {
    limit += PAGE;
    loadSchedules().catch(() => {});
  });
}
