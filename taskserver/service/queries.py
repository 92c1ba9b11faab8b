"""What views read (the HTTP API, the consoles' feed, the metrics): through here, never from the store directly."""

import logging

from taskserver.domain import ACTIVE, DeviceStatus, ErrorCode, TaskStatus
from taskserver.errors import NotFound
from taskserver.present import iso

log = logging.getLogger("taskserver")


class Queries:
    """Reads tasks, devices, their histories and counts; changes nothing (``store_health`` commits a probe row)."""

    def __init__(self, store, connections, clock, clustered=False):
        self.store = store
        self.connections = connections
        self.clock = clock
        self.clustered = clustered  # a node of a cluster: other nodes hold devices too, and the store knows them all

    # ---- tasks ----

    def task(self, task_id):
        """The task, or 404 ``TASK_NOT_FOUND``."""
        task = self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"任务 {task_id} 不存在", ErrorCode.TASK_NOT_FOUND)
        return task

    def task_events(self, task_id):
        """The task's history, oldest first, or 404 ``TASK_NOT_FOUND``."""
        self.task(task_id)
        return self.store.task_events(task_id)

    def tasks(self, **filters):
        """A page of tasks matching ``filters`` (``Store.list_tasks``'), newest first, and how many match in all."""
        return self.store.list_tasks(**filters)

    def holds_task(self, sid, task_id, attempt=None):
        """True if the task (in ``attempt``, if given) is dispatched to or running on the device this connection
        registered as: reports about it are bounded by what the server sent, so the rate limit spares them (a look
        in memory, made before any other work)."""
        device_id = self.connections.device_of(sid)
        return device_id is not None and self.store.task_active_on(task_id, device_id, attempt)

    # ---- devices ----

    def device(self, device_id):
        """The device, or 404 ``DEVICE_NOT_FOUND``."""
        device = self.store.get_device(device_id)
        if device is None:
            raise NotFound(f"设备 {device_id} 不存在", ErrorCode.DEVICE_NOT_FOUND)
        return device

    def find_task(self, task_id):
        """The task, or None."""
        return self.store.get_task(task_id)

    def find_device(self, device_id):
        """The device, or None."""
        return self.store.get_device(device_id)

    def devices(self, statuses=(), disabled=None, tags=()):
        """Known devices in one of ``statuses`` (all if empty), with every one of ``tags`` and, if given, that
        ``disabled`` flag; newest first."""
        return self.store.list_devices(statuses=statuses, disabled=disabled, tags=tags)

    def batch(self, batch_id):
        """The batch and its tasks by status (``Store.count_batch_tasks``), or 404 ``BATCH_NOT_FOUND``."""
        batch = self.store.get_batch(batch_id)
        if batch is None:
            raise NotFound(f"批次 {batch_id} 不存在", ErrorCode.BATCH_NOT_FOUND)
        return batch, self.store.count_batch_tasks(batch_id)

    def batches(self, limit, offset):
        """A page of batches, newest first, each with its tasks by status, and how many there are."""
        batches, total = self.store.list_batches(limit=limit, offset=offset)
        return [(batch, self.store.count_batch_tasks(batch.batch_id)) for batch in batches], total

    def active_tasks_of(self, device_id):
        """The device's dispatched and running tasks, oldest first."""
        return self.store.active_tasks_of(device_id)

    def device_history(self, device_id, limit):
        """The device's latest ``limit`` events, its own and those of tasks on it, newest first."""
        return self.store.device_history(device_id, limit)

    def device_names(self, device_ids):
        """Map each known device id to its name (a connected device's from memory)."""
        names = {}
        for device_id in set(device_ids) - {None}:
            name = self.connections.name_of(device_id)
            if name is None and (device := self.store.get_device(device_id)) is not None:
                name = device.device_name
            if name is not None:
                names[device_id] = name
        return names

    # ---- counts and health ----

    def system_status(self):
        """Counts for ``GET /``: connected devices are this server's connections, or on a cluster every node's."""
        counts = self.store.count_tasks_by_status()
        return {
            "connected_devices": self._connected_devices(),
            "active_tasks": sum(counts.get(s.value, 0) for s in ACTIVE),
            "pending_tasks": counts.get(TaskStatus.PENDING.value, 0),
            "timestamp": iso(self.clock()),
        }

    def _connected_devices(self):
        if not self.clustered:
            return len(self.connections)
        counts = self.store.count_devices_by_status()
        return sum(n for (status, _), n in counts.items() if status != DeviceStatus.OFFLINE.value)

    def count_devices_by_status(self):
        """A mapping of ``(status value, disabled)`` to the number of devices in it."""
        return self.store.count_devices_by_status()

    def count_tasks_by_status_and_type(self):
        """A mapping of ``(status value, task type)`` to the number of tasks in it."""
        return self.store.count_tasks_by_status_and_type()

    def count_finished_by_minute(self, since, until):
        """How many tasks ended in each minute of ``since <= t < until``: ``{(minute index, status value): count}``."""
        return self.store.count_finished_by_minute(since, until)

    def store_health(self):
        """``(True, None)`` if the store takes a write now, else ``(False, reason)``."""
        try:
            self.store.check_writable(self.clock())
        except Exception as exc:  # any failure to write means not ready, whatever the backend raises
            log.warning("store not writable: %s", exc)
            return False, f"{type(exc).__name__}: {exc}"
        return True, None
