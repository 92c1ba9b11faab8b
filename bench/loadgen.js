// Load generator for bench/run.py: many Socket.IO devices (websocket transport) in one Node process.
// Usage: node loadgen.js '<json options>'; prints one JSON object with its measurements on stdout.
//   mode "tasks": N devices answer each new_task with one task_progress and one task_result, while M tasks are
//                 dispatched over HTTP (keep-alive) with bounded concurrency, or at a fixed rate if `rate` is set.
//   mode "scale": N devices connect, register and heartbeat every `heartbeatSeconds` for `seconds`.
//   mode "pin":   N devices register and hang up; once the server lists them offline, M tasks pinned to them
//                 (round robin) are dispatched over HTTP: they wait as pending, as for phones that went away.
// Several nodes: `deviceUrls` and `dispatchUrls` (lists; default [url]) spread device i over deviceUrls[i % n] and
// dispatch number s over dispatchUrls[s % n].
'use strict';
const http = require('http');
const { io } = require('socket.io-client');

const opts = JSON.parse(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency || 50 });
const deviceUrls = opts.deviceUrls || [opts.url];
const dispatchUrls = opts.dispatchUrls || [opts.url];
const now = () => Number(process.hrtime.bigint()) / 1e6; // milliseconds

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return +sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))].toFixed(2);
}

function summary(values) {
  return { count: values.length, p50: percentile(values, 50), p99: percentile(values, 99), max: percentile(values, 100) };
}

