"""Batches: many tasks made by one request, released under a rollout limit, stopped by an abort rule or a cancel."""

import logging

from taskserver import domain, logs
from taskserver.domain import (
    MAX_BATCH,
    Batch,
    BatchMode,
    BatchStatus,
    ErrorCode,
    Event,
    EventKind,
    Task,
    TaskStatus,
    Wake,
)
from taskserver.errors import InvalidState, NotFound, TaskServerError, ValidationFailed
from taskserver.orders import created_by
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

NOT_ENDED = (TaskStatus.PENDING, TaskStatus.DISPATCHED, TaskStatus.RUNNING)
CANCEL_CHUNK = 500  # tasks a batch's cancel or abort ends per unit of work (others run between two chunks)


class Batches:
    """Makes a batch's tasks in one unit of work, follows their ends (``task_ended``, told by ``TaskMoves``) to
    complete or abort the batch, and cancels what is left of a stopped batch."""

    def __init__(self, store, moves, lifecycle, dispatcher, config, clock, metrics, spawn):
        self.store = store
        self.moves = moves
        self.lifecycle = lifecycle
        self.dispatcher = dispatcher
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.spawn = spawn

    @atomic
    def create(self, request):
        """Store the batch and its tasks (the first ``max_in_flight`` released, the others held) and dispatch what
        can go now, or find the batch this idempotency key made; return ``(batch, task_ids, created)``."""
        now = self.clock()
        fingerprint = request.fingerprint() if request.idempotency_key else None
        if fingerprint is not None and (existing := self._keyed_batch(request, fingerprint, now)) is not None:
            return existing, self.store.batch_task_ids(existing.batch_id), False
        batch_id = domain.new_batch_id()
        tasks = [
            self._task(request, batch_id, device_id, data, not_before, now)
            for device_id, data, not_before in self._task_plans(request)
        ]
        batch = Batch(
            batch_id=batch_id,
            task_type=request.task_type,
            mode=request.mode,
            target=request.target,
            options=request.options or {},
            total=len(tasks),
            max_in_flight=request.max_in_flight,
            abort_failure_ratio=request.abort_failure_ratio,
            abort_min_finished=request.abort_min_finished,
            created_at=now,
            updated_at=now,
            idempotency_key=request.idempotency_key,
            idempotency_scope=request.operator if fingerprint else None,
            request_hash=fingerprint,
        )
        actor, origin = created_by(request)
        detail = {"task_type": request.task_type, "batch_id": batch_id, **origin}
        created = Event(EventKind.CREATED, actor, None, detail)
        self.moves.create_batch(batch, tasks, created, released=request.max_in_flight or len(tasks))
        self.metrics.count(self.metrics.created, request.task_type, amount=len(tasks))
        logs.event(log, "batch created", batch_id=batch_id, task_type=request.task_type, total=len(tasks))
        self.dispatcher.dispatch_pending(now)
        self.store.wake_nodes(Wake.WORK)  # its tasks may be for devices another node holds
        return batch, [task.task_id for task in tasks], True

    def _keyed_batch(self, request, fingerprint, now):
        """The batch this operator's idempotency key made within the window, or None; 409 if it asked for another."""
        since = now - self.config["IDEMPOTENCY_WINDOW"]
        existing = self.store.find_batch_by_idempotency_key(request.idempotency_key, since, request.operator)
        if existing is not None and existing.request_hash != fingerprint:
            raise InvalidState(
                f"幂等键 {request.idempotency_key} 已用于另一个内容不同的批次请求（{existing.batch_id}）",
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
            )
        return existing

    def _task_plans(self, request):
        """``(device_id or None, data, not_before)`` of each task the batch makes."""
        if request.mode == BatchMode.SPREAD:
            return [(None, data, not_before) for data, not_before in request.tasks]
        ((data, not_before),) = request.tasks
        return [(device_id, data, not_before) for device_id in self._each_devices(request)]

    def _each_devices(self, request):
        """The devices a broadcast goes to: those named, tagged or all (not drained ones unless named), online now
        if asked; 400 if none, or more than a batch may make."""
        target = request.target
        if "device_ids" in target:
            found = {
                device.device_id: device
                for device in self.store.list_devices()
                if device.device_id in set(target["device_ids"])
            }
            missing = [device_id for device_id in target["device_ids"] if device_id not in found]
            if missing:
                raise NotFound(f"设备不存在: {', '.join(missing[:10])}", ErrorCode.DEVICE_NOT_FOUND)
            devices = [found[device_id] for device_id in target["device_ids"]]
        else:
            tags = target.get("tags", ())
            devices = [device for device in self.store.list_devices(tags=tags) if not device.disabled]
        if request.online_only:
            devices = [device for device in devices if device.connected]
        if not devices:
            raise TaskServerError("没有符合目标的设备", ErrorCode.NO_MATCHING_DEVICES)
        if len(devices) > MAX_BATCH:
            raise ValidationFailed({"target": [f"符合目标的设备超过 {MAX_BATCH} 台：一个批次最多 {MAX_BATCH} 个任务"]})
        return [device.device_id for device in devices]

    def _task(self, request, batch_id, device_id, data, not_before, now):
        tags = request.target.get("tags") if request.mode == BatchMode.SPREAD else None
        return Task(
            task_id=domain.new_task_id(),
            task_type=request.task_type,
            data=data,
            target_device_id=device_id,
            target_tags=list(tags) if tags else None,
            priority=request.priority,
            timeout=request.timeout or self.config["TASK_TIMEOUT"],
            max_retries=request.max_retries,
            created_at=now,
            updated_at=now,
            not_before=not_before,
            batch_id=batch_id,
        )

    def task_ended(self, task):
        """One of the batch's tasks ended (``TaskMoves`` tells, in the unit of work that ended it, after the store
        counted it): complete the batch once all have ended, or abort it once its abort rule holds."""
        batch = self.store.get_batch(task.batch_id)
        if batch is None:
            return
        now = self.clock()
        if batch.max_in_flight is not None and batch.status == BatchStatus.RUNNING:
            self.store.wake_nodes(Wake.WORK)  # the task its end released may be for a device another node holds
        if batch.ended >= batch.total:
            target = BatchStatus.COMPLETED if batch.status == BatchStatus.RUNNING else batch.status
            self._move(batch, target, {"finished_at": now}, now)
        elif (
            batch.status == BatchStatus.RUNNING
            and batch.should_abort
            and self._move(batch, BatchStatus.ABORTED, {}, now)
        ):
            logs.event(log, "batch aborted", batch_id=batch.batch_id, failed=batch.failed, ended=batch.ended)
            self.store.after_commit(lambda: self.spawn(self._end_the_rest, batch.batch_id, ErrorCode.BATCH_ABORTED))

    def _move(self, batch, target, changes, now):
        """Move the batch to ``target`` (or keep its stopped status, with ``changes``) if it is still as read."""
        if target != batch.status:
            domain.check_batch_transition(batch.status, target)
        return self.store.update_batch_if(batch, {**changes, "status": target, "updated_at": now})

    def cancel(self, batch_id):
        """Cancel the batch: every task of it not yet ended is cancelled (devices running one are told); return the
        batch as it is then. A batch already stopped or finished is refused (409)."""
        batch = self._stop(batch_id)
        self._end_the_rest(batch.batch_id, ErrorCode.BATCH_CANCELLED)
        return self.store.get_batch(batch_id)

    @atomic
    def _stop(self, batch_id):
        batch = self.store.get_batch(batch_id)
        if batch is None:
            raise NotFound(f"批次 {batch_id} 不存在", ErrorCode.BATCH_NOT_FOUND)
        if batch.status != BatchStatus.RUNNING:
            raise InvalidState(f"批次已结束（{batch.status.value}），无法取消", ErrorCode.INVALID_STATE)
        if not self._move(batch, BatchStatus.CANCELLED, {}, self.clock()):
            return self._stop(batch_id)  # one of its tasks ended meanwhile: read it again
        return batch

    def finish_stopped(self):
        """Cancel what is left of every aborted or cancelled batch whose tasks have not all ended: its cancel may
        have been cut short (a restart, a failed commit). The watchdog's leader calls it."""
        for batch_id, status in self.store.unfinished_stopped_batches():
            code = ErrorCode.BATCH_ABORTED if status == BatchStatus.ABORTED else ErrorCode.BATCH_CANCELLED
            self._end_the_rest(batch_id, code)

    def _end_the_rest(self, batch_id, error_code):
        """Cancel the stopped batch's tasks not yet ended (after an abort: only those not started), a chunk per
        unit of work."""
        statuses = [TaskStatus.PENDING] if error_code == ErrorCode.BATCH_ABORTED else list(NOT_ENDED)
        while self._end_chunk(batch_id, statuses, error_code) == CANCEL_CHUNK:
            pass

    @atomic
    def _end_chunk(self, batch_id, statuses, error_code):
        tasks, _total = self.store.list_tasks(statuses=statuses, batch_id=batch_id, limit=CANCEL_CHUNK)
        now = self.clock()
        for task in tasks:
            self.lifecycle.end_by_operator(task, now, error_code)
        self.dispatcher.dispatch_pending(now)
        return len(tasks)
