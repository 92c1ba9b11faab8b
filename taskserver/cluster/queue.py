"""The message queue between nodes: Flask-SocketIO's Redis manager, which carries emits to sids other nodes hold."""

import logging
import queue
import socket

import redis
import socketio

log = logging.getLogger("taskserver.cluster")

REDIS_SCHEMES = ("redis://", "rediss://")
# The listener reads without a timeout: TCP keepalive is what notices a Redis that went away without a word.
KEEPALIVE = {
    option: value
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, option)
}
REDIS_OPTIONS = {
    "socket_keepalive": True,
    "socket_keepalive_options": {getattr(socket, option): value for option, value in KEEPALIVE.items()},
    "socket_connect_timeout": 5,
}
CHECK_TIMEOUT = 2.0  # seconds a readiness check waits for Redis
OUTBOX = 10000  # messages for the other nodes waiting to be published; beyond, new ones are dropped


class RedisQueue(socketio.RedisManager):
    """python-socketio's Redis manager, except that what this node sends to the others is published by a greenlet of
    its own. python-socketio publishes in the greenlet that emits (after delivering to this node's own clients), and
    a device's events are handled in its connection's greenlet: a Redis that stops answering without closing its
    connections (paused, overloaded, or cut off by the network) would hold every connection that emits, and soon
    every device of every node. Here an emit only queues the message; while Redis is stuck the queue fills, and then
    messages are dropped, as Redis pub/sub may drop them anyway."""

    _outbox = None

    def initialize(self):
        super().initialize()
        self._outbox = self.server.eio.create_queue(OUTBOX)
        self.server.start_background_task(self._publish_queued)

    def _publish(self, data):
        if self._outbox is None:  # not initialized (a write-only manager)
            return super()._publish(data)
        try:
            self._outbox.put_nowait(data)
        except queue.Full:
            log.warning("Redis is not taking messages: one for the other nodes dropped (%s)", data.get("event"))

    def _publish_queued(self):
        while True:
            super()._publish(self._outbox.get())


def message_queue(url, channel):
    """A Redis manager for the Socket.IO server, on ``channel`` (every node of one cluster names the same)."""
    return RedisQueue(url, channel=channel, redis_options=dict(REDIS_OPTIONS))


def listen_now(server):
    """Subscribe now, not at the first client's connection (python-socketio initialises its manager lazily): a node
    without clients must still receive what other nodes send to the rooms and sids it will hold."""
    server.manager_initialized = True
    server.manager.initialize()


class QueueHealth:
    """Is Redis answering, and is this node subscribed to the cluster's channel?"""

    def __init__(self, url, manager):
        self.manager = manager
        self.client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT)

    def check(self):
        """``(True, None)`` if Redis answers a PING and this node's subscription exists, else ``(False, reason)``."""
        try:
            self.client.ping()
            (_, subscribers), *_ = self.client.pubsub_numsub(self.manager.channel)
        except redis.RedisError as error:
            return False, f"Redis 无法访问（{type(error).__name__}: {error}）"
        pubsub = self.manager.pubsub
        if subscribers < 1 or pubsub is None or not pubsub.subscribed:
            return False, f"本节点未订阅 Redis 频道 {self.manager.channel}"
        return True, None

    def close(self):
        """Close the check's connection (the manager's own end with its listener)."""
        self.client.close()
