"""The batch table of the PostgreSQL store (the store's task verbs make a batch's tasks and keep its counters)."""

from taskserver.store.rows import batch_from_row, to_db


class PostgresBatchTables:
    """The part of ``PostgresStore`` that reads and writes batches (through its ``_rows``)."""

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
