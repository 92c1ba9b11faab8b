"""A node's identity and its lease row in PostgreSQL: joined at start, renewed by the database clock, and given up at
a clean stop. A node that finds its lease lapsed or taken closes its sockets and joins again under a new id."""

import logging
import secrets
import socket
import time

log = logging.getLogger("taskserver.cluster")

RENEWALS_PER_LEASE = 3  # renew at a third of the lease: two renewals may fail before it lapses


def new_node_id(base=None):
    """``base`` (the host's name if none) plus a random suffix: a process never reuses another's id by chance."""
    return f"{base or socket.gethostname()}-{secrets.token_hex(3)}"


class NodeLease:
    """This node's lease: ``join``, ``renew`` (the loop ``keep_alive`` calls it; tests call it themselves) and
    ``leave``. ``on_lost`` closes the node's connections when the lease turns out lost, before it joins again."""

    def __init__(self, store, configured_id, lease, wake_channel, on_lost, monotonic=time.monotonic):
        self.store = store
        self.configured_id = configured_id
        self.lease = lease
        self.wake_channel = wake_channel
        self.on_lost = on_lost
        self.monotonic = monotonic
        self.node_id = None
        self.incarnation = None
        self.renewed_at = None  # monotonic time of the last renewal (or join) that succeeded

    def join(self):
        """Take a lease under the configured id (a new one when joining again) and serve as that node."""
        first = self.node_id is None
        self.node_id = self.configured_id if first and self.configured_id else new_node_id(self.configured_id)
        self.incarnation = secrets.token_hex(8)
        self.store.join_node(self.node_id, self.incarnation, self.lease)
        self.store.serve_as(self.node_id, self.wake_channel)
        self.renewed_at = self.monotonic()
        log.info("node %s joined (lease %.0f s)", self.node_id, self.lease)

    def renew(self):
        """Extend the lease; if it lapsed or another process took it, close every connection and join again.
        Return True if the lease held. The database being away raises: the lease may still hold, or lapse."""
        if self.store.renew_node(self.node_id, self.incarnation, self.lease):
            self.renewed_at = self.monotonic()
            return True
        log.warning("node %s lost its lease: closing its connections and joining again", self.node_id)
        self.on_lost()
        self.join()
        return False

    def keep_alive(self, sleep):
        """Renew every third of the lease, for as long as the node runs (a failed renewal is logged, then retried)."""
        while True:
            sleep(self.lease / RENEWALS_PER_LEASE)
            try:
                self.renew()
            except Exception:
                log.exception("node %s: renewing its lease failed", self.node_id)

    def check(self):
        """``(True, None)`` if the last renewal is younger than the lease, else ``(False, reason)``."""
        age = self.monotonic() - self.renewed_at
        if age < self.lease:
            return True, None
        return False, f"节点 {self.node_id} 的租约已 {age:.0f} 秒未续期"

    def leave(self):
        """Give the lease up (a clean stop): the devices still held go offline now."""
        self.store.leave_node(self.node_id, self.incarnation)
