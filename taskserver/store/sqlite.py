"""The default store: one SQLite file through the standard ``sqlite3`` module (WAL, conditional updates)."""

import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from taskserver.domain import ACTIVE, TERMINAL, BatchStatus, TaskStatus
from taskserver.store.base import Store
from taskserver.store.commits import GroupCommit
from taskserver.store.migrations import steps_to
from taskserver.store.rows import (
    ACTIVE_VALUES,
    BATCH_COLUMNS,
    TASK_COLUMNS,
    changed,
    event_from_row,
    from_json,
    task_from_row,
    task_row,
    to_db,
)
from taskserver.store.sqlite_batches import BatchTables
from taskserver.store.sqlite_devices import DeviceTables
from taskserver.store.sqlite_schedules import ScheduleTables

SCHEMA = (Path(__file__).parent / "schema.sql").read_text()
SCHEMA_VERSION = 5

# An owed cancel names its attempt: a row from before is for the device's latest attempt of the task.
OWED_CANCEL_ATTEMPTS = """
CREATE TABLE owed_cancels_new (
    device_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (device_id, task_id)
);
INSERT INTO owed_cancels_new (device_id, task_id, attempt)
    SELECT o.device_id, o.task_id, COALESCE(
        (SELECT MAX(e.attempt) FROM task_events e
         WHERE e.task_id = o.task_id AND e.device_id = o.device_id AND e.kind = 'dispatched'),
        (SELECT t.attempt FROM tasks t WHERE t.task_id = o.task_id), 1)
    FROM owed_cancels o;
DROP TABLE owed_cancels;
ALTER TABLE owed_cancels_new RENAME TO owed_cancels;
"""
# Idempotency keys belong to the operator token that made them, and remember what the request asked for.
IDEMPOTENCY_SCOPES = """
ALTER TABLE tasks ADD COLUMN idempotency_scope TEXT;
ALTER TABLE tasks ADD COLUMN request_hash TEXT;
"""
# The pending queue in parts (see schema.sql), so that dispatch never reads tasks that cannot start now.
PENDING_QUEUE_PARTS = """
ALTER TABLE tasks ADD COLUMN due INTEGER NOT NULL DEFAULT 1;
UPDATE tasks SET due = 0 WHERE status = 'pending' AND not_before IS NOT NULL;
DROP INDEX IF EXISTS tasks_pending;
"""
# Fleet operations: tags on tasks and devices, batches (held tasks), schedules. The indexes whose conditions changed
# are dropped here and made again, with the new tables, by schema.sql.
FLEET_OPERATIONS = """
ALTER TABLE tasks ADD COLUMN target_tags TEXT;
ALTER TABLE tasks ADD COLUMN batch_id TEXT;
ALTER TABLE tasks ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS tasks_queue;
DROP INDEX IF EXISTS tasks_scheduled;
ALTER TABLE devices ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE devices ADD COLUMN operator_tags TEXT NOT NULL DEFAULT '[]';
UPDATE devices SET tags = (SELECT json_group_array(value) FROM (
    SELECT DISTINCT value FROM json_each(devices.device_info, '$.tags') WHERE type = 'text' ORDER BY value))
WHERE json_type(device_info, '$.tags') = 'array';
"""
# version -> the statements that bring a file of the version before it to it
MIGRATIONS = {2: OWED_CANCEL_ATTEMPTS, 3: IDEMPOTENCY_SCOPES, 4: PENDING_QUEUE_PARTS, 5: FLEET_OPERATIONS}
# The devices that due pinned tasks wait for, found by skipping through their index from one device id to the next:
# as many steps as there are such devices, however many tasks wait for each.
TARGETS = """
WITH RECURSIVE targets (device_id) AS (
    SELECT MIN(target_device_id) FROM tasks INDEXED BY tasks_queue_pinned
    WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL
    UNION ALL
    SELECT (SELECT MIN(target_device_id) FROM tasks INDEXED BY tasks_queue_pinned
            WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL
              AND target_device_id > targets.device_id)
    FROM targets WHERE targets.device_id IS NOT NULL
)"""
# The tag sets that due tagged tasks wait for, found the same way, one step per set.
TAG_SETS = """
tag_sets (tags) AS (
    SELECT MIN(target_tags) FROM tasks INDEXED BY tasks_queue_tagged
    WHERE status = 'pending' AND due = 1 AND target_tags IS NOT NULL
    UNION ALL
    SELECT (SELECT MIN(target_tags) FROM tasks INDEXED BY tasks_queue_tagged
            WHERE status = 'pending' AND due = 1 AND target_tags IS NOT NULL AND target_tags > tag_sets.tags)
    FROM tag_sets WHERE tag_sets.tags IS NOT NULL
)"""
# What a look that found nothing to start waits for: the devices of pinned tasks, the tag sets of tagged ones.
WAITED_FOR = f"""{TARGETS}, {TAG_SETS}
SELECT device_id, NULL FROM targets WHERE device_id IS NOT NULL
UNION ALL SELECT NULL, tags FROM tag_sets WHERE tags IS NOT NULL"""
# a free device with every tag of the JSON array in ``tag_sets.tags``
FREE_WITH_TAGS = """EXISTS (SELECT 1 FROM devices d INDEXED BY devices_free
    WHERE d.connected = 1 AND d.disabled = 0 AND d.active_tasks < d.capacity
      AND NOT EXISTS (SELECT 1 FROM json_each(tag_sets.tags) wanted
                      WHERE wanted.value NOT IN (SELECT value FROM json_each(d.tags))))"""
