"""The command group: where the server is, the operator token, and what each command is given (``Session``)."""

from dataclasses import dataclass

import click
from rich.console import Console

from taskserver.cli import batches, devices, render, schedules, tasks
from taskserver.cli.client import Client

DEFAULT_URL = "http://localhost:1888"


@dataclass
class Session:
    """What every command works with: the server's client, stdout for answers, stderr for progress."""

    client: Client
    out: Console
    err: Console

    def show(self, answer, view, as_json):
        """The server's JSON ``answer`` as it came, or ``view(answer)`` (a rich renderable)."""
        if as_json:
            click.echo(render.as_json(answer))
        else:
            self.out.print(view(answer))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="TASKSERVER_URL", default=DEFAULT_URL, show_default=True, help="The server.")
@click.option("--token", envvar="TASKSERVER_API_TOKEN", help="Operator token, sent as Authorization: Bearer.")
@click.option("--http-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds.")
@click.pass_context
def cli(ctx, url, token, http_timeout):
    """Operate a taskserver: devices and their tags, dispatching, batches, schedules, tasks and their history.

    \b
    Exit codes: 0 done (--wait: the task, or every task of the batch, completed), 1 the task failed
    (batch: a task failed or the batch was aborted), 2 bad usage, 3 the task was cancelled (batch: it,
    or a task of it, was cancelled), 4 the server refused the request (its message and error_code
    are printed), 5 the server could not be reached, 130 interrupted while waiting."""
    ctx.obj = Session(Client(url, token, http_timeout), Console(), Console(stderr=True))


for command in (*devices.COMMANDS, *tasks.COMMANDS, *batches.COMMANDS, *schedules.COMMANDS):
    cli.add_command(command)
