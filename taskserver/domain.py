"""States, the one transition table, and the pure rules of tasks and devices."""

import random
import time
from dataclasses import dataclass, field
from enum import StrEnum


class TaskStatus(StrEnum):
    """The spec's task states; values serialise as the plain strings the spec shows."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchStatus(StrEnum):
    """A batch's states: running until its tasks have all ended, or an abort or a cancel stopped it."""

    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


class BatchMode(StrEnum):
    """How a batch makes its tasks: one per matching device, pinned to it; or one per item, to any matching one."""

    EACH = "each"
    SPREAD = "spread"


class ScheduleKind(StrEnum):
    """What a schedule creates at each fire time."""

    TASK = "task"
    BATCH = "batch"


class Misfire(StrEnum):
    """What a schedule does with fire times that passed while no server ran it: one run for all of them, or none
    (only a fire time run on time, within ``service.schedules.MISFIRE_GRACE``, creates anything)."""

    COALESCE = "coalesce"
    SKIP = "skip"


class DeviceStatus(StrEnum):
    """The spec's device states, derived from connection and load (never stored)."""

    ONLINE = "online"
    BUSY = "busy"
    OFFLINE = "offline"


class TaskType(StrEnum):
    """The task types every server knows; more can be enabled by setting."""

    DELIST = "DELIST"
    COLLECT = "COLLECT"
    UPLOAD = "UPLOAD"


class Wake(StrEnum):
    """Why a node of a cluster wakes the others (the payload of its ``NOTIFY``)."""

    WORK = "work"  # a task may start on a device another node holds (a new pending task, a device enabled)
    CANCELS = "cancels"  # a cancel is owed to a device another node may hold


class EventKind(StrEnum):
    """What a history event records; values serialise as the plain strings the API lists."""

    # a task's history
    CREATED = "created"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    CANCELLED = "cancelled"
    CANCEL_CONFIRMED = "cancel_confirmed"
    # a device's own history
    REGISTERED = "registered"
    OFFLINE = "offline"
    DISABLED = "disabled"
    ENABLED = "enabled"


class ErrorCode(StrEnum):
    """Every ``error_code`` the server sends (in error bodies, socket ``error`` events and a task's ``error_code``);
    stable upper-case identifiers, documented in the API. A device may report codes of its own in a result."""

    # requests
    BAD_REQUEST = "BAD_REQUEST"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TASK_TYPE = "UNKNOWN_TASK_TYPE"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    NOT_READY = "NOT_READY"
    # credentials and connections
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"
    NOT_REGISTERED = "NOT_REGISTERED"
    DEVICE_REPLACED = "DEVICE_REPLACED"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    WEBSOCKET_REQUIRED = "WEBSOCKET_REQUIRED"
    # tasks and devices
    INVALID_STATE = "INVALID_STATE"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"
    DEVICE_ONLINE = "DEVICE_ONLINE"
    DEVICE_HAS_ACTIVE_TASKS = "DEVICE_HAS_ACTIVE_TASKS"
    DEVICE_HAS_PENDING_TASKS = "DEVICE_HAS_PENDING_TASKS"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    NOT_TASK_OWNER = "NOT_TASK_OWNER"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    TASK_FINISHED = "TASK_FINISHED"
    NO_MATCHING_DEVICES = "NO_MATCHING_DEVICES"
    BATCH_NOT_FOUND = "BATCH_NOT_FOUND"
    SCHEDULE_NOT_FOUND = "SCHEDULE_NOT_FOUND"
    # how an attempt ended
    TASK_TIMEOUT = "TASK_TIMEOUT"
    DEVICE_OFFLINE = "DEVICE_OFFLINE"
    TASK_CANCELLED = "TASK_CANCELLED"
    TASK_FAILED = "TASK_FAILED"
    BATCH_ABORTED = "BATCH_ABORTED"
    BATCH_CANCELLED = "BATCH_CANCELLED"


ACTIVE = frozenset({TaskStatus.DISPATCHED, TaskStatus.RUNNING})
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

