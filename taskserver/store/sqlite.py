"""The default store: one SQLite file through the standard ``sqlite3`` module (WAL, conditional updates)."""

import json
import os
import sqlite3
from dataclasses import fields
from pathlib import Path

from taskserver.domain import ACTIVE, Device, Task, TaskStatus
from taskserver.store.base import Store
from taskserver.store.commits import GroupCommit

SCHEMA = (Path(__file__).parent / "schema.sql").read_text()
SCHEMA_VERSION = 1
# the devices that can take a task now, read through the partial index that holds exactly them
FREE = "FROM devices INDEXED BY devices_free WHERE connected = 1 AND disabled = 0 AND active_tasks < capacity"

JSON_COLUMNS = {"data", "result", "device_info", "detail"}
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
TASK_COLUMNS = [f.name for f in fields(Task)]
DEVICE_COLUMNS = [f.name for f in fields(Device)]
# Device.status in SQL: keep in step with the property in domain.py.
DEVICE_STATUS_SQL = "CASE WHEN connected = 0 THEN 'offline' WHEN active_tasks >= capacity THEN 'busy' ELSE 'online' END"


def _to_db(name, value):
    """Encode one Python value for its column: JSON columns as text; statuses (str) and flags (int) bind as they are."""
    if name in JSON_COLUMNS and value is not None:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _changed(task, changes):
    """A copy of ``task`` with ``changes`` applied (``dataclasses.replace`` without its per-call checks: the UPDATE
    has already refused an unknown column)."""
    after = object.__new__(Task)
    after.__dict__.update(task.__dict__, **changes)
    return after


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
    values["disabled"] = bool(values["disabled"])
    return Device(**values)


