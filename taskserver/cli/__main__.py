"""``python -m taskserver.cli``."""

from taskserver.cli.main import cli

cli(prog_name="python -m taskserver.cli")
