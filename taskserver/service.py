"""The service: every change of task or device state happens here, and nowhere else."""

import logging
import time
from dataclasses import dataclass, replace
from functools import partial, wraps

from taskserver import domain, logs
from taskserver.connections import Connections
from taskserver.credentials import DeviceCredentials
from taskserver.domain import ACTIVE, Device, Event, Task, TaskStatus
from taskserver.errors import Forbidden, InvalidState, NotFound, Unauthorized
from taskserver.metrics import Metrics
from taskserver.present import iso

log = logging.getLogger("taskserver")

SERVER_ENDED = frozenset({"TASK_TIMEOUT", "DEVICE_OFFLINE", "TASK_CANCELLED"})
PROGRESS_MILESTONES = (25, 50, 75, 100)
DISPATCH_BATCH = 32  # pending tasks considered per round of dispatch_pending


def atomic(operation):
    """Run the whole operation with the store to itself (``Store.atomically``): it may wait to start, while a
    commit runs, but nothing comes between its reads and its writes."""

    @wraps(operation)
    def run(self, *args, **kwargs):
        with self.store.atomically():
            return operation(self, *args, **kwargs)

    return run


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


class TaskService:
    """Registers devices, dispatches and tracks tasks, and acts on time passing; emits through the notifier."""

    def __init__(self, store, notifier, config, clock=time.time, metrics=None):
        self.store = store
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.connections = Connections()
        self.credentials = DeviceCredentials(store, config["DEVICE_TOKENS"], clock)

    # ---- devices ----

    def connect(self, sid, token=None):
        """A connection opens: a token it presents must be valid when device tokens are required."""
        self.credentials.check_connection(token)
        self.connections.opened(sid, token)

    @atomic
    def register(self, sid, payload):
        """Bind the connection to its device id, resend what the device missed, and hand it work."""
        device_id = payload["device_id"]
        self.credentials.check_registration(device_id, payload.get("token") or self.connections.token(sid))
        now = self.clock()
        previous = self.store.get_device(device_id)
        info = payload.get("device_info") or {}
        device = Device(
            device_id=device_id,
            device_name=payload.get("device_name") or (previous.device_name if previous else device_id),
            device_info=info,
            capacity=info.get("max_concurrent_tasks") or self.config["DEFAULT_DEVICE_CAPACITY"],
            connected=True,
            sid=sid,
            registered_at=now,
            last_heartbeat=previous.last_heartbeat if previous else None,
            created_at=previous.created_at if previous else now,
        )
        if self.connections.device_of(sid) not in (None, device_id):
            self._release_sid(sid, now)  # the connection switches to another device id
        self.store.save_device(device)
        replaced_sid = self.connections.bind(sid, device_id, now, device.device_name)
        if replaced_sid is not None:
            self.notifier.replaced(replaced_sid, device_id)
        active = self.store.active_tasks_of(device_id)
        answer = {
            "success": True,
            "device_id": device_id,
            "message": "注册成功",
            "server_time": iso(now),
            "active_tasks": [task.task_id for task in active],
        }
        self.notifier.registered(sid, answer)
        self.metrics.device_event("device_register")
        self.store.add_device_event(
            device_id, now, Event("registered", device_id, device_id, {"capacity": device.capacity})
        )
        logs.event(log, "device registered", device_id=device_id, active=len(active))
        self._catch_up(sid, device_id, active)
        self.dispatch_pending(now)
        return answer

    def _catch_up(self, sid, device_id, active):
        """Resend tasks the device had not started and the cancels it missed while away."""
        for task in active:
            if task.status == TaskStatus.DISPATCHED:
                self._send_task(sid, task)
        for task_id in self.store.take_owed_cancels(device_id):
            self.notifier.cancel_task(sid, task_id)

    @atomic
    def heartbeat(self, sid, payload):
        """Note that the device is alive (by the server's clock) and answer with the server time."""
        device_id = self._device_for(sid, payload.get("device_id"))
        now = self.clock()
        self.connections.heard_from(device_id, now, heartbeat=True)
        self.metrics.device_event("heartbeat")
        self.store.record_heartbeat(device_id, now)
        self.notifier.device_changed(device_id, heartbeat=now)
        answer = {"success": True, "server_time": iso(now)}
        self.notifier.heartbeat_ack(sid, {"server_time": answer["server_time"]})
        return answer

    @atomic
    def disconnect(self, sid):
        """The connection closed: its device, if it still belongs to it, is offline from now."""
        self.metrics.device_event("disconnect")
        self._release_sid(sid, self.clock())
        self.connections.closed(sid)

    def _release_sid(self, sid, now, reason="disconnected"):
        device_id = self.connections.release(sid)
        if device_id is None:
            return
        if self.store.mark_disconnected(device_id, sid, now):
            self.store.add_device_event(device_id, now, Event("offline", "server", device_id, {"reason": reason}))
            logs.event(log, "device offline", device_id=device_id, reason=reason)
            self.notifier.device_changed(device_id)

    def _device_for(self, sid, claimed_device_id=None):
        """The device id this connection registered as; refuse unregistered or impersonating connections."""
        device_id = self.connections.device_of(sid)
        if device_id is None:
            raise Unauthorized("设备未注册，请先发送 device_register", "NOT_REGISTERED")
        if claimed_device_id is not None and claimed_device_id != device_id:
            raise Forbidden(f"此连接已注册为 {device_id}，不能代表 {claimed_device_id}", "FORBIDDEN")
        self.connections.heard_from(device_id, self.clock())
        return device_id

    # ---- operator ----

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
        """A free device for a new task due now, if no task is pending (else it queues behind them), or None."""
        if (task.not_before is not None and task.not_before > now) or self.store.has_pending_tasks():
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

    def device_names(self, device_ids):
        """Map each known device id to its name (a connected device's from memory)."""
        names = {}
        for device_id in set(device_ids) - {None}:
            name = self.connections.name_of(device_id)
            if name is None and (device := self.store.get_device(device_id)) is not None:
                name = device.device_name
            if name is not None:
                names[device_id] = name
        return names

    def system_status(self):
        """Counts for ``GET /``."""
        counts = self.store.count_tasks_by_status()
        return {
            "connected_devices": len(self.connections),
            "active_tasks": sum(counts.get(s.value, 0) for s in ACTIVE),
            "pending_tasks": counts.get(TaskStatus.PENDING.value, 0),
            "timestamp": iso(self.clock()),
        }

    def get_device(self, device_id):
        """The device, or 404 ``DEVICE_NOT_FOUND``."""
        device = self.store.get_device(device_id)
        if device is None:
            raise NotFound(f"设备 {device_id} 不存在", "DEVICE_NOT_FOUND")
        return device

    @atomic
    def set_device_disabled(self, device_id, disabled):
        """Drain (or undrain) a device: disabled, it keeps its tasks but gets no new ones."""
        device = self.get_device(device_id)
        if device.disabled != disabled:
            now = self.clock()
            self.store.set_device_disabled(device_id, disabled)
            kind = "disabled" if disabled else "enabled"
            self.store.add_device_event(device_id, now, Event(kind, "operator", device_id))
            logs.event(log, f"device {kind}", device_id=device_id, active=device.active_tasks)
            self.notifier.device_changed(device_id)
            if not disabled:
                self.dispatch_pending(now)
        return self.get_device(device_id)

    @atomic
    def forget_device(self, device_id):
        """Delete an offline device with no active task and no task waiting for it; else 409."""
        device = self.get_device(device_id)
        if device.connected:
            raise InvalidState(f"设备 {device_id} 在线，无法删除", "DEVICE_ONLINE")
        if device.active_tasks:
            raise InvalidState(f"设备 {device_id} 还有 {device.active_tasks} 个进行中的任务", "DEVICE_HAS_ACTIVE_TASKS")
        _, waiting = self.store.list_tasks(statuses=[TaskStatus.PENDING], device_id=device_id, limit=1)
        if waiting:
            raise InvalidState(f"设备 {device_id} 还有 {waiting} 个等待中的任务", "DEVICE_HAS_PENDING_TASKS")
        if not self.store.delete_device(device_id):  # its tasks changed between the checks and the delete
            raise InvalidState(f"设备 {device_id} 还有任务，无法删除", "DEVICE_HAS_ACTIVE_TASKS")
        logs.event(log, "device forgotten", device_id=device_id)
        self.notifier.device_changed(device_id)

    def store_health(self):
        """``(True, None)`` if the store takes a write now, else ``(False, reason)``."""
        try:
            self.store.check_writable(self.clock())
        except Exception as exc:  # any failure to write means not ready, whatever the backend raises
            log.warning("store not writable: %s", exc)
            return False, f"{type(exc).__name__}: {exc}"
        return True, None

    # ---- task reports from devices ----

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

    # ---- moving tasks ----

    @atomic
    def dispatch_pending(self, now=None):
        """Give due pending tasks to devices with free slots: priority first, then age, least-loaded device first;
        return the tasks sent.

        Reads no more tasks than there are free slots, and only as many devices as could take them, so it stays
        cheap with a large fleet and a long queue."""
        now = self.clock() if now is None else now
        sent = []
        while (wanted := min(self.store.dispatchable_count(at_most=DISPATCH_BATCH), DISPATCH_BATCH)) > 0:
            tasks = self.store.due_pending_tasks(now, wanted)
            if not tasks:
                break
            targets = {task.target_device_id for task in tasks} - {None}
            devices = self.store.free_devices(limit=len(tasks) + 1, include=targets)
            sent_before = len(sent)
            for task in tasks:
                device = domain.pick_device(task, devices)
                if device is not None and (updated := self._assign(task, device, now)) is not None:
                    device.active_tasks += 1
                    sent.append(updated)
            if len(sent) == sent_before or len(tasks) < wanted:
                break
        return sent

    def _assign(self, task, device, now):
        """Send the pending task to the device; return it as stored, or None if it changed meanwhile."""
        changes = self._dispatch_changes(device, now)
        updated = self._move(task, TaskStatus.DISPATCHED, changes, "dispatched", "server", now, device.device_id)
        if updated is not None:
            self._sent(updated, device)
        return updated

    @staticmethod
    def _dispatch_changes(device, now):
        """The changes that dispatch a task to ``device``."""
        return {
            "status": TaskStatus.DISPATCHED,
            "device_id": device.device_id,
            "dispatched_at": now,
            "updated_at": now,
            "delivered_at": None,
            "started_at": None,
            "progress": 0,
            "progress_message": None,
        }

    def _sent(self, task, device):
        """Count, log and send a task that was just stored as dispatched to ``device``."""
        self.metrics.count(self.metrics.dispatches, task.task_type)
        logs.event(log, "task dispatched", task_id=task.task_id, device_id=device.device_id, attempt=task.attempt)
        self._send_task(device.sid, task)

    def _send_task(self, sid, task):
        on_ack = partial(self.task_delivered, task.task_id, task.device_id, task.attempt)
        self.notifier.new_task(sid, task, on_ack)

    def _end_attempt(self, task, error_code, now, actor, result=None, tell_device=False):
        """End the current attempt in failure: back to pending after a backoff if retries are left, else failed."""
        changes = {"error_code": error_code, "result": result}
        if domain.retries_left(task):
            delay = domain.retry_backoff(task.attempt, self.config["RETRY_DELAY"], self.config["RETRY_DELAY_MAX"])
            changes.update(
                device_id=None,
                avoid_device_id=task.device_id,
                attempt=task.attempt + 1,
                not_before=now + delay,
                progress=0,
                progress_message=None,
            )
            target, kind = TaskStatus.PENDING, "retry_scheduled"
            detail_extra = {"retry_at": iso(now + delay)}
        else:
            changes["finished_at"] = now
            target, kind = TaskStatus.FAILED, "failed"
            detail_extra = {}
        sid = self.connections.sid_of(task.device_id) if tell_device else None
        owed_to = task.device_id if tell_device and sid is None else None
        detail = {"error_code": error_code, **detail_extra}
        updated = self._move(task, target, changes, kind, actor, now, task.device_id, detail, owe_cancel_to=owed_to)
        if updated is not None:
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
                self.notifier.cancel_task(sid, task.task_id)
        return updated

    def _move(self, task, target, changes, kind, actor, now, device_id=None, detail=None, owe_cancel_to=None):
        """Apply one allowed transition to the task as it was read; None if it changed meanwhile."""
        domain.check_transition(task.status, target)
        event = Event(kind, actor, device_id or task.device_id, detail)
        updated = self.store.update_task_if(
            task, {**changes, "status": target, "updated_at": now}, event, owe_cancel_to=owe_cancel_to
        )
        if updated is not None:
            self.notifier.task_changed(updated, (task.device_id, updated.device_id))
        return updated

    # ---- time passing (called by the watchdog) ----

    @atomic
    def expire_silent_devices(self, now):
        """Close connections of heartbeating devices silent for longer than the heartbeat timeout.

        A device that never sends heartbeats (the spec's JavaScript example) is watched by the transport's
        own ping/pong instead, so that such a client is not cut off every 90 seconds."""
        limit = self.config["HEARTBEAT_TIMEOUT"]
        for device_id, sid in self.connections.silent(now, limit):
            logs.event(log, "device silent", logging.WARNING, device_id=device_id, seconds=limit)
            self._release_sid(sid, now, reason="heartbeat_timeout")
            self.notifier.disconnect(sid)

    @atomic
    def expire_timeouts(self, now):
        """End attempts that outlived their timeout; the device is told to stop."""
        for task in self.store.timed_out_tasks(now):
            self._end_attempt(task, "TASK_TIMEOUT", now, "watchdog", tell_device=True)

    @atomic
    def expire_lost_devices(self, now):
        """End attempts whose device stayed away longer than the grace."""
        for task in self.store.tasks_of_lost_devices(now - self.config["DEVICE_LOST_GRACE"]):
            self._end_attempt(task, "DEVICE_OFFLINE", now, "watchdog", tell_device=True)

    @atomic
    def recover_on_start(self):
        """No connection survives a restart: every device is offline and its tasks get a fresh grace."""
        self.store.disconnect_all(self.clock())
