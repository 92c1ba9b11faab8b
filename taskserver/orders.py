"""What operators ask for, validated (the schemas build these from request bodies; the service carries them out)."""

import hashlib
import json
from dataclasses import dataclass


def created_by(request):
    """Who asks for the tasks of a ``DispatchRequest`` or ``BatchRequest``, as their ``created`` event names it: its
    actor, and what its detail adds."""
    if request.schedule_id is not None:
        return "schedule", {"schedule_id": request.schedule_id}
    return "operator", {}


@dataclass(frozen=True)
class DispatchRequest:
    """A validated dispatch: what the operator asked for, defaults already applied by the schemas."""

    task_type: str
    data: dict
    device_id: str | None = None
    tags: tuple | None = None  # sorted: any device with all of them (never with device_id)
    priority: int = 0
    timeout: int | None = None
    max_retries: int = 0
    not_before: float | None = None
    idempotency_key: str | None = None
    operator: str = ""  # whose idempotency key: ``auth.token_identity`` of the operator token, "" if the API is open
    schedule_id: str | None = None  # the schedule whose fire time asks for it (None: an operator)

    def fingerprint(self):
        """A hash of what the request asks for (neither its key nor its operator): a reused key must ask the same."""
        asked = [self.task_type, self.data, self.device_id, self.priority, self.timeout, self.max_retries]
        asked += [self.not_before, *([list(self.tags)] if self.tags else [])]  # no tags: hashes as before tags were
        text = json.dumps(asked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class BatchRequest:
    """A validated batch: ``tasks`` holds ``(data, not_before)`` per task to make (spread), or the one every matching
    device gets (each)."""

    task_type: str
    mode: str  # BatchMode
    target: dict  # exactly one of {"tags": [...]}, {"device_ids": [...]}, {"all": True}
    tasks: tuple
    online_only: bool = False
    priority: int = 0
    timeout: int | None = None
    max_retries: int = 0
    max_in_flight: int | None = None
    abort_failure_ratio: float | None = None
    abort_min_finished: int | None = None
    options: dict | None = None  # what was asked beside the above, kept for display
    idempotency_key: str | None = None
    operator: str = ""  # whose idempotency key (as on ``DispatchRequest``)
    schedule_id: str | None = None  # as on ``DispatchRequest``

    def fingerprint(self):
        """A hash of what the request asks for (neither its key nor its operator): a reused key must ask the same."""
        asked = [self.task_type, self.mode, self.target, self.tasks, self.online_only, self.priority, self.timeout]
        asked += [self.max_retries, self.max_in_flight, self.abort_failure_ratio, self.abort_min_finished]
        text = json.dumps(asked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ScheduleRequest:
    """A validated schedule: what each fire time creates (``kind``, and its ``body`` as the schemas loaded it, checked
    as each fire time will build its request) and when (``cron`` in ``timezone``)."""

    name: str
    cron: str
    kind: str
    body: dict
    timezone: str = "UTC"
    enabled: bool = True
    misfire: str = "coalesce"
