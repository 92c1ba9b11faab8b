"""Which live connection speaks for which device (process memory: connections die with the process)."""

from dataclasses import dataclass


@dataclass
class Connection:
    """A registered device's live connection."""

    sid: str
    last_seen: float
    device_name: str | None = None
    heartbeats: bool = False  # only devices that send heartbeats are held to the heartbeat timeout


class Connections:
    """Device ids and their connections both ways, when each was last heard from, and the tokens they opened with."""

    def __init__(self):
        self._by_device = {}  # device_id -> Connection
        self._device_of_sid = {}  # sid -> device_id
        self._tokens = {}  # sid -> the token the connection presented when it opened

    def __len__(self):
        return len(self._by_device)

    def opened(self, sid, token):
        """Remember the token a new connection presented (for its ``device_register``)."""
        if token:
            self._tokens[sid] = token

    def token(self, sid):
        """The token the connection opened with, or None."""
        return self._tokens.get(sid)

    def bind(self, sid, device_id, now, device_name=None):
        """Make ``sid`` the device's connection (registered as ``device_name``); return the sid it replaces, if
        another one."""
        replaced = self._by_device.get(device_id)
        self._by_device[device_id] = Connection(sid, now, device_name)
        self._device_of_sid[sid] = device_id
        if replaced is None or replaced.sid == sid:
            return None
        self._device_of_sid.pop(replaced.sid, None)
        return replaced.sid

    def closed(self, sid):
        """The connection is gone: forget its token too."""
        self._tokens.pop(sid, None)

    def release(self, sid):
        """Unbind ``sid`` from its device; return the device id it spoke for, or None."""
        device_id = self._device_of_sid.pop(sid, None)
        connection = self._by_device.get(device_id)
        if connection is not None and connection.sid == sid:
            del self._by_device[device_id]
        return device_id

    def name_of(self, device_id):
        """The name a connected device registered with, or None."""
        connection = self._by_device.get(device_id)
        return connection.device_name if connection is not None else None

    def device_of(self, sid):
        """The device id ``sid`` registered as, or None."""
        return self._device_of_sid.get(sid)

    def sid_of(self, device_id):
        """The device's live connection, or None if it is away."""
        connection = self._by_device.get(device_id)
        return connection.sid if connection is not None else None

    def heard_from(self, device_id, now, heartbeat=False):
        """The device just sent something (a heartbeat, if ``heartbeat``)."""
        connection = self._by_device[device_id]
        connection.last_seen = now
        connection.heartbeats = connection.heartbeats or heartbeat

    def bound(self):
        """``{device_id: sid}`` of every registered connection."""
        return {device_id: connection.sid for device_id, connection in self._by_device.items()}

    def silent(self, now, limit):
        """``(device_id, sid)`` of heartbeating devices not heard from for ``limit`` seconds."""
        return [
            (device_id, connection.sid)
            for device_id, connection in self._by_device.items()
            if connection.heartbeats and now - connection.last_seen >= limit
        ]
