"""The device events both transports accept: one table, one function that validates, calls the service and acks."""

import logging

from taskserver import schemas
from taskserver.errors import TaskServerError

log = logging.getLogger("taskserver.realtime")

# event name -> (payload schema, service method, legacy error event also emitted on failure)
DEVICE_EVENTS = {
    "device_register": (schemas.DeviceRegisterSchema(), "register", "register_error"),
    "heartbeat": (schemas.HeartbeatSchema(), "heartbeat", None),
    "task_progress": (schemas.TaskProgressSchema(), "report_progress", None),
    "task_result": (schemas.TaskResultSchema(), "report_result", None),
}


def handle_device_event(service, notifier, sid, event, payload):
    """Run one device event; return the ack. A refused event also gets an ``error`` event on its connection."""
    schema, method, legacy_error_event = DEVICE_EVENTS.get(event, (None, None, None))
    try:
        if schema is None:
            raise TaskServerError(f"未知事件: {event}", "UNKNOWN_EVENT")
        return getattr(service, method)(sid, schemas.load_payload(schema, payload))
    except TaskServerError as error:
        refused = error
    except Exception:
        log.exception("device event %s failed", event)
        refused = TaskServerError("服务器内部错误", "INTERNAL_ERROR")
    notifier.error(sid, refused, legacy_error_event)
    return refused.to_dict()
