"""Socket.IO on "/": every device event goes through the shared event table; the return value is the ack."""

from flask import request
from flask_socketio import Namespace, emit

from taskserver.realtime.events import handle_device_event


class DeviceNamespace(Namespace):
    """The device protocol of the spec, on the default namespace."""

    def __init__(self, service, notifier):
        super().__init__("/")
        self.service = service
        self.notifier = notifier

    def trigger_event(self, event, sid, *args):
        """Route every event but connect/disconnect to the shared handler (unknown ones get an error)."""
        if event in ("connect", "disconnect"):
            return super().trigger_event(event, sid, *args)
        return handle_device_event(self.service, self.notifier, sid, event, args[0] if args else None)

    def on_connect(self, auth=None):
        emit("connected", {"message": "连接成功", "sid": request.sid})

    def on_disconnect(self, reason=None):
        self.service.disconnect(request.sid)
