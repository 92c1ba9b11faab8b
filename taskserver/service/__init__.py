"""The service: every change of task or device state happens here, and nowhere else.

A few objects, each given its collaborators: ``TaskMoves`` (``moves.py``, the one place a stored task changes),
the ``Dispatcher`` (``dispatcher.py``: new tasks, pending tasks to free devices, ``new_task`` and its ack), the
``DeviceRegistry`` (``registry.py``: connections, registration, heartbeats, draining, tokens) and the
``TaskLifecycle`` (``lifecycle.py``: progress, results, cancels, the end of attempts). ``TaskService`` builds them
and is the transports' one entry point."""

import logging
import time

from taskserver.connections import Connections
from taskserver.credentials import DeviceCredentials
from taskserver.domain import ACTIVE, TaskStatus
from taskserver.metrics import Metrics
from taskserver.present import iso
from taskserver.service.dispatcher import Dispatcher, DispatchRequest
from taskserver.service.lifecycle import TaskLifecycle
from taskserver.service.moves import TaskMoves
from taskserver.service.registry import DeviceRegistry

__all__ = ["DispatchRequest", "TaskService"]

log = logging.getLogger("taskserver")


class TaskService:
    """Builds the service's parts and holds them: ``devices`` (the registry), ``dispatcher`` and ``tasks`` (the
    lifecycle). Transports call the part that owns what they ask."""

    def __init__(self, store, notifier, config, clock=time.time, metrics=None):
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.connections = Connections()
        moves = TaskMoves(store, notifier)
        metrics = self.metrics
        self.dispatcher = Dispatcher(store, moves, notifier, config, clock, metrics)
        credentials = DeviceCredentials(store, config["DEVICE_TOKENS"], clock)
        self.devices = DeviceRegistry(
            store, notifier, config, clock, metrics, self.connections, credentials, self.dispatcher
        )
        self.tasks = TaskLifecycle(
            store, moves, notifier, config, clock, metrics, self.connections, self.devices, self.dispatcher
        )

    def recover_on_start(self):
        """No connection survives a restart: every device is offline and its tasks get a fresh grace."""
        self.devices.recover_on_start()

    def system_status(self):
        """Counts for ``GET /``."""
        counts = self.store.count_tasks_by_status()
        return {
            "connected_devices": len(self.connections),
            "active_tasks": sum(counts.get(s.value, 0) for s in ACTIVE),
            "pending_tasks": counts.get(TaskStatus.PENDING.value, 0),
            "timestamp": iso(self.clock()),
        }

    def store_health(self):
        """``(True, None)`` if the store takes a write now, else ``(False, reason)``."""
        try:
            self.store.check_writable(self.clock())
        except Exception as exc:  # any failure to write means not ready, whatever the backend raises
            log.warning("store not writable: %s", exc)
            return False, f"{type(exc).__name__}: {exc}"
        return True, None
