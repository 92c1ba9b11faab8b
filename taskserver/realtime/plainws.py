"""Plain WebSocket transport for clients without a Socket.IO library (Auto.js, shell tools).

JSON text frames ``{"event": ..., "data": ...}`` both ways, at ``/ws`` and at ``/`` when the request is an upgrade.
A frame carrying an ``id`` is answered with ``{"event": "ack", "id": ..., "data": <ack>}``; the server's own frames
that want an answer (``new_task``) carry an ``id`` too, and the client answers the same way."""

import contextlib
import itertools
import json
import logging
import socket
import struct
import time
import uuid
from urllib.parse import urlsplit

import gevent
import gevent.queue
from flask import Blueprint, current_app, request
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

from taskserver import logs, wirejson
from taskserver.auth import request_token
from taskserver.domain import ErrorCode
from taskserver.errors import TaskServerError, ValidationFailed

log = logging.getLogger("taskserver.plainws")

blueprint = Blueprint("plainws", __name__)
WRITER_GRACE = 5  # seconds a closing connection may take to send what was queued for it
# Frames one connection may have waiting to be written. A client that lets more pile up (it stopped reading, or
# reads slower than it is sent to) is cut off, and its device goes offline: senders never wait for it, and its
# backlog never grows past this.
MAX_QUEUED_FRAMES = 1000


