"""Fixtures: a real server on a free port (in this process, on gevent) and real Socket.IO / HTTP clients, on the
store backend a test runs on.

Backends: a test runs on SQLite unless its module (or the test) says ``pytest.mark.backends("sqlite", "postgresql")``;
then it runs once per backend, with the backend in its id (``test_x[postgresql]``). The ``database`` fixture gives
what ``TASKSERVER_DATABASE`` takes: a SQLite file in ``tmp_path``, or the URL of an empty PostgreSQL schema of the
test's own, in a database this run creates on the server ``TASKSERVER_TEST_POSTGRES`` names and drops at its end.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from urllib.parse import urlencode, urlsplit  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import socketio  # noqa: E402

from taskserver import create_app, shutdown  # noqa: E402
from taskserver.serving import wsgi_server  # noqa: E402
from taskserver.watchdog import sweep  # noqa: E402


class FakeClock:
    """The server's clock, moved by tests instead of sleeping."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        """Move time forward and return the new now."""
        self.now += seconds
        return self.now


class LiveServer:
    """A real server on 127.0.0.1 with a fake clock; the watchdog runs only when a test calls ``sweep``."""

    def __init__(self, database, **overrides):
        self.clock = FakeClock()
        settings = {"DATABASE": str(database), "WATCHDOG_INTERVAL": 0, **overrides}
        self.app = create_app(settings, clock=self.clock)
        self.service = self.app.extensions["taskserver"]
        self.http = wsgi_server(self.app, "127.0.0.1", 0)
        self.http.start()
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.session = requests.Session()

    def sweep(self, advance=0.0):
        """Advance the clock and run one watchdog step (as this node, on a cluster)."""
        sweep(self.service, self.clock.advance(advance), self.app.extensions.get("cluster"))

    def get(self, path, **kwargs):
        return self.session.get(self.url + path, timeout=10, **kwargs)

    def post(self, path, **kwargs):
        return self.session.post(self.url + path, timeout=10, **kwargs)

    def dispatch(self, expect=(200, 202), **body):
        """POST /api/dispatch-task with a DELIST default; return the JSON answer."""
        body.setdefault("task_type", "DELIST")
        body.setdefault("data", {"product_ids": ["123", "456"]})
        response = self.post("/api/dispatch-task", json=body)
        assert response.status_code in expect, response.text
        return response.json()

    def task(self, task_id):
        """The task as ``GET /api/task/{id}/status`` shows it."""
        return self.get(f"/api/task/{task_id}/status").json()["task"]

    def delivered(self, task_id):
        """True once the device acknowledged the task's ``new_task`` (``delivered_at`` is set; it is not started)."""
        return self.get(f"/api/task/{task_id}").json()["task"]["delivered_at"] is not None

    def stop(self):
        """Stop accepting, end every connection and background greenlet of the app, then close the store."""
        self.session.close()
        self.http.close()
        shutdown(self.app)
        self.http.stop(timeout=1)


class NoAckClient(socketio.Client):
    """A Socket.IO client that never acknowledges ``new_task``, like the Android app."""

    def _handle_event(self, namespace, id, data):
        if data and data[0] == "new_task":
            id = None
        return super()._handle_event(namespace, id, data)


class Device:
    """A phone on a real Socket.IO connection that records every event it receives."""

    def __init__(self, url, device_id, ack_new_task=True, token=None, **device_info):
        self.url = url
        self.device_id = device_id
        self.auth = {"token": token} if token else None
        self.device_info = {"type": "android", "version": "13", **device_info}
        self.sio = (socketio.Client if ack_new_task else NoAckClient)(reconnection=False)
        self.events = defaultdict(list)
        self.sio.on("*", self._record)

    def _record(self, event, *args):
        self.events[event].append(args[0] if args else None)

    def connect(self, register=True):
        self.sio.connect(self.url, transports=["websocket"], wait_timeout=5, auth=self.auth)
        if register:
            answer = self.call("device_register", {"device_id": self.device_id, "device_info": self.device_info})
            assert answer["success"], answer
        return self

    def call(self, event, data=None):
        """Emit and wait for the ack."""
        return self.sio.call(event, data, timeout=5)

    def wait(self, event, count=1, timeout=5.0):
        """Wait until ``count`` events of this name arrived; return the last."""
        deadline = time.time() + timeout
        while len(self.events[event]) < count:
            assert time.time() < deadline, f"{self.device_id}: no {event} #{count}; got {dict(self.events)}"
            time.sleep(0.01)
        return self.events[event][count - 1]

    def progress(self, task_id, progress, message=None):
        return self.call("task_progress", {"task_id": task_id, "progress": progress, "message": message})

    def result(self, task_id, success=True, **result):
        return self.call("task_result", {"task_id": task_id, "result": {"success": success, **result}})

    def disconnect(self):
        if self.sio.connected:
            self.sio.disconnect()


