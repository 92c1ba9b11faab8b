"""What commands take beyond plain options: JSON given inline or from a file, and tags."""

import json

import click


class JsonObject(click.ParamType):
    """JSON text, or ``@FILE`` to read it from a file (``@-``: standard input)."""

    name = "JSON"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.startswith("@"):
            with click.open_file(value[1:], encoding="utf-8") as source:
                value = source.read()
        try:
            return json.loads(value)
        except ValueError as error:
            self.fail(f"not JSON: {error}", param, ctx)


def split_tags(values):
    """Tags given repeated or comma-separated (``--tag a --tag b,c``), in order, without repeats."""
    return list(dict.fromkeys(tag.strip() for value in values for tag in value.split(",") if tag.strip()))
