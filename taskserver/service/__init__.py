"""The service: every change of task or device state happens here, and nowhere else.

``TaskService`` is one object, written in three parts: ``devices.py`` (connections, registration, heartbeats,
draining), ``tasks.py`` (what operators and devices ask of tasks) and ``moves.py`` (dispatch, the end of an
attempt, ``_move``, the one place a stored task changes status, and what time passing does)."""

import logging
import time

import gevent

from taskserver.connections import Connections
from taskserver.credentials import DeviceCredentials
from taskserver.domain import ACTIVE, TaskStatus
from taskserver.metrics import Metrics
from taskserver.present import iso
from taskserver.service.devices import DeviceOperations
from taskserver.service.moves import TaskMoves
from taskserver.service.tasks import DispatchRequest, TaskOperations

__all__ = ["DispatchRequest", "TaskService"]

log = logging.getLogger("taskserver")


class TaskService(DeviceOperations, TaskOperations, TaskMoves):
    """Registers devices, dispatches and tracks tasks, and acts on time passing; emits through the notifier."""

    def __init__(self, store, notifier, config, clock=time.time, metrics=None, spawn=gevent.spawn):
        self.store = store
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.connections = Connections()
        self.spawn = spawn  # the app's background group: what the service starts ends with the app
        self._look_waiting = False  # a look for work after commit is waiting to run (several writers only)
        self._failures_converged = store.failed_commits  # failed commits whose effects memory has caught up with
        self.credentials = DeviceCredentials(store, config["DEVICE_TOKENS"], clock)

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
