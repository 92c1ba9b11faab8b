"""The console's server side: the /dashboard namespace (operators only, coalesced changes), the read-only endpoints
it draws from (task types, throughput, devices online), and the page's files (served locally, no CDN)."""

import hashlib
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
import socketio

from conftest import LiveServer, wait_until
from taskserver.present import iso
from taskserver.realtime.dashboard import MAX_DEVICES_PER_FLUSH, MAX_TASKS_PER_FLUSH
from taskserver.stats import FleetHistory, minute_of

OPERATOR, DEVICE = "operator-secret", "device-secret"
STATIC = Path(__file__).parent.parent / "taskserver" / "dashboard" / "static"
NODE_CLIENT = Path(__file__).parent / "js" / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"


class Console:
    """A python-socketio client on /dashboard that records every ``changes`` event."""

    def __init__(self, url, token=None):
        self.sio = socketio.Client(reconnection=False)
        self.received = defaultdict(list)
        self.sio.on("*", self._record, namespace="/dashboard")
        self.sio.connect(
            url, namespaces=["/dashboard"], transports=["websocket"], auth={"token": token}, wait_timeout=5
        )

    def _record(self, event, data=None):
        self.received[event].append(data)

    def changes(self):
        return self.received["changes"]

    def task_seen(self, task_id, **expected):
        """True once a ``changes`` event carried the task with the ``expected`` fields."""
        return any(
            task["task_id"] == task_id and all(task.get(key) == value for key, value in expected.items())
            for changes in self.changes()
            for task in changes["tasks"]
        )

    def device_seen(self, device_id, **expected):
        return any(
            device["device_id"] == device_id and all(device.get(key) == value for key, value in expected.items())
            for changes in self.changes()
            for device in changes["devices"]
        )

    def close(self):
        if self.sio.connected:
            self.sio.disconnect()


@pytest.fixture
def console(server):
    """Factory of consoles connected to ``server``'s /dashboard; all are closed at the end."""
    made = []

    def connect(token=None):
        made.append(Console(server.url, token))
        return made[-1]

    yield connect
    for client in made:
        client.close()


@pytest.fixture
def guarded(tmp_path):
    """A server with operator and device tokens set."""
    live = LiveServer(tmp_path / "guarded.db", API_TOKENS=(OPERATOR,), DEVICE_TOKENS=(DEVICE,))
    yield live
    live.stop()


# ---- who may connect ----


def refusal(url, token):
    """The message of the ``connect_error`` a console gets when /dashboard refuses it."""
    client, refused = socketio.Client(reconnection=False), []
    client.on("connect_error", refused.append, namespace="/dashboard")
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, namespaces=["/dashboard"], transports=["websocket"], auth={"token": token}, wait_timeout=5)
    (error,) = refused
    assert error["data"] == {"message": error["message"], "error_code": "UNAUTHORIZED"}
    return error["message"]


def test_dashboard_refuses_consoles_without_an_operator_token(guarded):
    assert "需要操作员令牌" in refusal(guarded.url, None)
    assert "操作员令牌无效" in refusal(guarded.url, "wrong")
    assert "操作员令牌无效" in refusal(guarded.url, DEVICE)  # a device token does not open the console
    assert guarded.app.extensions["dashboard"].watchers == set()


@pytest.mark.parametrize("token", ["\ud800", "op\udfff", 12345, ["x"], {"token": "x"}])
def test_dashboard_refuses_hostile_tokens_as_unauthorized(guarded, token):
    assert "操作员令牌无效" in refusal(guarded.url, token)
    assert guarded.app.extensions["dashboard"].watchers == set()


def test_dashboard_accepts_an_operator_token(guarded):
    client = Console(guarded.url, OPERATOR)
    try:
        wait_until(lambda: client.received["hello"], message="hello")
        assert client.received["hello"][0]["flush_interval"] == 0.5
        assert len(guarded.app.extensions["dashboard"].watchers) == 1
    finally:
        client.close()


