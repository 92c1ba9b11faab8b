"""``dispatch --wait``: poll one task's status until it ends, showing its progress while it runs.

On a terminal, a rich progress bar redrawn after every poll (never on a timer of its own, so what it shows is
exactly what the last poll said); elsewhere (a pipe, a log file), one line each time status, progress or message
change."""

import time

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from taskserver.cli.client import Exit
from taskserver.cli.render import STATUS_STYLES
from taskserver.domain import TaskStatus

OUTCOMES = {TaskStatus.COMPLETED: Exit.OK, TaskStatus.FAILED: Exit.FAILED, TaskStatus.CANCELLED: Exit.CANCELLED}


def wait_for(client, task_id, interval, console):
    """Poll ``GET /api/task/{task_id}/status`` every ``interval`` seconds until the task ends; return its status."""
    with (ProgressBar if console.is_interactive else ProgressLines)(console) as shown:
        while True:
            task = client.get(f"/api/task/{task_id}/status")["task"]
            shown.update(task)
            if task["status"] in OUTCOMES:
                return task
            time.sleep(interval)


def describe(task):
    """Status, and the attempt once the task is retried."""
    retried = f" (attempt {task['attempt']})" if task["attempt"] > 1 else ""
    return f"{task['status']}{retried}"


class ProgressBar:
    """A live progress bar with the task's status, progress, message and the time waited."""

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

    def update(self, task):
        message = task["progress_message"] or ""
        self.progress.update(self.bar, completed=task["progress"], description=describe(task), message=message)
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

    def update(self, task):
        seen = (task["status"], task["attempt"], task["progress"], task["progress_message"])
        if seen != self.last:
            self.last = seen
            line = Text.assemble((describe(task), STATUS_STYLES[task["status"]]), f" {task['progress']}%")
            if task["progress_message"]:
                line.append(f" {task['progress_message']}")
            self.console.print(line)
