"""Several nodes in one process: servers on one PostgreSQL schema and one Redis channel, each a node of the same
cluster. Time is driven by the tests: the lease is renewed and the leader sweeps only when a test says so, and a
dead node's lease is judged at a database time the test names, so nothing here waits for a lease to run out."""

import gevent
import psycopg
import pytest
from test_dashboard_feed import Console

from conftest import Device, LiveServer, wait_until
from taskserver import create_app
from taskserver.factory import REFUSED_TO_START


@pytest.fixture
def nodes(cluster_settings):
    """Start nodes of this test's cluster (``nodes(NODE_ID="a", ...)``); all are stopped at the end."""
    started = []

    def start(**overrides):
        settings = {**cluster_settings, **overrides}
        node = LiveServer(settings.pop("DATABASE"), **settings)
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        node.stop()


def cluster_of(node):
    return node.app.extensions["cluster"]


def node_rows(url):
    with psycopg.connect(url) as db:
        return dict(db.execute("SELECT node_id, renewed_at FROM nodes").fetchall())


def stored_device(url, device_id):
    with psycopg.connect(url) as db:
        row = db.execute(
            "SELECT connected, node_id, disconnected_at FROM devices WHERE device_id = %s", (device_id,)
        ).fetchone()
    return dict(zip(("connected", "node_id", "disconnected_at"), row, strict=True))


@pytest.mark.parametrize("database", [":memory:", "file"])
def test_a_message_queue_without_postgresql_refuses_to_start(database, tmp_path, caplog):
    path = ":memory:" if database == ":memory:" else str(tmp_path / "taskserver.db")
    with pytest.raises(SystemExit) as refused:
        create_app({"DATABASE": path, "MESSAGE_QUEUE": "redis://127.0.0.1:6379/0"})
    assert refused.value.code == REFUSED_TO_START
    assert "TASKSERVER_DATABASE=postgresql://" in caplog.text


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [("MESSAGE_QUEUE", "amqp://127.0.0.1/", "redis:// or rediss://"), ("NODE_LEASE", 0, "TASKSERVER_NODE_LEASE")],
)
def test_a_cluster_setting_it_cannot_use_refuses_to_start(setting, value, says, caplog):
    settings = {"DATABASE": "postgresql://127.0.0.1/unused", "MESSAGE_QUEUE": "redis://127.0.0.1:6379/0"}
    with pytest.raises(SystemExit) as refused:
        create_app({**settings, setting: value})
    assert refused.value.code == REFUSED_TO_START and says in caplog.text


def test_each_node_holds_a_lease_and_readyz_checks_redis_and_the_lease(nodes, cluster_settings):
    a = nodes(NODE_ID="node-a")
    b = nodes()
    assert cluster_of(a).node_id == "node-a"
    assert cluster_of(b).node_id.count("-") >= 1 and cluster_of(b).node_id != "node-a"
    assert set(node_rows(cluster_settings["DATABASE"])) == {cluster_of(a).node_id, cluster_of(b).node_id}
    checks = a.get("/readyz").json()["checks"]
    assert checks["redis"] == {"ok": True, "reason": None} and checks["lease"] == {"ok": True, "reason": None}
    assert checks["store"]["ok"] is True

    b.stop()  # a clean stop gives the lease up
    assert set(node_rows(cluster_settings["DATABASE"])) == {"node-a"}


def test_a_device_row_names_the_node_holding_its_connection(nodes, cluster_settings):
    a = nodes(NODE_ID="node-a")
    phone = Device(a.url, "android_001").connect()
    assert stored_device(cluster_settings["DATABASE"], "android_001")["node_id"] == "node-a"
    phone.disconnect()
    wait_until(lambda: not stored_device(cluster_settings["DATABASE"], "android_001")["connected"])
    assert stored_device(cluster_settings["DATABASE"], "android_001")["node_id"] is None


def test_a_node_that_lost_its_lease_closes_its_sockets_and_joins_again_under_a_new_id(nodes, cluster_settings):
    a = nodes(NODE_ID="node-a")
    phone = Device(a.url, "android_001").connect()
    with psycopg.connect(cluster_settings["DATABASE"]) as db:
        db.execute("DELETE FROM nodes")  # as the leader does with a lease that lapsed

    assert cluster_of(a).lease.renew() is False
    wait_until(lambda: not phone.sio.connected, message="the node to close its sockets")
    assert cluster_of(a).node_id.startswith("node-a-")
    assert set(node_rows(cluster_settings["DATABASE"])) == {cluster_of(a).node_id}
    assert stored_device(cluster_settings["DATABASE"], "android_001")["connected"] is False
    assert cluster_of(a).lease.renew() is True

    again = Device(a.url, "android_001").connect()  # registers under the node's new id
    assert stored_device(cluster_settings["DATABASE"], "android_001")["node_id"] == cluster_of(a).node_id
    again.disconnect()


