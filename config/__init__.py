"""Settings: a class per environment, every value overridable by a ``TASKSERVER_*`` env var (and ``PORT``)."""

import os
from functools import partial

INSECURE_SECRET_KEY = "dev-only-insecure-key"


class UnknownEnvironment(ValueError):
    """``TASKSERVER_ENV`` names no settings class: the server must not guess which one was meant."""


def _env(environ, name, default, cast=str):
    """Read ``TASKSERVER_<name>`` from ``environ``, cast, or fall back to ``default``."""
    raw = environ.get(f"TASKSERVER_{name}")
    return default if raw in (None, "") else cast(raw)


def _words(raw):
    """Split a comma- or space-separated setting into a tuple of words."""
    return tuple(word for word in raw.replace(",", " ").split() if word)


class Config:
    """Defaults for every environment; ``TASKSERVER_*`` variables applied when the class is built into a mapping."""

    ENV_NAME = "development"
    TESTING = False

    @classmethod
    def load(cls, environ):
        """Return the settings of this class as a plain dict, with the variables of ``environ`` applied."""
        read = partial(_env, environ)
        return {
            "ENV_NAME": cls.ENV_NAME,
            "TESTING": cls.TESTING,
            "SECRET_KEY": environ.get("SECRET_KEY") or read("SECRET_KEY", INSECURE_SECRET_KEY),
            "HOST": read("HOST", "0.0.0.0"),
            "PORT": int(environ.get("PORT") or 1888),
            "DATABASE": read("DATABASE", cls.default_database()),
            "SQLITE_SYNCHRONOUS": read("SQLITE_SYNCHRONOUS", "NORMAL").upper(),
            "DATABASE_POOL_SIZE": read("DATABASE_POOL_SIZE", 20, int),
            "DATABASE_TIMEOUT": read("DATABASE_TIMEOUT", 5.0, float),
            "TASK_TIMEOUT": read("TASK_TIMEOUT", 300, int),
            "HEARTBEAT_TIMEOUT": read("HEARTBEAT_TIMEOUT", 90.0, float),
            "PLAIN_WS_PING_INTERVAL": read("PLAIN_WS_PING_INTERVAL", 25.0, float),
            "DEVICE_LOST_GRACE": read("DEVICE_LOST_GRACE", 120.0, float),
            "RETRY_DELAY": read("RETRY_DELAY", 5.0, float),
            "RETRY_DELAY_MAX": read("RETRY_DELAY_MAX", 300.0, float),
            "IDEMPOTENCY_WINDOW": read("IDEMPOTENCY_WINDOW", 86400.0, float),
            "DEFAULT_DEVICE_CAPACITY": read("DEFAULT_DEVICE_CAPACITY", 1, int),
            "WATCHDOG_INTERVAL": read("WATCHDOG_INTERVAL", 1.0, float),
            "DASHBOARD_FLUSH_INTERVAL": read("DASHBOARD_FLUSH_INTERVAL", 0.5, float),
            "EXTRA_TASK_TYPES": read("EXTRA_TASK_TYPES", (), _words),
            "CORS_ORIGINS": read("CORS_ORIGINS", (), _words),
            "LOG_LEVEL": read("LOG_LEVEL", "INFO").upper(),
            "LOG_FORMAT": read("LOG_FORMAT", "text").lower(),
            "API_TOKENS": read("API_TOKENS", (), _words),
            "DEVICE_TOKENS": read("DEVICE_TOKENS", (), _words),
            "MAX_BODY_BYTES": read("MAX_BODY_BYTES", 1024 * 1024, int),
            "MAX_BATCH_BODY_BYTES": read("MAX_BATCH_BODY_BYTES", 16 * 1024 * 1024, int),
            "DEVICE_EVENT_RATE": read("DEVICE_EVENT_RATE", 20.0, float),
            "DEVICE_EVENT_BURST": read("DEVICE_EVENT_BURST", 100, int),
            "DISPATCH_RATE": read("DISPATCH_RATE", 0.0, float),
            "DISPATCH_BURST": read("DISPATCH_BURST", 20, int),
            "MESSAGE_QUEUE": read("MESSAGE_QUEUE", ""),
            "MESSAGE_QUEUE_CHANNEL": read("MESSAGE_QUEUE_CHANNEL", "taskserver"),
            "NODE_ID": read("NODE_ID", ""),
            "NODE_LEASE": read("NODE_LEASE", 15.0, float),
        }

    @staticmethod
    def default_database():
        """Where the SQLite file lives unless ``TASKSERVER_DATABASE`` says otherwise."""
        return os.path.join(".", "data", "taskserver.db")


class DevelopmentConfig(Config):
    """``python app.py`` on a developer's machine."""


class TestingConfig(Config):
    """Throwaway in-memory store; tests pass their own overrides on top."""

    ENV_NAME = "testing"
    TESTING = True

    @staticmethod
    def default_database():
        """Tests never touch the developer's database file."""
        return ":memory:"


class ProductionConfig(Config):
    """Under gunicorn (``TASKSERVER_ENV=production``)."""

    ENV_NAME = "production"


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def production_problems(settings):
    """What production mode refuses to start without: operator tokens, device tokens and a secret key."""
    problems = []
    if not settings["API_TOKENS"]:
        problems.append("TASKSERVER_API_TOKENS (operator tokens for the HTTP API) is not set")
    if not settings["DEVICE_TOKENS"]:
        problems.append("TASKSERVER_DEVICE_TOKENS (fleet enrollment tokens for devices) is not set")
    if settings["SECRET_KEY"] == INSECURE_SECRET_KEY:
        problems.append("SECRET_KEY is not set")
    return problems


def config_class(name):
    """The settings class called ``name`` (any case; empty or None means development); refuse any other name."""
    key = (name or "development").strip().lower()
    if key not in CONFIGS:
        known = ", ".join(CONFIGS)
        raise UnknownEnvironment(f"refusing to start: TASKSERVER_ENV={name!r} is not one of {known}")
    return CONFIGS[key]


def load_config(overrides=None):
    """Without ``overrides`` (``python app.py``, gunicorn): the class ``TASKSERVER_ENV`` names, ``TASKSERVER_*``
    variables applied. With them (tests): the environment is not read at all; the defaults of the class their
    ``ENV_NAME`` names (development if none) plus ``overrides``, so a developer's variables never leak into a test."""
    if overrides is None:
        return config_class(os.environ.get("TASKSERVER_ENV")).load(os.environ)
    settings = config_class(overrides.get("ENV_NAME")).load({})
    settings.update(overrides)
    return settings
