"""The batch table of the SQLite store (the store's task verbs make a batch's tasks and keep its counters)."""

from taskserver.store.rows import batch_from_row, to_db


class BatchTables:
    """The part of ``SQLiteStore`` that reads and writes batches (through its ``_query`` and ``_transaction``)."""

    def get_batch(self, batch_id):
        """The batch with this id, or None."""
        rows = self._query("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        return batch_from_row(rows[0]) if rows else None

    def list_batches(self, limit=100, offset=0):
        """A page of batches, newest first, and how many there are."""
        total = self._query("SELECT COUNT(*) FROM batches")[0][0]
        rows = self._query(
            "SELECT * FROM batches ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [batch_from_row(row) for row in rows], total

    def count_batch_tasks(self, batch_id):
        """The batch's tasks by status: ``{status: (count, sum of progress)}``."""
        rows = self._query(
            "SELECT status, COUNT(*), SUM(progress) FROM tasks WHERE batch_id = ? GROUP BY status", (batch_id,)
        )
        return {status: (count, progress or 0) for status, count, progress in rows}

    def update_batch_if(self, batch, changes):
        """Apply ``changes`` to the batch only if its stored status is still ``batch.status``; True if it was."""
        values = {name: to_db(name, value) for name, value in changes.items()}
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE batches SET {', '.join(f'{name} = ?' for name in values)} WHERE batch_id = ? AND status = ?",
                [*values.values(), batch.batch_id, str(batch.status)],
            )
            return cursor.rowcount == 1

    def unfinished_stopped_batches(self):
        """``(batch_id, status)`` of each aborted or cancelled batch whose tasks have not all ended."""
        rows = self._query(
            "SELECT batch_id, status FROM batches WHERE status IN ('aborted', 'cancelled') AND finished_at IS NULL"
        )
        return [(batch_id, status) for batch_id, status in rows]

    def find_batch_by_idempotency_key(self, key, since, scope):
        """The newest batch created with ``key`` by ``scope`` at or after ``since``, or None."""
        rows = self._query(
            """SELECT * FROM batches WHERE idempotency_key = ? AND created_at >= ? AND idempotency_scope = ?
               ORDER BY created_at DESC LIMIT 1""",
            (key, since, scope),
        )
        return batch_from_row(rows[0]) if rows else None

    def batch_task_ids(self, batch_id):
        """The ids of the batch's tasks, in the order it made them."""
        return [
            row[0] for row in self._query("SELECT task_id FROM tasks WHERE batch_id = ? ORDER BY rowid", (batch_id,))
        ]
