"""The one rule every service operation that reads and then writes follows."""

from functools import wraps

from taskserver.errors import StoreConflict

CONFLICT_ATTEMPTS = 3  # a unit of work the database undid for colliding with another runs again, this many times


def atomic(operation):
    """Run the whole operation as one unit of work (``Store.atomically``): on SQLite nothing comes between its reads
    and its writes; on PostgreSQL its writes are compare-and-sets, and an operation the database undid for colliding
    with another (a deadlock) runs again. Decorates methods of the service's objects (each
    has its ``store``); an operation that calls another's (it nests) stays one unit."""

    @wraps(operation)
    def run(self, *args, **kwargs):
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                with self.store.atomically():
                    return operation(self, *args, **kwargs)
            except StoreConflict:  # raised where the unit of work ends: only the outermost operation runs again
                if attempt == CONFLICT_ATTEMPTS:
                    raise

    return run