class SQLiteStore(Store):
    """Store on one ``sqlite3`` connection; its writes are grouped into commits by ``GroupCommit`` (commits.py)."""

    def __init__(self, path, synchronous="NORMAL"):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._commits = GroupCommit(self._db, on_failure=self._forget_what_a_failed_commit_undid)
        self._lock = self._commits.lock
        self._maybe_pending = True  # False once a query found no pending task and no write made one since
        # Dispatched and running tasks as written (committed or in the open batch): devices report on them several
        # times each, and only this connection writes tasks, so these reads need no query.
        self._active = {}
        # 2 KiB pages (before the first table; a file keeps the size it was made with): a commit writes every page
        # it changed, and most changes are single rows in random places (a device's counter, its index entries).
        self._db.execute("PRAGMA page_size=2048")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_schema()

    def _create_schema(self):
        """Create the tables of a new file; refuse a file written by another version of the schema."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
        if has_tables and version != SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version}, this server needs {SCHEMA_VERSION}: "
                "use a new TASKSERVER_DATABASE file or migrate this one"
            )
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        self._maybe_pending = True  # a rolled-back batch may have taken the last pending task
        self._active.clear()  # ...and changed active tasks: read them from the file again

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
            (task_id, now, event.kind, event.actor, event.device_id, attempt, _to_db("detail", event.detail)),
        )

    @staticmethod
    def _shift_active(db, device_id, delta):
        if device_id is not None and delta:
            db.execute("UPDATE devices SET active_tasks = active_tasks + ? WHERE device_id = ?", (delta, device_id))

    # tasks
    def add_task(self, task, *events):
        """Insert a new task (pending, or already dispatched to a device) and its first history events, atomically."""
        columns = ", ".join(TASK_COLUMNS)
        marks = ", ".join("?" for _ in TASK_COLUMNS)
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO tasks ({columns}) VALUES ({marks})",
                [_to_db(name, getattr(task, name)) for name in TASK_COLUMNS],
            )
            if task.status in ACTIVE:
                self._shift_active(db, task.device_id, +1)
            self._maybe_pending |= task.status == TaskStatus.PENDING
            for event in events:
                self._insert_event(db, task.task_id, task.created_at, event, task.attempt)
        self._remember(task)

    def has_pending_tasks(self):
        """True if any task is pending (due now or scheduled). Once the answer is no, it stays no without a query
        until a write makes a task pending (or a commit fails)."""
        if self._maybe_pending:
            self._maybe_pending = bool(
                self._query("SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'pending')")[0][0]
            )
        return self._maybe_pending

    def get_task(self, task_id):
        """The task with this id, or None (an active task from memory)."""
        task = self._active.get(task_id)
        if task is None:
            rows = self._query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
            if not rows:
                return None
            task = _task(rows[0])
            self._remember(task)
        return task

    def find_task_by_idempotency_key(self, key, since):
        """The newest task created with ``key`` at or after ``since``, or None."""
        rows = self._query(
            "SELECT * FROM tasks WHERE idempotency_key = ? AND created_at >= ? ORDER BY created_at DESC LIMIT 1",
            (key, since),
        )
        return _task(rows[0]) if rows else None

    def update_task_if(self, task, changes, event=None, owe_cancel_to=None):
        """Apply ``changes`` (and ``event``, and an owed cancel) only if the stored task still has the status, device
        and attempt of ``task`` as the caller read it; return it updated, or None."""
        assignments = ", ".join(f"{name} = ?" for name in changes)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE tasks SET {assignments} WHERE task_id = ? AND status = ? AND device_id IS ? AND attempt = ?",
                [_to_db(name, value) for name, value in changes.items()]
                + [task.task_id, task.status.value, task.device_id, task.attempt],
            )
            if cursor.rowcount != 1:
                return None
            after = _changed(task, changes)
            self._maybe_pending |= after.status == TaskStatus.PENDING
            self._move_active_count(db, task, after)
            if event is not None:
                self._insert_event(db, task.task_id, after.updated_at, event, after.attempt)
            if owe_cancel_to is not None:
                db.execute("INSERT OR IGNORE INTO owed_cancels VALUES (?, ?)", (owe_cancel_to, task.task_id))
        self._remember(after)
        return after

    def _move_active_count(self, db, before, after):
        """Keep ``devices.active_tasks`` equal to the device's dispatched and running tasks."""
        if before.device_id == after.device_id and (before.status in ACTIVE) == (after.status in ACTIVE):
            return
        if before.status in ACTIVE:
            self._shift_active(db, before.device_id, -1)
        if after.status in ACTIVE:
            self._shift_active(db, after.device_id, +1)

    def list_tasks(
        self, statuses=(), task_type=None, device_id=None, limit=100, offset=0, created_after=None, created_before=None
    ):
        """A page of tasks matching the filters (``created_after <= created_at < created_before``), newest first,
        and the number of all that match."""
        clauses, params = [], []
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
        return [_task(row) for row in rows], total

    def due_pending_tasks(self, now, limit):
        """Pending tasks that may start now and whose target (if any) has a free slot, by priority then age."""
        rows = self._query(
            """SELECT t.* FROM tasks t LEFT JOIN devices d ON d.device_id = t.target_device_id
               WHERE t.status = 'pending' AND (t.not_before IS NULL OR t.not_before <= ?)
                 AND (t.target_device_id IS NULL
                      OR (d.connected = 1 AND d.disabled = 0 AND d.active_tasks < d.capacity))
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

    def set_device_token(self, device_id, token_hash, now):
        """Bind a (hashed) token to the device id, replacing any earlier one."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO device_tokens VALUES (?, ?, ?) ON CONFLICT (device_id) "
                "DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at",
                (device_id, token_hash, now),
            )

    def device_token_hash(self, device_id):
        """The hash of the device's own token, or None if it has none."""
        rows = self._query("SELECT token_hash FROM device_tokens WHERE device_id = ?", (device_id,))
        return rows[0][0] if rows else None

    def device_id_for_token_hash(self, token_hash):
        """The device id a (hashed) per-device token belongs to, or None."""
        rows = self._query("SELECT device_id FROM device_tokens WHERE token_hash = ?", (token_hash,))
        return rows[0][0] if rows else None

    def delete_device_token(self, device_id):
        """Revoke the device's own token; True if it had one."""
        with self._transaction() as db:
            return db.execute("DELETE FROM device_tokens WHERE device_id = ?", (device_id,)).rowcount == 1

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
        updated = [c for c in DEVICE_COLUMNS if c not in ("device_id", "created_at", "active_tasks", "disabled")]
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

    def list_devices(self, statuses=(), disabled=None):
        """Known devices in one of ``statuses`` (all if empty) and, if given, that ``disabled`` flag; newest first."""
        clauses, params = [], []
        if statuses:
            clauses.append(f"{DEVICE_STATUS_SQL} IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if disabled is not None:
            clauses.append("disabled = ?")
            params.append(int(disabled))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM devices {where} ORDER BY registered_at DESC, device_id", params)
        return [_device(row) for row in rows]

    def dispatchable_count(self, at_most):
        """How many pending tasks could go now: the free slots of connected, enabled devices (counted over at most
        ``at_most`` devices), or 0 when no task is pending."""
        if not self.has_pending_tasks():
            return 0
        rows = self._query(
            f"SELECT COALESCE(SUM(capacity - active_tasks), 0) FROM (SELECT capacity, active_tasks {FREE} LIMIT ?)",
            (at_most,),
        )
        return rows[0][0]

    def free_devices(self, limit=None, include=()):
        """Connected, enabled devices with a free slot: the ``limit`` least loaded (all if None), plus ``include``."""
        rows = self._query(
            f"SELECT * {FREE} ORDER BY active_tasks, registered_at LIMIT ?", (-1 if limit is None else limit,)
        )
        named = [device_id for device_id in include if device_id not in {row["device_id"] for row in rows}]
        if named:
            marks = ", ".join("?" for _ in named)
            rows += self._query(f"SELECT * {FREE} AND device_id IN ({marks})", named)
        return [_device(row) for row in rows]

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

    def set_device_disabled(self, device_id, disabled):
        """Stop (or resume) giving the device new tasks; return True if the device exists."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE devices SET disabled = ? WHERE device_id = ?", (int(disabled), device_id))
            return cursor.rowcount == 1

    def delete_device(self, device_id):
        """Forget an offline device with no active task and no task waiting for it, and its own history;
        return True if it was deleted."""
        with self._transaction() as db:
            cursor = db.execute(
                """DELETE FROM devices WHERE device_id = ? AND connected = 0
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE device_id = ? AND status IN (?, ?))
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE target_device_id = ? AND status = 'pending')""",
                (device_id, device_id, *ACTIVE_VALUES, device_id),
            )
            if cursor.rowcount == 0:
                return False
            db.execute("DELETE FROM device_events WHERE device_id = ?", (device_id,))
            return True

    def add_device_event(self, device_id, now, event):
        """Append one event (registered, offline, disabled, ...) to the device's own history."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO device_events (device_id, at, kind, actor, detail) VALUES (?,?,?,?,?)",
                (device_id, now, event.kind, event.actor, _to_db("detail", event.detail)),
            )

    def device_history(self, device_id, limit):
        """The device's latest ``limit`` events, its own and those of tasks on it, newest first."""
        rows = self._query(
            """SELECT * FROM (SELECT at, kind, actor, task_id, attempt, detail, 0 AS source, id FROM task_events
                              WHERE device_id = ? ORDER BY at DESC, id DESC LIMIT ?)
               UNION ALL
               SELECT * FROM (SELECT at, kind, actor, NULL, NULL, detail, 1, id FROM device_events
                              WHERE device_id = ? ORDER BY at DESC, id DESC LIMIT ?)
               ORDER BY at DESC, source, id DESC LIMIT ?""",  # at one instant, a device's own event came first
            (device_id, limit, device_id, limit, limit),
        )
        return [
            {
                "at": row["at"],
                "kind": row["kind"],
                "actor": row["actor"],
                "task_id": row["task_id"],
                "attempt": row["attempt"],
                "detail": json.loads(row["detail"]) if row["detail"] is not None else None,
            }
            for row in rows
        ]

    def count_devices_by_status(self):
        """A mapping of ``(status value, disabled)`` to the number of devices in it."""
        rows = self._query(f"SELECT {DEVICE_STATUS_SQL}, disabled, COUNT(*) FROM devices GROUP BY 1, 2")
        return {(status, bool(disabled)): count for status, disabled, count in rows}

    def count_tasks_by_status_and_type(self):
        """A mapping of ``(status value, task type)`` to the number of tasks in it."""
        rows = self._query("SELECT status, task_type, COUNT(*) FROM tasks GROUP BY status, task_type")
        return {(status, task_type): count for status, task_type, count in rows}

    def check_writable(self, now):
        """Write one tiny row in a transaction; raise if the store cannot take writes."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO store_health (id, checked_at) VALUES (1, ?)", (now,))

    def close(self):
        """Commit what is open and release the store's resources."""
        self._commits.commit()
        with self._lock:
            self._db.close()
