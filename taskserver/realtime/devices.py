"""Socket.IO handlers on "/": load the payload, call the service, return the ack."""

import functools
import logging

from flask import request
from flask_socketio import Namespace, emit

from taskserver import schemas
from taskserver.errors import TaskServerError

log = logging.getLogger("taskserver.realtime")


def device_event(schema, compat_error_event=None):
    """Validate the payload with ``schema``; on any error emit ``error`` (and the legacy event) and ack the error."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, *args):
            try:
                return handler(self, schemas.load_payload(schema, args[0] if args else None))
            except TaskServerError as error:
                return self.refuse(request.sid, error, compat_error_event)
            except Exception:
                log.exception("socket event %s failed", handler.__name__)
                return self.refuse(request.sid, TaskServerError("服务器内部错误", "INTERNAL_ERROR"), compat_error_event)

        return wrapper

    return decorate


class DeviceNamespace(Namespace):
    """The device protocol of the spec, on the default namespace."""

    def __init__(self, service, notifier):
        super().__init__("/")
        self.service = service
        self.notifier = notifier

    def trigger_event(self, event, sid, *args):
        """Answer events the protocol does not know with an ``error`` instead of silence."""
        if event not in ("connect", "disconnect") and not hasattr(self, f"on_{event}"):
            return self.refuse(sid, TaskServerError(f"未知事件: {event}", "UNKNOWN_EVENT"))
        return super().trigger_event(event, sid, *args)

    def refuse(self, sid, error, compat_error_event=None):
        """Tell the client what was wrong, as an ``error`` event (and a legacy one) and as the ack."""
        self.notifier.error(sid, error, compat_error_event)
        return error.to_dict()

    def on_connect(self, auth=None):
        emit("connected", {"message": "连接成功", "sid": request.sid})

    def on_disconnect(self, reason=None):
        self.service.disconnect(request.sid)

    @device_event(schemas.DeviceRegisterSchema(), compat_error_event="register_error")
    def on_device_register(self, data):
        return self.service.register(request.sid, data)

    @device_event(schemas.HeartbeatSchema())
    def on_heartbeat(self, data):
        return self.service.heartbeat(request.sid, data)

    @device_event(schemas.TaskProgressSchema())
    def on_task_progress(self, data):
        return self.service.report_progress(request.sid, data)

    @device_event(schemas.TaskResultSchema())
    def on_task_result(self, data):
        return self.service.report_result(request.sid, data)
