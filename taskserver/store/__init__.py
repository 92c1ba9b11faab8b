"""Persistence: the interface in ``base``, the default SQLite backend, and PostgreSQL for a database server."""

import re

from taskserver.store.base import Store
from taskserver.store.migrations import SchemaMismatch
from taskserver.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LIBPQ_KEYWORDS = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|options|sslmode)\s*=")


def is_postgres(database):
    """True if the ``DATABASE`` setting names a PostgreSQL server (a URL is never taken for a file name)."""
    return database.startswith(POSTGRES_SCHEMES)


def display_database(database):
    """The ``DATABASE`` setting as logs may show it: a PostgreSQL one without its password."""
    if is_postgres(database) or LIBPQ_KEYWORDS.match(database):
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        return make_conninfo(**{k: v for k, v in conninfo_to_dict(database).items() if k != "password"})
    return database


def open_store(config):
    """Open the store the ``DATABASE`` setting names: a ``postgresql://`` URL, else a SQLite file. A libpq
    ``key=value`` string is refused rather than taken for a file name."""
    if LIBPQ_KEYWORDS.match(config["DATABASE"]):
        raise ValueError("TASKSERVER_DATABASE looks like a libpq 'key=value' string: write it as a postgresql:// URL")
    if is_postgres(config["DATABASE"]):
        from taskserver.store.postgres import PostgresStore  # imported once gevent has patched select

        return PostgresStore(config["DATABASE"], config["DATABASE_POOL_SIZE"], config["DATABASE_TIMEOUT"])
    return SQLiteStore(config["DATABASE"], synchronous=config["SQLITE_SYNCHRONOUS"])


__all__ = ["SQLiteStore", "SchemaMismatch", "Store", "display_database", "is_postgres", "open_store"]
