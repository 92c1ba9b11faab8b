"""The web console's live feed: Socket.IO namespace "/dashboard", open to operators only.

The service tells the notifier of every stored change; the notifier hands it to the ``DashboardFeed``, which only
notes the task or device while a console watches, and a background greenlet sends what changed as one ``changes``
event at most every ``FLUSH_INTERVAL`` seconds. However busy the fleet, a console gets two small messages a second.

On a cluster each node's feed collects its own service's changes whether or not a console watches it, and its
``changes`` travel through the message queue to the consoles of every node: each change is stored, noted and sent by
one node only, so a console sees it once.
"""

import logging
import time

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, emit

from taskserver import auth
from taskserver.domain import ErrorCode
from taskserver.present import TASK_SUMMARY, device_summary, iso

log = logging.getLogger("taskserver.dashboard")

NAMESPACE = "/dashboard"
FLUSH_INTERVAL = 0.5  # seconds between two ``changes`` events, at most
SAMPLE_INTERVAL = 15.0  # seconds between two samples of the fleet for the "devices online" chart
MAX_TASKS_PER_FLUSH = 200  # beyond this many changed tasks, consoles are told to reload the list instead
MAX_DEVICES_PER_FLUSH = 200  # the same for devices (heartbeats alone do not count: they travel as times)


def task_brief(task):
    """A task as the console's list shows it: the list's fields without ``data`` (which can be large)."""
    brief = TASK_SUMMARY(task)
    del brief["data"]
    brief["progress_message"] = task.progress_message
    return brief


