"""Task operations of ``TaskService``: what operators ask (dispatch, cancel) and what devices report."""

import hashlib
import json
import logging
from dataclasses import dataclass, replace

from taskserver import domain, logs
from taskserver.domain import ACTIVE, Event, Task, TaskStatus
from taskserver.errors import Forbidden, InvalidState, NotFound
from taskserver.present import attempts
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

SERVER_ENDED = frozenset({"TASK_TIMEOUT", "DEVICE_OFFLINE", "TASK_CANCELLED"})
STOPPED_BY_SERVER = frozenset({"TASK_TIMEOUT", "DEVICE_OFFLINE"})  # attempts whose device got (or is owed) a cancel
PROGRESS_MILESTONES = (25, 50, 75, 100)


@dataclass(frozen=True)
class DispatchRequest:
    """A validated dispatch: what the operator asked for, defaults already applied by the schemas."""

    task_type: str
    data: dict
    device_id: str | None = None
    priority: int = 0
    timeout: int | None = None
    max_retries: int = 0
    not_before: float | None = None
    idempotency_key: str | None = None
    operator: str = ""  # whose idempotency key: ``auth.token_identity`` of the operator token, "" if the API is open

    def fingerprint(self):
        """A hash of what the request asks for (neither its key nor its operator): a reused key must ask the same."""
        asked = [self.task_type, self.data, self.device_id, self.priority, self.timeout, self.max_retries]
        text = json.dumps([*asked, self.not_before], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class TaskOperations:
    """The part of ``TaskService`` that answers operators and devices about tasks."""

    @atomic
    def dispatch(self, request):
        """Store a new task (or find the one this idempotency key made) and dispatch what can go now.

        Returns ``(task, created)``."""
        now = self.clock()
        fingerprint = request.fingerprint() if request.idempotency_key else None
        if fingerprint is not None and (existing := self._keyed_task(request, fingerprint, now)) is not None:
            return existing, False
        if request.device_id is not None and self.store.get_device(request.device_id) is None:
            raise NotFound(f"设备 {request.device_id} 不存在", "DEVICE_NOT_FOUND")
        task = Task(
            task_id=domain.new_task_id(),
            task_type=request.task_type,
            data=request.data,
            target_device_id=request.device_id,
            priority=request.priority,
            timeout=request.timeout or self.config["TASK_TIMEOUT"],
            max_retries=request.max_retries,
            created_at=now,
            updated_at=now,
            not_before=request.not_before,
            idempotency_key=request.idempotency_key,
            idempotency_scope=request.operator if fingerprint else None,
            request_hash=fingerprint,
        )
        created = Event("created", "operator", request.device_id, {"task_type": task.task_type})
        device = self._device_for_new(task, now)
        if device is not None:  # nothing waits before it: store it already dispatched, in one write
            domain.check_transition(task.status, TaskStatus.DISPATCHED)
            dispatched = replace(task, **self._dispatch_changes(device, now))
            if not self.store.add_task(dispatched, created, Event("dispatched", "server", device.device_id)):
                device = None  # another writer took its last slot: the task queues instead
        if device is None:
            self.store.add_task(task, created)
        self.metrics.count(self.metrics.created, task.task_type)
        logs.event(log, "task created", task_id=task.task_id, task_type=task.task_type, device_id=request.device_id)
        if device is not None:
            self.notifier.task_changed(dispatched, (device.device_id,))
            self._sent(dispatched, device)
            return dispatched, True
        self.notifier.task_changed(task)
        sent = self.dispatch_pending(now)
        return next((sent_task for sent_task in sent if sent_task.task_id == task.task_id), task), True

    def _keyed_task(self, request, fingerprint, now):
        """The task this operator's idempotency key made within the window, or None; 409 if it asked for another
        task. Tasks stored before keys had owners and hashes match any operator and any request."""
        since = now - self.config["IDEMPOTENCY_WINDOW"]
        existing = self.store.find_task_by_idempotency_key(request.idempotency_key, since, request.operator)
        if existing is not None and existing.request_hash not in (None, fingerprint):
            raise InvalidState(
                f"幂等键 {request.idempotency_key} 已用于另一个内容不同的任务请求（{existing.task_id}）",
                "IDEMPOTENCY_KEY_REUSED",
            )
        return existing

    def _device_for_new(self, task, now):
        """A free device for a new task due now, if no pending task could start now (else it queues behind them),
        or None. Tasks scheduled for later or waiting for a device that cannot take them do not hold it back."""
        if task.not_before is not None and task.not_before > now:
            return None
        if self.store.has_pending_tasks() and self.store.due_pending_tasks(now, 1):
            return None
        include = [task.target_device_id] if task.target_device_id else []
        return domain.pick_device(task, self.store.free_devices(limit=1, include=include))

    @atomic
    def cancel(self, task_id):
        """Cancel a task that has not ended; its device, if it has one, is told now or when it returns."""
        task = self.get_task(task_id)
        if task.is_terminal:
            raise InvalidState(f"任务已结束（{task.status.value}），无法取消", "INVALID_STATE")
        now = self.clock()
        sid = self.connections.sid_of(task.device_id) if task.status in ACTIVE else None
        owed_to = task.device_id if task.status in ACTIVE and sid is None else None
        changes = {"finished_at": now, "error_code": "TASK_CANCELLED"}
        updated = self._move(task, TaskStatus.CANCELLED, changes, "cancelled", "operator", now, owe_cancel_to=owed_to)
        if updated is None:
            return self.cancel(task_id)
        if sid is not None:
            self.notifier.cancel_task(sid, task_id, task.attempt)
        self.metrics.count(self.metrics.cancels, task.task_type)
        logs.event(log, "task cancelled", task_id=task_id, device_id=task.device_id)
        self.dispatch_pending(now)
        return updated

    def get_task(self, task_id):
        """The task, or 404 ``TASK_NOT_FOUND``."""
        task = self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"任务 {task_id} 不存在", "TASK_NOT_FOUND")
        return task

    def holds_task(self, sid, task_id, attempt=None):
        """True if the task (in ``attempt``, if given) is dispatched to or running on the device this connection
        registered as: reports about it are bounded by what the server sent, so the rate limit spares them (a look
        in memory, made before any other work)."""
        device_id = self.connections.device_of(sid)
        return device_id is not None and self.store.task_active_on(task_id, device_id, attempt)

    @atomic
    def report_progress(self, sid, payload):
        """Record progress of the device's own current attempt; the first report marks the task running."""
        device_id = self._device_for(sid)
        self.metrics.device_event("task_progress")
        task = self.get_task(payload["task_id"])
        if task.is_terminal:
            self._check_had_task(task, device_id)
            raise InvalidState(f"任务已结束（{task.status.value}）", "TASK_FINISHED", task_id=task.task_id)
        self._check_owner(task, device_id, payload.get("attempt"))
        now = self.clock()
        progress, message = payload["progress"], payload.get("message")
        changes = {"progress": progress, "progress_message": message, "updated_at": now}
        event = self._progress_event(task, device_id, progress, message)
        if task.status == TaskStatus.DISPATCHED:
            changes["started_at"] = now
            detail = {"progress": progress, "message": message}
            updated = self._move(task, TaskStatus.RUNNING, changes, "started", device_id, now, detail=detail)
        else:
            updated = self.store.update_task_if(task, changes, event)
            if updated is not None:
                self.notifier.task_changed(updated)
        if updated is None:
            return self.report_progress(sid, payload)
        if task.status == TaskStatus.DISPATCHED or event is not None:
            what = "task started" if task.status == TaskStatus.DISPATCHED else "task progress"
            logs.event(log, what, logging.DEBUG, task_id=task.task_id, device_id=device_id, progress=progress)
        return {"success": True, "task_id": task.task_id, "status": updated.status.value, "progress": progress}

    @staticmethod
    def _progress_event(task, device_id, progress, message):
        """A history event when progress crosses a milestone (25, 50, 75, 100), else None."""
        if not any(task.progress < mark <= progress for mark in PROGRESS_MILESTONES):
            return None
        return Event("progress", device_id, device_id, {"progress": progress, "message": message})

    @atomic
    def report_result(self, sid, payload):
        """Finish the device's current attempt; late, duplicate and foreign results change nothing."""
        device_id = self._device_for(sid)
        self.metrics.device_event("task_result")
        task = self.get_task(payload["task_id"])
        result, attempt = payload["result"], payload.get("attempt")
        if task.is_terminal:
            return self._late_result(sid, task, device_id, result, attempt)
        stopped = self._cancelled_attempt(task, device_id, result, attempt)
        if stopped is not None:
            return self._cancel_answered(sid, task, device_id, stopped, f"第 {stopped} 次执行已取消")
        self._check_owner(task, device_id, attempt)
        now = self.clock()
        if result["success"]:
            changes = {"result": result, "progress": 100, "finished_at": now, "error_code": None}
            updated = self._move(task, TaskStatus.COMPLETED, changes, "completed", device_id, now)
        else:
            updated = self._end_attempt(task, result.get("error_code") or "TASK_FAILED", now, device_id, result)
        if updated is None:
            return self.report_result(sid, payload)
        self.metrics.result(task.task_type, result["success"], now - task.dispatched_at if task.dispatched_at else None)
        logs.event(log, "task result", task_id=task.task_id, device_id=device_id, status=updated.status.value)
        self.notifier.result_received(sid, task.task_id)
        self.dispatch_pending(now)
        return {"success": True, "task_id": task.task_id, "status": updated.status.value}

    def _late_result(self, sid, task, device_id, result, attempt):
        """A result for an ended task: a cancel confirmation or a duplicate is acknowledged, anything else refused."""
        self._check_had_task(task, device_id)
        if result.get("error_code") == "TASK_CANCELLED":
            return self._cancel_answered(sid, task, device_id, attempt or task.attempt, "任务已取消")
        if attempt not in (None, task.attempt):
            raise InvalidState("该任务的这次执行已失效", "STALE_ATTEMPT", task_id=task.task_id)
        if task.device_id == device_id and task.error_code not in SERVER_ENDED:
            self.notifier.result_received(sid, task.task_id)
            answer = {"success": True, "task_id": task.task_id, "status": task.status.value}
            return {**answer, "duplicate": True, "result": task.result, "message": "结果已记录"}
        raise InvalidState(f"任务已结束（{task.status.value}）", "TASK_FINISHED", task_id=task.task_id)

    def _cancelled_attempt(self, task, device_id, result, attempt):
        """The earlier attempt whose ``cancel_task`` this ``TASK_CANCELLED`` result answers, or None.

        An answer naming no attempt (the Android app's) is for the latest attempt the server stopped on this device,
        if there is one: never a failure of the attempt the device may be running now."""
        if result.get("error_code") != "TASK_CANCELLED" or attempt == task.attempt:
            return None
        mine = [a for a in attempts(self.store.task_events(task.task_id)) if a["device_id"] == device_id]
        stopped = [a["attempt"] for a in mine if a["error_code"] in STOPPED_BY_SERVER]
        if attempt is None:
            return stopped[-1] if stopped else None
        return attempt if attempt in stopped else None

    def _cancel_answered(self, sid, task, device_id, attempt, message):
        """The device's answer to the ``cancel_task`` of ``attempt``: recorded in the history, it changes nothing."""
        confirmed = Event("cancel_confirmed", device_id, device_id)
        self.store.add_event(task.task_id, self.clock(), confirmed, attempt)
        self.notifier.result_received(sid, task.task_id)
        return {"success": True, "task_id": task.task_id, "status": task.status.value, "message": message}

    def _check_had_task(self, task, device_id):
        """Refuse a device that never had the task (so it learns nothing about it)."""
        if not self.store.device_had_task(task.task_id, device_id):
            raise Forbidden("该任务不属于此设备", "NOT_TASK_OWNER", task_id=task.task_id)

    def _check_owner(self, task, device_id, attempt):
        """Refuse reports for a task that is not this device's current attempt."""
        current = task.device_id == device_id and task.status in ACTIVE
        if current and attempt in (None, task.attempt):
            return
        if self.store.device_had_task(task.task_id, device_id):
            raise InvalidState("该任务的这次执行已失效", "STALE_ATTEMPT", task_id=task.task_id)
        raise Forbidden("该任务不属于此设备", "NOT_TASK_OWNER", task_id=task.task_id)

    @atomic
    def task_delivered(self, task_id, device_id, attempt, *ack):
        """The device acknowledged ``new_task``: record the first delivery of the attempt. Delivery is not start: the
        task stays dispatched (and is sent again when the device registers) until its first progress."""
        task = self.store.get_task(task_id)
        if task is None or task.status not in ACTIVE or (task.device_id, task.attempt) != (device_id, attempt):
            return
        self.metrics.device_event("new_task_ack")
        if task.delivered_at is not None:  # a resent new_task, acknowledged again
            return
        now = self.clock()
        delivered = Event("delivered", device_id, device_id)
        updated = self.store.update_task_if(task, {"delivered_at": now, "updated_at": now}, delivered)
        if updated is not None:
            self.notifier.task_changed(updated)
            logs.event(log, "task delivered", logging.DEBUG, task_id=task_id, device_id=device_id, attempt=attempt)
