"""Socket.IO on "/": every device event goes through ``DeviceEvents``; the return value is the ack."""

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, emit

from taskserver.errors import TaskServerError


class DeviceNamespace(Namespace):
    """The device protocol of the spec, on the default namespace."""

    def __init__(self, events):
        super().__init__("/")
        self.events = events

    def trigger_event(self, event, sid, *args):
        """Route every event but connect/disconnect to the shared handler (unknown ones get an error)."""
        if event in ("connect", "disconnect"):
            return super().trigger_event(event, sid, *args)
        return self.events.handle(sid, event, args[0] if args else None)

    def on_connect(self, auth=None):
        """Refuse a connection whose token (``auth.token`` or ``?token=``) is not a device token."""
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            self.events.opened(request.sid, token or request.args.get("token"))
        except TaskServerError as error:
            raise ConnectionRefusedError(error.message, {"error_code": error.error_code}) from error
        emit("connected", {"message": "连接成功", "sid": request.sid})

    def on_disconnect(self, reason=None):
        self.events.closed(request.sid)