def test_dashboard_is_open_when_no_operator_tokens_are_set(server, console):
    console()  # no token at all
    wait_until(lambda: server.app.extensions["dashboard"].watchers, message="console watching")


# ---- what it pushes ----
# The feed below is driven by hand (``DASHBOARD_FLUSH_INTERVAL=0``): each test says when a flush happens, so what one
# ``changes`` event holds never depends on how fast the machine dispatched.


@pytest.fixture
def server(tmp_path):
    """A server whose console feed flushes only when a test calls ``push``."""
    live = LiveServer(tmp_path / "taskserver.db", DASHBOARD_FLUSH_INTERVAL=0)
    yield live
    live.stop()


def push(server, watcher):
    """Flush the feed once; wait until ``watcher`` received what it sent, and return that (None: nothing changed)."""
    seen = len(watcher.changes())
    sent = server.app.extensions["dashboard"].flush()
    if sent is not None:
        wait_until(lambda: len(watcher.changes()) > seen, message="changes delivered")
        assert watcher.changes()[seen] == sent
    return sent


def test_device_changes_reach_the_console(server, console, devices):
    watcher = console()
    wait_until(lambda: server.app.extensions["dashboard"].watchers, message="console watching")
    phone = devices("android_001", model="Mi 13")
    push(server, watcher)
    assert watcher.device_seen("android_001", status="online")
    server.post("/api/device/android_001/disable")
    push(server, watcher)
    assert watcher.device_seen("android_001", disabled=True)
    phone.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline", message="offline")
    push(server, watcher)
    assert watcher.device_seen("android_001", status="offline")
    server.service.devices.forget_device("android_001")
    server.service.store.durable()  # consoles hear of what is committed
    assert push(server, watcher)["removed_devices"] == ["android_001"]


def test_heartbeats_travel_as_times_only(server, console, devices):
    watcher = console()
    wait_until(lambda: server.app.extensions["dashboard"].watchers, message="console watching")
    phone = devices("android_001")
    push(server, watcher)
    server.clock.advance(30)
    phone.call("heartbeat", {"device_id": "android_001"})
    changes = push(server, watcher)
    assert changes["heartbeats"] == {"android_001": iso(server.clock())} and changes["devices"] == []


def test_too_many_changed_devices_tell_the_console_to_reload(server, console):
    watcher = console()
    feed = server.app.extensions["dashboard"]
    wait_until(lambda: feed.watchers, message="console watching")
    for n in range(MAX_DEVICES_PER_FLUSH + 1):
        feed.device_changed(f"android_{n}")
    changes = push(server, watcher)
    assert changes["reload_devices"] is True and changes["devices"] == []


def test_task_changes_reach_the_console_without_data(server, console, devices):
    watcher = console()
    wait_until(lambda: server.app.extensions["dashboard"].watchers, message="console watching")
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.progress(task_id, 30, "第一批")
    push(server, watcher)
    assert watcher.task_seen(task_id, status="running", progress=30)
    assert watcher.device_seen("android_001", status="busy")
    phone.result(task_id)
    push(server, watcher)
    assert watcher.task_seen(task_id, status="completed", progress=100)
    brief = next(t for c in watcher.changes() for t in c["tasks"] if t["task_id"] == task_id)
    assert "data" not in brief and brief["progress_message"] == "第一批"
    assert watcher.device_seen("android_001", status="online", task_count=0)


def test_many_changes_between_two_flushes_travel_as_one_message(server, console, devices):
    watcher = console()
    wait_until(lambda: server.app.extensions["dashboard"].watchers, message="console watching")
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    push(server, watcher)
    before = len(watcher.changes())
    for progress in range(1, 100):
        phone.progress(task_id, progress)
    changes = push(server, watcher)
    assert len(watcher.changes()) == before + 1  # 99 reports, one message
    assert [(t["task_id"], t["progress"]) for t in changes["tasks"]] == [(task_id, 99)]


