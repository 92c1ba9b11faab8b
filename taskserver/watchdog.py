"""The watchdog: one greenlet that asks the service to act on time passing."""

import logging

log = logging.getLogger("taskserver.watchdog")


def sweep(service, now):
    """One step: drop silent devices, end timed-out and orphaned attempts, start tasks that became due."""
    service.expire_silent_devices(now)
    service.expire_timeouts(now)
    service.expire_lost_devices(now)
    service.dispatch_pending(now)


def run_forever(service, interval, sleep):
    """Sweep every ``interval`` seconds; a failing sweep is logged and the loop goes on."""
    while True:
        sleep(interval)
        try:
            sweep(service, service.clock())
        except Exception:
            log.exception("watchdog sweep failed")
