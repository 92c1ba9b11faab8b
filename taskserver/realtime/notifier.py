"""Every message the server sends to a device goes out here, once the state change behind it is committed."""

from functools import partial

from taskserver.domain import ErrorCode
from taskserver.present import cancel_task_message, new_task_message

NAMESPACE = "/"
# Acks a connection may owe at once: the Android app never acks new_task, and every unanswered ack callback would
# otherwise stay in memory for as long as its connection lives (days, for a phone on a rack's Wi-Fi).
MAX_PENDING_ACKS = 100


def drop_oldest_acks(callbacks, keep=MAX_PENDING_ACKS):
    """Forget all but the newest ``keep`` ack callbacks of one connection (``callbacks`` maps ascending ids)."""
    ids = [key for key in callbacks if key != 0]  # python-socketio keeps its id counter under key 0
    for key in ids[: max(len(ids) - keep, 0)]:
        del callbacks[key]


class Notifier:
    """Emits to one device connection by its sid, over Socket.IO or the plain WebSocket it came on."""

    def __init__(self, socketio, plain_sockets, after_commit):
        self.socketio = socketio
        self.plain_sockets = plain_sockets
        self.after_commit = after_commit  # the store's: output waits until what it reports is committed
        self.dashboard = None  # the consoles' feed (realtime/dashboard.py), told of every stored change

    def _emit(self, sid, event, data, callback=None):
        self.after_commit(partial(self._send, sid, event, data, callback))

    def _send(self, sid, event, data, callback=None):
        if sid in self.plain_sockets:
            self.plain_sockets.send(sid, event, data, callback)
        else:
            self.socketio.emit(event, data, to=sid, namespace=NAMESPACE, callback=callback)

    def registered(self, sid, answer):
        """``register_success`` (and the consoles learn that the device is online)."""
        self._emit(sid, "register_success", answer)
        self.device_changed(answer["device_id"])

    def heartbeat_ack(self, sid, answer):
        """``heartbeat_ack``."""
        self._emit(sid, "heartbeat_ack", answer)

    def new_task(self, sid, task, on_ack):
        """``new_task`` in the spec's shape; ``on_ack`` runs if the device acknowledges it."""
        self.after_commit(partial(self._send_new_task, sid, new_task_message(task), on_ack))

    def _send_new_task(self, sid, message, on_ack):
        self._send(sid, "new_task", message, on_ack)
        self._bound_acks(sid)

    def _bound_acks(self, sid):
        if sid in self.plain_sockets:
            callbacks = self.plain_sockets.ack_callbacks(sid)
        else:  # python-socketio (pinned) keeps them per sid in its manager until the connection closes
            callbacks = self.socketio.server.manager.callbacks.get(sid)
        if callbacks is not None and len(callbacks) > MAX_PENDING_ACKS + 1:
            drop_oldest_acks(callbacks)

    def cancel_task(self, sid, task_id, attempt):
        """``cancel_task`` for one attempt of the task."""
        self._emit(sid, "cancel_task", cancel_task_message(task_id, attempt))

    def result_received(self, sid, task_id):
        """``task_result_ack``, for clients written against the first implementation."""
        self._emit(sid, "task_result_ack", {"task_id": task_id, "status": "received"})

    def error(self, sid, error, legacy_event=None):
        """``error`` with the spec's ``{message, error_code}`` (and the same under ``legacy_event``, if named)."""
        body = {"message": error.message, "error_code": error.error_code}
        for event in ("error", legacy_event) if legacy_event else ("error",):
            self._emit(sid, event, body)

    def replaced(self, sid, device_id):
        """Tell an older connection of the device that a newer one took over, then close it."""
        self.close_with_error(sid, f"设备 {device_id} 已在另一个连接上注册，此连接将被关闭", ErrorCode.DEVICE_REPLACED)

    def close_with_error(self, sid, message, error_code):
        """Send the connection an ``error`` saying why, then close it."""
        self._emit(sid, "error", {"message": message, "error_code": error_code})
        self.disconnect(sid)

    def task_changed(self, task, devices=()):
        """A task's stored state changed; ``devices`` are those whose load may have changed with it. Consoles hear of
        it once it is committed."""
        if self.dashboard is not None and self.dashboard.watched:
            self.after_commit(partial(self.dashboard.task_changed, task, devices))

    def device_changed(self, device_id, heartbeat=None):
        """A device's stored state changed (connection, disabled, forgotten), or only its ``heartbeat`` time; consoles
        hear of it once it is committed."""
        if self.dashboard is not None and self.dashboard.watched:
            self.after_commit(partial(self.dashboard.device_changed, device_id, heartbeat))

    def disconnect(self, sid):
        """Close the connection (after what was sent to it before)."""
        self.after_commit(partial(self._close, sid))

    def _close(self, sid):
        if sid in self.plain_sockets:
            self.plain_sockets.close(sid)
        else:
            self.socketio.server.disconnect(sid, namespace=NAMESPACE)
