// taskserver's web console: plain ES modules, no build step. Data comes from /api/* (Authorization: Bearer <token>);
// changes come live from the Socket.IO namespace /dashboard (auth: {token}), which the server coalesces to at most
// two small messages a second. After any reconnect the page reloads what it shows (catch up).

import { api, getToken, onUnauthorized, setToken } from "./api.js";
import { BATCH_REFRESH, loadBatches, reloadBatches, setupBatches } from "./batches.js";
import { loadOverview, reloadOverview } from "./charts.js";
import { loadTaskTypes, renderDeviceOptions, setupDispatch } from "./dispatch.js";
import { loadDevices, reloadDevices, renderFleet, setFleetTags, setupFleet } from "./fleet.js";
import { SCHEDULE_REFRESH, loadSchedules, reloadSchedules, setupSchedules } from "./schedules.js";
import {
  applyTaskChanges, clearDetail, loadTaskDetail, loadTasks, setTaskFilters, setupTasks,
} from "./tasks.js";
import { $, $$, TERMINAL, ago, notice, parseTime, state } from "./ui.js";

const VIEWS = ["fleet", "tasks", "task", "batches", "schedules", "dispatch", "overview"];
const OVERVIEW_REFRESH = 30000;

// ---- views ----

function route() {
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, id] = path.split("/");
  const view = VIEWS.includes(name) ? name : "fleet";
  state.view = view;
  state.taskId = view === "task" && id ? decodeURIComponent(id) : null;
  for (const section of $$("main > .view")) section.hidden = section.id !== `view-${view}`;
  for (const link of $$("#nav a")) link.classList.toggle("active", link.dataset.view === (view === "task" ? "tasks" : view));
  document.body.dataset.view = view;
  if (view === "fleet" && search) setFleetTags(new URLSearchParams(search).getAll("tag"));
  if (view === "tasks" && search) {
    setTaskFilters(new URLSearchParams(search));
    loadTasks().catch(() => {});
  }
  if (view === "task") {
    clearDetail();
    loadTaskDetail().catch(() => {});
  }
  if (view === "batches") loadBatches().catch(() => {});
  if (view === "schedules") loadSchedules().catch(() => {});
  if (view === "overview") loadOverview().catch(() => {});
  if (view === "dispatch") renderDeviceOptions();
}

// ---- catching up: load everything the page shows ----

let syncing = null;
let again = false;

/** Reload devices, tasks and the open view; calls during a reload make it run once more afterwards. */
async function catchUp() {
  if (syncing) {
    again = true;
    return syncing;
  }
  syncing = (async () => {
    do {
      again = false;
      try {
        await Promise.all([
          loadDevices(),
          loadTasks(),
          state.taskTypes.length ? null : loadTaskTypes(),
          state.view === "task" ? loadTaskDetail() : null,
          state.view === "batches" ? loadBatches() : null,
          state.view === "schedules" ? loadSchedules() : null,
          state.view === "overview" ? loadOverview() : null,
        ]);
        renderDeviceOptions();
        document.body.dataset.syncs = String(Number(document.body.dataset.syncs) + 1);
      } catch (error) {
        if (error.status !== 401) notice(false, "加载失败", error.message);
      }
    } while (again);
  })();
  try {
    await syncing;
  } finally {
    syncing = null;
  }
}

// ---- the live connection ----

let socket = null;
let dropped = false;

function setLive(status, text) {
  const live = $("#live");
  live.dataset.state = status;
  live.textContent = text;
}

function banner(text) {
  const box = $("#banner");
  box.hidden = !text;
  box.textContent = text || "";
}

