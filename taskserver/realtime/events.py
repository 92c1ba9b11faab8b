"""The device events both transports accept: one table, and one object that validates, limits, calls the service
and acks."""

import logging

from taskserver import schemas, wirejson
from taskserver.errors import TaskServerError

log = logging.getLogger("taskserver.realtime")

# event name -> (payload schema, service method, legacy error event also emitted on failure)
DEVICE_EVENTS = {
    "device_register": (schemas.DeviceRegisterSchema(), "register", "register_error"),
    "heartbeat": (schemas.HeartbeatSchema(), "heartbeat", None),
    "task_progress": (schemas.TaskProgressSchema(), "report_progress", None),
    "task_result": (schemas.TaskResultSchema(), "report_result", None),
}


CONNECT_SCHEMA = schemas.ConnectSchema()


class DeviceEvents:
    """Handles one device event from either transport and returns its ack."""

    def __init__(self, service, notifier, limiter):
        self.service = service
        self.notifier = notifier
        self.limiter = limiter

    def handle(self, sid, event, payload):
        """Run one event; a refused one also gets an ``error`` event on its connection."""
        named = isinstance(event, str) and wirejson.problem(event) is None  # hand-made packets may name it otherwise
        schema, method, legacy_error_event = DEVICE_EVENTS.get(event, (None, None, None)) if named else (None,) * 3
        try:
            if not self.limiter.allow(sid):
                raise TaskServerError("事件过于频繁，已丢弃", "RATE_LIMITED")
            if schema is None:
                raise TaskServerError(
                    f"未知事件: {event}" if named else "未知事件：事件名必须是有效的文本", "UNKNOWN_EVENT"
                )
            answer = getattr(self.service, method)(sid, schemas.load_payload(schema, payload))
            self.service.store.durable()  # an ack promises that what it reports is stored
            return answer
        except TaskServerError as error:
            refused = error
        except Exception:
            log.exception("device event %s failed", event)
            refused = TaskServerError("服务器内部错误", "INTERNAL_ERROR")
        self.notifier.error(sid, refused, legacy_error_event)
        return refused.to_dict()

    def opened(self, sid, token):
        """A connection opens: its token (if any) is checked before any event is handled; raises if refused."""
        credentials = schemas.load_payload(CONNECT_SCHEMA, {"token": token or None})
        self.service.connect(sid, credentials["token"])

    def closed(self, sid):
        """The connection closed: its device goes offline and its rate bucket is dropped."""
        self.limiter.forget(sid)
        self.service.disconnect(sid)
