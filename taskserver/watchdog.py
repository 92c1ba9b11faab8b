"""The watchdog: one greenlet that asks the service to act on time passing."""

import logging
import time

import gevent

log = logging.getLogger("taskserver.watchdog")

STALE_GRACE = 5.0  # seconds beyond three intervals before a silent watchdog counts as stuck
BATCH = 500  # attempts one part of a sweep ends while it holds the store; a backlog takes several, others between
MAX_BATCHES = 20  # per part and sweep: what is left (or what a failed commit put back) waits for the next sweep


def in_batches(expire, now):
    """Call ``expire(now, BATCH)`` until it finds fewer than a batch; the operations waiting for the store run
    between two batches, so that a backlog never holds it for long."""
    for _ in range(MAX_BATCHES):
        if expire(now, BATCH) < BATCH:
            return
        gevent.sleep(0)


def sweep(service, now, cluster=None):
    """One step: catch up after failed commits, drop silent devices, end timed-out and orphaned attempts, cancel
    what is left of stopped batches, run due schedules, start tasks that became due (those the schedules just made
    among them). Each part runs whatever the others did; return the names of those that failed.

    On a ``cluster``, each node looks after its own connections and work (and the cancels owed to devices it holds),
    and only the leader does what time passing does for every node: dead nodes, timeouts, lost devices, stopped
    batches, schedules."""
    parts = {
        "converge": lambda: service.devices.converge_after_failed_commits(now),
        "silent devices": lambda: service.devices.expire_silent_devices(now),
    }
    if cluster is not None:
        parts["owed cancels"] = service.devices.deliver_owed_cancels
    if cluster is None or cluster.leads():
        if cluster is not None:
            parts["dead nodes"] = cluster.expire_dead_nodes
        parts["timeouts"] = lambda: in_batches(service.tasks.expire_timeouts, now)
        parts["lost devices"] = lambda: in_batches(service.tasks.expire_lost_devices, now)
        parts["stopped batches"] = service.batches.finish_stopped
        parts["schedules"] = lambda: in_batches(service.schedules.fire_due, now)
    parts["due tasks"] = lambda: service.dispatcher.dispatch_pending(now)
    failed = []
    for name, part in parts.items():
        try:
            part()
        except Exception:
            log.exception("watchdog: %s failed", name)
            failed.append(name)
    return failed


class Watchdog:
    """The loop around ``sweep``, and what it knows of its own health (for ``/readyz`` and ``/metrics``).

    Lag and freshness are measured on the monotonic clock: they are about the event loop, not the service's time."""

    def __init__(self, service, interval, sleep, cluster=None, monotonic=time.monotonic):
        self.service = service
        self.cluster = cluster
        self.interval = interval
        self.sleep = sleep
        self.monotonic = monotonic
        self.started_at = None
        self.last_sweep_at = None
        self.lag = 0.0
        self.running = False

    def start(self, spawn):
        """Run the loop in the background with ``spawn`` (``socketio.start_background_task``)."""
        self.running, self.started_at = True, self.monotonic()
        spawn(self.run_forever)

    def run_forever(self):
        """Sweep every ``interval`` seconds until ``stop``; a failing part is logged and the loop goes on."""
        if self.started_at is None:
            self.running, self.started_at = True, self.monotonic()
        while self.running:
            before = self.monotonic()
            self.sleep(self.interval)
            if not self.running:
                break
            self.lag = max(self.monotonic() - before - self.interval, 0.0)
            # a sweep with a failed part does not count as done
            if not sweep(self.service, self.service.clock(), self.cluster):
                self.last_sweep_at = self.monotonic()

    def stop(self):
        """End the loop after its current sleep."""
        self.running = False

    def health(self):
        """Running, and swept (or started) within the last few intervals?"""
        now = self.monotonic()
        last = self.last_sweep_at if self.last_sweep_at is not None else self.started_at
        age = None if last is None else now - last
        fresh = self.running and age is not None and age <= self.interval * 3 + STALE_GRACE
        return {
            "running": self.running,
            "ok": fresh,
            "interval": self.interval,
            "lag": self.lag,
            "last_sweep_age": None if self.last_sweep_at is None else now - self.last_sweep_at,
        }
