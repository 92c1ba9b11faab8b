"""Group commit for one ``sqlite3`` connection under gevent.

Every write joins the open transaction as a savepoint of its own, and the writes of all greenlets in one turn of
the event loop share one COMMIT, run on a thread of gevent's pool (``sqlite3`` releases the GIL meanwhile, so the
server goes on parsing and answering on the other core). What reports a write waits for its commit: ``durable()``
for answers, ``after_commit()`` for messages. A failed commit rolls its whole batch back, drops its output, and
those waiting get ``StoreUnavailable``."""

import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import gevent
from gevent.event import Event as Signal

from taskserver.errors import StoreUnavailable

log = logging.getLogger("taskserver.store")


# What the disk or the file refuses (full, I/O error, read-only, locked by another process), as opposed to a bug.
UNAVAILABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_BUSY}


@contextmanager
def refused_writes_unavailable():
    """Raise ``StoreUnavailable`` for a ``sqlite3`` error that says the store cannot write now (not that the
    statement was wrong)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if (exc.sqlite_errorcode & 0xFF) in UNAVAILABLE:
            raise unavailable(exc) from exc
        raise


def unavailable(exc):
    """The error a client gets for a write the store could not make (``exc`` says why)."""
    return StoreUnavailable(f"数据库暂时无法写入，请稍后重试（{exc}）")


@dataclass(eq=False)
class Batch:
    """The writes of one turn of the event loop, committed together, and what waits for their commit."""

    committed: Signal = field(default_factory=Signal)
    callbacks: list = field(default_factory=list)
    error: Exception | None = None


class GroupCommit:
    """The connection's transactions. ``lock`` (reentrant, per greenlet) guards every use of the connection and is
    held by a commit until its output is sent, so whoever holds it sees no commit and no other greenlet."""

    def __init__(self, db, on_failure=None):
        self._db = db
        self._on_failure = on_failure  # called (holding the lock) after a commit failed and was rolled back
        self.lock = threading.RLock()
        self._batch = None  # the open transaction's Batch, committed by a greenlet of its own
        self._committing = None  # the Batch being committed, until its output is sent
        self.failed = 0  # commits that failed so far: whoever keeps state beside the store notices a new one
        self.fault = None  # tests set an exception here: every COMMIT then fails with it, as a full disk would

    @contextmanager
    def verb(self):
        """One atomic write inside the open batch (a new batch, and its commit, start with the first write)."""
        with self.lock, refused_writes_unavailable():
            if self._batch is None:
                self._db.execute("BEGIN IMMEDIATE")
                self._batch = Batch()
                gevent.spawn(self.commit)
            self._db.execute("SAVEPOINT verb")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO verb")
                self._db.execute("RELEASE verb")
                raise
            self._db.execute("RELEASE verb")

    def commit(self):
        """Commit the open batch (if any), then send what waited for it; if the commit fails, its writes and output
        are gone and those waiting get the error."""
        with self.lock:
            batch, self._batch = self._batch, None
            if batch is None:
                return
            self._committing = batch
            try:
                gevent.get_hub().threadpool.apply(self._finish, (batch,))
            except sqlite3.Error as exc:  # the ROLLBACK failed too
                batch.error = batch.error or unavailable(exc)
            if batch.error is not None:
                log.error("commit failed, %d deferred messages dropped: %s", len(batch.callbacks), batch.error)
                self.failed += 1
                if self._on_failure is not None:
                    self._on_failure()
            else:
                for callback in batch.callbacks:
                    try:
                        callback()
                    except Exception:  # one failed send must not keep the others from going out
                        log.exception("deferred output failed")
            self._committing = None
        batch.committed.set()

    def _finish(self, batch):
        """On a pool thread: COMMIT the batch, or ROLLBACK if that fails."""
        try:
            if self.fault is not None:
                raise self.fault
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            batch.error = unavailable(exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def durable(self):
        """Return once every write made so far is committed; raise the commit's error if it failed."""
        batch = self._batch or self._committing
        if batch is not None:
            batch.committed.wait()
            if batch.error is not None:
                raise batch.error

    def after_commit(self, callback):
        """Run ``callback`` once every write made so far is committed (now, if none waits); never if that fails."""
        batch = self._batch or self._committing
        if batch is None:
            callback()
        else:
            batch.callbacks.append(callback)
