"""The PostgreSQL store: psycopg 3 and a connection pool; one pooled connection and one transaction per unit of work.

Other writers may share the database (the next step is several nodes), so nothing here is cached across units:
every change is a compare-and-set, pending tasks are claimed with ``FOR UPDATE SKIP LOCKED``, and a device's slot
is taken with a conditional update, so two writers can never overfill a device."""

import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import psycopg.waiting
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from taskserver.domain import ACTIVE, TERMINAL, TaskStatus
from taskserver.errors import StoreConflict, StoreUnavailable, TaskServerError
from taskserver.store.base import Store
from taskserver.store.migrations import steps_to
from taskserver.store.postgres_batches import PostgresBatchTables
from taskserver.store.postgres_schedules import PostgresScheduleTables
from taskserver.store.rows import (
    ACTIVE_VALUES,
    BATCH_COLUMNS,
    DEVICE_COLUMNS,
    TASK_COLUMNS,
    changed,
    device_from_row,
    event_from_row,
    history_from_row,
    task_from_row,
    task_row,
    to_db,
)

log = logging.getLogger("taskserver.store")

SCHEMA_VERSION = 4
# version -> the statements that bring a database of the version before it to it (version 1: a new database)
POSTGRES_MIGRATIONS = {
    1: (Path(__file__).parent / "postgres_schema.sql").read_text(),
    2: (Path(__file__).parent / "postgres_nodes.sql").read_text(),
    3: (Path(__file__).parent / "postgres_fleet.sql").read_text(),
    4: (Path(__file__).parent / "postgres_tags_index.sql").read_text(),
}
MIGRATION_LOCK = 0x7461736B  # "task": the advisory lock two servers starting at once take in turn

TASK_SELECT = ", ".join(TASK_COLUMNS)
# Devices that can take a task now, on this node (a node dispatches only to the devices whose connection it holds).
# A query runs with HELD_HERE as ``PostgresStore._here`` writes it, for the planner.
HELD_HERE = "node_id IS NOT DISTINCT FROM %(node)s"
FREE = f"connected AND NOT disabled AND active_tasks < capacity AND {HELD_HERE}"
DEVICE_STATUS_SQL = "CASE WHEN NOT connected THEN 'offline' WHEN active_tasks >= capacity THEN 'busy' ELSE 'online' END"
# The tag sets due tagged tasks wait for (as JSON text), one index step each; ends with a NULL row.
TAG_SETS = """tag_sets (tags) AS (
    SELECT (SELECT target_tags::text FROM tasks WHERE status = 'pending' AND due AND target_tags IS NOT NULL
            ORDER BY target_tags::text LIMIT 1)
    UNION ALL
    SELECT (SELECT target_tags::text FROM tasks WHERE status = 'pending' AND due AND target_tags IS NOT NULL
              AND target_tags::text > tag_sets.tags ORDER BY target_tags::text LIMIT 1)
    FROM tag_sets WHERE tag_sets.tags IS NOT NULL
)"""
# Pending tasks that can start now, in dispatch order, claimed: due ones for any device, due ones pinned to a device
# with a free slot, and due ones for a tag set a free device has (the sets found one index step each). Rows another
# unit holds are skipped, so two writers never claim the same task.
DUE_PENDING = f"""
WITH RECURSIVE open_queue AS (
    SELECT {TASK_SELECT}, seq FROM tasks
    WHERE status = 'pending' AND due AND target_device_id IS NULL AND target_tags IS NULL
    ORDER BY priority DESC, created_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), pinned AS (
    SELECT {TASK_SELECT}, seq FROM tasks
    WHERE status = 'pending' AND due AND target_device_id IN (SELECT device_id FROM devices WHERE {FREE})
    ORDER BY priority DESC, created_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), {TAG_SETS}, tagged AS (
    SELECT {TASK_SELECT}, seq FROM tasks
    WHERE status = 'pending' AND due AND target_tags IS NOT NULL AND target_tags::text IN (
        SELECT tags FROM tag_sets
        WHERE tags IS NOT NULL AND EXISTS (SELECT 1 FROM devices WHERE {FREE} AND devices.tags @> tag_sets.tags::jsonb))
    ORDER BY priority DESC, created_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
SELECT * FROM (SELECT * FROM open_queue UNION ALL SELECT * FROM pinned UNION ALL SELECT * FROM tagged) queue
ORDER BY priority DESC, created_at, seq LIMIT %(limit)s
"""