# Pending tasks that can start now, in dispatch order: due ones for any device, due ones pinned to a device with a
# free slot, and due ones for tags some free device has (at most ``limit`` from each), so tasks waiting for a device
# that is away, full or disabled are not read.
DUE_PENDING = f"""{TARGETS}, {TAG_SETS},
queue AS (
    SELECT * FROM (
        SELECT rowid AS position, * FROM tasks INDEXED BY tasks_queue
        WHERE status = 'pending' AND due = 1 AND target_device_id IS NULL AND target_tags IS NULL
        ORDER BY priority DESC, created_at, rowid LIMIT :limit)
    UNION ALL
    SELECT t.rowid, t.* FROM tag_sets JOIN tasks t ON t.rowid IN (
        SELECT rowid FROM tasks INDEXED BY tasks_queue_tagged
        WHERE status = 'pending' AND due = 1 AND target_tags IS NOT NULL AND target_tags = tag_sets.tags
        ORDER BY priority DESC, created_at, rowid LIMIT :limit)
    WHERE tag_sets.tags IS NOT NULL AND {FREE_WITH_TAGS}
    UNION ALL
    SELECT t.rowid, t.* FROM targets JOIN devices d ON d.device_id = targets.device_id
    JOIN tasks t ON t.rowid IN (
        SELECT rowid FROM tasks INDEXED BY tasks_queue_pinned
        WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL AND target_device_id = d.device_id
        ORDER BY priority DESC, created_at, rowid LIMIT :limit)
    WHERE d.connected = 1 AND d.disabled = 0 AND d.active_tasks < d.capacity
)
SELECT {", ".join(TASK_COLUMNS)} FROM queue ORDER BY priority DESC, created_at, position LIMIT :limit
"""


# Is any task pending and not held: a step into each part of the queue (a held task is in none of them).
QUEUED = """SELECT EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_queue
                      WHERE status = 'pending' AND due = 1 AND target_device_id IS NULL AND target_tags IS NULL)
    OR EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_queue_pinned
               WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL)
    OR EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_queue_tagged
               WHERE status = 'pending' AND due = 1 AND target_tags IS NOT NULL)
    OR EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_scheduled WHERE status = 'pending' AND due = 0 AND held = 0)"""
