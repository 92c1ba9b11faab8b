"""The watchdog: one greenlet that asks the service to act on time passing."""

import logging
import time

log = logging.getLogger("taskserver.watchdog")

STALE_GRACE = 5.0  # seconds beyond three intervals before a silent watchdog counts as stuck


def sweep(service, now):
    """One step: drop silent devices, end timed-out and orphaned attempts, start tasks that became due."""
    service.expire_silent_devices(now)
    service.expire_timeouts(now)
    service.expire_lost_devices(now)
    service.dispatch_pending(now)


class Watchdog:
    """The loop around ``sweep``, and what it knows of its own health (for ``/readyz`` and ``/metrics``).

    Lag and freshness are measured on the monotonic clock: they are about the event loop, not the service's time."""

    def __init__(self, service, interval, sleep, monotonic=time.monotonic):
        self.service = service
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
        """Sweep every ``interval`` seconds until ``stop``; a failing sweep is logged and the loop goes on."""
        if self.started_at is None:
            self.running, self.started_at = True, self.monotonic()
        while self.running:
            before = self.monotonic()
            self.sleep(self.interval)
            if not self.running:
                break
            self.lag = max(self.monotonic() - before - self.interval, 0.0)
            try:
                sweep(self.service, self.service.clock())
            except Exception:
                log.exception("watchdog sweep failed")
                continue
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