# The devices due pinned tasks wait for, one index step each; ends with a NULL row.
TARGETS = """targets (device_id) AS (
    SELECT (SELECT target_device_id FROM tasks WHERE status = 'pending' AND due AND target_device_id IS NOT NULL
            ORDER BY target_device_id LIMIT 1)
    UNION ALL
    SELECT (SELECT target_device_id FROM tasks WHERE status = 'pending' AND due AND target_device_id IS NOT NULL
              AND target_device_id > targets.device_id ORDER BY target_device_id LIMIT 1)
    FROM targets WHERE targets.device_id IS NOT NULL
)"""
# Could a pending task start now: one due for any device while a device is free, one due pinned to a free device,
# one due for a tag set a free device has, or one scheduled (whose time may have come). It walks the CTEs ``TARGETS``
# and ``TAG_SETS`` and reads each one's devices alone, by primary key and by tags (OFFSET 0 keeps the free-slot test
# out of that read), before it asks whether one is free: the planner's guess of how many devices are free, stale
# while phones connect, then never makes it read every free device for each.
STARTABLE = f"""WITH RECURSIVE {TARGETS}, {TAG_SETS}
SELECT EXISTS (SELECT 1 FROM tasks
               WHERE status = 'pending' AND due AND target_device_id IS NULL AND target_tags IS NULL)
        AND EXISTS (SELECT 1 FROM devices WHERE {FREE})
    OR EXISTS (SELECT 1 FROM targets
               WHERE (SELECT {FREE} FROM devices WHERE devices.device_id = targets.device_id))
    OR EXISTS (SELECT 1 FROM tag_sets WHERE tags IS NOT NULL AND EXISTS (
               SELECT 1 FROM (SELECT * FROM devices WHERE devices.tags @> tag_sets.tags::jsonb OFFSET 0) tagged
               WHERE {FREE}))
    OR EXISTS (SELECT 1 FROM tasks WHERE status = 'pending' AND NOT due AND NOT held) AS startable"""

NOW_EPOCH = "extract(epoch FROM now())::float8 AS now"  # the database's clock: leases are judged by it alone
# The devices held by the nodes of the CTE ``lost (node_id, left_at)`` go offline at ``left_at`` (the node's last
# renewal, for a dead one), each with an event in its history; returns their ids.
RELEASE_DEVICES = """WITH {lost},
released AS (UPDATE devices SET connected = FALSE, sid = NULL, node_id = NULL, disconnected_at = lost.left_at
             FROM lost WHERE connected AND devices.node_id IS NOT DISTINCT FROM lost.node_id
             RETURNING devices.device_id, lost.node_id, lost.left_at),
logged AS (INSERT INTO device_events (device_id, at, kind, actor, detail)
           SELECT device_id, left_at, 'offline', 'server',
                  json_build_object('reason', %(reason)s::text, 'node_id', node_id)
           FROM released)
SELECT device_id FROM released"""

# One history event of the task %(task_id)s, written in the statement that changed the task ("... FROM moved").
LOG_EVENT = """INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail)
    SELECT %(task_id)s, %(event_at)s, %(event_kind)s, %(event_actor)s, %(event_device_id)s, %(event_attempt)s,
           %(event_detail)s::json"""


def require_cooperative_driver():
    """Refuse to run on psycopg's C wait function: it would block every greenlet of the server while one waits for
    the database (psycopg picks it when imported before gevent patched ``select``)."""
    if psycopg.waiting.wait is getattr(psycopg.waiting, "wait_c", None):
        raise RuntimeError(
            "psycopg was imported before gevent's monkey-patching: its waits would block the whole server "
            "(patch first, as app.py does)"
        )


def unavailable(exc):
    """The error a client gets while the database cannot be reached (``exc`` says why)."""
    return StoreUnavailable(f"数据库暂时无法访问，请稍后重试（{type(exc).__name__}: {exc}）".strip())


def _read_json_as_text(conn):
    """JSON columns come back as their text, as SQLite gives them: one row decoding for both stores."""
    conn.adapters.register_loader("json", TextLoader)
    conn.adapters.register_loader("jsonb", TextLoader)


@dataclass(eq=False)
class Unit:
    """One unit of work: its connection, and what waits for its commit."""

    conn: psycopg.Connection
    callbacks: list = field(default_factory=list)


