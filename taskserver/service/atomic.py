"""The one rule every service operation that reads and then writes follows."""

from functools import wraps


def atomic(operation):
    """Run the whole operation with the store to itself (``Store.atomically``): it may wait to start, while a
    commit runs, but nothing comes between its reads and its writes. Decorates methods of the service's objects (each
    has its ``store``); an operation that calls another's (it nests) stays one unit."""

    @wraps(operation)
    def run(self, *args, **kwargs):
        with self.store.atomically():
            return operation(self, *args, **kwargs)

    return run
