"""Recurring schedules: each fire time of a schedule's cron expression, in its time zone, creates its task or batch
once, even across restarts and with several nodes (a run row per ``(schedule_id, fire_at)``, inserted first).

The watchdog's leader calls ``fire_due``. Fire times missed while no server ran are run once for all of them
(``misfire: coalesce``, the latest of them as its ``fire_at``) or skipped (``misfire: skip``): a fire time more than
``MISFIRE_GRACE`` seconds old creates nothing, and the schedule waits for its next one."""

import logging
from dataclasses import replace

from taskserver import cron, domain, logs, schemas
from taskserver.domain import ErrorCode, Misfire, Schedule, ScheduleKind
from taskserver.errors import NotFound, StoreUnavailable, TaskServerError
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")

MISFIRE_GRACE = 60.0  # seconds: with misfire "skip", how late a sweep may still run a fire time
RECENT_RUNS = 20  # runs a schedule is shown with


def not_found(schedule_id):
    """The error for a schedule that does not exist."""
    return NotFound(f"定时任务 {schedule_id} 不存在", ErrorCode.SCHEDULE_NOT_FOUND)


class Schedules:
    """Keeps the schedules and runs them: a run creates its task through the dispatcher (its batch through the
    batches), as an operator's request would."""

    def __init__(self, store, dispatcher, batches, config, clock):
        self.store = store
        self.dispatcher = dispatcher
        self.batches = batches
        self.config = config
        self.clock = clock

    @atomic
    def create(self, request):
        """Store a new schedule (``orders.ScheduleRequest``), due at its first fire time from now if enabled."""
        now = self.clock()
        schedule = Schedule(
            schedule_id=domain.new_schedule_id(),
            name=request.name,
            cron=request.cron,
            timezone=request.timezone,
            kind=request.kind,
            body=request.body,
            enabled=request.enabled,
            misfire=request.misfire,
            created_at=now,
            updated_at=now,
        )
        schedule = replace(schedule, next_run_at=self._next_run(None, schedule, now))
        self.store.add_schedule(schedule)
        logs.event(log, "schedule created", schedule_id=schedule.schedule_id, cron=schedule.cron)
        return schedule

    def schedule(self, schedule_id):
        """The schedule, or 404 ``SCHEDULE_NOT_FOUND``."""
        schedule = self.store.get_schedule(schedule_id)
        if schedule is None:
            raise not_found(schedule_id)
        return schedule

    def recent_runs(self, schedule_id):
        """The schedule's latest runs, newest first."""
        return self.store.schedule_runs(schedule_id, RECENT_RUNS)

    def page(self, limit, offset):
        """A page of schedules, newest first, each with its latest run (None if it has not run); and how many there
        are."""
        schedules, total = self.store.list_schedules(limit, offset)
        last = self.store.last_schedule_runs([schedule.schedule_id for schedule in schedules])
        return [(schedule, last.get(schedule.schedule_id)) for schedule in schedules], total

    @atomic
    def update(self, schedule_id, changes):
        """Change the schedule (any fields of a ``ScheduleRequest``); return it as stored, or 404."""
        before, now = self.schedule(schedule_id), self.clock()
        after = replace(before, **changes)
        timing = {"next_run_at": self._next_run(before, after, now), "updated_at": now}
        updated = self.store.update_schedule(schedule_id, {**changes, **timing})
        if updated is None:  # deleted meanwhile (by another node)
            raise not_found(schedule_id)
        logs.event(log, "schedule changed", schedule_id=schedule_id, changed=",".join(changes))
        return updated

    @atomic
    def delete(self, schedule_id):
        """Delete the schedule and its runs (what they created stays), or 404."""
        if not self.store.delete_schedule(schedule_id):
            raise not_found(schedule_id)
        logs.event(log, "schedule deleted", schedule_id=schedule_id)

    def _next_run(self, before, after, now):
        """``next_run_at`` of a schedule made or changed (``before`` the change, None when made) at ``now``: none
        while disabled; its first fire time from now when enabled, made, or given other times; else as it was."""
        if not after.enabled:
            return None
        if before is not None and before.enabled and (before.cron, before.timezone) == (after.cron, after.timezone):
            return before.next_run_at
        return cron.next_after(after.cron, after.timezone, now)

    def fire_due(self, now, limit):
        """Run (or, missed, skip) up to ``limit`` schedules due at ``now``, each in a unit of work of its own; return
        how many."""
        done = 0
        while done < limit and self._run_first_due(now):
            done += 1
        return done

    @atomic
    def _run_first_due(self, now):
        """Run the schedule due first at ``now`` (claimed: another leader skips it), and move it to its first fire
        time after ``now``; False if none is due."""
        due = self.store.due_schedules(now, 1)
        if not due:
            return False
        schedule = due[0]
        fire_at = cron.last_at_or_before(schedule.cron, schedule.timezone, now)
        if schedule.misfire == Misfire.COALESCE or now - fire_at <= MISFIRE_GRACE:
            self._run(schedule, fire_at, now)
        else:
            logs.event(log, "schedule fire time skipped", schedule_id=schedule.schedule_id, fire_at=fire_at)
        self.store.update_schedule(
            schedule.schedule_id, {"next_run_at": cron.next_after(schedule.cron, schedule.timezone, now)}
        )
        return True

    def _run(self, schedule, fire_at, now):
        """Create what the schedule makes for ``fire_at`` unless that fire time has a run (another leader, or a
        process before a restart, made it); record what was made, or why nothing was (the schedule moves on all the
        same)."""
        if not self.store.add_schedule_run(schedule.schedule_id, fire_at, now):
            return
        try:
            made = self._create(schedule)
        except StoreUnavailable:
            raise
        except TaskServerError as error:
            failure = {"message": error.message, "error_code": str(error.error_code)}
            self.store.record_schedule_run(schedule.schedule_id, fire_at, error=failure)
            logs.event(log, "schedule run failed", logging.WARNING, schedule_id=schedule.schedule_id, **failure)
            return
        self.store.record_schedule_run(schedule.schedule_id, fire_at, **made)
        logs.event(log, "schedule ran", schedule_id=schedule.schedule_id, fire_at=fire_at, **made)

    def _create(self, schedule):
        """Create the schedule's task or batch, as its body asks now; return its id (``task_id`` or ``batch_id``)."""
        extra_types, schedule_id = self.config["EXTRA_TASK_TYPES"], schedule.schedule_id
        if schedule.kind == ScheduleKind.BATCH:
            request = replace(schemas.batch_request(schedule.body, extra_types), schedule_id=schedule_id)
            batch, _task_ids, _created = self.batches.create(request)
            return {"batch_id": batch.batch_id}
        request = replace(schemas.dispatch_request(schedule.body, extra_types), schedule_id=schedule_id)
        task, _created = self.dispatcher.dispatch(request)
        return {"task_id": task.task_id}
