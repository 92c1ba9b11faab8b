"""One leader at a time sweeps what time passing ends (timeouts, lost devices, dead nodes): the node holding a
session-level advisory lock, on a connection of its own outside the pool. A leader that dies closes that connection,
and the lock with it; every move it makes is a compare-and-set, so two leaders for a moment do no harm."""

import logging

import psycopg

log = logging.getLogger("taskserver.cluster")

# the database closes a dead peer's connection (and frees its lock) within about idle + interval x count seconds
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


class Leadership:
    """Takes the cluster's leader lock when it is free, and knows whether this node still holds it."""

    def __init__(self, url, name, timeout=5.0):
        self.url = url
        self.name = name  # the lock's key is a hash of it: one lock per cluster, even on a shared database
        self.timeout = timeout
        self._conn = None
        self.held = False

    def leads(self):
        """True if this node holds the leader lock (taking it if it is free); False if another node does or the
        database cannot be reached."""
        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(int(self.timeout), 1), **KEEPALIVES
                )
            if self.held:
                self._conn.execute("SELECT 1")  # the lock lives exactly as long as this connection
            else:
                take = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
                self.held = self._conn.execute(take, (self.name,)).fetchone()[0]
                if self.held:
                    log.info("this node leads the cluster's sweeps")
        except psycopg.Error as error:  # the connection lost (and the lock with it), or the database away
            log.warning("leader lock: %s", error)
            self.resign()
        return self.held

    def resign(self):
        """Give the lock up by closing its connection."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self.held = None, False
