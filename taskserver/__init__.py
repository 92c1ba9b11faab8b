"""taskserver: a task server for fleets of phones (Flask + Flask-SocketIO on gevent)."""

from flask import Flask

from config import load_config
from taskserver import logs
from taskserver.api import devices, errors, system, tasks
from taskserver.domain import TaskType
from taskserver.extensions import api, socketio
from taskserver.metrics import Metrics
from taskserver.realtime import plainws
from taskserver.realtime.devices import DeviceNamespace
from taskserver.realtime.notifier import Notifier
from taskserver.service import TaskService
from taskserver.store import open_store
from taskserver.watchdog import Watchdog

OPENAPI = {
    "API_TITLE": "taskserver",
    "API_VERSION": system.VERSION,
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "/docs",
    "OPENAPI_SWAGGER_UI_URL": "/api/docs/assets/",
}


def create_app(config=None, clock=None):
    """Build the app: settings, store, service, HTTP blueprints, the device namespace and the watchdog.

    ``config`` overrides settings (tests pass a mapping); ``clock`` replaces ``time.time``."""
    settings = load_config(config)
    logs.configure(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    app = Flask(__name__)
    app.config.update(settings, **OPENAPI)
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    store = open_store(settings)
    plain_sockets = plainws.PlainSockets()
    notifier = Notifier(socketio, plain_sockets)
    metrics = Metrics(task_types=[*TaskType, *settings["EXTRA_TASK_TYPES"]])
    service = TaskService(store, notifier, settings, metrics=metrics, **({"clock": clock} if clock else {}))
    service.recover_on_start()
    app.extensions["taskserver"] = service
    app.extensions["plainws"] = plain_sockets

    api.init_app(app)
    for module in (system, devices, tasks):
        api.register_blueprint(module.blp)
    app.register_blueprint(plainws.blueprint)
    errors.init_app(app)

    socketio.init_app(app, async_mode="gevent", cors_allowed_origins=list(settings["CORS_ORIGINS"]) or None)
    socketio.on_namespace(DeviceNamespace(service, notifier))
    watchdog = Watchdog(service, settings["WATCHDOG_INTERVAL"], socketio.sleep)
    if settings["WATCHDOG_INTERVAL"] > 0:
        watchdog.start(socketio.start_background_task)
        app.extensions["watchdog"] = watchdog
    metrics.watch(service, app.extensions.get("watchdog"))
    return app
