"""The device SDK's agent: one connection to taskserver, its handlers, and the outbox of results."""

import contextlib
import functools
import logging
import random
import threading
import time
from collections import Counter, OrderedDict

import socketio
from socketio.exceptions import SocketIOError

from taskserver.device.work import (
    FINAL_REFUSALS,
    MAX_REFUSALS,
    Outgoing,
    Task,
    failure,
    result_of,
    trimmed,
    with_attempt,
)

log = logging.getLogger("taskserver.device")

TRANSPORT_ERROR = socketio.Client.reason.TRANSPORT_ERROR
SERVER_DISCONNECT = socketio.Client.reason.SERVER_DISCONNECT
REMEMBERED_TASKS = 1000  # finished (task_id, attempt) pairs kept to ignore a resent new_task


class DeviceAgent:
    """One device's connection to taskserver; ``handlers`` maps a task type to ``fn(task, progress) -> result``."""

    def __init__(
        self,
        url,
        device_id,
        device_name=None,
        token=None,
        handlers=None,
        device_info=None,
        max_concurrent_tasks=None,
        heartbeat_interval=30.0,
        reconnection_delay=1.0,
        reconnection_delay_max=30.0,
        randomization_factor=0.5,
        ack_timeout=10.0,
        transports=("websocket",),
    ):
        self.url = url  # a URL, or a function returning one (asked again on every connection attempt)
        self.device_id = device_id
        self.device_name = device_name or device_id
        self.token = token
        self.handlers = dict(handlers or {})
        self.device_info = {"type": "python", **(device_info or {})}
        if max_concurrent_tasks is not None:
            self.device_info["max_concurrent_tasks"] = max_concurrent_tasks
        self.heartbeat_interval = heartbeat_interval
        self.reconnection_delay = reconnection_delay
        self.reconnection_delay_max = reconnection_delay_max
        self.randomization_factor = randomization_factor
        self.ack_timeout = ack_timeout
        self.transports = list(transports) if transports else None
        # completed / failed: results the server took; refused / dropped: ones it did not; interrupted: by stop()
        self.stats = Counter()
        self.active_tasks = []  # what the server said this device has, at the last registration
        self.replaced = False  # another connection registered with this device id: this agent stopped
        self.last_error = None  # why the last connection or registration failed: {message, error_code}

        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread = None
        self._connected = False
        self._registered = False
        self._library_reconnecting = False
        self._next_connect_delay = 0.0
        self._register_failures = 0
        self._running = {}  # (task_id, attempt) -> Task
        self._outbox = OrderedDict()  # (task_id, attempt) -> Outgoing
        self._finished = OrderedDict()  # (task_id, attempt) -> None, bounded

        self.sio = socketio.Client(
            reconnection=True,
            reconnection_attempts=0,
            reconnection_delay=reconnection_delay,
            reconnection_delay_max=reconnection_delay_max,
            randomization_factor=randomization_factor,
            handle_sigint=False,
        )
        for event in ("connect", "connect_error", "disconnect", "new_task", "cancel_task", "error"):
            self.sio.on(event, getattr(self, f"_on_{event}"))

    # ---- public ----

    @property
    def connected(self):
        """True while a connection to the server is open."""
        return self._connected

    @property
    def registered(self):
        """True once the current connection is registered as this device."""
        return self._registered

    @property
    def running(self):
        """Ids of the tasks whose handlers are running."""
        with self._lock:
            return [task.task_id for task in self._running.values()]

    @property
    def outbox(self):
        """The ``task_result`` payloads waiting for the server's acknowledgement, oldest first."""
        with self._lock:
            return [item.payload for item in self._outbox.values()]

    def start(self):
        """Connect and serve in the background; returns at once."""
        if self._stopping.is_set():
            raise RuntimeError("a stopped DeviceAgent cannot be started again")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"device-{self.device_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Disconnect and stop reconnecting; running handlers see ``task.cancelled``; unsent results are lost."""
        self._stopping.set()
        self._wake.set()
        self.sio.shutdown()  # aborts a reconnection the client library may be waiting on
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.sio.shutdown()
        if self.sio.connected:  # a reconnection the library finished while the agent stopped
            self.sio.disconnect()
        with self._lock:  # closed, whether or not the library told ``_on_disconnect`` (a connection it was finishing)
            self._connected = self._registered = False
        self._stopped.set()

    def run_forever(self):
        """Start and block until stopped (Ctrl-C stops cleanly)."""
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def reconnect(self, delay=None):
        """Drop the connection now and connect again after ``delay`` seconds (default: the first backoff delay).

        Returns False if there was no connection to drop (a reconnection is then already under way)."""
        if not self._connected:
            return False
        self._next_connect_delay = self.reconnection_delay if delay is None else delay
        self.sio.disconnect()
        return True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # ---- the agent's own thread: connect, register, heartbeat, deliver results ----

    def _serve(self):
        try:
            while not self._stopping.is_set():
                try:
                    self._loop()
                except Exception:  # a bug must not end a device that should run forever
                    log.exception("device %s: agent loop failed; restarting it", self.device_id)
                    self._stopping.wait(self.reconnection_delay)
        finally:
            self._stopping.set()
            with self._lock:
                tasks = list(self._running.values())
            for task in tasks:
                task.cancelled.set()
            if self.sio.connected:
                self.sio.disconnect()
            self._stopped.set()

    def _loop(self):
        next_heartbeat = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            if not self._connected:
                if self._library_reconnecting:  # python-socketio reconnects after transport errors by itself
                    self._wake.wait(1.0)
                else:
                    self._connect()
                continue
            if not self._registered:
                self._register()
                next_heartbeat = 0.0
                continue
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + self.heartbeat_interval
            self._flush()
            self._wake.wait(max(0.0, next_heartbeat - time.monotonic()))

    def _connect(self):
        """Connect, retrying forever with exponential backoff and jitter (the first try after the pending delay).

        python-socketio only retries connections it had and lost to a transport error; a first connection, one
        the server closed and one this agent dropped on purpose are (re)made here."""
        delay, self._next_connect_delay = self._next_connect_delay, 0.0
        backoff = self.reconnection_delay
        while True:
            if delay and self._stopping.wait(self._jittered(delay)):
                return
            if self._stopping.is_set() or self._connected:
                return
            try:
                auth = {"token": self.token} if self.token else None
                self.sio.connect(self.url, auth=auth, transports=self.transports, wait_timeout=self.ack_timeout)
                return
            except (SocketIOError, ValueError) as exc:  # ValueError: the last connection is still closing
                log.debug("device %s: connection attempt failed (%s)", self.device_id, exc)
            delay, backoff = backoff, min(backoff * 2, self.reconnection_delay_max)

    def _jittered(self, delay):
        return max(0.0, delay * (1 + self.randomization_factor * (2 * random.random() - 1)))

    def _register(self):
        """Register this connection; on refusal or silence wait a backoff delay (the loop tries again)."""
        payload = {"device_id": self.device_id, "device_name": self.device_name, "device_info": self.device_info}
        if self.token:
            payload["token"] = self.token
        ack = self._call("device_register", payload)
        if not ack.get("success"):
            log.warning("device %s: registration refused: %s", self.device_id, ack)
            self.last_error = {"message": ack.get("message"), "error_code": ack.get("error_code")}
            delay = min(self.reconnection_delay * 2**self._register_failures, self.reconnection_delay_max)
            self._register_failures += 1
            self._stopping.wait(self._jittered(delay))
            return
        self._register_failures = 0
        with self._lock:
            if not self._connected:
                return
            self._registered = True
            self.active_tasks = list(ack.get("active_tasks") or [])
            tasks = [task for task in self._running.values() if task.last_progress is not None]
        log.info("device %s: registered (active tasks: %s)", self.device_id, self.active_tasks)
        for task in tasks:  # the server may have missed progress while this device was away
            self._progress(task, *task.last_progress)

    def _call(self, event, payload):
        """Emit and wait for the ack; ``{"no_answer": True}`` if the connection drops, the agent stops or time runs out.

        (``socketio.Client.call`` keeps waiting for its whole timeout after the connection is gone.)"""
        answered, answer = threading.Event(), []

        def on_ack(*args):
            answer.append(args[0] if args else None)
            answered.set()

        try:
            self.sio.emit(event, payload, callback=on_ack)
        except SocketIOError:
            return {"no_answer": True}
        deadline = time.monotonic() + self.ack_timeout
        while not answered.wait(0.05):
            if not self._connected or self._stopping.is_set() or time.monotonic() >= deadline:
                return {"no_answer": True}
        return answer[0] if isinstance(answer[0], dict) else {}

    def _heartbeat(self):
        payload = {"device_id": self.device_id, "timestamp": int(time.time() * 1000)}
        with contextlib.suppress(SocketIOError):  # the connection just dropped; the next one heartbeats
            self.sio.emit("heartbeat", payload, callback=self._on_heartbeat_ack)

    def _on_heartbeat_ack(self, ack=None):
        if isinstance(ack, dict) and ack.get("error_code") == "NOT_REGISTERED":
            self._registered = False
            self._wake.set()

    def _flush(self):
        """Send the outbox in order; stop at the first send that gets no answer (it is kept for later)."""
        with self._lock:
            items = list(self._outbox.values())
        for item in items:
            if not self._registered or self._stopping.is_set():
                return
            ack = self._call("task_result", item.payload)
            if ack.get("no_answer"):
                return
            self._settle(item, ack)

    def _settle(self, item, ack):
        """Drop a result the server took, has already or will never take; keep one refused for a passing reason."""
        code = ack.get("error_code")
        if ack.get("success"):
            self._forget(item, "completed" if item.result.get("success") else "failed")
        elif code == "VALIDATION_ERROR" and not item.trimmed:
            log.warning("device %s: result for %s invalid, sent trimmed: %s", self.device_id, item.task_id, ack)
            item.result, item.trimmed = trimmed(item.result, ack), True
            self._wake.set()
        elif code in FINAL_REFUSALS or code == "VALIDATION_ERROR":
            log.info("device %s: result for %s refused for good: %s", self.device_id, item.task_id, code)
            self._forget(item, "refused")
        elif code == "NOT_REGISTERED":
            self._registered = False
        else:
            item.refusals += 1
            if item.refusals >= MAX_REFUSALS:
                log.warning("device %s: result for %s dropped after %s", self.device_id, item.task_id, ack)
                self._forget(item, "dropped")

    def _forget(self, item, outcome):
        with self._lock:
            if self._outbox.pop((item.task_id, item.attempt), None) is not None:
                self.stats[outcome] += 1

    # ---- events from the server (each runs in its own thread) ----

    def _on_connect(self):
        with self._lock:
            if self._stopping.is_set():  # a connection finished as the agent stops: ``stop`` closes it
                return
            self._connected, self._registered, self._library_reconnecting = True, False, False
        self._wake.set()

    def _on_connect_error(self, data=None):
        """A connection attempt failed: the server refused it (a wrong token, say) or was unreachable."""
        refused = isinstance(data, dict)
        details = data.get("data") if refused and isinstance(data.get("data"), dict) else {}
        message = data.get("message") if refused else str(data)
        self.last_error = {"message": message, "error_code": details.get("error_code")}
        (log.warning if refused else log.info)("device %s: connection failed: %s", self.device_id, self.last_error)

    def _on_disconnect(self, reason=None):
        with self._lock:
            self._connected = self._registered = False
            self._library_reconnecting = reason == TRANSPORT_ERROR
            if reason == SERVER_DISCONNECT:  # do not hammer a server that closed the connection
                self._next_connect_delay = max(self._next_connect_delay, self.reconnection_delay)
        log.info("device %s: disconnected (%s)", self.device_id, reason)
        self._wake.set()

    def _on_error(self, data=None):
        data = data if isinstance(data, dict) else {}
        if data.get("error_code") == "DEVICE_REPLACED":
            log.error("device %s: another connection registered as this device; stopping", self.device_id)
            self.replaced = True
            self._stopping.set()
            self._wake.set()
        else:
            log.debug("device %s: server error %s", self.device_id, data)

    def _on_new_task(self, message):
        """Start the handler in its own thread, unless this attempt is running or already done."""
        if not isinstance(message, dict) or not message.get("task_id"):
            return
        task = Task.from_message(message)
        with self._lock:
            if task.key in self._running or task.key in self._outbox or task.key in self._finished:
                log.info("device %s: %s attempt %s already taken", self.device_id, task.task_id, task.attempt)
                return
            for other in self._running.values():
                if other.task_id == task.task_id:  # a newer attempt of the same task: the old one is stale
                    other.cancelled.set()
            handler = self.handlers.get(task.task_type)
            if handler is None:
                message = f"不支持的任务类型: {task.task_type}"
                self._queue_result(task, failure("UNSUPPORTED_TASK_TYPE", message))
                return
            self._running[task.key] = task
        threading.Thread(target=self._execute, args=(task, handler), name=f"task-{task.task_id}", daemon=True).start()

    def _on_cancel_task(self, message):
        """Stop the attempt the cancel names (every attempt of the task if it names none); ignore one not running."""
        message = message if isinstance(message, dict) else {}
        task_id, attempt = message.get("task_id"), message.get("attempt")
        with self._lock:
            tasks = [
                task for task in self._running.values() if task.task_id == task_id and attempt in (None, task.attempt)
            ]
        for task in tasks:
            task.cancelled.set()

    # ---- running handlers ----

    def _execute(self, task, handler):
        started = time.monotonic()
        try:
            result = result_of(handler(task, functools.partial(self._progress, task)))
        except Exception as exc:
            log.exception("device %s: handler for %s failed", self.device_id, task.task_type)
            result = failure("HANDLER_ERROR", f"任务处理出错: {type(exc).__name__}: {exc}")
        if task.cancelled.is_set():
            result = failure("TASK_CANCELLED", "任务已取消")
        result.setdefault("execution_time", round(time.monotonic() - started, 3))
        with self._lock:
            self._running.pop(task.key, None)
            if self._stopping.is_set():  # the agent stopped under it: nobody would deliver the result
                self.stats["interrupted"] += 1
                return
            self._queue_result(task, result)

    def _queue_result(self, task, result):
        self._outbox[task.key] = Outgoing(task.task_id, task.attempt, result)
        self._finished[task.key] = None
        while len(self._finished) > REMEMBERED_TASKS:
            self._finished.popitem(last=False)
        self._wake.set()

    def _progress(self, task, percent, message=None):
        """Report progress (0-100) of a running task; best effort: False if it could not be sent now."""
        percent = max(0, min(100, int(percent)))
        task.last_progress = (percent, message)
        if task.cancelled.is_set() or not self._registered:
            return False
        payload = with_attempt({"task_id": task.task_id, "progress": percent, "message": message}, task.attempt)
        try:
            self.sio.emit("task_progress", payload)
        except SocketIOError:
            return False
        return True
