// The spec's JavaScript device example ("设备连接（JavaScript示例）"), made runnable against any server.
//
//   node spec_example.js <server url> [device_id]
//
// Connects exactly as the spec does (`io(url)`, default transports), registers, sends one heartbeat, and works
// every `new_task` like a device: `task_progress` 50, then a successful `task_result`. Every event received and
// every ack is printed to stdout as one JSON line {"event": ..., "data": ...} for the Python test to read.
// The script stays connected until it is killed (or its stdin closes).

const { io } = require('socket.io-client');

const url = process.argv[2] || process.env.TASKSERVER_URL || 'ws://localhost:1888';
const deviceId = process.argv[3] || 'android_001';

function report(event, data) {
  process.stdout.write(JSON.stringify({ event, data: data === undefined ? null : data }) + '\n');
}

const socket = io(url);

// 注册设备 (as in the spec; socket.io-client buffers the emit until the connection is open)
socket.emit(
  'device_register',
  {
    device_id: deviceId,
    device_name: '我的手机',
    device_info: {
      type: 'android',
      version: '13',
    },
  },
  (ack) => report('device_register:ack', ack),
);

socket.on('connect', () => report('connect', { id: socket.id }));
socket.on('connect_error', (error) => report('connect_error', { message: error.message }));
socket.on('disconnect', (reason) => report('disconnect', { reason }));

socket.on('connected', (data) => report('connected', data));
socket.on('register_success', (data) => {
  report('register_success', data);
  socket.emit('heartbeat', { device_id: deviceId, timestamp: new Date().toISOString() }, (ack) =>
    report('heartbeat:ack', ack),
  );
});
socket.on('heartbeat_ack', (data) => report('heartbeat_ack', data));
socket.on('task_result_ack', (data) => report('task_result_ack', data));
socket.on('cancel_task', (data) => report('cancel_task', data));
socket.on('error', (data) => report('error', data));
socket.on('register_error', (data) => report('register_error', data));

// 监听新任务
socket.on('new_task', (data) => {
  report('new_task', data);
  // 执行任务...
  const productIds = (data.data && data.data.product_ids) || [];
  socket.emit('task_progress', { task_id: data.task_id, progress: 50, message: '正在处理第1个商品...' }, (ack) =>
    report('task_progress:ack', ack),
  );
  const result = {
    success: true,
    processed_count: productIds.length,
    failed_count: 0,
    execution_time: 1.5,
    message: '下架完成',
    data: { details: productIds.map((id) => `商品${id}已下架`) },
  };
  socket.emit('task_result', { task_id: data.task_id, result }, (ack) => report('task_result:ack', ack));
});

function stop() {
  socket.disconnect();
  process.exit(0);
}

process.stdin.on('end', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
