"""``batch TYPE``, ``batches``; and ``show`` / ``cancel`` of a batch, which those commands hand over to here."""

import json

import click
from rich.text import Text

from taskserver.cli.client import Exit, path
from taskserver.cli.params import JsonObject, split_tags
from taskserver.cli.render import (
    STATUS_STYLES,
    batch_counts,
    batch_view,
    batches_table,
    json_option,
    page_options,
)
from taskserver.cli.watch import wait_for_batch

DEFAULT_BATCH_SIZE = 50


def is_batch(some_id):
    """Batch ids start with ``batch_`` (task ids with ``task_``)."""
    return some_id.startswith("batch_")


@click.command()
@click.argument("task_type")
@click.option("--each", "mode", flag_value="each", help="One task per matching device, pinned to it; data: --data.")
@click.option("--spread", "mode", flag_value="spread", help="One task per item, to any matching device; see --items.")
@click.option("--tags", multiple=True, help="Target: the devices with all these tags (repeatable or a,b).")
@click.option("--devices", "device_ids", multiple=True, help="Target (--each): these devices (repeatable or a,b).")
@click.option("--all", "all_devices", is_flag=True, help="Target: every device except disabled ones.")
@click.option("--data", type=JsonObject(), help="--each: the data of every task: JSON, or @FILE.")
@click.option(
    "--items",
    type=click.File(encoding="utf-8"),
    metavar="FILE",
    help="--spread: the data of each task, from FILE (-: standard input): a JSON array, or one JSON object per line.",
)
@click.option(
    "--product-ids",
    type=click.File(encoding="utf-8"),
    metavar="FILE",
    help="--spread: product ids from FILE (-: standard input), one per line (or separated by spaces or commas), cut "
    'into items {"product_ids": [...]} of --batch-size ids each: a DELIST of many products shared by many phones.',
)
@click.option("--batch-size", type=click.IntRange(1), help=f"With --product-ids: ids per task ({DEFAULT_BATCH_SIZE}).")
@click.option("--online-only", is_flag=True, help="--each: only the devices online now.")
@click.option("--max-in-flight", type=int, help="At most this many of its tasks waiting in the queue, out or running.")
@click.option("--abort-ratio", type=float, help="Abort once this share (0-1] of the tasks that completed or failed...")
@click.option(
    "--abort-min",
    type=int,
    help="...failed, and at least this many of them (default 1): its pending tasks are cancelled.",
)
@click.option("--priority", type=int, help="Higher goes first among waiting tasks (server default 0).")
@click.option("--timeout", type=int, help="Seconds an attempt may run (server default 300).")
@click.option("--max-retries", type=int, help="Attempts after a failed one (server default 0).")
@click.option("--schedule-time", help="Not before this time (ISO 8601).")
@click.option("--wait", is_flag=True, help="Show the batch's progress until it ends; the exit code is its outcome.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True, help="Seconds per poll.")
@json_option
@click.pass_obj
def batch(session, task_type, wait, interval, json_, **options):
    """Create a batch of TASK_TYPE tasks: one for each device of a target (--each), or one for each item spread
    over the target's devices (--spread); print its id and how many tasks it made.

    \b
    With --wait, exit 0 only if the batch completed and every task of it did: 1 if a task failed or
    the batch was aborted, 3 if the batch or a task of it was cancelled (130 if you stop waiting: the
    batch goes on). With --json, print the server's answer (with --wait: the batch at its end)."""
    answer = session.client.post("/api/batches", batch_body(task_type, **options))
    if not wait:
        session.show(answer, _created, json_)
        return
    if not json_:
        session.out.print(_created(answer))
    ended = wait_for_batch(session.client, answer["batch_id"], interval, session.err)
    session.show({"success": True, "batch": ended}, lambda answer: _ended(answer["batch"]), json_)
    raise click.exceptions.Exit(outcome(ended))


def batch_body(task_type, mode, tags, device_ids, all_devices, data, items, product_ids, batch_size, **options):
    """The body of ``POST /api/batches`` from ``batch``'s options; a usage error for what cannot go together."""
    if mode is None:
        raise click.UsageError("say --each (one task per device) or --spread (one task per item)")
    body = {"task_type": task_type, "mode": mode, "target": _target(tags, device_ids, all_devices)}
    if data is not None:
        body["data"] = data
    if items and product_ids:
        raise click.UsageError("--items and --product-ids do not go together")
    if batch_size and not product_ids:
        raise click.UsageError("--batch-size goes with --product-ids")
    if items:
        body["items"] = read_items(items)
    elif product_ids:
        body["items"] = product_id_items(product_ids, batch_size or DEFAULT_BATCH_SIZE)
    abort = _abort(options.pop("abort_ratio"), options.pop("abort_min"))
    if abort:
        body["abort"] = abort
    return {**body, **{key: value for key, value in options.items() if value is not None}}


def _target(tags, device_ids, all_devices):
    targets = [{"tags": split_tags(tags)}] if tags else []
    targets += [{"device_ids": split_tags(device_ids)}] if device_ids else []
    targets += [{"all": True}] if all_devices else []
    if len(targets) != 1:
        raise click.UsageError("give one target: --tags, --devices or --all")
    return targets[0]


def _abort(ratio, least):
    if least is not None and ratio is None:
        raise click.UsageError("--abort-min goes with --abort-ratio")
    if ratio is None:
        return None
    return {"failure_ratio": ratio} if least is None else {"failure_ratio": ratio, "min_finished": least}


def read_items(source):
    """The items of a spread batch: a JSON array, or JSON lines (one value a line, blank lines skipped)."""
    text = source.read()
    if not text.strip():
        raise click.BadParameter("no item in it", param_hint="--items")
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as error:
        raise click.BadParameter(f"not a JSON array nor JSON lines: {error}", param_hint="--items") from None


def product_id_items(source, size):
    """``{"product_ids": [...]}`` items of ``size`` ids each, from ids apart by lines, spaces or commas."""
    ids = source.read().replace(",", " ").split()
    if not ids:
        raise click.BadParameter("no product id in it", param_hint="--product-ids")
    return [{"product_ids": ids[start : start + size]} for start in range(0, len(ids), size)]


def outcome(ended):
    """The exit code of ``batch --wait``: 0 if every task completed, 1 if one failed or the batch was aborted, 3 if
    the batch or one of its tasks was cancelled."""
    counts = ended["counts"]
    if ended["status"] == "cancelled":
        return Exit.CANCELLED
    if ended["status"] == "aborted" or counts["failed"]:
        return Exit.FAILED
    return Exit.CANCELLED if counts["cancelled"] else Exit.OK


def _created(answer):
    return Text(f"batch {answer['batch_id']} created: {answer['total']} tasks")


def _ended(shown):
    """``batch ID completed: 8 completed, 2 failed``, and where to find the failed tasks."""
    line = Text.assemble(f"batch {shown['batch_id']} ", (shown["status"], STATUS_STYLES[shown["status"]]))
    line.append(f": {batch_counts(shown)}")
    if shown["counts"]["failed"]:
        line.append(f"\nthe failed tasks: tasks --batch {shown['batch_id']} --status failed")
    return line


@click.command()
@page_options
@json_option
@click.pass_obj
def batches(session, limit, offset, json_):
    """List batches, newest first, with their progress and their tasks by status."""
    session.show(session.client.get("/api/batches", limit=limit, offset=offset), batches_table, json_)


def show_batch(session, batch_id, json_):
    """``show BATCH``: the batch, its target, options and its tasks by status."""
    answer = session.client.get(path("/api/batch/{}", batch_id))
    session.show(answer, lambda answer: batch_view(answer["batch"]), json_)


def cancel_batch(session, batch_id):
    """``cancel BATCH``: every task of it not ended yet is cancelled."""
    answer = session.client.post(path("/api/batch/{}/cancel", batch_id))
    shown = answer["batch"]
    state = (shown["status"], STATUS_STYLES[shown["status"]])
    session.out.print(Text.assemble(f"batch {batch_id} ", state, f": {answer['message']} ({batch_counts(shown)})"))


COMMANDS = (batch, batches)