class PlainConnection:
    """One open plain WebSocket: frames to send, written in order by a greenlet of its own (so that a sender never
    waits on a slow client), the callbacks waiting for the client's acks, and when the client was last heard."""

    CLOSE = object()  # queued after the last frame: the writer closes the socket when it gets there

    def __init__(self, ws, clock):
        self.ws = ws
        self.socket = ws.handler.socket  # gevent-websocket leaves closing the TCP connection to whoever closes
        self.handler = gevent.getcurrent()  # the request's greenlet, which serves the connection until it closes
        self.clock = clock
        self.callbacks = {}
        self.heard_at = clock()
        ws.stream.read = self._noting_what_arrives(ws.stream.read)  # every frame's header is read through it
        self.outbox = gevent.queue.Queue(MAX_QUEUED_FRAMES)
        self.writer = gevent.spawn(self._write)

    def _noting_what_arrives(self, read):
        """``read``, which also notes that the client was heard from: any frame (a message, a pong, a ping) counts."""

        def read_and_note(size):
            data = read(size)
            if data:
                self.heard_at = self.clock()
            return data

        return read_and_note

    def send(self, frame):
        """Queue one JSON frame, or a control frame as ``(payload, opcode)``; cut a client too far behind."""
        try:
            self.outbox.put_nowait(frame)
        except gevent.queue.Full:
            logs.event(log, "plain websocket client too slow", logging.WARNING, queued=MAX_QUEUED_FRAMES)
            self.abort()

    def ping(self):
        """Queue a WebSocket ping (client libraries answer it by themselves)."""
        self.send(("", WebSocket.OPCODE_PING))

    def close(self):
        """Close the socket once the frames queued before are sent (the receive loop then ends)."""
        self.send(self.CLOSE)

    def abort(self):
        """Cut the link now (a dead or hopelessly slow client): the receive loop and the writer both end."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)

    def _write(self):
        while (frame := self.outbox.get()) is not self.CLOSE:
            try:
                if isinstance(frame, tuple):
                    self.ws.send_frame(*frame)
                else:
                    self.ws.send(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
            except (WebSocketError, OSError):
                break
        with contextlib.suppress(WebSocketError, OSError):
            self.ws.close()
        self.abort()  # the receive loop then ends, whether or not the client answers the close


class PlainSockets:
    """The open plain WebSocket connections by sid, the loop that serves one, and the pings that keep them honest
    (one round over every connection each ``ping_interval``: ``keep_alive`` runs among the app's greenlets)."""

    def __init__(self, ping_interval, timeout, clock=None):
        self.ping_interval = min(ping_interval, timeout / 3)  # a live client always has a few pings to answer
        self.timeout = timeout  # the heartbeat timeout: a link silent this long is closed
        self.clock = clock or time.time
        self._connections = {}
        self._ack_ids = itertools.count(1)

    def __contains__(self, sid):
        return sid in self._connections

    def send(self, sid, event, data, callback=None):
        """Send ``event`` to ``sid``; ``callback`` runs with the client's ack, if it sends one."""
        connection = self._connections.get(sid)
        if connection is None:
            return
        frame = {"event": event, "data": data}
        if callback is not None:
            frame["id"] = next(self._ack_ids)
            connection.callbacks[frame["id"]] = callback
        connection.send(frame)

    def ack_callbacks(self, sid):
        """The callbacks waiting for the acks of ``sid`` (by id), or None."""
        connection = self._connections.get(sid)
        return connection.callbacks if connection is not None else None

    def close(self, sid):
        """Close the connection of ``sid``, if it is open."""
        connection = self._connections.get(sid)
        if connection is not None:
            connection.close()

    def close_all(self, timeout):
        """Close every connection and wait (up to ``timeout`` seconds) until each one's device is offline."""
        connections = list(self._connections.values())
        for connection in connections:
            connection.close()
        gevent.joinall([connection.handler for connection in connections], timeout=timeout)

    def serve(self, ws, events, token=None):
        """Serve one connection until it closes; then its device (if any) is offline."""
        sid = f"ws_{uuid.uuid4().hex}"
        connection = self._connections[sid] = PlainConnection(ws, self.clock)
        try:
            events.opened(sid, token)
        except TaskServerError as error:
            connection.send({"event": "error", "data": {"message": error.message, "error_code": error.error_code}})
            del self._connections[sid]
            self._finish(connection)
            return
        try:
            connection.send({"event": "connected", "data": {"message": "连接成功", "sid": sid}})
            while (raw := ws.receive()) is not None:
                self._handle_frame(sid, connection, raw, events)
        except WebSocketError:
            pass
        finally:
            del self._connections[sid]
            events.closed(sid)
            self._finish(connection)

    def keep_alive(self):
        """A round of ``ping_all`` every ``ping_interval`` seconds, for as long as the app runs."""
        while True:
            gevent.sleep(self.ping_interval)
            self.ping_all()

    def ping_all(self):
        """Ping every client (client libraries answer by themselves); cut each link that would otherwise stay silent
        past the heartbeat timeout before the next round, so that a dead link is closed within that timeout."""
        now = self.clock()
        for connection in list(self._connections.values()):
            silent = now - connection.heard_at
            if silent + self.ping_interval > self.timeout:
                logs.event(log, "plain websocket silent", logging.WARNING, seconds=round(silent, 1))
                connection.abort()
            else:
                connection.ping()

    @staticmethod
    def _finish(connection):
        """Send what is queued (for a few seconds at most), then close."""
        connection.close()
        connection.writer.join(timeout=WRITER_GRACE)
        connection.writer.kill()  # nothing, if it has ended

    def _handle_frame(self, sid, connection, raw, events):
        try:
            message = parse_frame(raw)
        except TaskServerError as error:
            events.notifier.error(sid, error)
            return
        if message["event"] == "ack":
            self._run_ack_callback(connection, message)
            return
        ack = events.handle(sid, message["event"], message.get("data"))
        if "id" in message:
            connection.send({"event": "ack", "id": message["id"], "data": ack})

    @staticmethod
    def _run_ack_callback(connection, message):
        """Hand the client's ack to the callback waiting for it; a callback that fails is logged, never fatal."""
        ack_id = message.get("id")
        callback = connection.callbacks.pop(ack_id, None) if isinstance(ack_id, int) else None
        if callback is None:
            return
        try:
            callback(message.get("data"))
        except Exception:
            log.exception("plain websocket ack callback failed")


def limit_frame_size(max_bytes):
    """Refuse WebSocket frames longer than ``max_bytes`` before reading them (gevent-websocket has no limit)."""
    if getattr(Header.decode_header, "limited", False):
        return
    decode = Header.decode_header

    def decode_header(stream):
        header = decode(stream)
        if header.length > max_bytes:
            raise ProtocolError(f"frame of {header.length} bytes is over the {max_bytes}-byte limit")
        return header

    decode_header.limited = True
    Header.decode_header = staticmethod(decode_header)


def refuse(ws, code, reason):
    """Close ``ws`` with a close frame that carries ``code`` and ``reason`` (gevent-websocket's own ``close`` sends the
    reason alone, as the text of its repr, which clients reject as a malformed frame)."""
    ws.send_frame(struct.pack("!H", code) + reason.encode(), opcode=ws.OPCODE_CLOSE)
    ws.closed = True  # nothing more is sent on it; the server closes the socket when the handler returns


def origin_allowed(origin, host, allowed_origins):
    """Browsers may open a plain WebSocket only from this server's own pages or from a configured origin;
    clients that send no Origin (devices, scripts) are not browsers and pass."""
    if not origin:
        return True
    return urlsplit(origin).netloc == host or origin in allowed_origins


def parse_frame(raw):
    """A frame as a dict with a string ``event``, or ``ValidationFailed``."""
    try:
        message = wirejson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed({"_schema": ["不是有效的 JSON"]}, "消息格式无效") from exc
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise ValidationFailed({"event": ["消息必须是含 event 字段的 JSON 对象"]}, "消息格式无效")
    envelope = wirejson.field_problems({key: value for key, value in message.items() if key != "data"})
    if envelope:  # the event name and the id come back in the answer: they must be sendable
        raise ValidationFailed(envelope, "消息格式无效")
    return message


@blueprint.route("/ws", websocket=True)
@blueprint.route("/", websocket=True)
def plain_websocket():
    """Upgrade to a plain WebSocket and serve it."""
    ws = request.environ.get("wsgi.websocket")
    if ws is None:
        raise TaskServerError("需要 WebSocket 升级请求", ErrorCode.WEBSOCKET_REQUIRED)
    if not origin_allowed(request.headers.get("Origin"), request.host, current_app.config["CORS_ORIGINS"]):
        refuse(ws, 1008, "origin not allowed")
        return "", 204
    sockets, events = current_app.extensions["plainws"], current_app.extensions["device_events"]
    sockets.serve(ws, events, request_token(request.headers, request.args))
    return "", 204
