"""taskserver: a task server for fleets of phones (Flask + Flask-SocketIO on gevent).

Importing the package loads nothing else: the device SDK (``taskserver.device``) runs where only python-socketio is
installed. The app factory lives in ``taskserver.factory`` and is loaded when ``create_app`` is first asked for."""

FACTORY_NAMES = frozenset({"create_app", "shutdown", "REFUSED_TO_START"})


def __getattr__(name):
    """``from taskserver import create_app`` (app.py, gunicorn's ``app:app``, tests) loads the factory on demand."""
    if name in FACTORY_NAMES:
        from taskserver import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'taskserver' has no attribute {name!r}")
