"""The device events both transports accept: one table, and one object that validates, limits, calls the service
and acks."""

import logging
from operator import attrgetter

from taskserver import schemas, wirejson
from taskserver.domain import ErrorCode
from taskserver.errors import StoreUnavailable, TaskServerError

log = logging.getLogger("taskserver.realtime")

# event name -> (payload schema, the service method that handles it, legacy error event also emitted on failure)
DEVICE_EVENTS = {
    "device_register": (schemas.DeviceRegisterSchema(), attrgetter("devices.register"), "register_error"),
    "heartbeat": (schemas.HeartbeatSchema(), attrgetter("devices.heartbeat"), None),
    "task_progress": (schemas.TaskProgressSchema(), attrgetter("tasks.report_progress"), None),
    "task_result": (schemas.TaskResultSchema(), attrgetter("tasks.report_result"), None),
}
# Reports about a task: those about the device's own active tasks are bounded by what the server sent it, so the
# rate limit never drops them (it still counts every other event, and every report that is refused).
REPORTS = frozenset({"task_progress", "task_result"})


CONNECT_SCHEMA = schemas.ConnectSchema()


class DeviceEvents:
    """Handles one device event from either transport and returns its ack."""

    def __init__(self, service, notifier, limiter):
        self.service = service
        self.notifier = notifier
        self.limiter = limiter

    def handle(self, sid, event, payload):
        """Run one event; a refused one also gets an ``error`` event on its connection."""
        if not (isinstance(event, str) and wirejson.problem(event) is None):  # a hand-made packet may name anything
            event = None
        spared = False
        try:
            spared = event in REPORTS and self._about_own_task(sid, payload)
            return self._run(sid, event, payload, spared)
        except TaskServerError as error:
            refused = error
        except Exception:
            log.exception("device event %s failed", event)
            refused = TaskServerError("服务器内部错误", ErrorCode.INTERNAL_ERROR)
        if spared:
            self.limiter.allow(sid)  # a refused report was not one the server bounded: it costs a token after all
        self.notifier.error(sid, refused, DEVICE_EVENTS.get(event, (None, None, None))[2])
        return refused.to_dict()

    def _run(self, sid, event, payload, spared):
        """Limit (unless ``spared``), validate, call the service, and return the ack once what it reports is stored."""
        if not spared and not self.limiter.allow(sid):
            raise TaskServerError("事件过于频繁，已丢弃", ErrorCode.RATE_LIMITED)
        if event not in DEVICE_EVENTS:
            message = f"未知事件: {event}" if event is not None else "未知事件：事件名必须是有效的文本"
            raise TaskServerError(message, ErrorCode.UNKNOWN_EVENT)
        schema, handler, _ = DEVICE_EVENTS[event]
        answer = handler(self.service)(sid, schemas.load_payload(schema, payload))
        self.service.store.durable()  # an ack promises that what it reports is stored
        return answer

    def _about_own_task(self, sid, payload):
        """Is this report about a task the server gave this connection's device? (Read from the raw payload, before
        validation, so that asking costs next to nothing.)"""
        if not isinstance(payload, dict) or not isinstance(payload.get("task_id"), str):
            return False
        if wirejson.problem(payload["task_id"]) is not None:  # not text a store can look up: validation names it
            return False
        return self.service.queries.holds_task(sid, payload["task_id"], payload.get("attempt"))

    def opened(self, sid, token):
        """A connection opens: its token (if any) is checked before any event is handled; raises if refused."""
        credentials = schemas.load_payload(CONNECT_SCHEMA, {"token": token or None})
        self.service.devices.connect(sid, credentials["token"])

    def closed(self, sid):
        """The connection closed: its device goes offline and its rate bucket is dropped."""
        self.limiter.forget(sid)
        try:
            self.service.devices.disconnect(sid)
        except StoreUnavailable as error:  # memory let go of it; the watchdog sets it offline once the store is back
            log.warning("disconnect of %s not stored: %s", sid, error.message)
