"""The task lifecycle: what devices report (progress, results), operators' cancels, and attempts that end: in failure,
by timeout, or because their device stayed away."""

import logging

from taskserver import domain, logs
from taskserver.domain import ACTIVE, BatchStatus, ErrorCode, Event, EventKind, TaskStatus, Wake
from taskserver.errors import Forbidden, InvalidState
from taskserver.present import attempts, iso
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

SERVER_ENDED = frozenset({ErrorCode.TASK_TIMEOUT, ErrorCode.DEVICE_OFFLINE, ErrorCode.TASK_CANCELLED})
# attempts whose device got (or is owed) a cancel
STOPPED_BY_SERVER = frozenset({ErrorCode.TASK_TIMEOUT, ErrorCode.DEVICE_OFFLINE})
PROGRESS_MILESTONES = (25, 50, 75, 100)


class TaskLifecycle:
    """Moves dispatched and running tasks on to their end (or back to pending for a retry); every change goes through
    ``TaskMoves``. Reports are taken only from the device the registry says the connection is."""

    def __init__(self, store, queries, moves, notifier, config, clock, metrics, connections, registry, dispatcher):
        self.store = store
        self.queries = queries
        self.moves = moves
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.connections = connections
        self.registry = registry
        self.dispatcher = dispatcher

    @atomic
    def cancel(self, task_id):
        """Cancel a task that has not ended; its device, if it has one, is told now or when it returns."""
        task = self.queries.task(task_id)
        if task.is_terminal:
            raise InvalidState(f"任务已结束（{task.status.value}），无法取消", ErrorCode.INVALID_STATE)
        now = self.clock()
        updated = self.end_by_operator(task, now, ErrorCode.TASK_CANCELLED)
        if updated is None:
            return self.cancel(task_id)
        self.dispatcher.dispatch_pending(now)
        return updated

    def end_by_operator(self, task, now, error_code):
        """Cancel the task as read (with ``error_code``: the operator's cancel, or its batch's); its device, if it
        has one, is told now or when it returns. Return it, or None if it changed meanwhile."""
        sid = self.connections.sid_of(task.device_id) if task.status in ACTIVE else None
        owed_to = task.device_id if task.status in ACTIVE and sid is None else None
        changes = {"finished_at": now, "error_code": error_code}
        detail = None if error_code == ErrorCode.TASK_CANCELLED else {"error_code": error_code}
        cancelled = Event(EventKind.CANCELLED, "operator", task.device_id, detail)
        updated = self.moves.move(task, TaskStatus.CANCELLED, changes, cancelled, now, owe_cancel_to=owed_to)
        if updated is None:
            return None
        if owed_to is not None:
            self.store.wake_nodes(Wake.CANCELS, owed_to)  # another node may hold the device's connection
        if sid is not None:
            self.notifier.cancel_task(sid, task.task_id, task.attempt)
        self.metrics.count(self.metrics.cancels, task.task_type)
        logs.event(log, "task cancelled", task_id=task.task_id, device_id=task.device_id, error_code=error_code)
        return updated

    @atomic
    def report_progress(self, sid, payload):
        """Record progress of the device's own current attempt; the first report marks the task running."""
        device_id = self.registry.device_for(sid)
        self.metrics.device_event("task_progress")
        task = self.queries.task(payload["task_id"])
        if task.is_terminal:
            self._check_had_task(task, device_id)
            raise InvalidState(f"任务已结束（{task.status.value}）", ErrorCode.TASK_FINISHED, task_id=task.task_id)
        self._check_owner(task, device_id, payload.get("attempt"))
        now = self.clock()
        progress, message = payload["progress"], payload.get("message")
        changes = {"progress": progress, "progress_message": message}
        event = self._progress_event(task, device_id, progress, message)
        if task.status == TaskStatus.DISPATCHED:
            changes["started_at"] = now
            started = Event(EventKind.STARTED, device_id, device_id, {"progress": progress, "message": message})
            updated = self.moves.move(task, TaskStatus.RUNNING, changes, started, now)
        else:
            updated = self.moves.move(task, task.status, changes, event, now)
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
        return Event(EventKind.PROGRESS, device_id, device_id, {"progress": progress, "message": message})

    @atomic
    def report_result(self, sid, payload):
        """Finish the device's current attempt; late, duplicate and foreign results change nothing."""
        device_id = self.registry.device_for(sid)
        self.metrics.device_event("task_result")
        task = self.queries.task(payload["task_id"])
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
            completed = Event(EventKind.COMPLETED, device_id, device_id)
            updated = self.moves.move(task, TaskStatus.COMPLETED, changes, completed, now)
        else:
            updated = self._end_attempt(task, result.get("error_code") or ErrorCode.TASK_FAILED, now, device_id, result)
        if updated is None:
            return self.report_result(sid, payload)
        self.metrics.result(task.task_type, result["success"], now - task.dispatched_at if task.dispatched_at else None)
        logs.event(log, "task result", task_id=task.task_id, device_id=device_id, status=updated.status.value)
        self.notifier.result_received(sid, task.task_id)
        self.dispatcher.dispatch_pending(now)
        return {"success": True, "task_id": task.task_id, "status": updated.status.value}

    def _late_result(self, sid, task, device_id, result, attempt):
        """A result for an ended task: a cancel confirmation or a duplicate is acknowledged, anything else refused."""
        self._check_had_task(task, device_id)
        if result.get("error_code") == ErrorCode.TASK_CANCELLED:
            return self._cancel_answered(sid, task, device_id, attempt or task.attempt, "任务已取消")
        if attempt not in (None, task.attempt):
            raise InvalidState("该任务的这次执行已失效", ErrorCode.STALE_ATTEMPT, task_id=task.task_id)
        if task.device_id == device_id and task.error_code not in SERVER_ENDED:
            self.notifier.result_received(sid, task.task_id)
            answer = {"success": True, "task_id": task.task_id, "status": task.status.value}
            return {**answer, "duplicate": True, "result": task.result, "message": "结果已记录"}
        raise InvalidState(f"任务已结束（{task.status.value}）", ErrorCode.TASK_FINISHED, task_id=task.task_id)

    def _cancelled_attempt(self, task, device_id, result, attempt):
        """The earlier attempt whose ``cancel_task`` this ``TASK_CANCELLED`` result answers, or None.

        An answer naming no attempt (the Android app's) is for the latest attempt the server stopped on this device,
        if there is one: never a failure of the attempt the device may be running now."""
        if result.get("error_code") != ErrorCode.TASK_CANCELLED or attempt == task.attempt:
            return None
        mine = [a for a in attempts(self.store.task_events(task.task_id)) if a["device_id"] == device_id]
        stopped = [a["attempt"] for a in mine if a["error_code"] in STOPPED_BY_SERVER]
        if attempt is None:
            return stopped[-1] if stopped else None
        return attempt if attempt in stopped else None

    def _cancel_answered(self, sid, task, device_id, attempt, message):
        """The device's answer to the ``cancel_task`` of ``attempt``: recorded in the history, it changes nothing."""
        confirmed = Event(EventKind.CANCEL_CONFIRMED, device_id, device_id)
        self.store.add_event(task.task_id, self.clock(), confirmed, attempt)
        self.notifier.result_received(sid, task.task_id)
        return {"success": True, "task_id": task.task_id, "status": task.status.value, "message": message}

    def _check_had_task(self, task, device_id):
        """Refuse a device that never had the task (so it learns nothing about it)."""
        if not self.store.device_had_task(task.task_id, device_id):
            raise Forbidden("该任务不属于此设备", ErrorCode.NOT_TASK_OWNER, task_id=task.task_id)

    def _check_owner(self, task, device_id, attempt):
        """Refuse reports for a task that is not this device's current attempt."""
        current = task.device_id == device_id and task.status in ACTIVE
        if current and attempt in (None, task.attempt):
            return
        if self.store.device_had_task(task.task_id, device_id):
            raise InvalidState("该任务的这次执行已失效", ErrorCode.STALE_ATTEMPT, task_id=task.task_id)
        raise Forbidden("该任务不属于此设备", ErrorCode.NOT_TASK_OWNER, task_id=task.task_id)

    def _end_attempt(self, task, error_code, now, actor, result=None, tell_device=False):
        """End the current attempt in failure: back to pending after a backoff if retries are left, else failed."""
        changes = {"error_code": error_code, "result": result}
        if domain.retries_left(task) and not self._batch_stopped(task):
            delay = domain.retry_backoff(task.attempt, self.config["RETRY_DELAY"], self.config["RETRY_DELAY_MAX"])
            changes.update(
                device_id=None,
                avoid_device_id=task.device_id,
                attempt=task.attempt + 1,
                not_before=now + delay,
                progress=0,
                progress_message=None,
            )
            target, kind = TaskStatus.PENDING, EventKind.RETRY_SCHEDULED
            detail_extra = {"retry_at": iso(now + delay)}
        else:
            changes["finished_at"] = now
            target, kind = TaskStatus.FAILED, EventKind.FAILED
            detail_extra = {}
        sid = self.connections.sid_of(task.device_id) if tell_device else None
        owed_to = task.device_id if tell_device and sid is None else None
        event = Event(kind, actor, task.device_id, {"error_code": error_code, **detail_extra})
        updated = self.moves.move(task, target, changes, event, now, owe_cancel_to=owed_to)
        if updated is not None:
            if owed_to is not None:
                self.store.wake_nodes(Wake.CANCELS, owed_to)  # another node may hold the device's connection
            self.metrics.attempt_ended(task.task_type, error_code, retried=target == TaskStatus.PENDING)
            logs.event(
                log,
                "attempt ended",
                task_id=task.task_id,
                device_id=task.device_id,
                error_code=error_code,
                status=updated.status.value,
            )
            if sid is not None:
                self.notifier.cancel_task(sid, task.task_id, task.attempt)
        return updated

    def _batch_stopped(self, task):
        """True if the task's batch was aborted or cancelled: its tasks are not tried again."""
        return task.batch_id is not None and self.store.get_batch(task.batch_id).status != BatchStatus.RUNNING

    @atomic
    def expire_timeouts(self, now, limit=None):
        """End attempts that outlived their timeout (at most ``limit``); the device is told to stop. Return how many
        were found."""
        tasks = self.store.timed_out_tasks(now, limit)
        for task in tasks:
            self._end_attempt(task, ErrorCode.TASK_TIMEOUT, now, "watchdog", tell_device=True)
        return len(tasks)

    @atomic
    def expire_lost_devices(self, now, limit=None):
        """End attempts whose device stayed away longer than the grace (at most ``limit``); return how many."""
        tasks = self.store.tasks_of_lost_devices(now - self.config["DEVICE_LOST_GRACE"], limit)
        for task in tasks:
            self._end_attempt(task, ErrorCode.DEVICE_OFFLINE, now, "watchdog", tell_device=True)
        return len(tasks)
