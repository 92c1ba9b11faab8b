"""Several nodes: each ``python app.py`` on one PostgreSQL database and one Redis message queue is a node of a
cluster. Each holds a lease (``node.py``), one leader at a time sweeps what time passing ends (``leader.py``), work
left for a device another node holds wakes that node (``wakeups.py``), and Socket.IO emits travel over Redis
(``queue.py``). Turned on by ``TASKSERVER_MESSAGE_QUEUE``; without it a server is alone, exactly as before."""

import logging

from taskserver.cluster.leader import Leadership
from taskserver.cluster.node import NodeLease
from taskserver.cluster.queue import REDIS_SCHEMES, QueueHealth, listen_now, message_queue
from taskserver.cluster.wakeups import Wakeups
from taskserver.store import is_postgres

log = logging.getLogger("taskserver.cluster")

__all__ = ["Cluster", "cluster_problem", "listen_now", "message_queue"]  # what the app factory uses


def cluster_problem(settings):
    """Why these settings cannot make a node of a cluster, or None (also when they ask for no cluster)."""
    queue = settings["MESSAGE_QUEUE"]
    if not queue:
        return None
    if not queue.startswith(REDIS_SCHEMES):
        return f"TASKSERVER_MESSAGE_QUEUE must be a redis:// or rediss:// URL, not {queue.split(':', 1)[0]}://..."
    if settings["NODE_LEASE"] <= 0:
        return f"TASKSERVER_NODE_LEASE must be a number of seconds above 0, not {settings['NODE_LEASE']}"
    if not is_postgres(settings["DATABASE"]):
        return (
            "TASKSERVER_MESSAGE_QUEUE makes this server a node of a cluster, and the nodes of a cluster share their "
            "state in PostgreSQL: set TASKSERVER_DATABASE=postgresql://... (a SQLite file belongs to one server), "
            "or unset TASKSERVER_MESSAGE_QUEUE"
        )
    return None


class Cluster:
    """This node's part in the cluster: its lease, the leader lock, the wake-ups it hears, and the health of each
    (for ``/readyz``). ``close_connections`` ends every socket the node holds; ``wake`` looks for work left here."""

    def __init__(self, store, settings, manager, close_connections, wake, sleep):
        channel = settings["MESSAGE_QUEUE_CHANNEL"]
        url, timeout = settings["DATABASE"], settings["DATABASE_TIMEOUT"]
        self.store = store
        self.lease = NodeLease(store, settings["NODE_ID"], settings["NODE_LEASE"], channel, close_connections)
        self.leadership = Leadership(url, f"taskserver leader: {channel}", timeout)
        self.wakeups = Wakeups(url, channel, wake, sleep, lambda: self.node_id, timeout)
        self.queue = QueueHealth(settings["MESSAGE_QUEUE"], manager)
        self.sleep = sleep

    @property
    def node_id(self):
        """This node's id (a new one after it joined again)."""
        return self.lease.node_id

    def join(self):
        """Take this node's lease (at start, before any device can register)."""
        self.lease.join()

    def start(self, spawn, renew=True):
        """Hear wake-ups, and renew the lease unless ``renew`` is false (tests call ``lease.renew`` themselves), in
        the background (``spawn``: the app's group)."""
        spawn(self.wakeups.run_forever)
        if renew:
            spawn(self.lease.keep_alive, self.sleep)

    def leads(self):
        """True if this node is the one that sweeps timeouts, lost devices and dead nodes now."""
        return self.leadership.leads()

    def expire_dead_nodes(self, now=None):
        """Release the devices of nodes whose lease lapsed before ``now`` (the database's time, read if None: tests
        pass a later one instead of waiting); return their ids."""
        released = self.store.expire_dead_nodes(self.store.database_time() if now is None else now)
        if released:
            log.warning("devices of dead nodes went offline: %s", ", ".join(released))
        return released

    def checks(self):
        """``{name: (ok, reason)}`` for ``/readyz``: Redis, and this node's lease."""
        return {"redis": self.queue.check(), "lease": self.lease.check()}

    def stop(self):
        """Leave the cluster: the lease given up (its devices offline now), the leader lock and checks closed."""
        try:
            self.lease.leave()
        except Exception:  # the database away: the lease lapses by itself and the leader releases the devices
            log.exception("node %s: leaving the cluster failed", self.node_id)
        self.leadership.resign()
        self.queue.close()
