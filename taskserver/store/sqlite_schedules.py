"""The schedule tables of the SQLite store: schedules, and their runs (one row per fire time run)."""

from taskserver.store.rows import SCHEDULE_COLUMNS, schedule_from_row, schedule_run_from_row, to_db


class ScheduleTables:
    """The part of ``SQLiteStore`` that reads and writes schedules (through its ``_query`` and ``_transaction``)."""

    def add_schedule(self, schedule):
        """Insert a new schedule."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO schedules ({', '.join(SCHEDULE_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in SCHEDULE_COLUMNS)})",
                [to_db(name, getattr(schedule, name)) for name in SCHEDULE_COLUMNS],
            )

    def get_schedule(self, schedule_id):
        """The schedule with this id, or None."""
        rows = self._query("SELECT * FROM schedules WHERE schedule_id = ?", (schedule_id,))
        return schedule_from_row(rows[0]) if rows else None

    def list_schedules(self, limit=100, offset=0):
        """A page of schedules, newest first, and how many there are."""
        total = self._query("SELECT COUNT(*) FROM schedules")[0][0]
        rows = self._query(
            "SELECT * FROM schedules ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [schedule_from_row(row) for row in rows], total

    def update_schedule(self, schedule_id, changes):
        """Apply ``changes`` to the schedule; return it updated, or None if there is none."""
        values = {name: to_db(name, value) for name, value in changes.items()}
        with self._transaction() as db:
            row = db.execute(
                f"UPDATE schedules SET {', '.join(f'{name} = ?' for name in values)} WHERE schedule_id = ? RETURNING *",
                [*values.values(), schedule_id],
            ).fetchone()
        return schedule_from_row(row) if row else None

    def delete_schedule(self, schedule_id):
        """Delete the schedule and its runs; True if it existed."""
        with self._transaction() as db:
            if db.execute("DELETE FROM schedules WHERE schedule_id = ?", (schedule_id,)).rowcount == 0:
                return False
            db.execute("DELETE FROM schedule_runs WHERE schedule_id = ?", (schedule_id,))
            return True

    def due_schedules(self, now, limit):
        """Enabled schedules whose ``next_run_at`` is at or before ``now``, the earliest first."""
        rows = self._query(
            "SELECT * FROM schedules WHERE enabled = 1 AND next_run_at <= ? ORDER BY next_run_at LIMIT ?", (now, limit)
        )
        return [schedule_from_row(row) for row in rows]

    def add_schedule_run(self, schedule_id, fire_at, ran_at):
        """Record that the schedule runs its fire time ``fire_at``; False if that fire time has a run already."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO schedule_runs (schedule_id, fire_at, ran_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (schedule_id, fire_at, ran_at),
            )
            return cursor.rowcount == 1

    def record_schedule_run(self, schedule_id, fire_at, task_id=None, batch_id=None, error=None):
        """Record what the run of ``fire_at`` created, or its ``error``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE schedule_runs SET task_id = ?, batch_id = ?, error = ? WHERE schedule_id = ? AND fire_at = ?",
                (task_id, batch_id, to_db("error", error), schedule_id, fire_at),
            )

    def schedule_runs(self, schedule_id, limit):
        """The schedule's latest ``limit`` runs, newest fire time first."""
        rows = self._query(
            "SELECT * FROM schedule_runs WHERE schedule_id = ? ORDER BY fire_at DESC LIMIT ?", (schedule_id, limit)
        )
        return [schedule_run_from_row(row) for row in rows]

    def last_schedule_runs(self, schedule_ids):
        """The latest run of each of ``schedule_ids`` that has run: ``{schedule_id: ScheduleRun}``."""
        marks = ", ".join("?" for _ in schedule_ids)
        rows = self._query(
            f"""SELECT * FROM schedule_runs run WHERE schedule_id IN ({marks})
                AND fire_at = (SELECT MAX(fire_at) FROM schedule_runs WHERE schedule_id = run.schedule_id)""",
            list(schedule_ids),
        )
        return {row["schedule_id"]: schedule_run_from_row(row) for row in rows}