def test_too_many_changed_tasks_tell_the_console_to_reload(server, console):
    watcher = console()
    feed = server.app.extensions["dashboard"]
    wait_until(lambda: feed.watchers, message="console watching")
    for _ in range(MAX_TASKS_PER_FLUSH + 1):
        server.dispatch(expect=(202,))
    changes = push(server, watcher)
    assert changes["reload_tasks"] is True and changes["tasks"] == []
    assert feed.flush() is None  # everything went out
    server.dispatch(expect=(202,))
    changes = push(server, watcher)
    assert changes["reload_tasks"] is False and len(changes["tasks"]) == 1


def test_nothing_is_collected_while_no_console_watches(server, devices):
    feed = server.app.extensions["dashboard"]
    devices("android_001")
    server.dispatch()
    assert feed.watchers == set() and feed.flush() is None


# ---- the flush loop ----


@pytest.fixture
def looping(tmp_path):
    """A server whose console feed flushes by itself, every 0.5 s while a console watches."""
    live = LiveServer(tmp_path / "looping.db")
    yield live
    live.stop()


def test_the_feed_flushes_by_itself_while_a_console_watches(looping):
    watcher = Console(looping.url)
    try:
        wait_until(lambda: looping.app.extensions["dashboard"].watchers, message="console watching")
        task_id = looping.dispatch(expect=(202,))["task_id"]
        wait_until(lambda: watcher.task_seen(task_id, status="pending"), message="the pending task")
    finally:
        watcher.close()


def test_the_feed_stops_collecting_when_the_last_console_leaves(looping):
    feed = looping.app.extensions["dashboard"]
    watcher = Console(looping.url)
    wait_until(lambda: feed.watchers, message="watching")
    assert feed._running
    watcher.close()
    wait_until(lambda: not feed.watchers, message="unwatched")
    wait_until(lambda: not feed._running, message="flush loop ended")


# ---- the endpoints the charts draw from ----


def finish(server, devices, outcomes):
    """Run one task per outcome on a phone, each ending at the server's current (fake) time."""
    phone = devices("android_stats")
    for count, success in enumerate(outcomes, start=1):
        task_id = server.dispatch(device_id="android_stats")["task_id"]
        phone.wait("new_task", count=count)
        phone.result(task_id, success=success)


def test_throughput_counts_tasks_ended_per_minute(server, devices):
    start = server.clock()
    finish(server, devices, [True, True, False])
    server.clock.advance(120)
    finish(server, devices, [True])
    cancelled = server.dispatch(expect=(202,), device_id="android_stats", schedule_time=server.clock() + 3600)
    server.post(f"/api/task/{cancelled['task_id']}/cancel")

    answer = server.get("/api/stats/throughput", params={"minutes": 5}).json()
    assert answer["success"] and answer["minutes"] == 5 and len(answer["per_minute"]) == 5
    assert answer["totals"] == {"completed": 3, "failed": 1, "cancelled": 1}
    by_minute = {row["at"]: row for row in answer["per_minute"]}
    first = next(row for at, row in by_minute.items() if at.endswith(time.strftime("%H:%M:00", time.localtime(start))))
    assert (first["completed"], first["failed"]) == (2, 1)
    assert answer["per_minute"][-1] == {**answer["per_minute"][-1], "completed": 1, "cancelled": 1}
    assert server.get("/api/stats/throughput", params={"minutes": 1}).json()["totals"]["completed"] == 1


def test_throughput_rejects_a_window_out_of_range(server):
    for minutes in (0, 1441, "x"):
        answer = server.get("/api/stats/throughput", params={"minutes": minutes})
        assert answer.status_code == 400 and answer.json()["error_code"] == "VALIDATION_ERROR"


def test_devices_online_per_minute_comes_from_samples(server, devices):
    history = server.app.extensions["fleet_history"]
    history.record(server.clock() - 180, online=4, busy=1)
    devices("android_001")
    devices("android_002")
    answer = server.get("/api/stats/devices", params={"minutes": 5}).json()
    rows = answer["per_minute"]
    assert [row["online"] for row in rows] == [None, 4, None, None, 2]
    assert answer["now"] == {"online": 2, "busy": 0}


