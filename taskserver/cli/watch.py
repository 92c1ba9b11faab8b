"""``--wait``: poll a task (``dispatch``) or a batch (``batch``) until it ends, showing its progress meanwhile.

On a terminal, a rich progress bar redrawn after every poll (never on a timer of its own, so what it shows is
exactly what the last poll said); elsewhere (a pipe, a log file), one line each time what it shows changes."""

import time
from typing import NamedTuple

import click
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from taskserver.cli.client import Exit, path
from taskserver.cli.render import STATUS_STYLES, batch_counts
from taskserver.domain import TaskStatus

OUTCOMES = {TaskStatus.COMPLETED: Exit.OK, TaskStatus.FAILED: Exit.FAILED, TaskStatus.CANCELLED: Exit.CANCELLED}


class Shown(NamedTuple):
    """What one poll shows: a status (its colour), a label, a percentage and a message."""

    status: str
    label: str
    progress: float
    message: str


def wait_for(client, task_id, interval, console):
    """Poll ``GET /api/task/{task_id}/status`` every ``interval`` seconds until the task ends; return its status."""
    return watch(
        lambda: client.get(path("/api/task/{}/status", task_id))["task"],
        lambda task: task["status"] in OUTCOMES,
        task_shown,
        interval,
        console,
        ("task", task_id),
    )


def wait_for_batch(client, batch_id, interval, console):
    """Poll ``GET /api/batch/{batch_id}`` every ``interval`` seconds until it is no longer running; return it."""
    return watch(
        lambda: client.get(path("/api/batch/{}", batch_id))["batch"],
        lambda batch: batch["status"] != "running",
        batch_shown,
        interval,
        console,
        ("batch", batch_id),
    )


def watch(fetch, ended, shown, interval, console, watched):
    """Call ``fetch`` every ``interval`` seconds and show ``shown(it)`` until ``ended(it)``; return the last.

    Ctrl-C stops waiting (exit 130), not the ``watched`` ``(kind, id)``: it goes on."""
    try:
        with (ProgressBar if console.is_interactive else ProgressLines)(console) as display:
            while True:
                found = fetch()
                display.update(shown(found))
                if ended(found):
                    return found
                time.sleep(interval)
    except KeyboardInterrupt:
        kind, some_id = watched
        console.print(Text(f"stopped waiting; {kind} {some_id} goes on (see: show {some_id})"))
        raise click.exceptions.Exit(Exit.INTERRUPTED) from None


def task_shown(task):
    """Status (and the attempt once the task is retried), progress and the device's message."""
    retried = f" (attempt {task['attempt']})" if task["attempt"] > 1 else ""
    return Shown(task["status"], f"{task['status']}{retried}", task["progress"], task["progress_message"] or "")


def batch_shown(batch):
    """Status, overall progress and the tasks by status."""
    return Shown(batch["status"], batch["status"], batch["progress"], batch_counts(batch))


class ProgressBar:
    """A live progress bar: label, bar, percentage, message and the time waited."""

    def __init__(self, console):
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[message]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.bar = self.progress.add_task("", total=100, message="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, shown):
        self.progress.update(self.bar, completed=shown.progress, description=shown.label, message=shown.message)
        self.progress.refresh()


class ProgressLines:
    """One line per change: ``running 30% 已下架 3/10``."""

    def __init__(self, console):
        self.console = console
        self.last = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, shown):
        if shown != self.last:
            self.last = shown
            line = Text.assemble((shown.label, STATUS_STYLES.get(shown.status, "")), f" {shown.progress:g}%")
            if shown.message:
                line.append(f" {shown.message}")
            self.console.print(line)