TRANSITIONS = {
    TaskStatus.PENDING: frozenset({TaskStatus.DISPATCHED, TaskStatus.CANCELLED}),
    TaskStatus.DISPATCHED: frozenset(
        {TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING}
    ),
    TaskStatus.RUNNING: frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


MAX_BATCH = 10_000  # tasks one batch may make

BATCH_TRANSITIONS = {
    BatchStatus.RUNNING: frozenset({BatchStatus.COMPLETED, BatchStatus.ABORTED, BatchStatus.CANCELLED}),
    BatchStatus.COMPLETED: frozenset(),
    BatchStatus.ABORTED: frozenset(),
    BatchStatus.CANCELLED: frozenset(),
}


def new_task_id():
    """``task_`` and 32 hex digits: the creation time in microseconds (14), then 72 random bits (18). Ids in time
    order keep the store's new index entries together, so that a commit writes few pages. They name tasks and are
    listed by the API, they guard nothing: ``random``, not a system call for ``secrets``."""
    return f"task_{time.time_ns() // 1000:014x}{random.getrandbits(72):018x}"


def new_batch_id():
    """``batch_`` and 24 hex digits: the creation time in microseconds, then random bits (as ``new_task_id``)."""
    return f"batch_{time.time_ns() // 1000:014x}{random.getrandbits(40):010x}"


def new_schedule_id():
    """``schedule_`` and 24 hex digits: the creation time in microseconds, then random bits (as ``new_task_id``)."""
    return f"schedule_{time.time_ns() // 1000:014x}{random.getrandbits(40):010x}"


def check_transition(current, target):
    """Return ``target`` if ``current -> target`` is allowed, else raise ``InvalidTransition``."""
    current, target = TaskStatus(current), TaskStatus(target)
    if target not in TRANSITIONS[current]:
        from taskserver.errors import InvalidTransition  # not at the top: errors.py imports ErrorCode from here

        raise InvalidTransition(f"任务状态不能从 {current.value} 变为 {target.value}")
    return target


def check_batch_transition(current, target):
    """Return ``target`` if a batch may move from ``current`` to it, else raise ``InvalidTransition``."""
    current, target = BatchStatus(current), BatchStatus(target)
    if target not in BATCH_TRANSITIONS[current]:
        from taskserver.errors import InvalidTransition

        raise InvalidTransition(f"批次状态不能从 {current.value} 变为 {target.value}")
    return target


def check_change(current, target):
    """Return ``target`` if a stored task in ``current`` may change to ``target``: an allowed transition, or a change
    that keeps an active task in its status (progress, delivery); else raise ``InvalidTransition``."""
    if target == current and current in ACTIVE:
        return target
    return check_transition(current, target)


@dataclass(frozen=True)
class Task:
    """One task as the store keeps it; times are epoch seconds (server clock)."""

    task_id: str
    task_type: str
    data: dict
    status: TaskStatus = TaskStatus.PENDING
    device_id: str | None = None
    target_device_id: str | None = None
    avoid_device_id: str | None = None
    priority: int = 0
    timeout: int = 300
    max_retries: int = 0
    attempt: int = 1
    progress: int = 0
    progress_message: str | None = None
    result: dict | None = None
    error_code: str | None = None
    created_at: float = 0.0
    dispatched_at: float | None = None
    delivered_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    not_before: float | None = None
    idempotency_key: str | None = None
    # With a key: whose key it is (``auth.token_identity`` of the operator token, "" on an open server; None on rows
    # made before keys had owners) and ``DispatchRequest.fingerprint`` of what was asked (None on such rows too).
    idempotency_scope: str | None = None
    request_hash: str | None = None
    target_tags: list | None = None  # sorted: any device that has all of them may take the task
    batch_id: str | None = None  # the batch that made the task

    @property
    def is_terminal(self):
        """True once the task has ended for good."""
        return self.status in TERMINAL


@dataclass
class Device:
    """One phone as the store keeps it; ``active_tasks`` is filled in by the store on read."""

    device_id: str
    device_name: str
    device_info: dict = field(default_factory=dict)
    capacity: int = 1
    connected: bool = False
    sid: str | None = None
    registered_at: float | None = None
    last_heartbeat: float | None = None
    disconnected_at: float | None = None
    created_at: float = 0.0
    active_tasks: int = 0
    disabled: bool = False  # drained by an operator: keeps its tasks, gets no new ones
    tags: list = field(default_factory=list)  # sorted union of ``device_info["tags"]`` and ``operator_tags``
    operator_tags: list = field(default_factory=list)  # set by an operator, kept across registrations
    node_id: str | None = None  # on a cluster: the node holding its connection (PostgreSQL's column, set by it)

    @property
    def status(self):
        """Offline unless connected; busy when its active tasks fill its capacity."""
        if not self.connected:
            return DeviceStatus.OFFLINE
        return DeviceStatus.BUSY if self.active_tasks >= self.capacity else DeviceStatus.ONLINE

    @property
    def free_slots(self):
        """How many more tasks the device can take now (0 when offline or disabled)."""
        return max(self.capacity - self.active_tasks, 0) if self.connected and not self.disabled else 0


@dataclass
class Batch:
    """Many tasks made by one request. The counters count its tasks that ended, by final status; the store keeps
    them as its tasks end."""

    batch_id: str
    task_type: str
    mode: str
    target: dict
    options: dict
    total: int
    status: BatchStatus = BatchStatus.RUNNING
    max_in_flight: int | None = None
    abort_failure_ratio: float | None = None
    abort_min_finished: int | None = None
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    idempotency_key: str | None = None  # with a key: whose it is and a hash of what was asked, as on tasks
    idempotency_scope: str | None = None
    request_hash: str | None = None

    @property
    def ended(self):
        """How many of its tasks have ended (completed, failed or cancelled)."""
        return self.completed + self.failed + self.cancelled

    @property
    def should_abort(self):
        """True once its abort rule holds: at least ``abort_min_finished`` tasks ran to an outcome (completed or
        failed; a cancel says nothing about the rollout) and the failed share of them reached the ratio."""
        outcomes = self.completed + self.failed
        if self.abort_failure_ratio is None or outcomes == 0 or outcomes < (self.abort_min_finished or 1):
            return False
        return self.failed / outcomes >= self.abort_failure_ratio


@dataclass(frozen=True)
class Schedule:
    """A recurring dispatch: each fire time of ``cron`` in ``timezone`` creates ``body`` (a dispatch or a batch body,
    as the schemas loaded it) once. ``next_run_at`` is the next fire time not yet run, None while disabled."""

    schedule_id: str
    name: str
    cron: str
    timezone: str
    kind: ScheduleKind
    body: dict
    enabled: bool = True
    misfire: Misfire = Misfire.COALESCE
    next_run_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ScheduleRun:
    """One fire time run: what it created (``task_id`` or ``batch_id``), or why it created nothing (``error``,
    ``{message, error_code}``)."""

    schedule_id: str
    fire_at: float
    ran_at: float
    task_id: str | None = None
    batch_id: str | None = None
    error: dict | None = None


@dataclass(frozen=True)
class Event:
    """One line of a task's history: what happened, who did it, and any detail."""

    kind: str
    actor: str
    device_id: str | None = None
    detail: dict | None = None


def retry_backoff(attempt, base, cap):
    """Seconds to wait before attempt ``attempt + 1``: ``base`` doubling per attempt, capped at ``cap``."""
    return min(base * (2 ** max(attempt - 1, 0)), cap)


def retries_left(task):
    """True when the task may start another attempt after this one fails."""
    return task.attempt <= task.max_retries


def device_tags(device_info, operator_tags):
    """A device's tags: those it registered with (``device_info["tags"]``, strings only) and an operator's, sorted."""
    registered = device_info.get("tags") if isinstance(device_info, dict) else None
    registered = [tag for tag in registered if isinstance(tag, str)] if isinstance(registered, list) else []
    return sorted({*registered, *operator_tags})


def has_tags(device, tags):
    """True if the device has every one of ``tags`` (None or empty: any device)."""
    return not tags or set(tags) <= set(device.tags)


def pick_device(task, devices):
    """The device a pending task should go to, or None: its target, else the least-loaded with the task's tags,
    avoiding a failed one."""
    free = [d for d in devices if d.free_slots > 0 and has_tags(d, task.target_tags)]
    if task.target_device_id is not None:
        return next((d for d in free if d.device_id == task.target_device_id), None)
    if not free:
        return None
    preferred = [d for d in free if d.device_id != task.avoid_device_id] or free
    return min(preferred, key=lambda d: (d.active_tasks, d.registered_at or 0.0))