def test_fleet_history_keeps_the_last_sample_of_each_minute_and_forgets_old_ones():
    history = FleetHistory(kept_minutes=3)
    base = minute_of(1_800_000_000)
    history.record(base + 1, 5)
    history.record(base + 50, 6, busy=2)
    for minute in range(1, 4):
        history.record(base + minute * 60, minute)
    rows = history.series(base + 3 * 60, 4)
    assert [row["online"] for row in rows] == [None, 1, 2, 3]  # minute 0 (6, busy 2) was dropped: 3 kept
    assert [row["at"] for row in rows] == [base + i * 60 for i in range(4)]


def test_task_types_list_each_types_data_schema(tmp_path):
    live = LiveServer(tmp_path / "types.db", EXTRA_TASK_TYPES=("REFRESH",))
    try:
        types = {t["task_type"]: t["data_schema"] for t in live.get("/api/task-types").json()["task_types"]}
    finally:
        live.stop()
    assert list(types) == ["DELIST", "COLLECT", "UPLOAD", "REFRESH"]
    assert types["DELIST"]["required"] == ["product_ids"]
    batch_size = {"type": "integer", "default": 10, "minimum": 1, "maximum": 1000}
    assert types["DELIST"]["properties"]["batch_size"] == batch_size
    assert types["COLLECT"]["properties"]["target_url"]["format"] == "url"
    assert types["UPLOAD"]["properties"]["product_data"]["required"] == ["title"]  # nested schemas inlined
    assert types["UPLOAD"]["properties"]["schedule_time"]["type"] == "string"
    assert types["REFRESH"] == {"type": "object", "additionalProperties": True}


def test_new_endpoints_are_in_the_openapi_document(server):
    paths = server.get("/api/openapi.json").json()["paths"]
    assert {"/api/task-types", "/api/stats/throughput", "/api/stats/devices"} <= set(paths)
    parameters = {p["name"] for p in paths["/api/stats/throughput"]["get"]["parameters"]}
    assert "minutes" in parameters


def test_console_endpoints_need_an_operator_token_like_the_rest_of_the_api(guarded):
    for path in ("/api/task-types", "/api/stats/throughput", "/api/stats/devices"):
        assert guarded.get(path).status_code == 401
        assert guarded.get(path, headers={"Authorization": f"Bearer {DEVICE}"}).status_code == 401
        assert guarded.get(path, headers={"Authorization": f"Bearer {OPERATOR}"}).status_code == 200


# ---- the page's files ----


def test_the_page_and_its_files_are_served_locally(server):
    page = server.get("/dashboard")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert server.get("/dashboard/", allow_redirects=False).status_code == 308
    for name in (
        "app.js",
        "api.js",
        "ui.js",
        "fleet.js",
        "tasks.js",
        "batches.js",
        "dispatch.js",
        "charts.js",
        "style.css",
    ):
        assert server.get(f"/dashboard/static/{name}").status_code == 200, name
    vendored = server.get("/dashboard/static/vendor/socket.io.min.js")
    assert vendored.status_code == 200 and vendored.text.startswith("/*!\n * Socket.IO v4.8.1")


# src= / href= / url( / import ... from pointing at another host, or a CSS @import
EXTERNAL = re.compile(
    r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|from\s+["'](https?:)?//|@import"""
)


def test_the_page_loads_nothing_from_the_internet():
    for path in STATIC.glob("*.*"):
        assert not EXTERNAL.search(path.read_text()), path.name


@pytest.mark.skipif(not NODE_CLIENT.exists(), reason="tests/js/node_modules not installed (scripts/setup dev)")
def test_the_vendored_socketio_client_is_the_pinned_npm_release():
    digest = hashlib.sha256((STATIC / "vendor" / "socket.io.min.js").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(NODE_CLIENT.read_bytes()).hexdigest()
