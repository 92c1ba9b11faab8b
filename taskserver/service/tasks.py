"""Task operations of ``TaskService``: what operators ask (dispatch, cancel) and what devices report."""

import logging
from dataclasses import dataclass, replace

from taskserver import domain, logs
from taskserver.domain import ACTIVE, Event, Task, TaskStatus
from taskserver.errors import Forbidden, InvalidState, NotFound
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

SERVER_ENDED = frozenset({"TASK_TIMEOUT", "DEVICE_OFFLINE", "TASK_CANCELLED"})
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


class TaskOperations:
    """The part of ``TaskService`` that answers operators and devices about tasks."""

    @atomic
    def dispatch(self, request):
        """Store a new task (or find the one this idempotency key made) and dispatch what can go now.

        Returns ``(task, created)``."""
        now = self.clock()
        if request.idempotency_key:
            since = now - self.config["IDEMPOTENCY_WINDOW"]
            existing = self.store.find_task_by_idempotency_key(request.idempotency_key, since)
            if existing is not None:
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
        )
        created = Event("created", "operator", request.device_id, {"task_type": task.task_type})
        device = self._device_for_new(task, now)
        if device is not None:  # nothing waits before it: store it already dispatched, in one write
            domain.check_transition(task.status, TaskStatus.DISPATCHED)
            dispatched = replace(task, **self._dispatch_changes(device, now))
            self.store.add_task(dispatched, created, Event("dispatched", "server", device.device_id))
        else:
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
            self.notifier.cancel_task(sid, task_id)
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
        result = payload["result"]
        if task.is_terminal:
            return self._late_result(sid, task, device_id, result)
        self._check_owner(task, device_id, payload.get("attempt"))
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

    def _late_result(self, sid, task, device_id, result):
        """A result for an ended task: a cancel confirmation or a duplicate is acknowledged, anything else refused."""
        self._check_had_task(task, device_id)
        answer = {"success": True, "task_id": task.task_id, "status": task.status.value}
        if result.get("error_code") == "TASK_CANCELLED":
            confirmed = Event("cancel_confirmed", device_id, device_id)
            self.store.add_event(task.task_id, self.clock(), confirmed, task.attempt)
            self.notifier.result_received(sid, task.task_id)
            return {**answer, "message": "任务已取消"}
        if task.device_id == device_id and task.error_code not in SERVER_ENDED:
            self.notifier.result_received(sid, task.task_id)
            return {**answer, "duplicate": True, "result": task.result, "message": "结果已记录"}
        raise InvalidState(f"任务已结束（{task.status.value}）", "TASK_FINISHED", task_id=task.task_id)

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
        """The device acknowledged ``new_task``: record delivery; the task is running from now."""
        task = self.store.get_task(task_id)
        if task is None or task.status != TaskStatus.DISPATCHED or task.device_id != device_id:
            return
        if task.attempt != attempt:
            return
        now = self.clock()
        self.metrics.device_event("new_task_ack")
        if self._move(task, TaskStatus.RUNNING, {"delivered_at": now, "started_at": now}, "delivered", device_id, now):
            logs.event(log, "task delivered", logging.DEBUG, task_id=task_id, device_id=device_id, attempt=attempt)
