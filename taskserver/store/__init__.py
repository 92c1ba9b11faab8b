"""Persistence: the interface in ``base``, the default SQLite backend, and PostgreSQL for a database server."""

from taskserver.store.base import Store
from taskserver.store.migrations import SchemaMismatch
from taskserver.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database):
    """True if the ``DATABASE`` setting names a PostgreSQL server (a URL is never taken for a file name)."""
    return database.startswith(POSTGRES_SCHEMES)


def display_database(database):
    """The ``DATABASE`` setting as logs may show it: a URL without its password."""
    if is_postgres(database):
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        return make_conninfo(**{k: v for k, v in conninfo_to_dict(database).items() if k != "password"})
    return database


def open_store(config):
    """Open the store the ``DATABASE`` setting names: a ``postgresql://`` URL, else a SQLite file."""
    if is_postgres(config["DATABASE"]):
        from taskserver.store.postgres import PostgresStore  # imported once gevent has patched select

        return PostgresStore(config["DATABASE"], config["DATABASE_POOL_SIZE"], config["DATABASE_TIMEOUT"])
    return SQLiteStore(config["DATABASE"], synchronous=config["SQLITE_SYNCHRONOUS"])


__all__ = ["SQLiteStore", "SchemaMismatch", "Store", "display_database", "is_postgres", "open_store"]
