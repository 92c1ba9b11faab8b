"""``schedules``, and the ``schedule`` group: ``show``, ``create``, ``pause``, ``resume``, ``delete`` one."""

import click
from rich.text import Text

from taskserver.cli.client import path
from taskserver.cli.params import JsonObject
from taskserver.cli.render import json_option, page_options, schedule_view, schedules_table, when
from taskserver.domain import Misfire


@click.command()
@page_options
@json_option
@click.pass_obj
def schedules(session, limit, offset, json_):
    """List schedules, newest first: what each makes, when it runs next, and its last run (what it made, or why it
    made nothing).

    With --json, print the server's answer as it came."""
    answer = session.client.get("/api/schedules", limit=limit, offset=offset)
    session.show(answer, schedules_table, json_)


@click.group()
def schedule():
    """One recurring schedule: show, create, pause, resume or delete it."""


@schedule.command()
@click.argument("schedule_id")
@json_option
@click.pass_obj
def show(session, schedule_id, json_):
    """The schedule: its cron expression and time zone, what it makes, its next run, and its latest runs."""
    answer = session.client.get(path("/api/schedule/{}", schedule_id))
    session.show(answer, lambda answer: schedule_view(answer["schedule"]), json_)


@schedule.command()
@click.argument("name")
@click.option("--cron", "cron", required=True, help='5 fields: minute hour day month weekday, e.g. "0 9 * * *".')
@click.option("--timezone", help="Fire times are in this zone's local time: an IANA name (server default UTC).")
@click.option("--task", type=JsonObject(), help="Each fire time dispatches this task: a dispatch body, JSON or @FILE.")
@click.option("--batch", type=JsonObject(), help="Each fire time creates this batch: a batch body, JSON or @FILE.")
@click.option("--paused", is_flag=True, help="Create it paused: it runs once resumed.")
@click.option(
    "--misfire",
    type=click.Choice([m.value for m in Misfire]),
    help="Fire times missed while no server ran: one run for all (coalesce, the server default) or none (skip).",
)
@json_option
@click.pass_obj
def create(session, name, cron, timezone, task, batch, paused, misfire, json_):
    """Create schedule NAME: at each fire time of --cron in --timezone, the server makes --task (a body of
    POST /api/dispatch-task) or --batch (a body of POST /api/batches); print its id and next run."""
    if (task is None) == (batch is None):
        raise click.UsageError("give one of --task and --batch")
    body = {"name": name, "cron": cron, "task": task, "batch": batch, "timezone": timezone, "misfire": misfire}
    body = {key: value for key, value in body.items() if value is not None}
    if paused:
        body["enabled"] = False
    answer = session.client.post("/api/schedules", body)
    session.show(answer, lambda answer: _done(answer, "created"), json_)


@schedule.command()
@click.argument("schedule_id")
@json_option
@click.pass_obj
def pause(session, schedule_id, json_):
    """Pause the schedule: no fire time runs until it is resumed."""
    _set_enabled(session, schedule_id, False, json_)


@schedule.command()
@click.argument("schedule_id")
@json_option
@click.pass_obj
def resume(session, schedule_id, json_):
    """Resume a paused schedule: it runs next at its first fire time from now (those missed while paused never run)."""
    _set_enabled(session, schedule_id, True, json_)


@schedule.command()
@click.argument("schedule_id")
@click.pass_obj
def delete(session, schedule_id):
    """Delete the schedule and its runs; the tasks and batches it made stay."""
    answer = session.client.delete(path("/api/schedule/{}", schedule_id))
    session.out.print(Text(f"schedule {schedule_id} deleted: {answer['message']}"))


def _set_enabled(session, schedule_id, enabled, json_):
    answer = session.client.patch(path("/api/schedule/{}", schedule_id), {"enabled": enabled})
    session.show(answer, lambda answer: _done(answer, "resumed" if enabled else "paused"), json_)


def _done(answer, verb):
    """``schedule ID paused: 定时任务已更新 (next run: -)``."""
    shown = answer["schedule"]
    line = Text(f"schedule {shown['schedule_id']} {verb}: {answer['message']} (next run: ")
    return line.append_text(when(shown["next_run_at"])).append(")")


COMMANDS = (schedules, schedule)
