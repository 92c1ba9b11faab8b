"""The app factory: settings, store, service, HTTP blueprints, socket namespaces and the watchdog, wired together."""

import logging
import time
from functools import partial

from flask import Flask
from flask.sessions import SessionInterface
from flask_smorest import Api
from flask_socketio import SocketIO
from gevent.pool import Group

from config import UnknownEnvironment, load_config, production_problems
from taskserver import dashboard, logs, wirejson
from taskserver.api import batches, console, devices, errors, schedules, security, system, tasks
from taskserver.domain import TaskType
from taskserver.errors import StoreUnavailable
from taskserver.metrics import Metrics
from taskserver.ratelimit import RateLimiter
from taskserver.realtime import plainws
from taskserver.realtime.dashboard import DashboardFeed, DashboardNamespace
from taskserver.realtime.devices import DeviceNamespace
from taskserver.realtime.events import DeviceEvents
from taskserver.realtime.notifier import Notifier
from taskserver.service import TaskService
from taskserver.stats import FleetHistory
from taskserver.store import display_database, open_store
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
    try:
        settings = load_config(config)
    except UnknownEnvironment as error:
        logs.configure("INFO")
        refuse_to_start(str(error))
    logs.configure(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    check_security(settings)
    clustering = load_cluster(settings)  # the cluster module, if the settings make this server a node of one
    app = Flask("taskserver")  # the package: its logger name and root path
    app.config.update(settings, MAX_CONTENT_LENGTH=settings["MAX_BODY_BYTES"], **OPENAPI)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.session_interface = NoSessions()

    # Each app has its own Socket.IO server, API and background greenlets, so that an app that was shut down (a
    # test's) can never answer for a later one in the same process.
    socketio = SocketIO()
    background = app.extensions["background"] = Group()
    store = open_or_refuse(settings)
    plain_sockets = plainws.PlainSockets(settings["PLAIN_WS_PING_INTERVAL"], settings["HEARTBEAT_TIMEOUT"], clock)
    notifier = Notifier(socketio, plain_sockets, store.after_commit)
    metrics = Metrics([*TaskType, *settings["EXTRA_TASK_TYPES"]], store.after_commit)
    service = TaskService(
        store, notifier, settings, metrics=metrics, spawn=background.spawn, **({"clock": clock} if clock else {})
    )
    app.extensions["taskserver"] = service
    app.extensions["plainws"] = plain_sockets
    history = app.extensions["fleet_history"] = FleetHistory()
    feed = DashboardFeed(
        socketio,
        service.queries,
        history,
        background.spawn,
        service.clock,
        keep_running=settings["WATCHDOG_INTERVAL"] > 0 or clustering is not None,
        interval=settings["DASHBOARD_FLUSH_INTERVAL"],
        shared=clustering is not None,
    )
    notifier.dashboard = app.extensions["dashboard"] = feed
    # a test's fake clock also drives the buckets' refill: how many events pass never depends on the machine's speed
    limiter = RateLimiter(settings["DEVICE_EVENT_RATE"], settings["DEVICE_EVENT_BURST"], clock or time.monotonic)
    events = app.extensions["device_events"] = DeviceEvents(service, notifier, limiter)

    api = Api(app)
    for module in (system, devices, tasks, batches, schedules, console):
        api.register_blueprint(module.blp)
    app.register_blueprint(plainws.blueprint)
    app.register_blueprint(dashboard.blueprint)
    plainws.limit_frame_size(settings["MAX_BODY_BYTES"])
    security.init_app(app, clock or time.monotonic)
    errors.init_app(app)
    app.after_request(answer_when_stored(store))

    manager = clustering and clustering.message_queue(settings["MESSAGE_QUEUE"], settings["MESSAGE_QUEUE_CHANNEL"])
    socketio.init_app(
        app,
        **({"client_manager": manager} if manager else {}),
        async_mode="gevent",
        cors_allowed_origins=list(settings["CORS_ORIGINS"]) or None,
        max_http_buffer_size=settings["MAX_BODY_BYTES"],
        # A device's events are handled in order, in its connection's own greenlet: a result can never overtake the
        # progress sent before it, and no greenlet is spawned per event.
        async_handlers=False,
        json=wirejson,  # a huge integer in a packet reaches the schemas (and is refused there) instead of dropping it
    )
    # Engine.IO's own greenlets (a writer and a pinger per connection, its service task) join the app's, so that
    # ``shutdown`` ends them too.
    socketio.server.eio.start_background_task = background.spawn
    if clustering is None:
        service.recover_on_start()
    else:
        clustering.listen_now(socketio.server)
        cluster = app.extensions["cluster"] = clustering.Cluster(
            store, settings, manager, partial(close_connections, app), service.wake_up, socketio.sleep
        )
        cluster.join()
        cluster.start(background.spawn, renew=settings["WATCHDOG_INTERVAL"] > 0)
        metrics.label_node(lambda: cluster.node_id)
    socketio.on_namespace(DeviceNamespace(events))
    socketio.on_namespace(DashboardNamespace(feed, app.config))
    watchdog = Watchdog(service, settings["WATCHDOG_INTERVAL"], socketio.sleep, app.extensions.get("cluster"))
    if settings["WATCHDOG_INTERVAL"] > 0:
        watchdog.start(background.spawn)
        app.extensions["watchdog"] = watchdog
    if settings["PLAIN_WS_PING_INTERVAL"] > 0:
        background.spawn(plain_sockets.keep_alive)
    if feed.keep_running:
        feed.start()
    metrics.watch(service, app.extensions.get("watchdog"))
    return app


def shutdown(app, timeout=2.0):
    """End everything ``create_app`` started: its background greenlets, every open connection, then the store.

    Call it once the WSGI server no longer accepts connections (tests do, at the end of each server)."""
    close_connections(app, timeout)
    app.extensions["socketio"].server.shutdown()
    app.extensions["background"].kill(timeout=timeout)
    if "cluster" in app.extensions:
        app.extensions["cluster"].stop()
    app.extensions["taskserver"].store.close()


def close_connections(app, timeout=2.0):
    """Close every device connection the app holds: their devices go offline now, while the store is open."""
    sio = app.extensions["socketio"].server
    # Without waiting for the close to be fetched: a long-polling client would need a request that a stopped server
    # no longer accepts.
    for connection in list(sio.eio.sockets.values()):  # python-engineio (pinned) keeps them by sid
        connection.close(wait=False, abort=True, reason=sio.eio.reason.SERVER_DISCONNECT)
    app.extensions["plainws"].close_all(timeout)


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
        try:
            store.durable()
        except StoreUnavailable as error:  # what the answer reports was not stored: it must not say otherwise
            return errors.error_response(error)
        return response

    return wait_for_commit


def check_security(settings):
    """Production refuses to start open; development starts open but says so loudly."""
    problems = production_problems(settings)
    if settings["ENV_NAME"] == "production" and problems:
        refuse_to_start("production mode refuses to start: " + "; ".join(problems))
    if settings["ENV_NAME"] == "development" and problems:
        logging.getLogger("taskserver").warning(
            "DEVELOPMENT MODE, OPEN SERVER: %s. Anyone who reaches this port can dispatch tasks and register "
            "devices. Set TASKSERVER_ENV=production (with the tokens) before exposing it.",
            "; ".join(problems),
        )


def load_cluster(settings):
    """The ``taskserver.cluster`` module if ``TASKSERVER_MESSAGE_QUEUE`` makes this server a node of a cluster, else
    None; refuse to start if the settings cannot make one (imported only then: it imports psycopg)."""
    if not settings["MESSAGE_QUEUE"]:
        return None
    from taskserver import cluster

    problem = cluster.cluster_problem(settings)
    if problem is not None:
        refuse_to_start(problem)
    return cluster


def open_or_refuse(settings):
    """The store the settings name; refuse to start if it cannot be opened (database away, schema too new)."""
    try:
        return open_store(settings)
    except Exception as error:  # whatever the backend raises: the reason is logged, the server does not start
        refuse_to_start(f"cannot open the store {display_database(settings['DATABASE'])}: {error}")


def refuse_to_start(reason):
    """Log why the server will not start and exit with ``REFUSED_TO_START`` (gunicorn then stops too)."""
    logging.getLogger("taskserver").critical(reason)
    raise SystemExit(REFUSED_TO_START)
