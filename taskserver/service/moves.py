"""How tasks move in ``TaskService``: dispatch, the end of an attempt, ``_move`` (the one place a stored task
changes status), and what time passing does."""

import logging
from functools import partial

from taskserver import domain, logs
from taskserver.domain import Event, TaskStatus
from taskserver.present import iso
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

DISPATCH_BATCH = 32  # pending tasks considered per round of dispatch_pending


class TaskMoves:
    """The part of ``TaskService`` that moves tasks between states: every status change of a stored task goes
    through ``_move``."""

    @atomic
    def dispatch_pending(self, now=None):
        """Give due pending tasks to devices with free slots: priority first, then age, least-loaded device first;
        return the tasks sent.

        Reads no more tasks than there are free slots, and only as many devices as could take them, so it stays
        cheap with a large fleet and a long queue."""
        now = self.clock() if now is None else now
        sent = self._fill_free_slots(now)
        if not self.store.single_writer:
            self.store.after_commit(self._look_again_later)
        return sent

    def _fill_free_slots(self, now):
        """Assign due pending tasks to free slots, a batch at a time, until either runs out; return those sent."""
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

    def _look_again_later(self):
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
            self.store.after_commit(self._look_again_later)

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
                self.notifier.cancel_task(sid, task.task_id, task.attempt)
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

    @atomic
    def expire_timeouts(self, now, limit=None):
        """End attempts that outlived their timeout (at most ``limit``); the device is told to stop. Return how many
        were found."""
        tasks = self.store.timed_out_tasks(now, limit)
        for task in tasks:
            self._end_attempt(task, "TASK_TIMEOUT", now, "watchdog", tell_device=True)
        return len(tasks)

    @atomic
    def expire_lost_devices(self, now, limit=None):
        """End attempts whose device stayed away longer than the grace (at most ``limit``); return how many."""
        tasks = self.store.tasks_of_lost_devices(now - self.config["DEVICE_LOST_GRACE"], limit)
        for task in tasks:
            self._end_attempt(task, "DEVICE_OFFLINE", now, "watchdog", tell_device=True)
        return len(tasks)

    @atomic
    def recover_on_start(self):
        """No connection survives a restart: every device is offline and its tasks get a fresh grace."""
        self.store.disconnect_all(self.clock())