# ---- the store backend of a test ----

BACKENDS = ("sqlite", "postgresql")
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_generate_tests(metafunc):
    """Run a test once per backend its ``backends`` marker names, if it uses a database at all."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(BACKENDS)
    if unknown or not marker.args:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: backends must be some of {BACKENDS}, not {marker.args}")
    metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request):
    """The backend this test runs on: "sqlite" unless a ``backends`` marker parametrized it."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database(request, backend, tmp_path):
    """What ``TASKSERVER_DATABASE`` takes for this test: a SQLite file path, or a PostgreSQL URL of an empty schema.

    A server restarted on the same value finds what the one before it stored."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "taskserver.db"


def with_query(url, **query):
    """``url`` with ``query`` added to its query string."""
    parts = urlsplit(url)
    extra = urlencode(query)
    return parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra).geturl()


def admin_connect(url):
    """An autocommit connection to ``url``; fails the test with what to do if no PostgreSQL answers there."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())
    origin = "TASKSERVER_TEST_POSTGRES" if os.environ.get("TASKSERVER_TEST_POSTGRES") else "the default"
    pytest.fail(
        f"the PostgreSQL tests need a PostgreSQL server, and none answers at {url} ({origin}): {reason}\n"
        "scripts/test provides one; or set TASKSERVER_TEST_POSTGRES=postgresql://user@host:port/db "
        "(a role that may CREATE DATABASE)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_database():
    """The URL of a database of this test run, created on the PostgreSQL server ``TASKSERVER_TEST_POSTGRES`` names
    (default: the local one) and dropped at the end of the run, whatever its outcome."""
    server = os.environ.get("TASKSERVER_TEST_POSTGRES") or POSTGRES_DEFAULT
    name = f"taskserver_test_{secrets.token_hex(6)}"
    with admin_connect(server) as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    try:
        yield urlsplit(server)._replace(path=f"/{name}").geturl()
    finally:
        with admin_connect(server) as admin:
            admin.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep the outcome of each test's call on it, for fixtures that check more once a test passed."""
    report = yield
    if report.when == "call":
        item.call_report = report
    return report


@pytest.fixture
def postgres_url(request, postgres_database):
    """The URL of an empty schema of this test's own (its ``search_path``); dropped with what is in it after the test.

    Connections made with it carry the schema as ``application_name``: any still open at the end are closed first."""
    schema = f"test_{secrets.token_hex(6)}"
    identifier = psycopg.sql.Identifier(schema)
    with admin_connect(postgres_database) as admin:
        admin.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(identifier))
    yield with_query(postgres_database, options=f"-csearch_path={schema}", application_name=schema)
    with admin_connect(postgres_database) as admin:
        tables = admin.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema]).fetchone()[0]
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND pid <> "
            "pg_backend_pid()",
            [schema],
        )
        admin.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(identifier))
    # a store that took the URL for something else (a file name) would pass every test without PostgreSQL
    passed = getattr(request.node, "call_report", None) is not None and request.node.call_report.passed
    assert tables or not passed, f"the test stored nothing in its PostgreSQL schema {schema}: it did not use PostgreSQL"


# ---- Redis, for several nodes ----

REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_server():
    """The URL of the Redis server ``TASKSERVER_TEST_REDIS`` names (default: the local one); fails the test with what
    to do if none answers."""
    import redis

    url = os.environ.get("TASKSERVER_TEST_REDIS") or REDIS_DEFAULT
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except redis.RedisError as error:
        pytest.fail(
            f"the cluster tests need a Redis server, and none answers at {url}: {error}\n"
            "scripts/test provides one (scripts/redis); or set TASKSERVER_TEST_REDIS=redis://host:port/db",
            pytrace=False,
        )
    return url


@pytest.fixture
def cluster_settings(redis_server, postgres_url):
    """The settings that make servers nodes of one cluster of this test's own: its PostgreSQL schema, and a Redis
    channel (and NOTIFY channel) no other test uses."""
    channel = f"taskserver-test-{secrets.token_hex(6)}"
    return {"DATABASE": postgres_url, "MESSAGE_QUEUE": redis_server, "MESSAGE_QUEUE_CHANNEL": channel}


# ---- servers and devices ----


@pytest.fixture
def server(database):
    """A fresh server with its own store (a SQLite file unless the test runs on PostgreSQL)."""
    live = LiveServer(database)
    yield live
    live.stop()


@pytest.fixture
def devices(server):
    """A factory of connected, registered devices; all are disconnected at the end."""
    made = []

    def make(device_id, register=True, **kwargs):
        device = Device(server.url, device_id, **kwargs).connect(register=register)
        made.append(device)
        return device

    yield make
    for device in made:
        device.disconnect()


def wait_until(predicate, timeout=5.0, message="condition"):
    """Poll ``predicate`` until it is true."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {message}"
        time.sleep(0.01)