def test_a_task_dispatched_on_one_node_goes_to_a_device_on_another_and_so_does_its_cancel(nodes):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    phone = Device(b.url, "android_001").connect()

    task_id = a.dispatch()["task_id"]  # node A holds no device: it stores the task and wakes B
    assert phone.wait("new_task")["task_id"] == task_id
    wait_until(lambda: a.delivered(task_id), message="the ack of new_task, recorded by B")
    assert a.task(task_id)["device_id"] == "android_001"
    assert phone.progress(task_id, 50)["status"] == "running"
    assert a.task(task_id)["progress"] == 50

    second = a.dispatch(device_id="android_001")["task_id"]  # pinned, queued behind the first (capacity 1)
    assert phone.result(task_id, processed_count=2)["status"] == "completed"
    assert phone.wait("new_task", count=2)["task_id"] == second
    assert a.post(f"/api/task/{second}/cancel").json()["success"] is True
    cancel = phone.wait("cancel_task")
    assert (cancel["task_id"], cancel["attempt"]) == (second, 1)
    phone.disconnect()


def test_work_for_a_device_wakes_only_the_node_holding_it(nodes):
    a, b, c = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b"), nodes(NODE_ID="node-c")
    on_b, on_c = Device(b.url, "android_b").connect(), Device(c.url, "android_c").connect()
    heard, phase = [], ["for b"]
    wakeups = cluster_of(c).wakeups
    hear = wakeups.wake
    wakeups.wake = lambda reason: (heard.append((reason, phase[0])), hear(reason))

    first = a.dispatch(device_id="android_b")["task_id"]  # "work@node-b": node C does not even look
    assert on_b.wait("new_task")["task_id"] == first
    phase[0] = "for c"
    second = a.dispatch(device_id="android_c")["task_id"]
    assert on_c.wait("new_task")["task_id"] == second
    wait_until(lambda: heard, message="node C to hear of its work")
    assert heard == [("work", "for c")]
    on_b.disconnect()
    on_c.disconnect()


def test_a_dead_nodes_devices_go_offline_from_its_last_renewal_and_its_tasks_follow_the_grace(nodes, cluster_settings):
    url = cluster_settings["DATABASE"]
    a = nodes(NODE_ID="node-a", DEVICE_LOST_GRACE=30)
    b = nodes(NODE_ID="node-b", DEVICE_LOST_GRACE=30)
    phone = Device(b.url, "android_001").connect()
    task_id = a.dispatch(max_retries=1)["task_id"]
    phone.wait("new_task")
    last_renewal = node_rows(url)["node-b"]

    a.sweep()  # A leads (it asked first); B's lease holds
    assert stored_device(url, "android_001")["connected"] is True
    b.sweep()  # B does not lead: it sweeps no timeouts, lost devices or dead nodes
    assert not cluster_of(b).leadership.held

    later = cluster_of(a).store.database_time() + 15 + 1  # B is silent beyond its lease
    assert cluster_of(a).expire_dead_nodes(later) == ["android_001"]
    assert stored_device(url, "android_001") == {"connected": False, "node_id": None, "disconnected_at": last_renewal}
    assert a.get("/api/device/android_001").json()["device"]["status"] == "offline"
    assert a.task(task_id)["status"] == "dispatched"

    a.clock.now = last_renewal + 29
    a.sweep()
    assert a.task(task_id)["status"] == "dispatched"  # within the grace, counted from B's last renewal
    a.clock.now = last_renewal + 31
    a.sweep()
    assert a.task(task_id)["status"] == "pending" and a.task(task_id)["attempt"] == 2

    assert cluster_of(b).lease.renew() is False  # B wakes up: its lease is gone, so are its sockets
    wait_until(lambda: not phone.sio.connected, message="B to close its sockets")


def test_a_process_given_a_live_nodes_id_displaces_it_and_the_displaced_one_joins_again(nodes, cluster_settings):
    url = cluster_settings["DATABASE"]
    first = nodes(NODE_ID="node-a")
    phone = Device(first.url, "android_001").connect()
    last_renewal = node_rows(url)["node-a"]

    second = nodes(NODE_ID="node-a")  # a misconfigured twin (or the same node restarted after a crash)
    assert cluster_of(second).node_id == "node-a"
    assert stored_device(url, "android_001") == {"connected": False, "node_id": None, "disconnected_at": last_renewal}

    assert cluster_of(first).lease.renew() is False  # the lease was taken: the first closes its sockets, rejoins
    wait_until(lambda: not phone.sio.connected, message="the displaced node to close its sockets")
    assert cluster_of(first).node_id.startswith("node-a-")
    assert set(node_rows(url)) == {"node-a", cluster_of(first).node_id}
    assert cluster_of(second).lease.renew() is True


