"""The service: every change of task or device state happens here, and nowhere else.

A few objects, each given its collaborators in its constructor:

- ``TaskMoves`` (``moves.py``): the one place a stored task is created or changes;
- ``Dispatcher`` (``dispatcher.py``): new tasks, idempotency, pending tasks to free devices, ``new_task`` and its ack;
- ``DeviceRegistry`` (``registry.py``): connections, registration, heartbeats, draining, tokens, silent devices;
- ``TaskLifecycle`` (``lifecycle.py``): progress, results, cancels, the end of attempts, timeouts, lost devices;
- ``Batches`` (``batches.py``): many tasks in one request, their rollout limit, abort rule and cancel;
- ``Queries`` (``queries.py``): what views read;
- ``Schedules`` (``schedules.py``): recurring schedules, each fire time creating its task or batch once.

``TaskService`` builds them and is the transports' one entry point: they call the part that owns what they ask."""

import time

import gevent

from taskserver.connections import Connections
from taskserver.credentials import DeviceCredentials
from taskserver.domain import Wake
from taskserver.metrics import Metrics
from taskserver.orders import DispatchRequest
from taskserver.service.batches import Batches
from taskserver.service.dispatcher import Dispatcher
from taskserver.service.lifecycle import TaskLifecycle
from taskserver.service.moves import TaskMoves
from taskserver.service.queries import Queries
from taskserver.service.registry import DeviceRegistry
from taskserver.service.schedules import Schedules

__all__ = ["DispatchRequest", "TaskService"]


class TaskService:
    """Holds the service's parts: ``devices``, ``dispatcher``, ``tasks`` (the lifecycle), ``batches``, ``queries``
    and ``schedules``, and what they share (the store, the notifier, the clock, the metrics, the live connections)."""

    def __init__(self, store, notifier, config, clock=time.time, metrics=None, spawn=gevent.spawn):
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.metrics = metrics = metrics or Metrics()
        self.connections = connections = Connections()
        self.queries = queries = Queries(store, connections, clock, clustered=bool(config["MESSAGE_QUEUE"]))
        moves = TaskMoves(store, notifier)
        self.dispatcher = dispatcher = Dispatcher(store, moves, notifier, config, clock, metrics, spawn)
        credentials = DeviceCredentials(store, config["DEVICE_TOKENS"], clock)
        self.devices = registry = DeviceRegistry(
            store, queries, notifier, config, clock, metrics, connections, credentials, dispatcher
        )
        self.tasks = lifecycle = TaskLifecycle(
            store, queries, moves, notifier, config, clock, metrics, connections, registry, dispatcher
        )
        self.batches = Batches(store, moves, lifecycle, dispatcher, config, clock, metrics, spawn)
        moves.batch_task_ended = self.batches.task_ended
        self.schedules = Schedules(store, dispatcher, self.batches, config, clock)

    def wake_up(self, reason=None):
        """Another node left work (``Wake.WORK``: a task that may start on a device this node holds;
        ``Wake.CANCELS``: a cancel owed to one; None: either, as after the wake-ups' connection was lost): look for
        it, unless this node holds no device to give it to."""
        if not self.connections:
            return
        if reason in (None, Wake.WORK):
            self.dispatcher.look_again_later()
        if reason in (None, Wake.CANCELS):
            self.devices.deliver_owed_cancels()

    def recover_on_start(self):
        """No connection survives a restart: every device is offline and its tasks get a fresh grace."""
        self.devices.recover_on_start()