class PostgresStore(PostgresBatchTables, PostgresScheduleTables, Store):
    """Store on a PostgreSQL database. ``url`` is a libpq URL (``postgresql://user@host:5432/db``); its batches are
    read and written by ``PostgresBatchTables`` (postgres_batches.py), its schedules by ``PostgresScheduleTables``
    (postgres_schedules.py)."""

    single_writer = False  # other units of work (other nodes) write beside this one

    def __init__(self, url, pool_size=20, timeout=5.0):
        require_cooperative_driver()
        self._local = threading.local()  # one per greenlet once gevent patched threading: the greenlet's Unit
        self._failed = 0
        self._fault = None
        self._node = None  # the node this server is, on a cluster (``serve_as``)
        self._wake_channel = None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            # autocommit: a read outside a unit of work is one statement; a unit opens its transaction itself
            kwargs={"row_factory": dict_row, "connect_timeout": max(int(timeout), 1), "autocommit": True},
            configure=_read_json_as_text,
            timeout=timeout,
            reconnect_timeout=0,  # keep trying while the database is away: it comes back
            open=False,
            name="taskserver",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self):
        """Create or upgrade the schema in one transaction, under an advisory lock (servers starting together wait)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            found = row["version"] if row else 0
            for step in steps_to(found, SCHEMA_VERSION, POSTGRES_MIGRATIONS, "PostgreSQL"):
                conn.execute(POSTGRES_MIGRATIONS[step])
                log.info("PostgreSQL schema migrated to version %d", step)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))

    # units of work
    @contextmanager
    def atomically(self):
        """One unit of work for the whole operation (it nests): one pooled connection, one transaction, committed
        at the end; then what waited for the commit runs. Other writers are not kept out: every change is a
        compare-and-set."""
        if getattr(self._local, "unit", None) is not None:
            yield self
            return
        with self._refusals(), self._pool.connection() as conn:
            unit = self._local.unit = Unit(conn)
            try:
                with conn.transaction():
                    yield self
                    if self._fault is not None:
                        raise self._fault
            except psycopg.errors.TransactionRollback:
                raise
            except psycopg.OperationalError as exc:
                self._failed += 1
                log.error("unit of work failed, %d deferred messages dropped: %s", len(unit.callbacks), exc)
                raise
            finally:
                self._local.unit = None
        for callback in unit.callbacks:
            try:
                callback()
            except Exception:  # one failed send must not keep the others from going out
                log.exception("deferred output failed")

    @staticmethod
    @contextmanager
    def _refusals():
        """What psycopg raises, as clients get it: the database away is ``StoreUnavailable`` (503), a deadlock
        ``StoreConflict`` (the operation runs again), text PostgreSQL cannot store bad input (400)."""
        try:
            yield
        except (psycopg.DataError, UnicodeEncodeError) as exc:
            if isinstance(exc, psycopg.DataError) and "NUL" not in str(exc):
                raise
            raise TaskServerError("文本中不能含有 NUL 字符或孤立的代理字符", "INVALID_TEXT") from exc
        except psycopg.errors.TransactionRollback as exc:  # a deadlock or serialization failure: nothing was written
            raise StoreConflict(f"数据库事务冲突，请重试（{exc}）") from exc
        except psycopg.OperationalError as exc:
            raise unavailable(exc) from exc

    @contextmanager
    def _db(self):
        """The connection of this greenlet's unit of work (a verb called outside one gets a unit of its own)."""
        with self.atomically():
            yield self._local.unit.conn

    def _rows(self, sql, params=()):
        """Run one statement and return its rows: in this greenlet's unit of work, or alone (it commits by itself)
        outside one."""
        if getattr(self._local, "unit", None) is not None:
            return self._local.unit.conn.execute(sql, params).fetchall()
        with self._refusals(), self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _here(self, sql):
        """``sql`` with ``HELD_HERE`` written as the planner can estimate it: ``node_id IS NULL`` on a server alone,
        ``node_id = %(node)s`` on a node of a cluster. It cannot estimate ``IS NOT DISTINCT FROM`` a parameter: it
        took a thousand free devices for one, and read every device's tags for each tag set a task waited for."""
        return sql.replace(HELD_HERE, "node_id IS NULL" if self._node is None else "node_id = %(node)s")

    def durable(self):
        """Every unit commits before it returns: nothing is left to wait for."""

    def after_commit(self, callback):
        """Run ``callback`` once this greenlet's unit of work is committed (now, if it has none open)."""
        unit = getattr(self._local, "unit", None)
        if unit is None:
            callback()
        else:
            unit.callbacks.append(callback)

    @property
    def failed_commits(self):
        """How many units of work failed on the database since the store opened."""
        return self._failed

    def fail_commits(self, error):
        """Make every unit of work fail with ``error`` (a ``psycopg.OperationalError``), or commit again with None."""
        self._fault = error

    def check_writable(self, now):
        """Write and commit one tiny row; raise if the database cannot take writes."""
        with self._db() as db:
            db.execute(
                "INSERT INTO store_health (id, checked_at) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (now,),
            )

    def close(self):
        """Close every pooled connection."""
        self._pool.close()

    # tasks
    @staticmethod
    def _insert_event(db, task_id, now, event, attempt):
        db.execute(
            "INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (task_id, now, str(event.kind), event.actor, event.device_id, attempt, to_db("detail", event.detail)),
        )

    @staticmethod
    def _take_slot(db, device_id):
        """Count one more active task on the device, unless that would overfill it; False if it would."""
        taken = db.execute(
            "UPDATE devices SET active_tasks = active_tasks + 1 WHERE device_id = %s AND active_tasks < capacity "
            "RETURNING 1",
            (device_id,),
        ).fetchone()
        if taken:
            return True
        return db.execute("SELECT 1 FROM devices WHERE device_id = %s", (device_id,)).fetchone() is None

    @staticmethod
    def _release_slot(db, device_id):
        db.execute("UPDATE devices SET active_tasks = active_tasks - 1 WHERE device_id = %s", (device_id,))

    def add_task(self, task, *events):
        """Insert a new task and its first events (one statement); False (nothing stored) if it was to be active on a
        device that has no free slot."""
        columns = [*TASK_COLUMNS, "due"]
        params = [*(to_db(name, getattr(task, name)) for name in TASK_COLUMNS), task.not_before is None]
        sql = f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('%s' for _ in columns)})"
        if events:
            rows = ", ".join(f"({n}, %s, %s, %s, %s::json)" for n in range(len(events)))
            sql = f"""WITH inserted AS ({sql} RETURNING task_id)
                INSERT INTO task_events (task_id, at, kind, actor, device_id, attempt, detail)
                SELECT inserted.task_id, %s, e.kind, e.actor, e.device_id, %s, e.detail
                FROM inserted, (VALUES {rows}) AS e (n, kind, actor, device_id, detail) ORDER BY e.n"""
            params += [task.created_at, task.attempt]
            for event in events:
                params += [str(event.kind), event.actor, event.device_id, to_db("detail", event.detail)]
        with self._db() as db:
            if task.status in ACTIVE and task.device_id is not None and not self._take_slot(db, task.device_id):
                return False
            db.execute(sql, params)
        return True

    def add_batch(self, batch, tasks, event, released):
        """Insert the batch and its pending tasks, each with ``event`` as its first history line, in this unit of
        work; the first ``released`` tasks join the queue, the others are held until the batch makes room."""
        columns = [*TASK_COLUMNS, "due", "held"]
        rows = [
            [*task_row(task), n < released and task.not_before is None, n >= released] for n, task in enumerate(tasks)
        ]
        detail = to_db("detail", event.detail)
        with self._db() as db, db.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({', '.join('%s' for _ in BATCH_COLUMNS)})",
                [to_db(name, getattr(batch, name)) for name in BATCH_COLUMNS],
            )
            with cursor.copy(f"COPY tasks ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cursor.copy(
                "COPY task_events (task_id, at, kind, actor, device_id, attempt, detail) FROM STDIN"
            ) as copy:
                for task in tasks:
                    copy.write_row(
                        (task.task_id, batch.created_at, str(event.kind), event.actor, task.target_device_id, 1, detail)
                    )

    def has_pending_tasks(self):
        """True if a pending task could start now on a free device of this node, or is scheduled (held ones wait for
        their batch; tasks for a device that cannot take them do not count)."""
        return self._rows(self._here(STARTABLE), {"node": self._node})[0]["startable"]

    def get_task(self, task_id):
        """The task with this id, or None."""
        rows = self._rows(f"SELECT {TASK_SELECT} FROM tasks WHERE task_id = %s", (task_id,))
        return task_from_row(rows[0]) if rows else None

    def find_task_by_idempotency_key(self, key, since, scope=""):
        """The newest task created with ``key`` by ``scope`` (or before keys had a scope) at or after ``since``, or
        None. Holds a lock on the key until the unit of work ends, so that two writers cannot both create its task."""
        with self._db() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (json.dumps([scope, key]),))
            row = db.execute(
                f"""SELECT {TASK_SELECT} FROM tasks WHERE idempotency_key = %s AND created_at >= %s
                      AND (idempotency_scope = %s OR idempotency_scope IS NULL)
                    ORDER BY created_at DESC, seq DESC LIMIT 1""",
                (key, since, scope),
            ).fetchone()
        return task_from_row(row) if row else None

    def update_task_if(self, task, changes, event=None, owe_cancel_to=None):
        """Apply ``changes`` (and ``event``, and an owed cancel) only if the stored task still has the status, device
        and attempt of ``task`` as the caller read it, and a device it moves onto has a free slot; return it
        updated, or None. One statement, but for taking a slot (a move onto a device)."""
        after = changed(task, changes)
        values = {name: to_db(name, value) for name, value in changes.items()}
        if after.status == TaskStatus.PENDING and task.status != TaskStatus.PENDING:
            values["due"] = after.not_before is None
        onto = after.device_id if after.status in ACTIVE else None
        leaves = task.device_id if task.status in ACTIVE else None
        params = {f"set_{name}": value for name, value in values.items()}
        params.update(task_id=task.task_id, status=str(task.status), device_id=task.device_id, attempt=task.attempt)
        steps = [
            f"""moved AS (UPDATE tasks SET {", ".join(f"{name} = %(set_{name})s" for name in values)}
                WHERE task_id = %(task_id)s AND status = %(status)s AND device_id IS NOT DISTINCT FROM %(device_id)s
                  AND attempt = %(attempt)s RETURNING held)"""
        ]
        if task.batch_id is not None and after.status in TERMINAL and task.status not in TERMINAL:
            params.update(batch_id=task.batch_id, now=after.updated_at)
            steps += self._batch_end_steps(TaskStatus(after.status).value)
        if leaves is not None and leaves != onto:
            params["leaves"] = leaves
            steps.append(
                "freed AS (UPDATE devices SET active_tasks = active_tasks - 1 "
                "WHERE device_id = %(leaves)s AND EXISTS (SELECT 1 FROM moved))"
            )
        if event is not None:
            params.update(self._event_params(event, after.updated_at, after.attempt))
            steps.append(f"logged AS ({LOG_EVENT} FROM moved)")
        if owe_cancel_to is not None:
            params["owed_to"] = owe_cancel_to
            steps.append(
                "owed AS (INSERT INTO owed_cancels (device_id, task_id, attempt) "
                "SELECT %(owed_to)s, %(task_id)s, %(attempt)s FROM moved "
                "ON CONFLICT (device_id, task_id) DO UPDATE SET attempt = excluded.attempt)"
            )
        with self._db() as db:
            taking = onto is not None and onto != leaves
            if taking and not self._take_slot(db, onto):
                return None
            moved = db.execute(f"WITH {', '.join(steps)} SELECT COUNT(*) AS n FROM moved", params).fetchone()["n"]
            if not moved:
                if taking:
                    self._release_slot(db, onto)  # give back the slot taken for it
                return None
        return after

    @staticmethod
    def _batch_end_steps(column):
        """The steps of a move that ends a batch task in ``column`` (completed, failed or cancelled): count it, and if
        it had been released and the batch still runs, release the batch's next held task (a held task ending makes
        no room: it never took any). The batch row's lock orders the ends of one batch's tasks."""
        return [
            f"""counted AS (UPDATE batches SET {column} = {column} + 1, updated_at = %(now)s
                WHERE batch_id = %(batch_id)s AND EXISTS (SELECT 1 FROM moved) RETURNING status)""",
            """released AS (UPDATE tasks SET held = FALSE, due = (not_before IS NULL) WHERE task_id = (
                    SELECT task_id FROM tasks WHERE batch_id = %(batch_id)s AND status = 'pending' AND held
                    ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                AND EXISTS (SELECT 1 FROM moved WHERE NOT held)
                AND EXISTS (SELECT 1 FROM counted WHERE status = 'running'))""",
        ]

    @staticmethod
    def _event_params(event, at, attempt):
        """The parameters of ``LOG_EVENT``."""
        return {
            "event_at": at,
            "event_kind": str(event.kind),
            "event_actor": event.actor,
            "event_device_id": event.device_id,
            "event_attempt": attempt,
            "event_detail": to_db("detail", event.detail),
        }

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
            clauses.append("batch_id = %s")
            params.append(batch_id)
        if statuses:
            clauses.append("status = ANY(%s)")
            params.append([TaskStatus(s).value for s in statuses])
        if task_type:
            clauses.append("task_type = %s")
            params.append(task_type)
        if device_id:
            clauses.append("(device_id = %s OR target_device_id = %s)")
            params.extend([device_id, device_id])
        if created_after is not None:
            clauses.append("created_at >= %s")
            params.append(created_after)
        if created_before is not None:
            clauses.append("created_at < %s")
            params.append(created_before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db() as db:
            total = db.execute(f"SELECT COUNT(*) AS n FROM tasks {where}", params).fetchone()["n"]
            rows = db.execute(
                f"SELECT {TASK_SELECT} FROM tasks {where} ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                [*params, limit, offset],
            ).fetchall()
        return [task_from_row(row) for row in rows], total

    def due_pending_tasks(self, now, limit):
        """Pending tasks that may start now and whose target (if any) has a free slot, by priority then age, claimed
        for this unit of work (rows another unit claimed are skipped). A task is due once a look at ``now`` has
        found its ``not_before`` passed (a clock set back does not undo that)."""
        with self._db() as db:
            db.execute(
                "UPDATE tasks SET due = TRUE WHERE status = 'pending' AND NOT due AND NOT held AND not_before <= %s",
                (now,),
            )
            rows = db.execute(self._here(DUE_PENDING), {"limit": limit, "node": self._node}).fetchall()
        for row in rows:
            row.pop("seq")
        return [task_from_row(row) for row in rows]

    def active_tasks_of(self, device_id):
        """The device's dispatched and running tasks, oldest first."""
        rows = self._rows(
            f"SELECT {TASK_SELECT} FROM tasks WHERE device_id = %s AND status IN (%s, %s) ORDER BY created_at, seq",
            (device_id, *ACTIVE_VALUES),
        )
        return [task_from_row(row) for row in rows]

    def task_active_on(self, task_id, device_id, attempt=None):
        """True if the task is dispatched to or running on the device (in ``attempt``, if given): one key lookup."""
        rows = self._rows(
            "SELECT attempt FROM tasks WHERE task_id = %s AND device_id = %s AND status IN (%s, %s)",
            (task_id, device_id, *ACTIVE_VALUES),
        )
        return bool(rows) and attempt in (None, rows[0]["attempt"])

    def take_owed_cancels(self, device_id):
        """Remove and return ``(task_id, attempt)`` of each ``cancel_task`` the device missed while away."""
        rows = self._rows("DELETE FROM owed_cancels WHERE device_id = %s RETURNING task_id, attempt", (device_id,))
        return [(row["task_id"], row["attempt"]) for row in rows]

    def timed_out_tasks(self, now, limit=None):
        """Active tasks (at most ``limit``) whose timeout, counted from dispatch, has passed by ``now``."""
        rows = self._rows(
            f"SELECT {TASK_SELECT} FROM tasks WHERE status IN (%s, %s) AND dispatched_at + timeout <= %s LIMIT %s",
            (*ACTIVE_VALUES, now, limit),
        )
        return [task_from_row(row) for row in rows]

    def tasks_of_lost_devices(self, disconnected_before, limit=None):
        """Active tasks (at most ``limit``) whose device has been disconnected since before ``disconnected_before``."""
        columns = ", ".join(f"t.{name}" for name in TASK_COLUMNS)
        rows = self._rows(
            f"""SELECT {columns} FROM tasks t JOIN devices d ON d.device_id = t.device_id
                WHERE t.status IN (%s, %s) AND NOT d.connected AND d.disconnected_at <= %s LIMIT %s""",
            (*ACTIVE_VALUES, disconnected_before, limit),
        )
        return [task_from_row(row) for row in rows]

    def count_tasks_by_status(self):
        """A mapping of status value to the number of tasks in it."""
        rows = self._rows("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    def count_finished_by_minute(self, since, until):
        """How many tasks ended in each minute of ``since <= finished_at < until``, by final status."""
        rows = self._rows(
            """SELECT FLOOR((finished_at - %s) / 60)::int AS minute, status, COUNT(*) AS n FROM tasks
               WHERE finished_at >= %s AND finished_at < %s GROUP BY 1, 2""",
            (since, since, until),
        )
        return {(row["minute"], row["status"]): row["n"] for row in rows}

    def count_tasks_by_status_and_type(self):
        """A mapping of ``(status value, task type)`` to the number of tasks in it."""
        rows = self._rows("SELECT status, task_type, COUNT(*) AS n FROM tasks GROUP BY status, task_type")
        return {(row["status"], row["task_type"]): row["n"] for row in rows}

    def task_events(self, task_id):
        """The task's history, oldest first."""
        rows = self._rows("SELECT * FROM task_events WHERE task_id = %s ORDER BY id", (task_id,))
        return [event_from_row(row) for row in rows]

    def add_event(self, task_id, now, event, attempt):
        """Append one event to the task's history."""
        with self._db() as db:
            self._insert_event(db, task_id, now, event, attempt)

    def device_had_task(self, task_id, device_id):
        """True if the task was ever dispatched to the device."""
        rows = self._rows(
            "SELECT 1 FROM task_events WHERE task_id = %s AND kind = 'dispatched' AND device_id = %s LIMIT 1",
            (task_id, device_id),
        )
        return bool(rows)

    # devices
    def set_device_token(self, device_id, token_hash, now):
        """Bind a (hashed) token to the device id, replacing any earlier one."""
        with self._db() as db:
            db.execute(
                "INSERT INTO device_tokens (device_id, token_hash, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (device_id) DO UPDATE SET token_hash = excluded.token_hash, "
                "created_at = excluded.created_at",
                (device_id, token_hash, now),
            )

    def device_token_hash(self, device_id):
        """The hash of the device's own token, or None if it has none."""
        rows = self._rows("SELECT token_hash FROM device_tokens WHERE device_id = %s", (device_id,))
        return rows[0]["token_hash"] if rows else None

    def device_id_for_token_hash(self, token_hash):
        """The device id a (hashed) per-device token belongs to, or None."""
        rows = self._rows("SELECT device_id FROM device_tokens WHERE token_hash = %s", (token_hash,))
        return rows[0]["device_id"] if rows else None

    def delete_device_token(self, device_id):
        """Revoke the device's own token; True if it had one."""
        return bool(self._rows("DELETE FROM device_tokens WHERE device_id = %s RETURNING 1", (device_id,)))

    def save_device(self, device):
        """Insert the device or update its name, info, capacity, tags and connection (held by this node; an
        operator's tags stay as they are: ``set_device_tags`` sets them)."""
        columns = [*DEVICE_COLUMNS, "node_id"]
        kept = ("device_id", "created_at", "active_tasks", "disabled", "operator_tags")
        updated = [c for c in columns if c not in kept]
        with self._db() as db:
            db.execute(
                f"""INSERT INTO devices ({", ".join(columns)})
                    VALUES ({", ".join("%s" for _ in columns)})
                    ON CONFLICT (device_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in updated)}""",
                [*(to_db(name, getattr(device, name)) for name in DEVICE_COLUMNS), self._node],
            )

    def get_device(self, device_id):
        """The device with this id (with its active task count), or None."""
        rows = self._rows("SELECT * FROM devices WHERE device_id = %s", (device_id,))
        return device_from_row(rows[0]) if rows else None

    def set_device_tags(self, device_id, operator_tags, tags):
        """Set the operator's tags of the device and its tags (their union with its own); True if it exists."""
        rows = self._rows(
            "UPDATE devices SET operator_tags = %s, tags = %s WHERE device_id = %s RETURNING 1",
            (to_db("tags", operator_tags), to_db("tags", tags), device_id),
        )
        return bool(rows)

    def list_devices(self, statuses=(), disabled=None, tags=()):
        """Known devices in one of ``statuses`` (all if empty), with every one of ``tags`` and, if given, that
        ``disabled`` flag; newest first."""
        clauses, params = [], []
        if tags:
            clauses.append("tags @> %s::jsonb")
            params.append(to_db("tags", list(tags)))
        if statuses:
            clauses.append(f"{DEVICE_STATUS_SQL} = ANY(%s)")
            params.append(list(statuses))
        if disabled is not None:
            clauses.append("disabled = %s")
            params.append(bool(disabled))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._rows(f"SELECT * FROM devices {where} ORDER BY registered_at DESC NULLS LAST, device_id", params)
        return [device_from_row(row) for row in rows]

    def dispatchable_count(self, at_most):
        """How many pending tasks could go now: the free slots of connected, enabled devices (counted over at most
        ``at_most`` devices), or 0 when no pending task could start on a free device (a look at the queue would find
        nothing)."""
        rows = self._rows(
            self._here(f"""SELECT CASE WHEN startable
                THEN (SELECT COALESCE(SUM(capacity - active_tasks), 0) FROM
                      (SELECT capacity, active_tasks FROM devices WHERE {FREE} LIMIT %(at_most)s) free)
                ELSE 0 END AS n FROM ({STARTABLE}) asked"""),
            {"at_most": at_most, "node": self._node},
        )
        return rows[0]["n"]

    def free_devices(self, limit=None, include=(), tag_sets=()):
        """Connected, enabled devices with a free slot: the ``limit`` least loaded (all if None), plus ``include``,
        plus for each tag set of ``tag_sets`` the ``limit`` least loaded with all those tags; claimed for this unit
        of work. Devices another unit holds are skipped, never waited for: a unit that takes
        slots on several devices in its own order then never waits for one another unit holds (a deadlock)."""
        rows = self._rows(
            self._here(
                f"SELECT * FROM devices WHERE {FREE} ORDER BY active_tasks, registered_at LIMIT %(limit)s "
                "FOR UPDATE SKIP LOCKED"
            ),
            {"limit": limit, "node": self._node},
        )
        named = [device_id for device_id in include if device_id not in {row["device_id"] for row in rows}]
        if named:
            rows += self._rows(
                self._here(f"SELECT * FROM devices WHERE {FREE} AND device_id = ANY(%(named)s) FOR UPDATE SKIP LOCKED"),
                {"named": named, "node": self._node},
            )
        for tags in tag_sets:
            rows += self._rows(
                self._here(f"""SELECT * FROM devices WHERE {FREE} AND tags @> %(tags)s::jsonb
                    ORDER BY active_tasks, registered_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""),
                {"tags": to_db("tags", list(tags)), "limit": limit, "node": self._node},
            )
        unique = {row["device_id"]: row for row in rows}
        return [device_from_row(row) for row in unique.values()]

    def held_devices(self):
        """The connected devices whose connections this node holds (every connected device, without nodes)."""
        rows = self._rows("SELECT * FROM devices WHERE connected AND node_id IS NOT DISTINCT FROM %s", (self._node,))
        return [device_from_row(row) for row in rows]

    def mark_disconnected(self, device_id, sid, now):
        """Mark the device offline if ``sid`` is still its connection; return True if it was."""
        rows = self._rows(
            "UPDATE devices SET connected = FALSE, sid = NULL, node_id = NULL, disconnected_at = %s "
            "WHERE device_id = %s AND sid = %s AND connected RETURNING 1",
            (now, device_id, sid),
        )
        return bool(rows)

    def record_heartbeat(self, device_id, now):
        """Remember when the device last sent a heartbeat."""
        with self._db() as db:
            db.execute("UPDATE devices SET last_heartbeat = %s WHERE device_id = %s", (now, device_id))

    def disconnect_all(self, now):
        """On start: no connection survives a restart; tasks get a fresh grace from ``now``; counts are rebuilt."""
        with self._db() as db:
            db.execute(
                """UPDATE devices SET connected = FALSE, sid = NULL, node_id = NULL, disconnected_at = %s,
                   active_tasks = (SELECT COUNT(*) FROM tasks t
                                   WHERE t.device_id = devices.device_id AND t.status IN (%s, %s))""",
                (now, *ACTIVE_VALUES),
            )

    def set_device_disabled(self, device_id, disabled):
        """Stop (or resume) giving the device new tasks; return True if the device exists."""
        return bool(
            self._rows("UPDATE devices SET disabled = %s WHERE device_id = %s RETURNING 1", (disabled, device_id))
        )

    def delete_device(self, device_id):
        """Forget an offline device with no active task and no task waiting for it, and its own history;
        return True if it was deleted."""
        with self._db() as db:
            deleted = db.execute(
                """DELETE FROM devices WHERE device_id = %s AND NOT connected
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE device_id = %s AND status IN (%s, %s))
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE target_device_id = %s AND status = 'pending')
                   RETURNING 1""",
                (device_id, device_id, *ACTIVE_VALUES, device_id),
            ).fetchone()
            if deleted:
                db.execute("DELETE FROM device_events WHERE device_id = %s", (device_id,))
            return bool(deleted)

    def add_device_event(self, device_id, now, event):
        """Append one event (registered, offline, disabled, ...) to the device's own history."""
        with self._db() as db:
            db.execute(
                "INSERT INTO device_events (device_id, at, kind, actor, detail) VALUES (%s, %s, %s, %s, %s)",
                (device_id, now, str(event.kind), event.actor, to_db("detail", event.detail)),
            )

    def device_history(self, device_id, limit):
        """The device's latest ``limit`` events, its own and those of tasks on it, newest first."""
        rows = self._rows(
            """SELECT * FROM (SELECT at, kind, actor, task_id, attempt, detail, 0 AS source, id FROM task_events
                              WHERE device_id = %s ORDER BY at DESC, id DESC LIMIT %s) task_side
               UNION ALL
               SELECT * FROM (SELECT at, kind, actor, NULL::text, NULL::integer, detail, 1, id FROM device_events
                              WHERE device_id = %s ORDER BY at DESC, id DESC LIMIT %s) device_side
               ORDER BY at DESC, source, id DESC LIMIT %s""",  # at one instant, a device's own event came first
            (device_id, limit, device_id, limit, limit),
        )
        return [history_from_row(row) for row in rows]

    def count_devices_by_status(self):
        """A mapping of ``(status value, disabled)`` to the number of devices in it."""
        rows = self._rows(f"SELECT {DEVICE_STATUS_SQL} AS status, disabled, COUNT(*) AS n FROM devices GROUP BY 1, 2")
        return {(row["status"], row["disabled"]): row["n"] for row in rows}

    # nodes: several servers on one database (taskserver/cluster)
    def serve_as(self, node_id, wake_channel):
        """Be node ``node_id`` from now on: devices saved are held by it, tasks go only to devices it holds, and
        ``wake_nodes`` notifies ``wake_channel``."""
        self._node, self._wake_channel = node_id, wake_channel

    def database_time(self):
        """The database's clock, in epoch seconds: leases are judged by it alone."""
        return self._rows(f"SELECT {NOW_EPOCH}")[0]["now"]

    def join_node(self, node_id, incarnation, lease):
        """Hold ``node_id``'s lease as ``incarnation`` (this process) for ``lease`` seconds. A process that held the
        id before (a crashed one, or another one given the same id) is displaced: its devices are offline from its
        last renewal."""
        params = {"node": node_id, "incarnation": incarnation, "lease": lease}
        held = "lost AS (SELECT node_id, renewed_at AS left_at FROM nodes WHERE node_id = %(node)s FOR UPDATE)"
        with self._db() as db:
            db.execute(RELEASE_DEVICES.format(lost=held), {**params, "reason": "node_replaced"})
            db.execute(
                f"""INSERT INTO nodes (node_id, incarnation, joined_at, renewed_at, expires_at)
                    SELECT %(node)s, %(incarnation)s, t.now, t.now, t.now + %(lease)s FROM (SELECT {NOW_EPOCH}) t
                    ON CONFLICT (node_id) DO UPDATE SET incarnation = excluded.incarnation,
                        joined_at = excluded.joined_at, renewed_at = excluded.renewed_at,
                        expires_at = excluded.expires_at""",
                params,
            )

    def renew_node(self, node_id, incarnation, lease):
        """Extend the lease to ``lease`` seconds from now; False if it lapsed, was swept or was taken over."""
        rows = self._rows(
            f"""UPDATE nodes SET renewed_at = t.now, expires_at = t.now + %(lease)s FROM (SELECT {NOW_EPOCH}) t
                WHERE node_id = %(node)s AND incarnation = %(incarnation)s AND expires_at >= t.now RETURNING 1""",
            {"node": node_id, "incarnation": incarnation, "lease": lease},
        )
        return bool(rows)

    def leave_node(self, node_id, incarnation):
        """Give the lease up (a clean stop): devices it still holds are offline from now."""
        gone = f"""lost AS (DELETE FROM nodes WHERE node_id = %(node)s AND incarnation = %(incarnation)s
                   RETURNING node_id, (SELECT {NOW_EPOCH}) AS left_at)"""
        params = {"node": node_id, "incarnation": incarnation, "reason": "node_left"}
        self._rows(RELEASE_DEVICES.format(lost=gone), params)

    def expire_dead_nodes(self, now):
        """Forget the nodes whose lease lapsed before ``now`` (the database's time): each one's devices are offline
        from its last renewal. Connected devices no live node holds (its node unknown, or none: a single server's,
        before the cluster) are offline from ``now``. Return the devices released."""
        lost = """expired AS (DELETE FROM nodes WHERE expires_at < %(now)s RETURNING node_id, renewed_at AS left_at),
            orphaned AS (SELECT DISTINCT node_id, %(now)s::float8 AS left_at FROM devices d WHERE connected
                         AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = d.node_id)),
            lost AS (SELECT * FROM expired UNION ALL SELECT * FROM orphaned)"""
        rows = self._rows(RELEASE_DEVICES.format(lost=lost), {"now": now, "reason": "node_lost"})
        return [row["device_id"] for row in rows]

    def wake_nodes(self, reason, device_id=None):
        """Wake the nodes once this unit of work commits (NOTIFY): work was left for ``device_id`` (payload
        ``<reason>@<node>``: only the node holding it, if another node does, looks) or for any device (``<reason>``:
        every node looks)."""
        if self._wake_channel is None:
            return
        if device_id is None:
            self._rows("SELECT pg_notify(%s, %s)", (self._wake_channel, str(reason)))
            return
        self._rows(
            """SELECT pg_notify(%(channel)s, %(reason)s || '@' || node_id) FROM devices
               WHERE device_id = %(device)s AND connected AND node_id IS DISTINCT FROM %(node)s""",
            {"channel": self._wake_channel, "reason": str(reason), "device": device_id, "node": self._node},
        )

    def devices_owed_cancels(self):
        """The devices this node holds that are owed a ``cancel_task``."""
        rows = self._rows(
            """SELECT DISTINCT o.device_id FROM owed_cancels o JOIN devices d ON d.device_id = o.device_id
               WHERE d.node_id = %s AND d.connected""",
            (self._node,),
        )
        return [row["device_id"] for row in rows]