class DashboardFeed:
    """Collects what changed while consoles watch and sends it, coalesced, from one background greenlet.

    ``keep_running`` (a server with its watchdog on, or a node of a cluster) keeps the greenlet alive with no console
    open, so that the fleet is sampled every ``SAMPLE_INTERVAL`` for the "devices online" chart; otherwise (tests) it
    runs while a console is connected. An ``interval`` of 0 runs no greenlet at all: whoever drives the feed calls
    ``flush`` (tests, which must not race a timer).

    ``shared`` (a node of a cluster): consoles of other nodes watch too, so the feed always collects; a task is read
    again when flushed, since another node may have moved it on since this one noted it."""

    def __init__(
        self,
        socketio,
        queries,
        history,
        spawn,
        clock=time.time,
        keep_running=False,
        interval=FLUSH_INTERVAL,
        shared=False,
    ):
        self.socketio = socketio
        self.queries = queries  # the service's: what the feed reads
        self.history = history
        self.spawn = spawn  # starts the flush loop among the app's background greenlets
        self.clock = clock
        self.keep_running = keep_running
        self.interval = interval
        self.shared = shared
        self.watchers = set()  # sids of connected consoles
        self._tasks = {}  # task_id -> the task as last stored
        self._devices = set()  # ids of devices that changed
        self._heartbeats = {}  # device_id -> time of its latest heartbeat, for devices that only sent heartbeats
        self._running = False
        self._last_sample = None

    # ---- called by the notifier (after the change is stored): cheap, never emits ----

    @property
    def watched(self):
        """True if a console may watch: one of this node's, or on a cluster any node's."""
        return self.shared or bool(self.watchers)

    def task_changed(self, task, devices=()):
        """Note a task (and the devices whose load it changed) for the next flush, if anyone watches."""
        if self.watched:
            self._tasks[task.task_id] = task
            self._devices.update(device_id for device_id in devices if device_id)

    def device_changed(self, device_id, heartbeat=None):
        """Note a device for the next flush, if anyone watches; a heartbeat alone travels as its time, nothing more."""
        if not self.watched:
            return
        if heartbeat is None:
            self._devices.add(device_id)
        else:
            self._heartbeats[device_id] = heartbeat

    # ---- consoles ----

    def watch(self, sid):
        """A console connected: start the greenlet if it is not running."""
        self.watchers.add(sid)
        self.start()

    def unwatch(self, sid):
        """A console left; with none left, nothing more is collected."""
        self.watchers.discard(sid)
        if not self.watched:
            self._tasks.clear()
            self._devices.clear()
            self._heartbeats.clear()

    def start(self):
        """Run the flush loop in the background unless it runs already (or the feed is driven by hand)."""
        if not self._running and self.interval > 0:
            self._running = True
            self.spawn(self.run)

    def run(self):
        """Flush every ``interval`` and sample the fleet every ``SAMPLE_INTERVAL`` while watched (or always)."""
        try:
            while self.keep_running or self.watchers:
                self.socketio.sleep(self.interval)
                if not (self.keep_running or self.watchers):
                    break
                try:
                    self.flush()
                    self.sample_if_due()
                except Exception:
                    log.exception("dashboard flush failed")
        finally:
            self._running = False

    def sample_if_due(self):
        """Record how many devices are online, at most every ``SAMPLE_INTERVAL`` seconds."""
        now = time.monotonic()
        if self._last_sample is None or now - self._last_sample >= SAMPLE_INTERVAL:
            self._last_sample = now
            self.history.sample(self.queries, self.clock())

    def flush(self):
        """Send one ``changes`` event with what changed since the last flush; return it (None if nothing did).

        ``tasks``: compact summaries; ``devices``: as ``GET /api/devices`` lists them (``removed_devices``: ids of
        forgotten ones); ``heartbeats``: ``{device_id: time}`` for devices that only sent heartbeats;
        ``reload_tasks`` / ``reload_devices``: too many changed, the console should reload its list instead."""
        if not (self._tasks or self._devices or self._heartbeats) or not self.watched:
            return None
        tasks, self._tasks = self._tasks, {}
        device_ids, self._devices = self._devices, set()
        heartbeats, self._heartbeats = self._heartbeats, {}
        changes = {
            "at": iso(self.clock()),
            "tasks": [],
            "devices": [],
            "removed_devices": [],
            "heartbeats": {device_id: iso(at) for device_id, at in heartbeats.items() if device_id not in device_ids},
            "reload_tasks": len(tasks) > MAX_TASKS_PER_FLUSH,
            "reload_devices": len(device_ids) > MAX_DEVICES_PER_FLUSH,
        }
        if not changes["reload_tasks"]:
            changes["tasks"] = [task_brief(task) for task in self._latest(tasks)]
        if not changes["reload_devices"]:
            self._describe_devices(changes, device_ids)
        self.socketio.emit("changes", changes, namespace=NAMESPACE)
        return changes

    def _latest(self, tasks):
        """The tasks as noted, or on a cluster as stored now (so that no node's late flush shows an older state)."""
        if not self.shared:
            return tasks.values()
        return [task for task_id in tasks if (task := self.queries.find_task(task_id)) is not None]

    def _describe_devices(self, changes, device_ids):
        for device_id in sorted(device_ids):
            device = self.queries.find_device(device_id)
            if device is None:
                changes["removed_devices"].append(device_id)
            else:
                changes["devices"].append(device_summary(device, self.shared))


class DashboardNamespace(Namespace):
    """Consoles connect here with ``auth: {token}``; without an operator token (when some are set) they are refused."""

    def __init__(self, feed, config):
        super().__init__(NAMESPACE)
        self.feed = feed
        self.config = config

    def on_connect(self, auth_data=None):
        token = auth_data.get("token") if isinstance(auth_data, dict) else None
        if not auth.operator_allowed(self.config, token):
            message = "操作员令牌无效，控制台拒绝连接" if token else "需要操作员令牌才能打开控制台"
            raise ConnectionRefusedError(message, {"message": message, "error_code": ErrorCode.UNAUTHORIZED})
        self.feed.watch(request.sid)
        emit("hello", {"flush_interval": self.feed.interval, "server_time": iso(self.feed.clock())})

    def on_disconnect(self, reason=None):
        self.feed.unwatch(request.sid)
