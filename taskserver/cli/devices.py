"""``devices``, ``tag DEVICE [TAG...]``, ``disable DEVICE``, ``enable DEVICE``."""

import click
from rich.text import Text

from taskserver.cli.client import path
from taskserver.cli.params import split_tags
from taskserver.cli.render import devices_table, json_option
from taskserver.domain import DeviceStatus


@click.command()
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in DeviceStatus]), help="Repeatable."
)
@click.option("--disabled/--enabled", default=None, help="Only disabled (drained) devices, or only enabled ones.")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeatable or a,b: with all of them).")
@json_option
@click.pass_obj
def devices(session, statuses, disabled, tags, json_):
    """List devices, offline ones included, most recently registered first."""
    flag = None if disabled is None else str(disabled).lower()
    query = {"status": list(statuses) or None, "disabled": flag, "tag": split_tags(tags) or None}
    answer = session.client.get("/api/devices", **query)
    session.show(answer, devices_table, json_)


@click.command()
@click.argument("device_id")
@click.argument("tags", nargs=-1)
@click.option("--clear", is_flag=True, help="Remove its operator tags (as giving no TAGS does).")
@click.pass_obj
def tag(session, device_id, tags, clear):
    """Set DEVICE_ID's operator tags to TAGS (replacing those set before), and print its tags.

    Tags the phone registered with (device_info.tags) stay; a device's tags are both."""
    if clear and tags:
        raise click.UsageError("--clear and TAGS do not go together")
    answer = session.client.put(path("/api/device/{}/tags", device_id), {"tags": split_tags(tags)})
    session.out.print(Text(f"{device_id}: {answer['message']}"))
    session.out.print(_tags(answer["device"]))


def _tags(device):
    """``tags: a, b, vip (registered: a, b; operator: vip)``."""
    registered, operator = _listed(device["device_tags"]), _listed(device["operator_tags"])
    return Text(f"tags: {_listed(device['tags'])} (registered: {registered}; operator: {operator})")


def _listed(tags):
    return ", ".join(tags) or "-"


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


COMMANDS = (devices, tag, disable, enable)
