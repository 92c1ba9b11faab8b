"""Logging: one line per lifecycle event with its task and device ids, as text or JSON (``TASKSERVER_LOG_FORMAT``).

INFO has what an operator follows (created, dispatched, ended, devices coming and going); DEBUG adds delivery
and progress, which every task's history (``GET /api/task/<id>/events``) keeps anyway."""

import functools
import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
SECRET_WORDS = ("token", "secret", "password", "authorization")
SECRET_KEYS = {"sid"}  # a Socket.IO session id lets whoever knows it speak for the device over HTTP polling


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, and the event's own fields."""

    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level, log_format="text"):
    """Send logs to stderr as text (default) or JSON lines; leaves logging alone if it is already set up."""
    # No record needs the thread or multiprocessing name; under gevent, the thread lookup alone builds a dummy Thread
    # for every greenlet that logs. The process id stays: gunicorn's own lines show it (its worker logs as it exits).
    logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # gevent-websocket's access log writes every request line, query string included: Socket.IO session ids and
    # ?token= credentials would land in the log. Lifecycle events are logged by the service instead.
    logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)


@functools.cache
def is_secret(key):
    """True for field names that may carry credentials; such fields never reach a log."""
    key = key.lower()
    return key in SECRET_KEYS or any(word in key for word in SECRET_WORDS)


def event(logger, what, level=logging.INFO, **fields):
    """Log ``what key=value ...``; JSON logs get ``event`` and each field as keys of their own."""
    if not logger.isEnabledFor(level):
        return
    fields = {key: value for key, value in fields.items() if not is_secret(key)}
    text = " ".join([what, *(f"{key}={value}" for key, value in fields.items())])
    # made here rather than by logger.log, whose search for the calling line would only ever find this function
    record = logger.makeRecord(logger.name, level, "", 0, text, (), None, extra={"fields": {"event": what, **fields}})
    logger.handle(record)
