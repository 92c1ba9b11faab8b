"""``dispatch TYPE``, ``tasks``, ``show TASK|BATCH``, ``cancel TASK|BATCH``."""

import json

import click
from rich.text import Text

from taskserver.cli import batches
from taskserver.cli.client import path
from taskserver.cli.params import JsonObject, split_tags
from taskserver.cli.render import STATUS_STYLES, json_option, page_options, task_view, tasks_table
from taskserver.cli.watch import OUTCOMES, wait_for
from taskserver.domain import TaskStatus


@click.command()
@click.argument("task_type")
@click.option("--data", type=JsonObject(), default="{}", show_default=True, help="The task's data: JSON, or @FILE.")
@click.option("--device", "device_id", help="Send it to this device only (default: the least busy online one).")
@click.option("--tags", multiple=True, help="Send it to any device with all these tags (repeatable or a,b).")
@click.option("--priority", type=int, help="Higher goes first among waiting tasks (server default 0).")
@click.option("--timeout", type=int, help="Seconds an attempt may run (server default 300).")
@click.option("--max-retries", type=int, help="Attempts after a failed one (server default 0).")
@click.option("--schedule-time", help="Not before this time (ISO 8601).")
@click.option("--idempotency-key", help="Sending the same request again returns the first task.")
@click.option("--wait", is_flag=True, help="Show the task's progress until it ends; the exit code is its outcome.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True, help="Seconds per poll.")
@json_option
@click.pass_obj
def dispatch(session, task_type, data, tags, wait, interval, json_, **options):
    """Create a TASK_TYPE task (DELIST, COLLECT, UPLOAD, ...) and print its id and status.

    \b
    With --wait, exit 0 only if the task completed: 1 if it failed, 3 if it was cancelled
    (130 if you stop waiting: the task goes on). With --json, print the server's answer
    (with --wait: the task's final status)."""
    if tags and options["device_id"]:
        raise click.UsageError("--tags and --device do not go together: a task goes to one device or to any tagged one")
    body = {"task_type": task_type, "data": data, **{key: value for key, value in options.items() if value is not None}}
    if tags:
        body["tags"] = split_tags(tags)
    answer = session.client.post("/api/dispatch-task", body)
    if not wait:
        session.show(answer, _dispatched, json_)
        return
    if not json_:
        session.out.print(_dispatched(answer))
    task = wait_for(session.client, answer["task_id"], interval, session.err)
    session.show({"success": True, "task": task}, _outcome, json_)
    raise click.exceptions.Exit(OUTCOMES[task["status"]])


def _dispatched(answer):
    where = f" on {answer['device_id']}" if answer["device_id"] else ""
    state = (answer["status"], STATUS_STYLES[answer["status"]])
    return Text.assemble(f"task {answer['task_id']} ", state, where, f": {answer['message']}")


def _outcome(answer):
    """``completed: {result}``, ``failed (ERROR_CODE): message``, ``cancelled``."""
    task = answer["task"]
    line = Text.assemble(f"task {task['task_id']} ", (task["status"], STATUS_STYLES[task["status"]]))
    if task["error_code"] and task["status"] != TaskStatus.CANCELLED:
        line.append(f" ({task['error_code']})")
    result = task["result"] or {}
    if task["status"] == TaskStatus.COMPLETED and result:
        line.append(": " + json.dumps(result, ensure_ascii=False))
    elif result.get("message"):
        line.append(f": {result['message']}")
    return line


@click.command()
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in TaskStatus]), help="Repeatable."
)
@click.option("--type", "task_type", help="Only tasks of this type.")
@click.option("--device", "device_id", help="Only tasks on (or waiting for) this device.")
@click.option("--batch", "batch_id", help="Only the tasks of this batch.")
@page_options
@json_option
@click.pass_obj
def tasks(session, statuses, task_type, device_id, batch_id, limit, offset, json_):
    """List tasks, newest first."""
    query = {"status": list(statuses) or None, "task_type": task_type, "device_id": device_id, "batch_id": batch_id}
    answer = session.client.get("/api/tasks", limit=limit, offset=offset, **query)
    session.show(answer, tasks_table, json_)


@click.command()
@click.argument("task_id", metavar="TASK|BATCH")
@json_option
@click.pass_obj
def show(session, task_id, json_):
    """One task: its data, result, times, attempts and history; or one batch (an id starting with batch_).

    With --json: {"task": the task's detail, "events": its history}, as the server answers them; for a batch, the
    server's answer."""
    if batches.is_batch(task_id):
        batches.show_batch(session, task_id, json_)
        return
    task = session.client.get(path("/api/task/{}", task_id))["task"]
    events = session.client.get(path("/api/task/{}/events", task_id))["events"]
    session.show({"task": task, "events": events}, lambda answer: task_view(task, events), json_)


@click.command()
@click.argument("task_id", metavar="TASK|BATCH")
@click.pass_obj
def cancel(session, task_id):
    """Cancel a task that has not ended, its device told to stop; or a batch (an id starting with batch_): every
    task of it not ended yet."""
    if batches.is_batch(task_id):
        batches.cancel_batch(session, task_id)
        return
    answer = session.client.post(path("/api/task/{}/cancel", task_id))
    session.out.print(Text.assemble(_outcome(answer), f": {answer['message']}"))


COMMANDS = (dispatch, tasks, show, cancel)
