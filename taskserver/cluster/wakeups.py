"""Wake-ups between nodes: PostgreSQL ``NOTIFY`` after the commit of work left for a device another node holds, heard
on a connection of this node's own (autocommit, outside the pool). What is missed while it reconnects is caught by a
full look after every connection, and by the watchdog's look on every node."""

import logging

import psycopg
from psycopg import sql

from taskserver.cluster.leader import KEEPALIVES

log = logging.getLogger("taskserver.cluster")

RECONNECT_DELAY = 1.0  # seconds between attempts while the database is away


class Wakeups:
    """Listens on ``channel`` and calls ``wake(reason)`` for every notification addressed to any node or to
    ``node_id()`` (this node's id now), and ``wake(None)`` once after every (re)connection."""

    def __init__(self, url, channel, wake, sleep, node_id, timeout=5.0):
        self.url = url
        self.channel = channel
        self.wake = wake
        self.node_id = node_id
        self.sleep = sleep
        self.timeout = timeout

    def run_forever(self):
        """Listen until the greenlet is killed; a lost connection is opened again."""
        while True:
            try:
                self._listen()
            except psycopg.OperationalError as error:
                log.warning("wake-ups: %s; listening again in %.0f s", error, RECONNECT_DELAY)
            self.sleep(RECONNECT_DELAY)

    def _listen(self):
        timeout = max(int(self.timeout), 1)
        with psycopg.connect(self.url, autocommit=True, connect_timeout=timeout, **KEEPALIVES) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._wake(None)  # whatever was notified before this connection listened
            for notify in conn.notifies():
                reason, _, node = notify.payload.partition("@")
                if node in ("", self.node_id()):  # "work@b" is for node b only
                    self._wake(reason or None)

    def _wake(self, reason):
        try:
            self.wake(reason)
        except Exception:  # a failed look is the watchdog's to repeat: listening goes on
            log.exception("wake-up failed")
