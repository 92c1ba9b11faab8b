"""The store interface: small verbs, each atomic, each returning copies; one contract suite tests every backend."""

from taskserver.domain import DeviceStatus


class Store:
    """What the service needs from persistence. Times are epoch seconds from the service's clock."""

    single_writer = True  # no other process writes: an operation sees every write made before it

    # tasks
    def add_task(self, task, *events):
        """Insert a new task (pending, or already dispatched to a device) and its first history events, atomically;
        return False, storing nothing, if it was to be active on a device with no free slot left."""
        raise NotImplementedError

    def has_pending_tasks(self):
        """True if a pending task, not held, may start now, or is scheduled (a held task waits for its batch to
        release it, whatever devices are free): False only if a look at the queue would find nothing. A store that
        can tell cheaply also answers False when every due task waits for a device that cannot take it."""
        raise NotImplementedError

    def get_task(self, task_id):
        """The task with this id, or None."""
        raise NotImplementedError

    def find_task_by_idempotency_key(self, key, since, scope=""):
        """The newest task created with ``key`` by ``scope`` (or before keys had a scope) at or after ``since``, or
        None."""
        raise NotImplementedError

    def update_task_if(self, task, changes, event=None, owe_cancel_to=None):
        """Apply ``changes``, append ``event`` and record a ``cancel_task`` of ``task.attempt`` owed to
        ``owe_cancel_to``, only if the stored task still has the status, device and attempt of ``task`` (as the caller
        read it) and a device it moves onto has a free slot; return the task updated, or None."""
        raise NotImplementedError

    def list_tasks(
        self,
        statuses=(),
        task_type=None,
        device_id=None,
        limit=100,
        offset=0,
        created_after=None,
        created_before=None,
        batch_id=None,
    ):
        """A page of tasks matching the filters (``created_after <= created_at < created_before``), newest first,
        and the number of all that match."""
        raise NotImplementedError

    # batches
    def add_batch(self, batch, tasks, event, released):
        """Insert the batch and its pending tasks, each with ``event`` as its first history line, atomically; the
        first ``released`` tasks join the queue, the others are held. Whenever a released task of a running batch
        ends, ``update_task_if`` counts it and releases the next held one (so at most ``released`` are out at once);
        every task of a batch that ends is counted in its ``completed``, ``failed`` or ``cancelled``."""
        raise NotImplementedError

    def get_batch(self, batch_id):
        """The batch with this id, or None."""
        raise NotImplementedError

    def list_batches(self, limit=100, offset=0):
        """A page of batches, newest first, and how many there are."""
        raise NotImplementedError

    def count_batch_tasks(self, batch_id):
        """The batch's tasks by status: ``{status: (count, sum of progress)}``."""
        raise NotImplementedError

    def update_batch_if(self, batch, changes):
        """Apply ``changes`` to the batch only if its stored status is still ``batch.status``; True if it was."""
        raise NotImplementedError

    def find_batch_by_idempotency_key(self, key, since, scope):
        """The newest batch created with ``key`` by ``scope`` at or after ``since``, or None."""
        raise NotImplementedError

    def batch_task_ids(self, batch_id):
        """The ids of the batch's tasks, in the order it made them."""
        raise NotImplementedError

    def unfinished_stopped_batches(self):
        """``(batch_id, status)`` of each aborted or cancelled batch whose tasks have not all ended."""
        raise NotImplementedError

    def due_pending_tasks(self, now, limit):
        """Pending tasks that may start now and whose target device (if any) has a free slot,
        highest priority first, then oldest first."""
        raise NotImplementedError

    def active_tasks_of(self, device_id):
        """The device's dispatched and running tasks, oldest first."""
        raise NotImplementedError

    def task_active_on(self, task_id, device_id, attempt=None):
        """True if the task is dispatched to or running on the device (in ``attempt``, if given); cheap enough to ask
        about every device report before it is admitted (an in-memory look where the backend can)."""
        raise NotImplementedError

    def set_device_token(self, device_id, token_hash, now):
        """Bind a (hashed) token to the device id, replacing any earlier one."""
        raise NotImplementedError

    def device_token_hash(self, device_id):
        """The hash of the device's own token, or None if it has none."""
        raise NotImplementedError

    def device_id_for_token_hash(self, token_hash):
        """The device id a (hashed) per-device token belongs to, or None."""
        raise NotImplementedError

    def delete_device_token(self, device_id):
        """Revoke the device's own token; True if it had one."""
        raise NotImplementedError

    def take_owed_cancels(self, device_id):
        """Remove and return ``(task_id, attempt)`` of each ``cancel_task`` the device missed while away."""
        raise NotImplementedError

    def timed_out_tasks(self, now, limit=None):
        """Active tasks (at most ``limit``) whose timeout, counted from dispatch, has passed by ``now``."""
        raise NotImplementedError

    def tasks_of_lost_devices(self, disconnected_before, limit=None):
        """Active tasks (at most ``limit``) whose device has been disconnected since before ``disconnected_before``."""
        raise NotImplementedError

    def count_tasks_by_status(self):
        """A mapping of status value to the number of tasks in it."""
        raise NotImplementedError

    def count_finished_by_minute(self, since, until):
        """How many tasks ended (``finished_at``) in each minute of ``since <= t < until``, by final status:
        ``{(minute index from since, status value): count}``."""
        raise NotImplementedError

    def count_tasks_by_status_and_type(self):
        """A mapping of ``(status value, task type)`` to the number of tasks in it."""
        raise NotImplementedError

    def task_events(self, task_id):
        """The task's history, oldest first."""
        raise NotImplementedError

    def add_event(self, task_id, now, event, attempt):
        """Append one event to the task's history."""
        raise NotImplementedError

    def device_had_task(self, task_id, device_id):
        """True if the task was ever dispatched to the device."""
        raise NotImplementedError

    # devices
    def save_device(self, device):
        """Insert the device or update its name, info, capacity and connection."""
        raise NotImplementedError

    def get_device(self, device_id):
        """The device with this id (with its active task count), or None."""
        raise NotImplementedError

    def set_device_tags(self, device_id, operator_tags, tags):
        """Set the operator's tags of the device and its tags (their union with its own); True if it exists."""
        raise NotImplementedError

    def list_devices(self, statuses=(), disabled=None, tags=()):
        """Known devices in one of ``statuses`` (all if empty), with every one of ``tags`` and, if given, that
        ``disabled`` flag; newest first."""
        raise NotImplementedError

    def dispatchable_count(self, at_most):
        """How many pending tasks could go now: the free slots of connected, enabled devices (counted over at most
        ``at_most`` devices), or 0 when ``has_pending_tasks`` is False."""
        raise NotImplementedError

    def free_devices(self, limit=None, include=(), tag_sets=()):
        """Connected, enabled devices with a free slot: the ``limit`` least loaded (all if None), plus ``include``,
        plus for each tag set of ``tag_sets`` the ``limit`` least loaded with all those tags."""
        raise NotImplementedError

    def held_devices(self):
        """The connected devices whose connections this server holds (on one server: every connected device)."""
        return self.list_devices(statuses=(DeviceStatus.ONLINE.value, DeviceStatus.BUSY.value))

    def mark_disconnected(self, device_id, sid, now):
        """Mark the device offline if ``sid`` is still its connection; return True if it was."""
        raise NotImplementedError

    def record_heartbeat(self, device_id, now):
        """Remember when the device last sent a heartbeat."""
        raise NotImplementedError

    def disconnect_all(self, now):
        """On start: no connection survives a restart; give every device's tasks a fresh grace from ``now``."""
        raise NotImplementedError

    def set_device_disabled(self, device_id, disabled):
        """Stop (or resume) giving the device new tasks; return True if the device exists."""
        raise NotImplementedError

    def delete_device(self, device_id):
        """Forget an offline device with no active task and no task waiting for it, and its own history;
        return True if it was deleted."""
        raise NotImplementedError

    def add_device_event(self, device_id, now, event):
        """Append one event (registered, offline, disabled, ...) to the device's own history."""
        raise NotImplementedError

    def device_history(self, device_id, limit):
        """The device's latest ``limit`` events, its own and those of tasks on it, newest first."""
        raise NotImplementedError

    def count_devices_by_status(self):
        """A mapping of ``(status value, disabled)`` to the number of devices in it."""
        raise NotImplementedError

    def wake_nodes(self, reason, device_id=None):
        """Wake the other nodes of a cluster once this unit of work commits, for ``reason`` (a ``domain.Wake``): it
        left work for ``device_id`` (only the node holding it, if another does), or for any device (None). A store
        no other node shares has none to wake."""

    # schedules
    def add_schedule(self, schedule):
        """Insert a new schedule."""
        raise NotImplementedError

    def get_schedule(self, schedule_id):
        """The schedule with this id, or None."""
        raise NotImplementedError

    def list_schedules(self, limit=100, offset=0):
        """A page of schedules, newest first, and how many there are."""
        raise NotImplementedError

    def update_schedule(self, schedule_id, changes):
        """Apply ``changes`` to the schedule; return it updated, or None if there is none."""
        raise NotImplementedError

    def delete_schedule(self, schedule_id):
        """Delete the schedule and its runs; True if it existed."""
        raise NotImplementedError

    def due_schedules(self, now, limit):
        """Enabled schedules whose ``next_run_at`` is at or before ``now``, the earliest first, claimed for this unit
        of work where other writers may share the store (those another unit holds are skipped)."""
        raise NotImplementedError

    def add_schedule_run(self, schedule_id, fire_at, ran_at):
        """Record that the schedule runs its fire time ``fire_at``; False, recording nothing, if that fire time has
        a run already (each fire time runs once)."""
        raise NotImplementedError

    def record_schedule_run(self, schedule_id, fire_at, task_id=None, batch_id=None, error=None):
        """Record what the run of ``fire_at`` created, or its ``error`` (``{message, error_code}``)."""
        raise NotImplementedError

    def schedule_runs(self, schedule_id, limit):
        """The schedule's latest ``limit`` runs, newest fire time first."""
        raise NotImplementedError

    def last_schedule_runs(self, schedule_ids):
        """The latest run of each of ``schedule_ids`` that has run: ``{schedule_id: ScheduleRun}``."""
        raise NotImplementedError

    # units of work
    def check_writable(self, now):
        """Write and commit one tiny row; raise if the store cannot take writes."""
        raise NotImplementedError

    @property
    def failed_commits(self):
        """How many commits have failed since the store opened."""
        raise NotImplementedError

    def fail_commits(self, error):
        """Make every commit fail with ``error``, or commit again with None: a fault for tests."""
        raise NotImplementedError

    def atomically(self):
        """A context manager giving the caller the store alone for a whole operation (it nests): nothing else reads
        or writes, and no commit starts, between the operation's reads and its writes."""
        raise NotImplementedError

    def durable(self):
        """Return once every write made so far is committed (a backend may group the writes of many requests into
        one commit); raise if that commit failed. Transports call it before they answer."""
        raise NotImplementedError

    def after_commit(self, callback):
        """Run ``callback`` once every write made so far is committed, or now if none waits; never if the commit
        fails. Messages to devices go out through it, so that no device hears of a state that was not stored."""
        raise NotImplementedError

    def close(self):
        """Commit what is open and release the store's resources."""
        raise NotImplementedError
