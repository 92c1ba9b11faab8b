"""Moving to PostgreSQL: copy a SQLite database, all of it, into an empty PostgreSQL database in one transaction."""

import sqlite3

import psycopg

from taskserver.store.postgres import PostgresStore
from taskserver.store.rows import JSON_COLUMNS, from_json, to_json
from taskserver.store.sqlite import SQLiteStore

# The tables copied, each with every column the SQLite file has (PostgreSQL has the same ones, and some of its own),
# so that a column added to both schemas is copied without a word here.
TABLES = (
    "devices",
    "device_tokens",
    "device_events",
    "tasks",
    "task_events",
    "owed_cancels",
    "batches",
    "schedules",
    "schedule_runs",
)
# Tables whose insertion order PostgreSQL keeps in an identity column ``seq`` (ties of created_at): SQLite's rowid
# goes there. Identity columns keep their values, so that history keeps its order and tasks and batches theirs.
SEQUENCED = ("tasks", "batches", "schedules")
IDENTITIES = {"tasks": "seq", "batches": "seq", "schedules": "seq", "task_events": "id", "device_events": "id"}
JSON_TEXT = {*JSON_COLUMNS, "body", "error"}  # JSON columns (a schedule's body, a run's error among them)


class TargetNotEmpty(RuntimeError):
    """The PostgreSQL database already holds a server's data: copying would mix two histories."""


class CountMismatch(RuntimeError):
    """A table did not arrive whole (nothing was kept)."""


def copy_sqlite_to_postgres(sqlite_path, url):
    """Copy every table the server keeps from the SQLite file at ``sqlite_path`` (brought to the current schema
    first, as a server starting on it would) into the empty PostgreSQL database at ``url`` (schema created if
    missing); check the counts, and return them as ``{table: rows}``. All or nothing: the target is left as it was
    if anything fails. The source is read in one snapshot, so a server still running on it does no harm, but what
    it writes after the snapshot is not copied."""
    SQLiteStore(sqlite_path).close()
    PostgresStore(url).close()
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, isolation_level=None)
    try:
        source.execute("BEGIN")  # one snapshot of the whole file
        with psycopg.connect(url) as db, db.transaction():
            db.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
            filled = [table for table in TABLES if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()]
            if filled:
                raise TargetNotEmpty(f"the PostgreSQL database already has rows in {', '.join(filled)}")
            counts = {table: _copy_table(source, db, table) for table in TABLES}
            for table, column in IDENTITIES.items():
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                )
        return counts
    finally:
        source.close()


def _copy_table(source, db, table):
    """COPY one table's rows across; raise ``CountMismatch`` unless the target then holds exactly as many."""
    columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    source_columns, target_columns = columns, columns
    if table in SEQUENCED:
        source_columns, target_columns = ["rowid", *columns], ["seq", *columns]
    expected = source.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    rows = source.execute(f"SELECT {', '.join(source_columns)} FROM {table}")
    with db.cursor().copy(f"COPY {table} ({', '.join(target_columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([_json_again(name, value) for name, value in zip(source_columns, row, strict=True)])
    copied = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    if copied != expected:
        raise CountMismatch(f"{table}: {expected} rows in the SQLite file, {copied} arrived")
    return copied


def _json_again(name, value):
    """A JSON column's text as PostgreSQL accepts it (NaN or Infinity an older server kept become null); other
    columns as they are."""
    return to_json(from_json(value)) if name in JSON_TEXT and value is not None else value
