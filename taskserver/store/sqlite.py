"""The default store: one SQLite file through the standard ``sqlite3`` module (WAL, conditional updates)."""

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import fields

from taskserver.domain import ACTIVE, Device, Task, TaskStatus
from taskserver.store.base import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,
    device_id TEXT,
    target_device_id TEXT,
    avoid_device_id TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout INTEGER NOT NULL,
    max_retries INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    progress INTEGER NOT NULL DEFAULT 0,
    progress_message TEXT,
    result TEXT,
    error_code TEXT,
    created_at REAL NOT NULL,
    dispatched_at REAL,
    delivered_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    not_before REAL,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (status, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS tasks_device ON tasks (device_id, status);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS owed_cancels (
    device_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (device_id, task_id)
);

CREATE TABLE IF NOT EXISTS task_events (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    device_id TEXT,
    attempt INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, id);

CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    device_name TEXT NOT NULL,
    device_info TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    sid TEXT,
    registered_at REAL,
    last_heartbeat REAL,
    disconnected_at REAL,
    created_at REAL NOT NULL,
    active_tasks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_connected ON devices (connected);
"""

JSON_COLUMNS = {"data", "result", "device_info", "detail"}
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
TASK_COLUMNS = [f.name for f in fields(Task)]
DEVICE_COLUMNS = [f.name for f in fields(Device)]


def _to_db(name, value):
    """Encode one Python value for its column."""
    if name in JSON_COLUMNS and value is not None:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, TaskStatus):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def _task(row):
    """Build a Task from a row."""
    values = dict(row)
    values["data"] = json.loads(values["data"])
    values["result"] = json.loads(values["result"]) if values["result"] is not None else None
    values["status"] = TaskStatus(values["status"])
    return Task(**values)


def _device(row):
    """Build a Device from a row."""
    values = dict(row)
    values["device_info"] = json.loads(values["device_info"])
    values["connected"] = bool(values["connected"])
    return Device(**values)


class SQLiteStore(Store):
    """Store on one ``sqlite3`` connection guarded by a lock; every verb is one transaction and never yields."""

    def __init__(self, path, synchronous="NORMAL"):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql, params=()):
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _insert_event(db, task_id, now, event, attempt):
        db.execute(
            "INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail) VALUES (?,?,?,?,?,?,?)",
            (task_id, now, event.kind, event.actor, event.device_id, attempt, _to_db("detail", event.detail)),
        )

    @staticmethod
    def _shift_active(db, device_id, delta):
        if device_id is not None and delta:
            db.execute("UPDATE devices SET active_tasks = active_tasks + ? WHERE device_id = ?", (delta, device_id))

    # tasks
    def add_task(self, task, event):
        """Insert a new task and its first history event in one transaction."""
        columns = ", ".join(TASK_COLUMNS)
        marks = ", ".join("?" for _ in TASK_COLUMNS)
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO tasks ({columns}) VALUES ({marks})",
                [_to_db(name, getattr(task, name)) for name in TASK_COLUMNS],
            )
            self._insert_event(db, task.task_id, task.created_at, event, task.attempt)

    def get_task(self, task_id):
        """The task with this id, or None."""
        rows = self._query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    def find_task_by_idempotency_key(self, key, since):
        """The newest task created with ``key`` at or after ``since``, or None."""
        rows = self._query(
            "SELECT * FROM tasks WHERE idempotency_key = ? AND created_at >= ? ORDER BY created_at DESC LIMIT 1",
            (key, since),
        )
        return _task(rows[0]) if rows else None

    def update_task_if(
        self, task_id, expect_status, changes, event=None, expect_device=None, expect_attempt=None, owe_cancel_to=None
    ):
        """Apply ``changes`` (and ``event``, and an owed cancel) only if the task still matches; return it, or None."""
        expected = [TaskStatus(s).value for s in expect_status]
        where = f"task_id = ? AND status IN ({', '.join('?' for _ in expected)})"
        params = [task_id, *expected]
        if expect_device is not None:
            where += " AND device_id = ?"
            params.append(expect_device)
        if expect_attempt is not None:
            where += " AND attempt = ?"
            params.append(expect_attempt)
        with self._transaction() as db:
            rows = db.execute(f"SELECT * FROM tasks WHERE {where}", params).fetchall()
            if not rows:
                return None
            before = _task(rows[0])
            assignments = ", ".join(f"{name} = ?" for name in changes)
            db.execute(
                f"UPDATE tasks SET {assignments} WHERE task_id = ?",
                [_to_db(name, value) for name, value in changes.items()] + [task_id],
            )
            after = _task(db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone())
            self._move_active_count(db, before, after)
            if event is not None:
                self._insert_event(db, task_id, after.updated_at, event, after.attempt)
            if owe_cancel_to is not None:
                db.execute("INSERT OR IGNORE INTO owed_cancels VALUES (?, ?)", (owe_cancel_to, task_id))
            return after

    def _move_active_count(self, db, before, after):
        """Keep ``devices.active_tasks`` equal to the device's dispatched and running tasks."""
        if before.device_id == after.device_id and (before.status in ACTIVE) == (after.status in ACTIVE):
            return
        if before.status in ACTIVE:
            self._shift_active(db, before.device_id, -1)
        if after.status in ACTIVE:
            self._shift_active(db, after.device_id, +1)

    def list_tasks(self, statuses=(), task_type=None, device_id=None, limit=100, offset=0):
        """A page of tasks matching the filters, newest first, and the number of all that match."""
        clauses, params = [], []
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(TaskStatus(s).value for s in statuses)
        if task_type:
            clauses.append("task_type = ?")
            params.append(task_type)
        if device_id:
            clauses.append("(device_id = ? OR target_device_id = ?)")
            params.extend([device_id, device_id])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = self._query(f"SELECT COUNT(*) FROM tasks {where}", params)[0][0]
        rows = self._query(
            f"SELECT * FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_task(row) for row in rows], total

    def due_pending_tasks(self, now, limit):
        """Pending tasks that may start now and whose target (if any) has a free slot, by priority then age."""
        rows = self._query(
            """SELECT t.* FROM tasks t LEFT JOIN devices d ON d.device_id = t.target_device_id
               WHERE t.status = 'pending' AND (t.not_before IS NULL OR t.not_before <= ?)
                 AND (t.target_device_id IS NULL OR (d.connected = 1 AND d.active_tasks < d.capacity))
               ORDER BY t.priority DESC, t.created_at, t.rowid LIMIT ?""",
            (now, limit),
        )
        return [_task(row) for row in rows]

    def active_tasks_of(self, device_id):
        """The device's dispatched and running tasks, oldest first."""
        rows = self._query(
            "SELECT * FROM tasks WHERE device_id = ? AND status IN (?, ?) ORDER BY created_at",
            (device_id, *ACTIVE_VALUES),
        )
        return [_task(row) for row in rows]

    def take_owed_cancels(self, device_id):
        """Remove and return the ids of tasks whose ``cancel_task`` the device missed while away."""
        with self._transaction() as db:
            rows = db.execute("SELECT task_id FROM owed_cancels WHERE device_id = ?", (device_id,)).fetchall()
            db.execute("DELETE FROM owed_cancels WHERE device_id = ?", (device_id,))
            return [row[0] for row in rows]

    def timed_out_tasks(self, now):
        """Active tasks whose timeout, counted from dispatch, has passed by ``now``."""
        rows = self._query(
            "SELECT * FROM tasks WHERE status IN (?, ?) AND dispatched_at + timeout <= ?", (*ACTIVE_VALUES, now)
        )
        return [_task(row) for row in rows]

    def tasks_of_lost_devices(self, disconnected_before):
        """Active tasks whose device has been disconnected since before ``disconnected_before``."""
        rows = self._query(
            """SELECT t.* FROM tasks t JOIN devices d ON d.device_id = t.device_id
               WHERE t.status IN (?, ?) AND d.connected = 0 AND d.disconnected_at <= ?""",
            (*ACTIVE_VALUES, disconnected_before),
        )
        return [_task(row) for row in rows]

    def count_tasks_by_status(self):
        """A mapping of status value to the number of tasks in it."""
        return dict(self._query("SELECT status, COUNT(*) FROM tasks GROUP BY status"))

    def task_events(self, task_id):
        """The task's history, oldest first."""
        rows = self._query("SELECT * FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))
        return [
            {**dict(row), "detail": json.loads(row["detail"]) if row["detail"] is not None else None} for row in rows
        ]

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
    def save_device(self, device):
        """Insert the device or update its name, info, capacity and connection."""
        updated = [c for c in DEVICE_COLUMNS if c not in ("device_id", "created_at", "active_tasks")]
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO devices ({", ".join(DEVICE_COLUMNS)}) VALUES ({", ".join("?" for _ in DEVICE_COLUMNS)})
                    ON CONFLICT (device_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in updated)}""",
                [_to_db(name, getattr(device, name)) for name in DEVICE_COLUMNS],
            )

    def get_device(self, device_id):
        """The device with this id (with its active task count), or None."""
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def list_devices(self):
        """Every known device, most recently registered first."""
        rows = self._query("SELECT * FROM devices ORDER BY registered_at DESC, device_id")
        return [_device(row) for row in rows]

    def free_devices(self):
        """Connected devices with at least one free slot."""
        rows = self._query("SELECT * FROM devices WHERE connected = 1 AND active_tasks < capacity")
        return [_device(row) for row in rows]

    def connected_devices(self):
        """Every device the store believes connected."""
        return [_device(row) for row in self._query("SELECT * FROM devices WHERE connected = 1")]

    def mark_disconnected(self, device_id, sid, now):
        """Mark the device offline if ``sid`` is still its connection; return True if it was."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE devices SET connected = 0, sid = NULL, disconnected_at = ? "
                "WHERE device_id = ? AND sid = ? AND connected = 1",
                (now, device_id, sid),
            )
            return cursor.rowcount == 1

    def record_heartbeat(self, device_id, now):
        """Remember when the device last sent a heartbeat."""
        with self._transaction() as db:
            db.execute("UPDATE devices SET last_heartbeat = ? WHERE device_id = ?", (now, device_id))

    def disconnect_all(self, now):
        """On start: no connection survives a restart; tasks get a fresh grace from ``now``; counts are rebuilt."""
        with self._transaction() as db:
            db.execute(
                """UPDATE devices SET connected = 0, sid = NULL, disconnected_at = ?,
                   active_tasks = (SELECT COUNT(*) FROM tasks t
                                   WHERE t.device_id = devices.device_id AND t.status IN (?, ?))""",
                (now, *ACTIVE_VALUES),
            )

    def close(self):
        """Release the store's resources."""
        with self._lock:
            self._db.close()
