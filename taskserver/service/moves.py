"""The one place a stored task changes: ``TaskMoves`` creates tasks and applies every change to them."""

from taskserver import domain
from taskserver.domain import TaskStatus


class TaskMoves:
    """Writes tasks, and nothing else does: each change is checked against the transition table, stored as a
    compare-and-set on the task as its caller read it, and told to the notifier."""

    def __init__(self, store, notifier):
        self.store = store
        self.notifier = notifier
        self.batch_task_ended = None  # ``Batches.task_ended``, told in the unit of work that ended a batch's task

    def create(self, task, *events):
        """Store a new task with its first events: pending, or straight into dispatched (a move the table must allow
        from pending). Return True if stored; False when the device it was to be dispatched to has no free slot any
        more (another writer took it), and then nothing is stored."""
        if task.status != TaskStatus.PENDING:
            domain.check_transition(TaskStatus.PENDING, task.status)
        if not self.store.add_task(task, *events):
            return False
        self.notifier.task_changed(task, (task.device_id,) if task.device_id else ())
        return True

    def create_batch(self, batch, tasks, event, released):
        """Store a batch and its pending tasks (each with ``event``), the first ``released`` of them in the queue and
        the others held (``Store.add_batch``)."""
        self.store.add_batch(batch, tasks, event, released)
        for task in tasks:
            self.notifier.task_changed(task)

    def move(self, task, target, changes, event, now, owe_cancel_to=None):
        """Apply ``changes`` and a move to ``target`` (or, with the task's own active status, a change within it:
        progress, delivery) to the task as it was read, append ``event`` (may be None) and record a cancel owed to
        ``owe_cancel_to``. Return the task as stored, or None if it changed meanwhile or, moving into dispatched, its
        device has no free slot any more."""
        domain.check_change(task.status, target)
        changes = {**changes, "status": target, "updated_at": now}
        updated = self.store.update_task_if(task, changes, event, owe_cancel_to=owe_cancel_to)
        if updated is not None:
            self.notifier.task_changed(updated, () if target == task.status else (task.device_id, updated.device_id))
            if updated.batch_id is not None and updated.is_terminal and self.batch_task_ended is not None:
                self.batch_task_ended(updated)
        return updated
