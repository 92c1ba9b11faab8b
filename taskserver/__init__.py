"""taskserver: a task server for fleets of phones (Flask + Flask-SocketIO on gevent)."""

import logging

from flask import Flask
from flask.sessions import SessionInterface

from config import load_config, production_problems
from taskserver import dashboard, logs, wirejson
from taskserver.api import console, devices, errors, security, system, tasks
from taskserver.domain import TaskType
from taskserver.extensions import api, socketio
from taskserver.metrics import Metrics
from taskserver.ratelimit import RateLimiter
from taskserver.realtime import plainws
from taskserver.realtime.dashboard import DashboardFeed, DashboardNamespace
from taskserver.realtime.devices import DeviceNamespace
from taskserver.realtime.events import DeviceEvents
from taskserver.realtime.notifier import Notifier
from taskserver.service import TaskService
from taskserver.stats import FleetHistory
from taskserver.store import open_store
from taskserver.watchdog import Watchdog

REFUSED_TO_START = 3  # gunicorn's "worker failed to boot": the master stops too instead of restarting the worker

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
    check_security(settings)
    app = Flask(__name__)
    app.config.update(settings, MAX_CONTENT_LENGTH=settings["MAX_BODY_BYTES"], **OPENAPI)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.session_interface = NoSessions()

    store = open_store(settings)
    plain_sockets = plainws.PlainSockets()
    notifier = Notifier(socketio, plain_sockets, store.after_commit)
    metrics = Metrics(task_types=[*TaskType, *settings["EXTRA_TASK_TYPES"]])
    service = TaskService(store, notifier, settings, metrics=metrics, **({"clock": clock} if clock else {}))
    service.recover_on_start()
    app.extensions["taskserver"] = service
    app.extensions["plainws"] = plain_sockets
    history = app.extensions["fleet_history"] = FleetHistory()
    feed = DashboardFeed(socketio, store, history, service.clock, keep_running=settings["WATCHDOG_INTERVAL"] > 0)
    notifier.dashboard = app.extensions["dashboard"] = feed
    limiter = RateLimiter(settings["DEVICE_EVENT_RATE"], settings["DEVICE_EVENT_BURST"])
    events = app.extensions["device_events"] = DeviceEvents(service, notifier, limiter)

    api.init_app(app)
    for module in (system, devices, tasks, console):
        api.register_blueprint(module.blp)
    app.register_blueprint(plainws.blueprint)
    app.register_blueprint(dashboard.blueprint)
    plainws.limit_frame_size(settings["MAX_BODY_BYTES"])
    security.init_app(app)
    errors.init_app(app)
    app.after_request(answer_when_stored(store))

    socketio.init_app(
        app,
        async_mode="gevent",
        cors_allowed_origins=list(settings["CORS_ORIGINS"]) or None,
        max_http_buffer_size=settings["MAX_BODY_BYTES"],
        # A device's events are handled in order, in its connection's own greenlet: a result can never overtake the
        # progress sent before it, and no greenlet is spawned per event.
        async_handlers=False,
        json=wirejson,  # a huge integer in a packet reaches the schemas (and is refused there) instead of dropping it
    )
    socketio.on_namespace(DeviceNamespace(events))
    socketio.on_namespace(DashboardNamespace(feed, app.config))
    watchdog = Watchdog(service, settings["WATCHDOG_INTERVAL"], socketio.sleep)
    if settings["WATCHDOG_INTERVAL"] > 0:
        watchdog.start(socketio.start_background_task)
        app.extensions["watchdog"] = watchdog
    if feed.keep_running:
        feed.start()
    metrics.watch(service, app.extensions.get("watchdog"))
    return app


class NoSessions(SessionInterface):
    """Every request carries its own token: no cookie session is read or written (Flask's default would build a
    signing serializer for every request)."""

    def open_session(self, app, request):
        return self.make_null_session(app)

    def save_session(self, app, session, response):
        pass


def answer_when_stored(store):
    """An ``after_request`` hook: no response leaves before the writes it reports (or read) are committed."""

    def wait_for_commit(response):
        store.durable()
        return response

    return wait_for_commit


def check_security(settings):
    """Production refuses to start open; development starts open but says so loudly."""
    problems = production_problems(settings)
    if settings["ENV_NAME"] == "production" and problems:
        logging.getLogger("taskserver").critical("production mode refuses to start: %s", "; ".join(problems))
        raise SystemExit(REFUSED_TO_START)
    if settings["ENV_NAME"] == "development" and problems:
        logging.getLogger("taskserver").warning(
            "DEVELOPMENT MODE, OPEN SERVER: %s. Anyone who reaches this port can dispatch tasks and register "
            "devices. Set TASKSERVER_ENV=production (with the tokens) before exposing it.",
            "; ".join(problems),
        )
