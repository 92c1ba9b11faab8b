// The batches view: every batch with its progress bar, task counts by status and cancel; a click lists its tasks
// (the task view filtered by batch_id, with the batch's strip above the list). Kept fresh by polling GET
// /api/batches while the view is shown, and sooner when the live feed says a task of a batch changed.

import { api, HttpError, query } from "./api.js";
import {
  $, TERMINAL, ago, answerNotice, badge, enc, fill, h, onNextFrame, patchRows, progressBar, state, tagChip,
  throttle,
} from "./ui.js";

const PAGE = 50;
export const BATCH_REFRESH = 3000; // ms between two polls while the view is shown
const STATUSES = ["pending", "dispatched", "running", "completed", "failed", "cancelled"];
const MODES = { each: "每台设备一个", spread: "每个条目一个" };
let limit = PAGE;

export const tasksOfBatch = (batchId) => `#/tasks?batch_id=${enc(batchId)}`;

export async function loadBatches() {
  const { body } = await api(`/api/batches${query({ limit })}`);
  state.batches = body.batches;
  state.batchTotal = body.total;
  renderBatches();
}

export const reloadBatches = throttle(() => loadBatches().catch(() => {}), 1000);

// ---- pieces of a batch ----

/** A batch's target: its tags (a link to those devices), its devices, or all. */
export function batchTarget(batch) {
  const { tags, device_ids: deviceIds } = batch.target || {};
  if (tags) {
    const link = h("a", { href: `#/fleet?${tags.map((tag) => `tag=${enc(tag)}`).join("&")}`, title: "查看这些设备" });
    link.append(...tags.map((tag) => tagChip(tag)));
    return link;
  }
  if (deviceIds) {
    const text = deviceIds.length === 1 ? deviceIds[0] : `${deviceIds.length} 台指定设备`;
    return h("span", { class: "mono", title: deviceIds.join(", "), text });
  }
  return h("span", { text: "全部设备" });
}

function rules(batch) {
  const parts = [];
  if (batch.max_in_flight) parts.push(`同时最多 ${batch.max_in_flight}`);
  if (batch.abort) parts.push(`失败率 ≥ ${Math.round(batch.abort.failure_ratio * 100)}% 中止（至少结束 ${batch.abort.min_finished} 个）`);
  return parts.length ? h("small", { class: "muted rules", text: parts.join(" · ") }) : null;
}

/** Its task counts by status (those not zero), then the total. */
export function batchCounts(batch) {
  const counts = STATUSES.filter((status) => batch.counts[status]).map((status) =>
    h("span", { class: `n s-${status}`, dataset: { count: status }, title: status }, h("i"), `${status} ${batch.counts[status]}`),
  );
  return h("span", { class: "batch-counts" }, ...counts, h("span", { class: "muted", dataset: { count: "total" }, text: `共 ${batch.total}` }));
}

const batchProgress = (batch, extraClass = "") => progressBar({ status: batch.status, progress: batch.progress }, extraClass);

function cancelButton(batch) {
  return h("button", {
    type: "button",
    class: "danger small",
    dataset: { action: "cancel-batch" },
    text: "取消",
    onclick: () => cancelBatch(batch),
  });
}

function batchRow(batch) {
  const open = (event) => {
    if (!event.target.closest("button, a")) location.hash = tasksOfBatch(batch.batch_id);
  };
  return h(
    "tr",
    { class: "clickable", dataset: { batchId: batch.batch_id, status: batch.status }, onclick: open },
    h("td", { class: "mono" }, h("a", { href: tasksOfBatch(batch.batch_id), text: batch.batch_id })),
    h("td", { text: batch.task_type }),
    h("td", {}, h("div", { text: `${batch.mode} · ${MODES[batch.mode] || ""}` }), rules(batch)),
    h("td", {}, batchTarget(batch)),
    h("td", {}, badge(batch.status)),
    h("td", {}, batchProgress(batch)),
    h("td", {}, batchCounts(batch)),
    h("td", { class: "ago", title: batch.created_at, dataset: { time: batch.created_at } }, ago(batch.created_at)),
    h("td", { class: "actions" }, batch.status === "running" ? cancelButton(batch) : null),
  );
}

function render() {
  patchRows($("#batches tbody"), state.batches, (batch) => batch.batch_id, batchRow);
  $("#batches-empty").hidden = state.batches.length > 0;
  $("#batches-more").hidden = state.batches.length >= state.batchTotal;
  $("#batch-shown").textContent = state.batches.length ? `显示 ${state.batches.length} / 共 ${state.batchTotal}` : "";
}

export const renderBatches = onNextFrame(render);

/** Put a batch as an answer showed it into the list (if listed) and into the task view's strip (if shown). */
function update(batch) {
  const index = state.batches.findIndex((listed) => listed.batch_id === batch.batch_id);
  if (index >= 0) state.batches[index] = batch;
  renderBatches();
  if ($("#task-batch").dataset.batchId === batch.batch_id) renderStrip(batch);
}

async function cancelBatch(batch) {
  const open = batch.total - [...TERMINAL].reduce((sum, status) => sum + (batch.counts[status] || 0), 0);
  if (!window.confirm(`取消批次 ${batch.batch_id}？它未结束的 ${open} 个任务都会被取消。`)) return;
  const label = `取消批次 ${batch.batch_id}`;
  try {
    const { status, body } = await api(`/api/batch/${enc(batch.batch_id)}/cancel`, { method: "POST" });
    update(body.batch);
    answerNotice(label, status, body);
  } catch (error) {
    if (!(error instanceof HttpError)) throw error;
    answerNotice(label, error.status, error.body);
  }
}

// ---- the strip above the task list when it shows one batch's tasks ----

function renderStrip(batch) {
  const strip = $("#task-batch");
  strip.hidden = false;
  strip.dataset.batchId = batch.batch_id;
  strip.dataset.status = batch.status;
  fill(
    strip,
    h("a", { href: "#/batches", text: "← 批次" }),
    h("span", {}, "批次 ", h("span", { class: "mono", text: batch.batch_id })),
    h("span", { text: `${batch.task_type} · ${batch.mode}` }),
    badge(batch.status),
    batchProgress(batch, "strip-progress"),
    batchCounts(batch),
    batch.status === "running" ? cancelButton(batch) : null,
  );
}

/** Show the batch the task list is filtered by (or hide the strip when it is not filtered by one). */
export async function loadBatchStrip(batchId) {
  const strip = $("#task-batch");
  if (!batchId) {
    strip.hidden = true;
    delete strip.dataset.batchId;
    return;
  }
  try {
    const { body } = await api(`/api/batch/${enc(batchId)}`);
    if (batchId === currentStripId()) renderStrip(body.batch);
  } catch (error) {
    if (!(error instanceof HttpError) || batchId !== currentStripId()) throw error;
    strip.hidden = false;
    strip.dataset.batchId = batchId;
    strip.dataset.status = "";
    strip.replaceChildren(h("a", { href: "#/batches", text: "← 批次" }), h("span", { text: `批次 ${batchId}：${error.message}` }));
  }
}

const currentStripId = () => $("#task-filters").elements.batch_id.value.trim();

export const reloadBatchStrip = throttle(() => loadBatchStrip(currentStripId()).catch(() => {}), 1000);

export function setupBatches() {
  $("#batches-more").addEventListener("click", () => {
    limit += PAGE;
    loadBatches().catch(() => {});
  });
}