def test_after_a_failed_commit_a_node_converges_only_the_devices_it_holds(nodes, cluster_settings):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    phone = Device(b.url, "android_001").connect()
    a.service.store.fail_commits(psycopg.OperationalError("the database refuses writes"))
    assert a.post("/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": ["1"]}}).status_code == 503
    a.service.store.fail_commits(None)

    a.sweep()  # A catches up after its failed commit: B's device is none of its business
    assert stored_device(cluster_settings["DATABASE"], "android_001")["connected"] is True
    assert phone.sio.connected
    phone.disconnect()


def test_the_leader_releases_devices_no_live_node_holds(nodes, cluster_settings):
    url = cluster_settings["DATABASE"]
    a = nodes(NODE_ID="node-a")
    phone = Device(a.url, "android_001").connect()
    with psycopg.connect(url) as db:  # as a single server (no node) left it before the cluster started
        db.execute("UPDATE devices SET node_id = NULL")
    now = cluster_of(a).store.database_time()
    assert cluster_of(a).expire_dead_nodes(now) == ["android_001"]
    assert stored_device(url, "android_001") == {"connected": False, "node_id": None, "disconnected_at": now}
    assert cluster_of(a).expire_dead_nodes(now) == []
    phone.disconnect()


def test_the_leader_times_out_a_task_on_another_nodes_device_and_that_node_sends_the_cancel(nodes):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    phone = Device(b.url, "android_001").connect()
    task_id = a.dispatch(timeout=10)["task_id"]
    phone.wait("new_task")

    a.sweep(advance=11)  # A leads: it ends the attempt, owes B's device the cancel, and wakes B
    assert a.task(task_id)["error_code"] == "TASK_TIMEOUT"
    cancel = phone.wait("cancel_task")
    assert (cancel["task_id"], cancel["attempt"]) == (task_id, 1)
    phone.disconnect()


def test_revoking_a_token_on_one_node_closes_the_devices_connection_on_another(nodes, cluster_settings):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    token = a.post("/api/device/android_001/token").json()["token"]
    phone = Device(b.url, "android_001", token=token).connect()

    assert a.session.delete(f"{a.url}/api/device/android_001/token", timeout=10).status_code == 200
    wait_until(lambda: not phone.sio.connected, message="B to close the connection")
    assert phone.events["error"][-1]["error_code"] == "UNAUTHORIZED"
    wait_until(lambda: not stored_device(cluster_settings["DATABASE"], "android_001")["connected"])


def test_a_device_enabled_on_one_node_gets_the_waiting_task_from_the_node_holding_it(nodes):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    phone = Device(b.url, "android_001").connect()
    assert a.post("/api/device/android_001/disable").status_code == 200
    task_id = a.dispatch(expect=(202,))["task_id"]
    assert a.post("/api/device/android_001/enable").status_code == 200
    assert phone.wait("new_task")["task_id"] == task_id
    phone.disconnect()


def test_a_device_registering_on_another_node_replaces_its_older_connection_there(nodes, cluster_settings):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    old = Device(a.url, "android_001").connect()
    new = Device(b.url, "android_001").connect()

    wait_until(lambda: not old.sio.connected, message="A to close the older connection")
    assert old.events["error"][-1]["error_code"] == "DEVICE_REPLACED"
    assert stored_device(cluster_settings["DATABASE"], "android_001")["node_id"] == "node-b"
    task_id = a.dispatch()["task_id"]
    assert new.wait("new_task")["task_id"] == task_id
    new.disconnect()


def test_a_leader_whose_connection_is_cut_loses_the_lead_and_another_node_takes_it(nodes, cluster_settings):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    assert cluster_of(a).leads() and not cluster_of(b).leads()
    with psycopg.connect(cluster_settings["DATABASE"], autocommit=True) as db:  # as if node A's process died
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
        )
    wait_until(cluster_of(b).leads, message="B to take the lock once A's connection has ended")
    assert not cluster_of(a).leads()  # A notices, and the lock is B's now
    assert not cluster_of(a).leads()
    assert cluster_of(b).leads()


def test_a_node_that_does_not_lead_still_closes_its_own_silent_connections(nodes, cluster_settings):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b", HEARTBEAT_TIMEOUT=30)
    assert cluster_of(a).leads()
    phone = Device(b.url, "android_001").connect()
    phone.call("heartbeat", {"device_id": "android_001"})

    b.sweep(advance=31)
    assert not cluster_of(b).leadership.held
    wait_until(lambda: not phone.sio.connected, message="B to close the silent connection")
    assert stored_device(cluster_settings["DATABASE"], "android_001")["connected"] is False


