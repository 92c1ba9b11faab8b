"""The schedule tables of the PostgreSQL store: schedules, and their runs (one row per fire time run).

Several nodes share them: the leader claims a due schedule (``FOR UPDATE SKIP LOCKED``) for the unit of work that
runs it, and a run's primary key ``(schedule_id, fire_at)`` makes each fire time run once whatever else happens."""

from taskserver.store.rows import (
    SCHEDULE_COLUMNS,
    SCHEDULE_RUN_COLUMNS,
    schedule_from_row,
    schedule_run_from_row,
    to_db,
)

SCHEDULE_SELECT = ", ".join(SCHEDULE_COLUMNS)


class PostgresScheduleTables:
    """The part of ``PostgresStore`` that reads and writes schedules (through its ``_rows`` and ``_db``)."""

    def add_schedule(self, schedule):
        """Insert a new schedule."""
        with self._db() as db:
            db.execute(
                f"INSERT INTO schedules ({SCHEDULE_SELECT}) VALUES ({', '.join('%s' for _ in SCHEDULE_COLUMNS)})",
                [to_db(name, getattr(schedule, name)) for name in SCHEDULE_COLUMNS],
            )

    def get_schedule(self, schedule_id):
        """The schedule with this id, or None."""
        rows = self._rows(f"SELECT {SCHEDULE_SELECT} FROM schedules WHERE schedule_id = %s", (schedule_id,))
        return schedule_from_row(rows[0]) if rows else None

    def list_schedules(self, limit=100, offset=0):
        """A page of schedules, newest first, and how many there are."""
        with self._db() as db:
            total = db.execute("SELECT COUNT(*) AS n FROM schedules").fetchone()["n"]
            rows = db.execute(
                f"SELECT {SCHEDULE_SELECT} FROM schedules ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                (limit, offset),
            ).fetchall()
        return [schedule_from_row(row) for row in rows], total

    def update_schedule(self, schedule_id, changes):
        """Apply ``changes`` to the schedule; return it updated, or None if there is none."""
        values = {name: to_db(name, value) for name, value in changes.items()}
        rows = self._rows(
            f"UPDATE schedules SET {', '.join(f'{name} = %s' for name in values)} WHERE schedule_id = %s "
            f"RETURNING {SCHEDULE_SELECT}",
            [*values.values(), schedule_id],
        )
        return schedule_from_row(rows[0]) if rows else None

    def delete_schedule(self, schedule_id):
        """Delete the schedule and its runs; True if it existed."""
        with self._db() as db:
            if not db.execute("DELETE FROM schedules WHERE schedule_id = %s RETURNING 1", (schedule_id,)).fetchone():
                return False
            db.execute("DELETE FROM schedule_runs WHERE schedule_id = %s", (schedule_id,))
            return True

    def due_schedules(self, now, limit):
        """Enabled schedules whose ``next_run_at`` is at or before ``now``, the earliest first, claimed for this unit
        of work (those another unit holds are skipped)."""
        rows = self._rows(
            f"""SELECT {SCHEDULE_SELECT} FROM schedules WHERE enabled AND next_run_at <= %s
                ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED""",
            (now, limit),
        )
        return [schedule_from_row(row) for row in rows]

    def add_schedule_run(self, schedule_id, fire_at, ran_at):
        """Record that the schedule runs its fire time ``fire_at``; False if that fire time has a run already (one
        another unit is making waits for it to end)."""
        rows = self._rows(
            "INSERT INTO schedule_runs (schedule_id, fire_at, ran_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (schedule_id, fire_at, ran_at),
        )
        return bool(rows)

    def record_schedule_run(self, schedule_id, fire_at, task_id=None, batch_id=None, error=None):
        """Record what the run of ``fire_at`` created, or its ``error``."""
        with self._db() as db:
            db.execute(
                "UPDATE schedule_runs SET task_id = %s, batch_id = %s, error = %s "
                "WHERE schedule_id = %s AND fire_at = %s",
                (task_id, batch_id, to_db("error", error), schedule_id, fire_at),
            )

    def schedule_runs(self, schedule_id, limit):
        """The schedule's latest ``limit`` runs, newest fire time first."""
        rows = self._rows(
            f"SELECT {', '.join(SCHEDULE_RUN_COLUMNS)} FROM schedule_runs WHERE schedule_id = %s "
            "ORDER BY fire_at DESC LIMIT %s",
            (schedule_id, limit),
        )
        return [schedule_run_from_row(row) for row in rows]

    def last_schedule_runs(self, schedule_ids):
        """The latest run of each of ``schedule_ids`` that has run: ``{schedule_id: ScheduleRun}``."""
        rows = self._rows(
            f"SELECT DISTINCT ON (schedule_id) {', '.join(SCHEDULE_RUN_COLUMNS)} FROM schedule_runs "
            "WHERE schedule_id = ANY(%s) ORDER BY schedule_id, fire_at DESC",
            (list(schedule_ids),),
        )
        return {row["schedule_id"]: schedule_run_from_row(row) for row in rows}