function applyChanges(changes) {
  for (const device of changes.devices) state.devices.set(device.device_id, device);
  for (const deviceId of changes.removed_devices) state.devices.delete(deviceId);
  for (const [deviceId, at] of Object.entries(changes.heartbeats)) {
    const device = state.devices.get(deviceId);
    if (device) device.last_heartbeat = at;
  }
  if (changes.reload_devices) reloadDevices();
  if (changes.devices.length || changes.removed_devices.length || Object.keys(changes.heartbeats).length) {
    renderFleet();
    if (state.view === "dispatch") renderDeviceOptions();
  }
  applyTaskChanges(changes.tasks, changes.reload_tasks);
  if (state.view === "batches" && (changes.reload_tasks || changes.tasks.some((task) => task.batch_id))) reloadBatches();
  if (state.view === "schedules" && (changes.reload_tasks || changes.tasks.length)) reloadSchedules();
  if (state.view === "overview" && (changes.reload_tasks || changes.tasks.some((task) => TERMINAL.has(task.status)))) {
    reloadOverview();
  }
}

function connectLive() {
  if (typeof io !== "function") {
    setLive("offline", "实时连接不可用");
    banner("未能加载 Socket.IO 客户端（/dashboard/static/vendor/socket.io.min.js），页面不会自动更新。");
    return;
  }
  socket = io("/dashboard", {
    auth: (send) => send({ token: getToken() }),
    reconnectionDelay: 500,
    reconnectionDelayMax: 3000,
  });
  socket.on("connect", () => {
    setLive("live", "实时");
    banner("");
    if (dropped) notice(true, "实时连接已恢复", "页面已重新加载最新数据");
    dropped = false;
    catchUp();
  });
  socket.on("hello", (hello) => {
    const server = parseTime(hello.server_time);
    if (server !== null) state.skew = server - Date.now();
  });
  socket.on("changes", applyChanges);
  socket.on("disconnect", (reason) => {
    if (reason === "io client disconnect") return; // the page itself reconnects with a new token
    dropped = true;
    setLive("offline", "已断开");
    banner(`实时连接已断开（${reason}），正在重连…在重连之前页面上的数据可能已过期。`);
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 1000);
  });
  socket.on("connect_error", (error) => {
    if (error.data && error.data.error_code === "UNAUTHORIZED") {
      setLive("refused", "未授权");
      banner(`实时连接被拒绝：${error.message}`);
      askToken(error.message, "live");
    } else {
      dropped = true;
      setLive("offline", "已断开");
      banner(`实时连接失败（${error.message}），正在重试…在重连之前页面上的数据可能已过期。`);
    }
  });
}

function reconnectLive() {
  if (!socket) return;
  socket.disconnect();
  socket.connect();
}

// ---- the operator token ----

function askToken(reason, source) {
  const dialog = $("#login");
  const reasons = $("#login-reasons");
  if (reason && !$$("li", reasons).some((item) => item.textContent === reason)) {
    const item = document.createElement("li");
    item.dataset.source = source;
    item.textContent = reason;
    reasons.append(item);
  }
  $("#change-token").hidden = false;
  if (!dialog.open) {
    $("#login-token").value = "";
    dialog.showModal();
  }
}

function setupLogin() {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("#login-token").value.trim());
    $("#login-reasons").replaceChildren();
    $("#login").close();
    reconnectLive();
    catchUp();
  });
  $("#change-token").addEventListener("click", () => {
    setToken("");
    $("#login-reasons").replaceChildren();
    askToken("", "user");
  });
  onUnauthorized((message) => askToken(message, "api"));
}

// ---- start ----

function tickAges() {
  for (const cell of $$(".ago[data-time]")) cell.textContent = ago(cell.dataset.time);
}

setupFleet();
setupTasks();
setupDispatch();
setupBatches();
setupSchedules();
setupLogin();
window.addEventListener("hashchange", route);
route();
connectLive();
catchUp();
setInterval(tickAges, 1000);
setInterval(() => state.view === "overview" && loadOverview().catch(() => {}), OVERVIEW_REFRESH);
// a batch's status and counts move with its tasks, which the feed reports; the poll also catches what it cannot say
setInterval(() => state.view === "batches" && loadBatches().catch(() => {}), BATCH_REFRESH);
// a fire time moves a schedule's next run and adds a run, whether or not it made a task the feed would report
setInterval(() => state.view === "schedules" && loadSchedules().catch(() => {}), SCHEDULE_REFRESH);
// keep `api` reachable from the browser's console for operators who want to poke at the server
window.taskserver = { api, state, catchUp };