def test_every_node_counts_and_lists_every_nodes_devices_naming_the_node_holding_each(nodes):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    first, second = Device(a.url, "android_001").connect(), Device(b.url, "android_002").connect()

    for node in (a, b):
        assert node.get("/").json()["connected_devices"] == 2
        listed = {device["device_id"]: device for device in node.get("/api/devices").json()["devices"]}
        assert {device_id: (d["status"], d["node_id"]) for device_id, d in listed.items()} == {
            "android_001": ("online", "node-a"),
            "android_002": ("online", "node-b"),
        }
        assert listed["android_002"]["connection_info"]["sid"] is not None
    assert a.get("/api/device/android_002").json()["device"]["node_id"] == "node-b"

    second.disconnect()
    wait_until(lambda: a.get("/").json()["connected_devices"] == 1, message="B's device to go offline")
    assert a.get("/api/device/android_002").json()["device"]["node_id"] is None
    first.disconnect()


def test_a_console_on_one_node_sees_a_task_on_another_node_move_through_its_states_once(nodes):
    a = nodes(NODE_ID="node-a", DASHBOARD_FLUSH_INTERVAL=0)  # flushed by the test, never by a timer
    b = nodes(NODE_ID="node-b", DASHBOARD_FLUSH_INTERVAL=0)
    here, there = Console(a.url), Console(b.url)
    phone = Device(b.url, "android_001").connect()
    feed_of = {node: node.app.extensions["dashboard"] for node in (a, b)}

    def flushed_on(node, **expected):
        """Flush ``node``'s feed: each console gets its ``changes`` once, with the task as ``expected``."""
        before = len(here.changes()), len(there.changes())
        assert feed_of[node].flush() is not None
        wait_until(lambda: (len(here.changes()), len(there.changes())) == (before[0] + 1, before[1] + 1))
        for console in (here, there):
            (task,) = console.changes()[-1]["tasks"]
            assert task["task_id"] == task_id and task == {**task, **expected}

    task_id = b.dispatch()["task_id"]
    wait_until(lambda: b.delivered(task_id), message="the ack of new_task")
    flushed_on(b, status="dispatched")
    assert feed_of[a].flush() is None  # node A stored nothing: it has nothing to send
    phone.progress(task_id, 40, "处理中")
    flushed_on(b, status="running", progress=40, progress_message="处理中")
    phone.result(task_id, processed_count=2)
    flushed_on(b, status="completed", progress=100)
    assert here.device_seen("android_001", status="online", node_id="node-b")
    assert len(here.changes()) == len(there.changes()) == 3
    for console in (here, there):
        console.close()
    phone.disconnect()


def test_a_task_a_node_noted_is_flushed_as_stored_now_not_as_that_node_last_saw_it(nodes):
    a = nodes(NODE_ID="node-a", DASHBOARD_FLUSH_INTERVAL=0)
    b = nodes(NODE_ID="node-b", DASHBOARD_FLUSH_INTERVAL=0)
    console = Console(a.url)
    phone = Device(b.url, "android_001").connect()

    task_id = a.dispatch()["task_id"]  # A stores it pending; B dispatches it, and the device completes it
    phone.wait("new_task")
    phone.result(task_id, processed_count=2)
    b.app.extensions["dashboard"].flush()
    wait_until(lambda: console.task_seen(task_id, status="completed"), message="B's changes")
    a.app.extensions["dashboard"].flush()  # later than B's: it must not take the console back to pending
    wait_until(lambda: len(console.changes()) == 2, message="A's changes")
    assert [task["status"] for task in console.changes()[-1]["tasks"]] == ["completed"]
    console.close()
    phone.disconnect()


def test_the_same_idempotency_key_sent_to_two_nodes_at_once_makes_one_task(nodes):
    a, b = nodes(NODE_ID="node-a"), nodes(NODE_ID="node-b")
    body = {"task_type": "DELIST", "data": {"product_ids": ["1"]}}

    def dispatch(node, key):
        return node.post("/api/dispatch-task", json={**body, "idempotency_key": key})

    for round_number in range(5):
        key = f"order-{round_number}"
        pair = [gevent.spawn(dispatch, node, key) for node in (a, b)]
        gevent.joinall(pair, raise_error=True)
        answers = [greenlet.value for greenlet in pair]
        assert {answer.status_code for answer in answers} <= {200, 202}, [answer.text for answer in answers]
        assert len({answer.json()["task_id"] for answer in answers}) == 1
    assert a.get("/api/tasks").json()["total"] == b.get("/api/tasks").json()["total"] == 5


def test_metrics_label_every_series_with_the_node(nodes):
    a = nodes(NODE_ID="node-a")
    a.dispatch()
    samples = [line for line in a.get("/metrics").text.splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("taskserver_tasks_created_total{") for line in samples)
    assert all('node="node-a"' in line for line in samples), [line for line in samples if "node=" not in line]
