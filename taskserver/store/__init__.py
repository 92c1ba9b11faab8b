"""Persistence: the interface in ``base`` and the default SQLite backend."""

from taskserver.store.base import Store
from taskserver.store.sqlite import SQLiteStore


def open_store(config):
    """Open the store the settings name (today always SQLite)."""
    return SQLiteStore(config["DATABASE"], synchronous=config["SQLITE_SYNCHRONOUS"])


__all__ = ["Store", "SQLiteStore", "open_store"]
