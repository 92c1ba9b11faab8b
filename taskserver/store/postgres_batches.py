"""The batch table of the PostgreSQL store (the store's task verbs make a batch's tasks and keep its counters)."""

import json

from taskserver.store.rows import batch_from_row, to_db


class PostgresBatchTables:
    """The part of ``PostgresStore`` that reads and writes batches (through its ``_rows``, and ``_db`` for a lock)."""

    def get_batch(self, batch_id):
        """The batch with this id, or None."""
        rows = self._rows("SELECT * FROM batches WHERE batch_id = %s", (batch_id,))
        return batch_from_row(rows[0]) if rows else None

    def list_batches(self, limit=100, offset=0):
        """A page of batches, newest first, and how many there are."""
        rows = self._rows(  # "listed", not "total": that is a column of batches
            "SELECT *, COUNT(*) OVER () AS listed FROM batches ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
            (limit, offset),
        )
        total = rows[0]["listed"] if rows else self._rows("SELECT COUNT(*) AS n FROM batches")[0]["n"]
        return [batch_from_row(row) for row in rows], total

    def count_batch_tasks(self, batch_id):
        """The batch's tasks by status: ``{status: (count, sum of progress)}``."""
        rows = self._rows(
            "SELECT status, COUNT(*) AS n, SUM(progress) AS progress FROM tasks WHERE batch_id = %s GROUP BY status",
            (batch_id,),
        )
        return {row["status"]: (row["n"], row["progress"] or 0) for row in rows}

    def update_batch_if(self, batch, changes):
        """Apply ``changes`` to the batch only if its stored status is still ``batch.status``; True if it was."""
        values = {name: to_db(name, value) for name, value in changes.items()}
        rows = self._rows(
            f"UPDATE batches SET {', '.join(f'{name} = %s' for name in values)} "
            "WHERE batch_id = %s AND status = %s RETURNING 1",
            [*values.values(), batch.batch_id, str(batch.status)],
        )
        return bool(rows)

    def unfinished_stopped_batches(self):
        """``(batch_id, status)`` of each aborted or cancelled batch whose tasks have not all ended."""
        rows = self._rows(
            "SELECT batch_id, status FROM batches WHERE status IN ('aborted', 'cancelled') AND finished_at IS NULL"
        )
        return [(row["batch_id"], row["status"]) for row in rows]

    def find_batch_by_idempotency_key(self, key, since, scope):
        """The newest batch created with ``key`` by ``scope`` at or after ``since``, or None. Holds a lock on the key
        until the unit of work ends, so that two writers cannot both create its batch."""
        with self._db() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (json.dumps([scope, key]),))
            row = db.execute(
                """SELECT * FROM batches WHERE idempotency_key = %s AND created_at >= %s AND idempotency_scope = %s
                   ORDER BY created_at DESC, seq DESC LIMIT 1""",
                (key, since, scope),
            ).fetchone()
        return batch_from_row(row) if row else None

    def batch_task_ids(self, batch_id):
        """The ids of the batch's tasks, in the order it made them."""
        rows = self._rows("SELECT task_id FROM tasks WHERE batch_id = %s ORDER BY seq", (batch_id,))
        return [row["task_id"] for row in rows]
