"""Settings: a class per environment, every value overridable by a ``TASKSERVER_*`` env var (and ``PORT``)."""

import os

INSECURE_SECRET_KEY = "dev-only-insecure-key"


def _env(name, default, cast=str):
    """Read ``TASKSERVER_<name>`` from the environment, cast, or fall back to ``default``."""
    raw = os.environ.get(f"TASKSERVER_{name}")
    return default if raw in (None, "") else cast(raw)


def _words(raw):
    """Split a comma- or space-separated setting into a tuple of words."""
    return tuple(word for word in raw.replace(",", " ").split() if word)


class Config:
    """Defaults for every environment; read from the environment when the class is built into a mapping."""

    ENV_NAME = "development"
    TESTING = False

    @classmethod
    def load(cls):
        """Return the settings of this class as a plain dict, environment variables applied."""
        return {
            "ENV_NAME": cls.ENV_NAME,
            "TESTING": cls.TESTING,
            "SECRET_KEY": os.environ.get("SECRET_KEY") or _env("SECRET_KEY", INSECURE_SECRET_KEY),
            "HOST": _env("HOST", "0.0.0.0"),
            "PORT": int(os.environ.get("PORT") or 1888),
            "DATABASE": _env("DATABASE", cls.default_database()),
            "SQLITE_SYNCHRONOUS": _env("SQLITE_SYNCHRONOUS", "NORMAL").upper(),
            "TASK_TIMEOUT": _env("TASK_TIMEOUT", 300, int),
            "HEARTBEAT_TIMEOUT": _env("HEARTBEAT_TIMEOUT", 90.0, float),
            "PLAIN_WS_PING_INTERVAL": _env("PLAIN_WS_PING_INTERVAL", 25.0, float),
            "DEVICE_LOST_GRACE": _env("DEVICE_LOST_GRACE", 120.0, float),
            "RETRY_DELAY": _env("RETRY_DELAY", 5.0, float),
            "RETRY_DELAY_MAX": _env("RETRY_DELAY_MAX", 300.0, float),
            "IDEMPOTENCY_WINDOW": _env("IDEMPOTENCY_WINDOW", 86400.0, float),
            "DEFAULT_DEVICE_CAPACITY": _env("DEFAULT_DEVICE_CAPACITY", 1, int),
            "WATCHDOG_INTERVAL": _env("WATCHDOG_INTERVAL", 1.0, float),
            "DASHBOARD_FLUSH_INTERVAL": _env("DASHBOARD_FLUSH_INTERVAL", 0.5, float),
            "EXTRA_TASK_TYPES": _env("EXTRA_TASK_TYPES", (), _words),
            "CORS_ORIGINS": _env("CORS_ORIGINS", (), _words),
            "LOG_LEVEL": _env("LOG_LEVEL", "INFO").upper(),
            "LOG_FORMAT": _env("LOG_FORMAT", "text").lower(),
            "API_TOKENS": _env("API_TOKENS", (), _words),
            "DEVICE_TOKENS": _env("DEVICE_TOKENS", (), _words),
            "MAX_BODY_BYTES": _env("MAX_BODY_BYTES", 1024 * 1024, int),
            "DEVICE_EVENT_RATE": _env("DEVICE_EVENT_RATE", 20.0, float),
            "DEVICE_EVENT_BURST": _env("DEVICE_EVENT_BURST", 100, int),
            "DISPATCH_RATE": _env("DISPATCH_RATE", 0.0, float),
            "DISPATCH_BURST": _env("DISPATCH_BURST", 20, int),
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


def load_config(overrides=None):
    """Settings for ``TASKSERVER_ENV`` (default development), with ``overrides`` applied last."""
    name = os.environ.get("TASKSERVER_ENV", "development").lower()
    settings = CONFIGS.get(name, DevelopmentConfig).load()
    settings.update(overrides or {})
    return settings
