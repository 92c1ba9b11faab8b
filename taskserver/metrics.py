"""Prometheus metrics: counters and a histogram fed by the service, gauges read from the store at scrape time."""

from functools import partial

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from taskserver.domain import DeviceStatus, ErrorCode, TaskStatus

disable_created_metrics()  # no "<name>_created" series beside every counter: half the scrape, nothing lost to us

LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DEVICE_EVENTS = ("device_register", "heartbeat", "task_progress", "task_result", "new_task_ack", "disconnect")


class Metrics:
    """The app's metrics, in a registry of its own (tests build many apps in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, task_types=(), after_commit=None):
        # Task counters move once what they count is committed (the store's ``after_commit``): a failed commit
        # counts nothing. Device events are counted as they are handled.
        self._after_commit = after_commit or (lambda callback: callback())
        self.registry = registry = CollectorRegistry()
        self._exposed = registry  # what a scrape collects (the registry, or on a cluster a view naming the node)
        by_type = {"labelnames": ["task_type"], "registry": registry}
        self.created = Counter("taskserver_tasks_created", "Tasks created by operators.", **by_type)
        self.dispatches = Counter("taskserver_dispatches", "Attempts sent to a device.", **by_type)
        self.timeouts = Counter("taskserver_timeouts", "Attempts ended by their timeout.", **by_type)
        self.lost = Counter("taskserver_lost_attempts", "Attempts ended because their device stayed away.", **by_type)
        self.retries = Counter("taskserver_retries", "Failed attempts sent back to pending for a retry.", **by_type)
        self.cancels = Counter("taskserver_cancels", "Tasks cancelled by an operator.", **by_type)
        self.results = Counter(
            "taskserver_results",
            "Results reported by devices, by outcome (success or failure).",
            ["task_type", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "taskserver_dispatch_to_result_seconds",
            "Seconds from dispatching an attempt to its device's result.",
            ["task_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.device_events = Counter(
            "taskserver_device_events", "Events from devices handled, by event.", ["event"], registry=registry
        )
        self.task_types = [str(task_type) for task_type in task_types]
        for task_type in self.task_types:  # known types show 0 from the start instead of no series at all
            for family in (self.created, self.dispatches, self.timeouts, self.lost, self.retries, self.cancels):
                family.labels(task_type)
            for outcome in ("success", "failure"):
                self.results.labels(task_type, outcome)
            self.latency.labels(task_type)
        self._children = {}  # (family, label values) -> the labelled child, so that counting skips labels()
        for name in DEVICE_EVENTS:
            self._child(self.device_events, name)

    def watch(self, service, watchdog=None):
        """Add the gauges read at scrape time: devices and tasks from the store, the watchdog's health."""
        self.registry.register(StateCollector(service, watchdog, self.task_types))

    def label_node(self, node_id):
        """On a cluster: give every series a ``node`` label, ``node_id()`` (read at each scrape: a node that joins
        again has a new id), so that the scrapes of several nodes stay apart."""
        self._exposed = NodeLabel(self.registry, node_id)

    def render(self):
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._exposed)

    def _child(self, family, *values):
        child = self._children.get((family, values))
        if child is None:
            child = self._children[family, values] = family.labels(*values)
        return child

    def count(self, family, *values, amount=1):
        """Add ``amount`` to ``family``'s series for these label values (``created``, ``dispatches``, ``cancels``,
        ...), once the change it counts is committed."""
        child = self._child(family, *values)
        self._after_commit(child.inc if amount == 1 else lambda: child.inc(amount))

    def device_event(self, name):
        """Count one event handled for a device."""
        self._child(self.device_events, name).inc()

    def result(self, task_type, success, seconds):
        """Count a device's result and observe how long its attempt took (once the result is committed)."""
        self.count(self.results, task_type, "success" if success else "failure")
        if seconds is not None:
            self._after_commit(partial(self._child(self.latency, task_type).observe, max(seconds, 0.0)))

    def attempt_ended(self, task_type, error_code, retried):
        """Count an attempt that ended in failure: timeouts, lost devices, retries."""
        if error_code == ErrorCode.TASK_TIMEOUT:
            self.count(self.timeouts, task_type)
        elif error_code == ErrorCode.DEVICE_OFFLINE:
            self.count(self.lost, task_type)
        if retried:
            self.count(self.retries, task_type)


class NodeLabel:
    """Collects a registry's metrics with a ``node`` label added to every sample."""

    def __init__(self, registry, node_id):
        self.registry = registry
        self.node_id = node_id

    def collect(self):
        node = self.node_id()
        for family in self.registry.collect():  # each scrape builds fresh families: relabelling them is safe
            family.samples = [sample._replace(labels={**sample.labels, "node": node}) for sample in family.samples]
            yield family


class StateCollector:
    """Gauges computed when Prometheus scrapes, so that no event has to keep them up to date."""

    def __init__(self, service, watchdog, task_types=()):
        self.service = service
        self.watchdog = watchdog
        self.task_types = task_types

    def collect(self):
        yield from self._devices()
        yield self._tasks()
        yield from self._watchdog()

    def _devices(self):
        counts = self.service.queries.count_devices_by_status()
        devices = GaugeMetricFamily("taskserver_devices", "Known devices by status.", labels=["status"])
        for status in DeviceStatus:
            devices.add_metric([status.value], sum(n for (s, _), n in counts.items() if s == status.value))
        yield devices
        disabled = sum(n for (_, is_disabled), n in counts.items() if is_disabled)
        yield GaugeMetricFamily("taskserver_devices_disabled", "Devices disabled (drained) by an operator.", disabled)

    def _tasks(self):
        counts = self.service.queries.count_tasks_by_status_and_type()
        types = sorted({*self.task_types, *(task_type for _, task_type in counts)})
        tasks = GaugeMetricFamily(
            "taskserver_tasks", "Stored tasks by status and type.", labels=["status", "task_type"]
        )
        for task_type in types:
            for status in TaskStatus:
                tasks.add_metric([status.value, task_type], counts.get((status.value, task_type), 0))
        return tasks

    def _watchdog(self):
        health = self.watchdog.health() if self.watchdog is not None else None
        running = health is not None and health["running"]
        yield GaugeMetricFamily("taskserver_watchdog_running", "1 while the watchdog loop runs.", int(running))
        if health is None:
            return
        yield GaugeMetricFamily(
            "taskserver_watchdog_lag_seconds", "How late the last sweep started, beyond its interval.", health["lag"]
        )
        if health["last_sweep_age"] is not None:
            yield GaugeMetricFamily(
                "taskserver_watchdog_last_sweep_age_seconds",
                "Seconds since the last successful sweep.",
                health["last_sweep_age"],
            )
