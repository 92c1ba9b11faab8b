"""The dispatcher: new tasks and their idempotency keys, handing pending tasks to free devices, sending ``new_task``
and recording its acks."""

import logging
from dataclasses import replace
from functools import partial

from taskserver import domain, logs
from taskserver.domain import ACTIVE, BatchStatus, ErrorCode, Event, EventKind, Task, TaskStatus, Wake
from taskserver.errors import InvalidState, NotFound
from taskserver.orders import created_by
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

DISPATCH_BATCH = 32  # pending tasks considered per round of dispatch_pending


class Dispatcher:
    """Puts tasks on devices: stores what operators ask for, gives pending tasks to free devices and sends them.

    It never trusts that a device it picked still has its slot: with several writers the store may refuse the task
    there, and the task then waits as pending for the next round."""

    def __init__(self, store, moves, notifier, config, clock, metrics, spawn):
        self.store = store
        self.moves = moves
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.spawn = spawn  # the app's background group: what the dispatcher starts ends with the app
        self._look_waiting = False  # a look for work after commit is waiting to run (several writers only)

    @atomic
    def dispatch(self, request):
        """Store a new task (or find the one this idempotency key made) and dispatch what can go now.

        Returns ``(task, created)``."""
        now = self.clock()
        fingerprint = request.fingerprint() if request.idempotency_key else None
        if fingerprint is not None and (existing := self._keyed_task(request, fingerprint, now)) is not None:
            return existing, False
        if request.device_id is not None and self.store.get_device(request.device_id) is None:
            raise NotFound(f"设备 {request.device_id} 不存在", ErrorCode.DEVICE_NOT_FOUND)
        task = self._new_task(request, fingerprint, now)
        actor, origin = created_by(request)
        created = Event(EventKind.CREATED, actor, request.device_id, {"task_type": task.task_type, **origin})
        device = self._device_for_new(task, now)
        dispatched = self._create_dispatched(task, device, created, now) if device is not None else None
        if dispatched is None:
            self.moves.create(task, created)
        self.metrics.count(self.metrics.created, task.task_type)
        logs.event(log, "task created", task_id=task.task_id, task_type=task.task_type, device_id=request.device_id)
        if dispatched is not None:
            self._send(dispatched, device.sid)
            return dispatched, True
        sent = next((sent_task for sent_task in self.dispatch_pending(now) if sent_task.task_id == task.task_id), None)
        if sent is None:
            self.store.wake_nodes(Wake.WORK, request.device_id)  # its device may be one another node holds
        return sent or task, True

    def _new_task(self, request, fingerprint, now):
        return Task(
            task_id=domain.new_task_id(),
            task_type=request.task_type,
            data=request.data,
            target_device_id=request.device_id,
            target_tags=list(request.tags) if request.tags else None,
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

    def _create_dispatched(self, task, device, created, now):
        """Store the new task already dispatched to ``device``, in one write; return it, or None if the device's slot
        went to another writer's task meanwhile (nothing is stored then)."""
        dispatched = replace(task, **self._dispatch_changes(device, now))
        if not self.moves.create(dispatched, created, Event(EventKind.DISPATCHED, "server", device.device_id)):
            return None
        return dispatched

    def _keyed_task(self, request, fingerprint, now):
        """The task this operator's idempotency key made within the window, or None; 409 if it asked for another
        task. Tasks stored before keys had owners and hashes match any operator and any request."""
        since = now - self.config["IDEMPOTENCY_WINDOW"]
        existing = self.store.find_task_by_idempotency_key(request.idempotency_key, since, request.operator)
        if existing is not None and existing.request_hash not in (None, fingerprint):
            raise InvalidState(
                f"幂等键 {request.idempotency_key} 已用于另一个内容不同的任务请求（{existing.task_id}）",
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
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
        tag_sets = [task.target_tags] if task.target_tags else []
        return domain.pick_device(task, self.store.free_devices(limit=1, include=include, tag_sets=tag_sets))

    @atomic
    def dispatch_pending(self, now=None):
        """Give due pending tasks to devices with free slots: priority first, then age, least-loaded device first;
        return the tasks sent.

        Reads no more tasks than there are free slots, and only as many devices as could take them, so it stays
        cheap with a large fleet and a long queue."""
        now = self.clock() if now is None else now
        sent = self._fill_free_slots(now)
        if not self.store.single_writer:
            self.store.after_commit(self.look_again_later)
        return sent

    def _fill_free_slots(self, now):
        """Assign due pending tasks to free slots, a batch at a time, until either runs out; return those sent."""
        sent = []
        while (wanted := min(self.store.dispatchable_count(at_most=DISPATCH_BATCH), DISPATCH_BATCH)) > 0:
            tasks = self.store.due_pending_tasks(now, wanted)
            if not tasks:
                break
            targets = {task.target_device_id for task in tasks} - {None}
            tag_sets = {tuple(task.target_tags) for task in tasks if task.target_tags}
            devices = self.store.free_devices(limit=len(tasks) + 1, include=targets, tag_sets=tag_sets)
            stopped = self._stopped_batches(tasks)
            sent_before = len(sent)
            for task in tasks:
                if task.batch_id in stopped:
                    continue  # its batch was aborted or cancelled: its cancel is on the way
                device = domain.pick_device(task, devices)
                if device is not None and (updated := self._assign(task, device, now)) is not None:
                    device.active_tasks += 1
                    sent.append(updated)
            if len(sent) == sent_before or len(tasks) < wanted:
                break
        return sent

    def _stopped_batches(self, tasks):
        """The ids of the batches of ``tasks`` that no longer run (one read per batch, only for batch tasks)."""
        batches = {task.batch_id for task in tasks} - {None}
        return {batch_id for batch_id in batches if self.store.get_batch(batch_id).status != BatchStatus.RUNNING}

    def look_again_later(self):
        """With other writers, a look for work could not see their uncommitted tasks and freed slots, nor the rows
        they held: once this is committed, look once more (one look waits at a time; it repeats while it sends)."""
        if self._look_waiting:
            return
        self._look_waiting = True
        self.spawn(self._look_again)

    def _look_again(self):
        """The look itself: a read, and a unit of work only if something can be dispatched."""
        self._look_waiting = False
        if self.store.dispatchable_count(at_most=DISPATCH_BATCH) > 0:  # one read, no unit of work, when idle
            self._dispatch_again()

    @atomic
    def _dispatch_again(self):
        if self._fill_free_slots(self.clock()):
            self.store.after_commit(self.look_again_later)

    def _assign(self, task, device, now):
        """Send the pending task to the device; return it as stored, or None if it changed meanwhile or the device
        has no free slot any more."""
        dispatched = Event(EventKind.DISPATCHED, "server", device.device_id)
        updated = self.moves.move(task, TaskStatus.DISPATCHED, self._dispatch_changes(device, now), dispatched, now)
        if updated is not None:
            self._send(updated, device.sid)
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

    def _send(self, task, sid):
        """Count, log and send a task that was just stored as dispatched."""
        self.metrics.count(self.metrics.dispatches, task.task_type)
        logs.event(log, "task dispatched", task_id=task.task_id, device_id=task.device_id, attempt=task.attempt)
        self._send_new_task(sid, task)

    def _send_new_task(self, sid, task):
        """Send ``new_task`` for the task's current attempt to connection ``sid``; its ack records the delivery."""
        on_ack = partial(self.task_delivered, task.task_id, task.device_id, task.attempt)
        self.notifier.new_task(sid, task, on_ack)

    def catch_up(self, sid, device_id, active, now):
        """Hand a device that just registered on ``sid`` what it is owed: its ``active`` tasks it has reported no
        progress on (delivered or not) again, new work, and the cancels it missed while away, but not for a task it
        is being sent again: a device that knows no attempts (the Android app) would stop the new one."""
        owed = self.store.take_owed_cancels(device_id)
        unstarted = [task for task in active if task.status == TaskStatus.DISPATCHED]
        for task in unstarted:
            self._send_new_task(sid, task)
        sent_again = {task.task_id for task in unstarted + self.dispatch_pending(now) if task.device_id == device_id}
        for task_id, attempt in owed:
            if task_id not in sent_again:
                self.notifier.cancel_task(sid, task_id, attempt)

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
        delivered = Event(EventKind.DELIVERED, device_id, device_id)
        if self.moves.move(task, task.status, {"delivered_at": now}, delivered, now) is not None:
            logs.event(log, "task delivered", logging.DEBUG, task_id=task_id, device_id=device_id, attempt=attempt)
