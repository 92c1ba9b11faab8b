"""gunicorn's settings for the Procfile's line: a worker given SIGTERM shuts the app down at once (its devices go
offline, a node of a cluster gives its lease up) instead of waiting its graceful timeout for device connections that
never end by themselves."""

import signal


def post_worker_init(worker):
    """Replace the worker's SIGTERM handler: shut the app down, then let gunicorn's loop end the worker."""
    import gevent

    from taskserver import shutdown

    def leave():
        shutdown(worker.wsgi)
        worker.alive = False  # the loop closes the listener; with every connection closed, the worker ends at once

    def on_sigterm(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the master passes its own SIGTERM on to the worker too
        gevent.spawn(leave)

    signal.signal(signal.SIGTERM, on_sigterm)
