"""The message queue between nodes: Flask-SocketIO's Redis manager, which carries emits to sids other nodes hold."""

import socket

import redis
import socketio

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


def message_queue(url, channel):
    """A Redis manager for the Socket.IO server, on ``channel`` (every node of one cluster names the same)."""
    return socketio.RedisManager(url, channel=channel, redis_options=dict(REDIS_OPTIONS))


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