NEXT_DUE = (
    "SELECT MIN(not_before) FROM tasks INDEXED BY tasks_scheduled WHERE status = 'pending' AND due = 0 AND held = 0"
)


class NoFreeSlot(Exception):
    """A move would put more active tasks on a device than its capacity (raised inside a verb, to undo it)."""


@dataclass(frozen=True)
class Waiting:
    """What the pending tasks wait for once a look found that none can start: a free slot on one of ``devices``
    (their pinned tasks') or on a device with every tag of one of ``tag_sets`` (their tagged tasks')."""

    devices: frozenset
    tag_sets: tuple

    @classmethod
    def read(cls, rows):
        """From the rows of ``WAITED_FOR``."""
        tag_sets = {frozenset(from_json(tags)) for _device_id, tags in rows if tags is not None}
        return cls(frozenset(device_id for device_id, _tags in rows if device_id is not None), tuple(tag_sets))

    def ends_with_a_slot_on(self, device_id, tags):
        """True if a slot freed on the device (``tags``: its tags, JSON) may let a waiting task start."""
        if device_id in self.devices:
            return True
        has = set(from_json(tags)) if self.tag_sets else set()
        return any(wanted <= has for wanted in self.tag_sets)


class SQLiteStore(DeviceTables, BatchTables, ScheduleTables, Store):
    """Store on one ``sqlite3`` connection; its writes are grouped into commits by ``GroupCommit`` (commits.py),
    its device tables are read and written by ``DeviceTables`` (sqlite_devices.py), its batches by ``BatchTables``
    (sqlite_batches.py), its schedules by ``ScheduleTables`` (sqlite_schedules.py)."""

    def __init__(self, path, synchronous="NORMAL"):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._commits = GroupCommit(self._db, on_failure=self._forget_what_a_failed_commit_undid)
        self._lock = self._commits.lock
        # Whether a task is pending and not held, as the writes since a query tell: True, False, or None (ask the
        # file: a write took a task out of the queue, or a commit failed). A write undone may leave True behind:
        # that costs a look at the queue, no more.
        self._pending = None
        self._next_due = -math.inf  # no scheduled task falls due before this (it may be earlier than the first)
        # Once a look found that no pending task can start, what they wait for (a ``Waiting``): until a slot frees
        # where one could go, or a write calls _queue_changed, or a scheduled task falls due, the answer stays the same.
        self._waiting_for = None
        # Dispatched and running tasks as written (committed or in the open batch): devices report on them several
        # times each, and only this connection writes tasks, so these reads need no query. All of them are held
        # (read at open, and again after a failed commit), so that a miss means "not active" without a query.
        self._active = {}
        # 2 KiB pages (before the first table; a file keeps the size it was made with): a commit writes every page
        # it changed, and most changes are single rows in random places (a device's counter, its index entries).
        self._db.execute("PRAGMA page_size=2048")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_schema()
        self._hold_active_tasks()

    def _create_schema(self):
        """Create the tables of a new file, migrate an older one; refuse a file this code cannot bring up to date."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
        if has_tables:
            for step in steps_to(version, SCHEMA_VERSION, MIGRATIONS, "SQLite"):
                self._migrate(step)
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate(self, version):
        """Bring the file to ``version`` in one transaction: all of the migration, or none of it."""
        try:
            self._db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[version]} PRAGMA user_version = {version}; COMMIT;")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _transaction(self):
        """One atomic verb inside the open batch."""
        return self._commits.verb()

    def atomically(self):
        """The store to the caller alone, for a whole operation (nests): no commit, no other greenlet comes between
        its reads and its writes. Waiting for it is the only place a store call can yield."""
        return self._lock

    def durable(self):
        """Return once every write made so far is committed; raise the commit's error if it failed."""
        self._commits.durable()

    def after_commit(self, callback):
        """Run ``callback`` once every write made so far is committed (now, if none waits); never if that fails."""
        self._commits.after_commit(callback)

    def _forget_what_a_failed_commit_undid(self):
        self._pending = None  # a rolled-back batch may have made or taken the last pending task
        self._next_due = -math.inf  # ...or scheduled one, or let one join the queue
        self._queue_changed()
        self._hold_active_tasks()  # ...and changed active tasks: read them from the file again

    def _hold_active_tasks(self):
        """Hold every dispatched and running task in memory, as the file has it (no more than the fleet's slots)."""
        rows = self._db.execute("SELECT * FROM tasks WHERE status IN (?, ?)", ACTIVE_VALUES).fetchall()
        self._active = {row["task_id"]: task_from_row(row) for row in rows}

    def _remember(self, task):
        """Keep an active task in memory (and forget one that is no longer active)."""
        if task.status in ACTIVE:
            self._active[task.task_id] = task
        else:
            self._active.pop(task.task_id, None)

    def _query(self, sql, params=()):
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _insert_event(db, task_id, now, event, attempt):
        db.execute(
            "INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail) VALUES (?,?,?,?,?,?,?)",
            (task_id, now, event.kind, event.actor, event.device_id, attempt, to_db("detail", event.detail)),
        )

    def _shift_active(self, db, device_id, delta):
        if device_id is not None and delta:
            device = db.execute(
                "UPDATE devices SET active_tasks = active_tasks + ? WHERE device_id = ? RETURNING tags",
                (delta, device_id),
            ).fetchone()
            waiting = self._waiting_for
            if delta < 0 and waiting is not None and device and waiting.ends_with_a_slot_on(device_id, device[0]):
                self._queue_changed()

    @staticmethod
    def _take_slot(db, device_id):
        """Count one more active task on the device, unless that would overfill it: raise ``NoFreeSlot`` then."""
        taken = db.execute(
            "UPDATE devices SET active_tasks = active_tasks + 1 WHERE device_id = ? AND active_tasks < capacity",
            (device_id,),
        ).rowcount
        if not taken and db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone():
            raise NoFreeSlot(device_id)

    def _queue_changed(self):
        """Forget that no pending task could start: a write may have changed that."""
        self._waiting_for = None

    # tasks
    def add_task(self, task, *events):
        """Insert a new task (pending, or already dispatched to a device) and its first history events, atomically;
        True (one writer: a device the service found free still is)."""
        columns = ", ".join([*TASK_COLUMNS, "due"])
        marks = ", ".join("?" for _ in range(len(TASK_COLUMNS) + 1))
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO tasks ({columns}) VALUES ({marks})",
                [*(to_db(name, getattr(task, name)) for name in TASK_COLUMNS), self._due(task)],
            )
            if task.status in ACTIVE:
                self._shift_active(db, task.device_id, +1)
            if task.status == TaskStatus.PENDING:
                self._pending = True
                self._queue_changed()
            for event in events:
                self._insert_event(db, task.task_id, task.created_at, event, task.attempt)
        self._remember(task)
        return True

    def add_batch(self, batch, tasks, event, released):
        """Insert the batch and its pending tasks, each with ``event`` as its first history line, in one write; the
        first ``released`` tasks join the queue, the others are held until the batch makes room for them."""
        columns = ", ".join([*TASK_COLUMNS, "due", "held"])
        marks = ", ".join("?" for _ in range(len(TASK_COLUMNS) + 2))
        rows = [[*task_row(task), *self._batch_task_queue(task, n < released)] for n, task in enumerate(tasks)]
        detail = to_db("detail", event.detail)
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({', '.join('?' for _ in BATCH_COLUMNS)})",
                [to_db(name, getattr(batch, name)) for name in BATCH_COLUMNS],
            )
            db.executemany(f"INSERT INTO tasks ({columns}) VALUES ({marks})", rows)
            db.executemany(
                "INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail) "
                "VALUES (?, ?, ?, ?, ?, 1, ?)",
                [
                    (task.task_id, batch.created_at, event.kind, event.actor, task.target_device_id, detail)
                    for task in tasks
                ],
            )
            if released > 0 and tasks:
                self._pending = True
            self._queue_changed()

    def _batch_task_queue(self, task, released):
        """The ``due`` and ``held`` columns of a new batch task."""
        if not released:
            return 0, 1
        return self._due(task), 0

    def _count_batch_end(self, db, batch_id, status, now, released):
        """Count one of the batch's tasks ended in ``status``; if it had been released and the batch still runs,
        release its next held task (a held task ending makes no room: it never took any)."""
        column = TaskStatus(status).value  # completed, failed or cancelled: a column of batches
        row = db.execute(
            f"UPDATE batches SET {column} = {column} + 1, updated_at = ? WHERE batch_id = ? RETURNING status",
            (now, batch_id),
        ).fetchone()
        if not released or row is None or row[0] != BatchStatus.RUNNING:
            return
        cursor = db.execute(
            """UPDATE tasks SET held = 0, due = (not_before IS NULL) WHERE rowid = (
                   SELECT rowid FROM tasks INDEXED BY tasks_held WHERE status = 'pending' AND held = 1 AND batch_id = ?
                   ORDER BY created_at, rowid LIMIT 1)""",
            (batch_id,),
        )
        if cursor.rowcount:
            self._pending = True
            self._next_due = -math.inf  # it may have a not_before
            self._queue_changed()

    def _due(self, task):
        """The ``due`` column of a task entering the queue: 0 (and a time to look again) if it has a ``not_before``,
        which may have passed: the next ``due_pending_tasks`` moves it into the queue then."""
        if task.not_before is None:
            return 1
        if task.status == TaskStatus.PENDING:
            self._next_due = min(self._next_due, task.not_before)
        return 0

    def has_pending_tasks(self):
        """True if any task is pending and not held (due now or scheduled). The answer stands without a query until
        a write takes a task out of the queue (yes) or puts one in (no), or a commit fails."""
        if self._pending is None:
            self._pending = bool(self._query(QUEUED)[0][0])
        return self._pending

    def get_task(self, task_id):
        """The task with this id, or None (an active task from memory)."""
        task = self._active.get(task_id)
        if task is None:
            rows = self._query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
            if not rows:
                return None
            task = task_from_row(rows[0])
            self._remember(task)
        return task

    def find_task_by_idempotency_key(self, key, since, scope=""):
        """The newest task created with ``key`` by ``scope`` (or before keys had a scope) at or after ``since``, or
        None."""
        rows = self._query(
            """SELECT * FROM tasks WHERE idempotency_key = ? AND created_at >= ?
                 AND (idempotency_scope = ? OR idempotency_scope IS NULL)
               ORDER BY created_at DESC LIMIT 1""",
            (key, since, scope),
        )
        return task_from_row(rows[0]) if rows else None

    def update_task_if(self, task, changes, event=None, owe_cancel_to=None):
        """Apply ``changes`` (and ``event``, and an owed cancel) only if the stored task still has the status, device
        and attempt of ``task`` as the caller read it; return it updated, or None."""
        after = changed(task, changes)
        try:
            return self._update_task_if(task, after, changes, event, owe_cancel_to)
        except NoFreeSlot:  # the verb was undone: the task is as it was
            return None

    def _update_task_if(self, task, after, changes, event, owe_cancel_to):
        with self._transaction() as db:
            values = {name: to_db(name, value) for name, value in changes.items()}
            if after.status == TaskStatus.PENDING and task.status != TaskStatus.PENDING:
                values["due"] = self._due(after)
            assignments = ", ".join(f"{name} = ?" for name in values)
            moved = db.execute(
                f"UPDATE tasks SET {assignments} WHERE task_id = ? AND status = ? AND device_id IS ? AND attempt = ? "
                "RETURNING held",
                [*values.values(), task.task_id, task.status.value, task.device_id, task.attempt],
            ).fetchall()
            if len(moved) != 1:
                # the caller read an older task; the next read comes from the file, whatever memory holds
                self._active.pop(task.task_id, None)
                return None
            if after.status == TaskStatus.PENDING:
                self._pending = True
                self._queue_changed()
            elif task.status == TaskStatus.PENDING:
                self._pending = None  # it may have been the last
            self._move_active_count(db, task, after)
            if task.batch_id is not None and after.status in TERMINAL and task.status not in TERMINAL:
                self._count_batch_end(db, task.batch_id, after.status, after.updated_at, released=not moved[0][0])
            if event is not None:
                self._insert_event(db, task.task_id, after.updated_at, event, after.attempt)
            if owe_cancel_to is not None:
                db.execute(
                    "INSERT OR REPLACE INTO owed_cancels (device_id, task_id, attempt) VALUES (?, ?, ?)",
                    (owe_cancel_to, task.task_id, task.attempt),
                )
        self._remember(after)
        return after

    def _move_active_count(self, db, before, after):
        """Keep ``devices.active_tasks`` equal to the device's dispatched and running tasks."""
        if before.device_id == after.device_id and (before.status in ACTIVE) == (after.status in ACTIVE):
            return
        if before.status in ACTIVE:
            self._shift_active(db, before.device_id, -1)
        if after.status in ACTIVE and after.device_id is not None:
            self._take_slot(db, after.device_id)

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
        clauses, params = [], []
        if batch_id:
            clauses.append("batch_id = ?")
            params.append(batch_id)
        if statuses:
            # With a device filter, "+status" keeps SQLite on the device indexes (it cannot know they are narrower).
            column = "+status" if device_id else "status"
            clauses.append(f"{column} IN ({', '.join('?' for _ in statuses)})")
            params.extend(TaskStatus(s).value for s in statuses)
        if task_type:
            clauses.append("task_type = ?")
            params.append(task_type)
        if device_id:
            clauses.append("(device_id = ? OR target_device_id = ?)")
            params.extend([device_id, device_id])
        if created_after is not None:
            clauses.append("created_at >= ?")
            params.append(created_after)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = self._query(f"SELECT COUNT(*) FROM tasks {where}", params)[0][0]
        rows = self._query(
            f"SELECT * FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [task_from_row(row) for row in rows], total

    def due_pending_tasks(self, now, limit):
        """Pending tasks that may start now and whose target (if any) has a free slot, by priority then age; reads
        neither tasks scheduled for later nor tasks waiting for a device that is away, full or disabled. A task is
        due once a look at ``now`` has found its ``not_before`` passed (a clock set back does not undo that)."""
        with self._lock:
            self._queue_due_tasks(now)
            if self._waiting_for is not None:
                return []
            rows = self._query(DUE_PENDING, {"limit": limit})
            if not rows and limit > 0:
                self._waiting_for = Waiting.read(self._query(WAITED_FOR))
        return [task_from_row(row) for row in rows]

    def _queue_due_tasks(self, now):
        """Move scheduled tasks whose ``not_before`` has come into the queue (looking only when one may have).
        The caller holds the lock: no write comes between reading the next time and keeping it."""
        if now < self._next_due:
            return
        first = self._query(NEXT_DUE)[0][0]
        if first is not None and first <= now:
            with self._transaction() as db:
                db.execute(
                    "UPDATE tasks INDEXED BY tasks_scheduled SET due = 1 "
                    "WHERE status = 'pending' AND due = 0 AND held = 0 AND not_before <= ?",
                    (now,),
                )
            self._queue_changed()
            first = self._query(NEXT_DUE)[0][0]
        self._next_due = math.inf if first is None else first

    def active_tasks_of(self, device_id):
        """The device's dispatched and running tasks, oldest first."""
        rows = self._query(
            "SELECT * FROM tasks WHERE device_id = ? AND status IN (?, ?) ORDER BY created_at",
            (device_id, *ACTIVE_VALUES),
        )
        return [task_from_row(row) for row in rows]

    def task_active_on(self, task_id, device_id, attempt=None):
        """True if the task is dispatched to or running on the device (in ``attempt``, if given); from memory, where
        every active task is held."""
        task = self._active.get(task_id)
        return task is not None and task.device_id == device_id and attempt in (None, task.attempt)

    def take_owed_cancels(self, device_id):
        """Remove and return ``(task_id, attempt)`` of each ``cancel_task`` the device missed while away."""
        with self._transaction() as db:
            rows = db.execute("SELECT task_id, attempt FROM owed_cancels WHERE device_id = ?", (device_id,)).fetchall()
            db.execute("DELETE FROM owed_cancels WHERE device_id = ?", (device_id,))
            return [(task_id, attempt) for task_id, attempt in rows]

    def timed_out_tasks(self, now, limit=None):
        """Active tasks (at most ``limit``) whose timeout, counted from dispatch, has passed by ``now``."""
        rows = self._query(
            "SELECT * FROM tasks WHERE status IN (?, ?) AND dispatched_at + timeout <= ? LIMIT ?",
            (*ACTIVE_VALUES, now, -1 if limit is None else limit),
        )
        return [task_from_row(row) for row in rows]

    def tasks_of_lost_devices(self, disconnected_before, limit=None):
        """Active tasks (at most ``limit``) whose device has been disconnected since before ``disconnected_before``."""
        rows = self._query(
            """SELECT t.* FROM tasks t JOIN devices d ON d.device_id = t.device_id
               WHERE t.status IN (?, ?) AND d.connected = 0 AND d.disconnected_at <= ? LIMIT ?""",
            (*ACTIVE_VALUES, disconnected_before, -1 if limit is None else limit),
        )
        return [task_from_row(row) for row in rows]

    def count_tasks_by_status(self):
        """A mapping of status value to the number of tasks in it."""
        return dict(self._query("SELECT status, COUNT(*) FROM tasks GROUP BY status"))

    def count_finished_by_minute(self, since, until):
        """How many tasks ended in each minute of ``since <= finished_at < until``, by final status."""
        rows = self._query(
            """SELECT CAST((finished_at - ?) / 60 AS INTEGER), status, COUNT(*) FROM tasks
               WHERE finished_at >= ? AND finished_at < ? GROUP BY 1, 2""",
            (since, since, until),
        )
        return {(minute, status): count for minute, status, count in rows}

    def task_events(self, task_id):
        """The task's history, oldest first."""
        rows = self._query("SELECT * FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))
        return [event_from_row(row) for row in rows]

    def add_event(self, task_id, now, event, attempt):
        """Append one event to the task's history."""
        with self._transaction() as db:
            self._insert_event(db, task_id, now, event, attempt)

    def device_had_task(self, task_id, device_id):
        """True if the task was ever dispatched to the device."""
        rows = self._query(
            "SELECT 1 FROM task_events WHERE task_id = ? AND kind = 'dispatched' AND device_id = ? LIMIT 1",
            (task_id, device_id),
        )
        return bool(rows)

    # devices
    def count_tasks_by_status_and_type(self):
        """A mapping of ``(status value, task type)`` to the number of tasks in it."""
        rows = self._query("SELECT status, task_type, COUNT(*) FROM tasks GROUP BY status, task_type")
        return {(status, task_type): count for status, task_type, count in rows}

    def check_writable(self, now):
        """Write and commit one tiny row; raise if the store cannot take writes."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO store_health (id, checked_at) VALUES (1, ?)", (now,))
        self.durable()

    @property
    def failed_commits(self):
        """How many commits have failed since the store opened."""
        return self._commits.failed

    def fail_commits(self, error):
        """Make every COMMIT fail with ``error`` (a ``sqlite3.Error``), or commit again with None: a fault for tests."""
        self._commits.fault = error

    def close(self):
        """Commit what is open and release the store's resources."""
        self._commits.commit()
        with self._lock:
            self._db.close()
