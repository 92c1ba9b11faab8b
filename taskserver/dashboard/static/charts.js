// The overview: tasks ended per minute and devices online over the last hour, drawn as plain SVG.

import { api } from "./api.js";
import { $, clock, svg, throttle } from "./ui.js";

const WIDTH = 760;
const HEIGHT = 220;
const PAD = { left: 44, right: 12, top: 12, bottom: 28 };
const PLOT_H = HEIGHT - PAD.top - PAD.bottom;

export async function loadOverview() {
  const [throughput, fleet] = await Promise.all([
    api("/api/stats/throughput?minutes=60"),
    api("/api/stats/devices?minutes=60"),
  ]);
  const totals = throughput.body.totals;
  for (const [key, value] of Object.entries({ ...totals, ...fleet.body.now })) {
    const slot = $(`#overview-cards [data-stat="${key}"]`);
    if (slot) slot.textContent = value ?? "–";
  }
  drawThroughput(throughput.body.per_minute);
  drawDevices(fleet.body.per_minute);
}

export const reloadOverview = throttle(() => loadOverview().catch(() => {}), 5000);

/** 1, 2, 5, 10, 20, 50, ... : the smallest at or above ``value``. */
function niceMax(value) {
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1)));
  return [1, 2, 5, 10].map((step) => step * power).find((candidate) => candidate >= value);
}

function axes(rows, max) {
  const y = (value) => PAD.top + PLOT_H * (1 - value / max);
  const parts = [];
  for (const value of [0, max / 2, max]) {
    parts.push(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }));
    parts.push(svg("text", { class: "tick", x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end", text: Number.isInteger(value) ? value : value.toFixed(1) }));
  }
  const slot = (WIDTH - PAD.left - PAD.right) / rows.length;
  for (const index of [0, Math.floor(rows.length / 2), rows.length - 1]) {
    if (!rows[index]) continue;
    const x = PAD.left + slot * (index + 0.5);
    parts.push(svg("text", { class: "tick", x, y: HEIGHT - 8, "text-anchor": "middle", text: clock(rows[index].at).slice(0, 5) }));
  }
  return { parts, y, slot };
}

function drawThroughput(rows) {
  const max = niceMax(Math.max(1, ...rows.map((row) => row.completed + row.failed)));
  const { parts, y, slot } = axes(rows, max);
  const width = Math.max(1, slot - 2);
  rows.forEach((row, index) => {
    const x = PAD.left + slot * index + 1;
    const bar = svg("g", { class: "minute", dataset: { at: row.at, completed: row.completed, failed: row.failed } });
    bar.append(svg("title", { text: `${clock(row.at).slice(0, 5)}  completed ${row.completed} · failed ${row.failed} · cancelled ${row.cancelled}` }));
    if (row.completed) bar.append(svg("rect", { class: "completed", x, width, y: y(row.completed), height: y(0) - y(row.completed) }));
    if (row.failed) {
      const top = y(row.completed + row.failed);
      bar.append(svg("rect", { class: "failed", x, width, y: top, height: y(row.completed) - top }));
    }
    bar.append(svg("rect", { class: "hover", x, width, y: PAD.top, height: PLOT_H }));
    parts.push(bar);
  });
  $("#chart-throughput").replaceChildren(...parts);
}

/** A stepped line through the minutes that have a sample; gaps (no sample) break it. */
function stepPath(rows, key, x, y) {
  let path = "";
  let open = false;
  rows.forEach((row, index) => {
    if (row[key] === null || row[key] === undefined) {
      open = false;
      return;
    }
    const left = x(index);
    path += open ? ` H ${left} V ${y(row[key])}` : ` M ${left} ${y(row[key])}`;
    path += ` H ${x(index + 1)}`;
    open = true;
  });
  return path.trim();
}

function drawDevices(rows) {
  const sampled = rows.filter((row) => row.online !== null && row.online !== undefined);
  const max = niceMax(Math.max(1, ...sampled.map((row) => row.online)));
  const { parts, y, slot } = axes(rows, max);
  const x = (index) => PAD.left + slot * index;
  parts.push(svg("path", { class: "busy-line", d: stepPath(rows, "busy", x, y) }));
  parts.push(svg("path", { class: "online-line", d: stepPath(rows, "online", x, y) }));
  rows.forEach((row, index) => {
    if (row.online === null || row.online === undefined) return;
    const point = svg("circle", { class: "online-point", cx: x(index + 0.5), cy: y(row.online), r: 2.5, dataset: { at: row.at, online: row.online, busy: row.busy } });
    point.append(svg("title", { text: `${clock(row.at).slice(0, 5)}  online ${row.online} · busy ${row.busy}` }));
    parts.push(point);
  });
  if (!sampled.length) parts.push(svg("text", { class: "tick", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", text: "暂无采样" }));
  $("#chart-devices").replaceChildren(...parts);
}
