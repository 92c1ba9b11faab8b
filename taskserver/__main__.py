"""``python -m taskserver db ...``: the store's own commands (schema upgrades, moving to PostgreSQL)."""

from gevent import monkey

monkey.patch_all()  # before psycopg is imported: its waits must be gevent's

import click  # noqa: E402

from config import load_config  # noqa: E402
from taskserver.store import display_database, is_postgres, open_store  # noqa: E402


@click.group()
def main():
    """taskserver's administrative commands."""


@main.group()
def db():
    """The database: schema versions and moving to PostgreSQL."""


@db.command()
@click.option("--database", envvar="TASKSERVER_DATABASE", help="A SQLite file or a postgresql:// URL.")
def upgrade(database):
    """Bring the database's schema to this server's version (a server does the same when it starts)."""
    settings = load_config()
    settings["DATABASE"] = database or settings["DATABASE"]
    try:
        open_store(settings).close()
    except Exception as error:  # the reason, not a traceback: this is an operator's command
        raise click.ClickException(str(error)) from error
    click.echo(f"{display_database(settings['DATABASE'])}: schema is up to date")


@db.command()
@click.argument("sqlite_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("postgres_url")
def copy(sqlite_file, postgres_url):
    """Copy a SQLite database (tasks, history, devices, tokens, idempotency keys, owed cancels) into an empty
    PostgreSQL database, and check the counts. Stop the server on the SQLite file first."""
    if not is_postgres(postgres_url):
        raise click.BadParameter("must be a postgresql:// URL", param_hint="POSTGRES_URL")
    from taskserver.store.copy import copy_sqlite_to_postgres

    try:
        counts = copy_sqlite_to_postgres(sqlite_file, postgres_url)
    except Exception as error:  # nothing was copied: say why
        raise click.ClickException(f"nothing copied: {error}") from error
    for table, rows in counts.items():
        click.echo(f"{table:15} {rows:>10} rows")
    click.echo(f"copied {sqlite_file} into {display_database(postgres_url)}; counts match")


if __name__ == "__main__":
    main(prog_name="python -m taskserver")
