"""The operator CLI: ``python -m taskserver.cli [--url URL] [--token TOKEN] COMMAND``, over the HTTP API.

It needs click, rich and requests only (no Flask, no gevent): an operator's laptop runs it against a remote server.
``main.py`` holds the command group and its options; each area's commands live in a module of their own
(``devices.py``, ``tasks.py``, ``batches.py``) and are added to the group there, so a new area is a new module and
one line in ``main.py``."""
