"""What the device SDK works with: a task as handlers see it, results on their way to the server."""

import json
import threading
from dataclasses import dataclass, field

# Refusals that mean the server already has this result or will never take it: the result leaves the outbox.
FINAL_REFUSALS = frozenset({"TASK_FINISHED", "STALE_ATTEMPT", "NOT_TASK_OWNER", "TASK_NOT_FOUND"})
MAX_REFUSALS = 5  # any other refusal (INTERNAL_ERROR, ...) is retried this many times, then the result is dropped
MAX_MESSAGE = 1000


@dataclass
class Task:
    """A task as a handler sees it; ``cancelled`` is set when the server cancels it or the agent stops."""

    task_id: str
    task_type: str
    data: dict
    attempt: int | None = None
    timeout: int | None = None
    priority: int = 0
    created_at: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    last_progress: tuple | None = field(default=None, repr=False)

    @classmethod
    def from_message(cls, message):
        """Build from the ``new_task`` payload."""
        return cls(
            task_id=message["task_id"],
            task_type=message.get("task_type"),
            data=message.get("data") or {},
            attempt=message.get("attempt"),
            timeout=message.get("timeout"),
            priority=message.get("priority") or 0,
            created_at=message.get("created_at"),
        )

    @property
    def key(self):
        return self.task_id, self.attempt

    @property
    def is_cancelled(self):
        """True once the task was cancelled."""
        return self.cancelled.is_set()


@dataclass
class Outgoing:
    """A result waiting in the outbox for the server's acknowledgement."""

    task_id: str
    attempt: int | None
    result: dict
    refusals: int = 0
    trimmed: bool = False

    @property
    def payload(self):
        return with_attempt({"task_id": self.task_id, "result": self.result}, self.attempt)


def with_attempt(payload, attempt):
    if attempt is not None:
        payload["attempt"] = attempt
    return payload


def result_of(outcome):
    """Turn a handler's return value (None, True/False or a dict) into the ``result`` the server stores."""
    if outcome is None or isinstance(outcome, bool):
        return {"success": outcome is not False}
    if isinstance(outcome, dict):
        result = {"success": True, **outcome}
        result["success"] = bool(result["success"])
        json.dumps(result)  # refuse what cannot be sent, here, where the handler's error is reported
        return result
    raise TypeError(f"handler returned {type(outcome).__name__}; expected a dict, True/False or None")


def failure(error_code, message):
    """A failed result."""
    return {"success": False, "error_code": error_code, "message": message[:MAX_MESSAGE]}


def trimmed(result, refusal):
    """The part of a result the server refused as invalid that it always takes, so the task still ends."""
    code = result.get("error_code")
    valid_code = isinstance(code, str) and 0 < len(code) <= 128
    message = f"结果未通过服务器校验，已精简: {refusal.get('errors') or refusal.get('message')}"
    minimal = {"success": bool(result.get("success")), "message": message[:MAX_MESSAGE]}
    if not minimal["success"]:
        minimal["error_code"] = code if valid_code else "TASK_FAILED"
    return minimal