function post(path, body, base = dispatchUrls[0]) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const url = new URL(path, base);
    const req = http.request(url, {
      method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

function connectDevice(index, onTask) {
  return new Promise((resolve, reject) => {
    const socket = io(deviceUrls[index % deviceUrls.length], { transports: ['websocket'], reconnection: false, timeout: 60000 });
    const deviceId = `${opts.prefix || 'bench'}_${index}`;
    socket.on('connect_error', reject);
    socket.on('connect', () => {
      socket.emit('device_register', { device_id: deviceId, device_name: deviceId, device_info: { type: 'bench' } },
        (ack) => (ack && ack.success ? resolve(socket) : reject(new Error(JSON.stringify(ack)))));
    });
    if (onTask) socket.on('new_task', (task) => onTask(socket, task));
  });
}

async function connectAll(count, onTask) {
  const sockets = [];
  const batch = opts.connectBatch || 200;
  for (let start = 0; start < count; start += batch) {
    const group = [];
    for (let i = start; i < Math.min(count, start + batch); i++) group.push(connectDevice(i, onTask));
    sockets.push(...(await Promise.all(group)));
  }
  return sockets;
}

async function tasksMode() {
  const sent = new Map(); const received = new Map(); const completed = new Map();
  let finish;
  const allDone = new Promise((resolve) => { finish = resolve; });
  const onTask = (socket, task) => {
    const seq = task.data.seq;
    received.set(seq, now());
    socket.emit('task_progress', { task_id: task.task_id, progress: 50, message: 'half' });
    socket.emit('task_result', { task_id: task.task_id, result: { success: true, processed_count: 1 } }, () => {
      completed.set(seq, now());
      if (completed.size === opts.tasks) finish();
    });
  };
  const connectStart = now();
  const sockets = await connectAll(opts.devices, onTask);
  const connectMs = now() - connectStart;

  const cpuStart = process.cpuUsage();
  const start = now();
  let next = 0; let errors = 0;
  const dispatchOne = async (seq) => {
    sent.set(seq, now());
    const base = dispatchUrls[seq % dispatchUrls.length];
    const res = await post('/api/dispatch-task', { task_type: 'DELIST', data: { product_ids: [String(seq)], seq } }, base);
    if (res.status !== 200 && res.status !== 202) errors++;
  };
  if (opts.rate) {
    const interval = 1000 / opts.rate;
    const inflight = [];
    for (let seq = 0; seq < opts.tasks; seq++) {
      const due = start + seq * interval;
      const wait = due - now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      inflight.push(dispatchOne(seq));
    }
    await Promise.all(inflight);
  } else {
    const worker = async () => { while (next < opts.tasks) await dispatchOne(next++); };
    await Promise.all(Array.from({ length: opts.concurrency || 50 }, worker));
  }
  const timeout = new Promise((resolve) => setTimeout(resolve, (opts.timeoutSeconds || 120) * 1000));
  await Promise.race([allDone, timeout]);
  const elapsed = (Math.max(...completed.values(), now()) - start) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  const toNewTask = []; const toCompleted = [];
  for (const [seq, t] of sent) {
    if (received.has(seq)) toNewTask.push(received.get(seq) - t);
    if (completed.has(seq)) toCompleted.push(completed.get(seq) - t);
  }
  sockets.forEach((s) => s.close());
  return {
    devices: opts.devices, tasks: opts.tasks, completed: completed.size, http_errors: errors,
    connect_seconds: +(connectMs / 1000).toFixed(2),
    seconds: +elapsed.toFixed(2),
    completed_per_second: +(completed.size / elapsed).toFixed(1),
    dispatch_to_new_task_ms: summary(toNewTask),
    dispatch_to_completed_ms: summary(toCompleted),
    loadgen_cpu_seconds: +((cpu.user + cpu.system) / 1e6).toFixed(2),
  };
}

async function scaleMode() {
  const connectStart = now();
  const sockets = await connectAll(opts.devices, null);
  const connectSeconds = (now() - connectStart) / 1000;
  const rtts = []; let failures = 0; const failureReasons = {};
  const period = opts.heartbeatSeconds * 1000;
  const timers = sockets.map((socket, i) => {
    const beat = () => {
      const t = now();
      socket.timeout(10000).emit('heartbeat', { device_id: `${opts.prefix || 'bench'}_${i}`, timestamp: Date.now() },
        (err, ack) => {
          if (err || !ack.success) {
            failures++;
            const why = err ? 'timeout' : ack.error_code || 'unknown';
            failureReasons[why] = (failureReasons[why] || 0) + 1;
          } else rtts.push(now() - t);
        });
    };
    // spread the fleet's heartbeats evenly over the period, as real phones' clocks are
    return setTimeout(() => { beat(); timers[i] = setInterval(beat, period); }, (i / sockets.length) * period);
  });
  await new Promise((r) => setTimeout(r, opts.seconds * 1000));
  timers.forEach((t) => { clearTimeout(t); clearInterval(t); });
  const disconnected = sockets.filter((s) => !s.connected).length;
  const offline = await wronglyOffline();
  // read before closing: closing fails the heartbeats still in flight (their acks never come), which is the
  // measure's doing, not the server's
  const result = {
    devices: opts.devices, connect_seconds: +connectSeconds.toFixed(2), heartbeats: rtts.length,
    heartbeat_failures: failures, heartbeat_failure_reasons: { ...failureReasons }, heartbeat_rtt_ms: summary(rtts),
    client_side_disconnected: disconnected, marked_offline_while_connected: offline,
  };
  sockets.forEach((s) => s.close());
  return result;
}

function offlineCount() {
  // how many of this run's devices (by prefix) the server lists as offline
  return new Promise((resolve, reject) => {
    http.get(new URL('/api/devices', dispatchUrls[0]), { agent }, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => {
        const prefix = `${opts.prefix || 'bench'}_`;
        resolve(JSON.parse(text).devices.filter((d) => d.device_id.startsWith(prefix) && d.status === 'offline').length);
      });
    }).on('error', reject);
  });
}

// every bench device is still connected here, so any that the server lists as offline is wrong
const wronglyOffline = offlineCount;

async function pinMode() {
  const start = now();
  const sockets = await connectAll(opts.devices, null);
  sockets.forEach((s) => s.close());
  while (await offlineCount() < opts.devices) await new Promise((r) => setTimeout(r, 50));
  let next = 0; let pending = 0; let other = 0;
  const worker = async () => {
    while (next < opts.tasks) {
      const seq = next++;
      const res = await post('/api/dispatch-task', {
        task_type: 'DELIST', data: { product_ids: [String(seq)], seq }, device_id: `${opts.prefix}_${seq % opts.devices}`,
      });
      if (res.status === 202) pending++; else other++;
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency || 50 }, worker));
  return { devices: opts.devices, tasks: opts.tasks, pending, not_pending: other, seconds: +((now() - start) / 1000).toFixed(2) };
}

const MODES = { tasks: tasksMode, scale: scaleMode, pin: pinMode };
MODES[opts.mode]()
  .then((result) => { process.stdout.write(JSON.stringify(result) + '\n'); process.exit(0); })
  .catch((error) => { process.stderr.write(String(error && error.stack || error) + '\n'); process.exit(1); });
