"""``devices``, ``disable DEVICE``, ``enable DEVICE``."""

import click
from rich.text import Text

from taskserver.cli.client import path
from taskserver.cli.render import devices_table, json_option
from taskserver.domain import DeviceStatus


@click.command()
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in DeviceStatus]), help="Repeatable."
)
@click.option("--disabled/--enabled", default=None, help="Only disabled (drained) devices, or only enabled ones.")
@json_option
@click.pass_obj
def devices(session, statuses, disabled, json_):
    """List devices, offline ones included, most recently registered first."""
    flag = None if disabled is None else str(disabled).lower()
    answer = session.client.get("/api/devices", status=list(statuses) or None, disabled=flag)
    session.show(answer, devices_table, json_)


@click.command()
@click.argument("device_id")
@click.pass_obj
def disable(session, device_id):
    """Drain DEVICE_ID: it gets no new task; the tasks it runs finish."""
    _switch(session, device_id, "disable")


@click.command()
@click.argument("device_id")
@click.pass_obj
def enable(session, device_id):
    """Undo disable: DEVICE_ID takes new tasks again, starting with those waiting for it."""
    _switch(session, device_id, "enable")


def _switch(session, device_id, action):
    answer = session.client.post(path("/api/device/{}/" + action, device_id))
    session.out.print(Text(f"{device_id}: {answer['message']}"))


COMMANDS = (devices, disable, enable)
