"""Several nodes as real processes: ``python app.py`` servers on one PostgreSQL schema and one Redis channel of the
test's own, with real Socket.IO devices. A task dispatched over HTTP on one node reaches a device on another; a node
killed with SIGKILL has its devices offline from its last renewal once the leader sweeps; killing the leader lets
another node take over timeouts.

A killed node's lease is made to run out by the test (as it would ``TASKSERVER_NODE_LEASE`` seconds after its last
renewal) instead of waiting for it, so that a live node's lease never runs out on a slow machine."""

import signal

import psycopg
import pytest
from test_run_server import APP_PY, ServerProcess

from conftest import Device, wait_until


@pytest.fixture
def launch(tmp_path, cluster_settings):
    """Start ``python app.py`` nodes of this test's cluster (``launch("a", TASKSERVER_...="...")``); every one is
    killed at the end."""
    started = []
    env = {
        "TASKSERVER_MESSAGE_QUEUE": cluster_settings["MESSAGE_QUEUE"],
        "TASKSERVER_MESSAGE_QUEUE_CHANNEL": cluster_settings["MESSAGE_QUEUE_CHANNEL"],
    }

    def start(node_id, **extra):
        server = ServerProcess(
            APP_PY, tmp_path, database=cluster_settings["DATABASE"], TASKSERVER_NODE_ID=node_id, **env, **extra
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def phones():
    """Devices (connected by the test); all are disconnected at the end."""
    made = []

    def connect(url, device_id, **kwargs):
        phone = Device(url, device_id, **kwargs).connect()
        made.append(phone)
        return phone

    yield connect
    for phone in made:
        phone.disconnect()


def has_swept(server):
    """True once the node's watchdog finished a sweep (the first node to sweep takes the leader lock)."""
    return server.get("/readyz").json()["checks"]["watchdog"]["last_sweep_age"] is not None


def lapse(url, node_id):
    """Make the killed node's lease run out now; return its last renewal."""
    with psycopg.connect(url) as db:
        (renewed_at,) = db.execute(
            "UPDATE nodes SET expires_at = renewed_at WHERE node_id = %s RETURNING renewed_at", (node_id,)
        ).fetchone()
    return renewed_at


def device(server, device_id):
    return server.get(f"/api/device/{device_id}").json()["device"]


def test_a_task_dispatched_on_one_node_reaches_a_device_on_another_with_its_progress_result_and_cancel(launch, phones):
    a, b = launch("a"), launch("b")
    assert a.get("/readyz").json()["checks"]["redis"]["ok"] is True
    phone = phones(b.url, "android_001")

    first = a.dispatch()["task_id"]
    assert phone.wait("new_task")["task_id"] == first
    wait_until(lambda: a.get(f"/api/task/{first}").json()["task"]["delivered_at"] is not None, 5.0, "delivery")
    assert phone.progress(first, 30, "处理中")["status"] == "running"
    assert a.task(first)["progress"] == 30
    assert phone.result(first, processed_count=2, message="下架完成")["status"] == "completed"
    assert a.task(first)["result"]["message"] == "下架完成"

    second = a.dispatch()["task_id"]
    assert phone.wait("new_task", count=2)["task_id"] == second
    assert a.post(f"/api/task/{second}/cancel").json()["success"] is True
    assert phone.wait("cancel_task")["task_id"] == second
    assert phone.events["error"] == []


def test_a_killed_nodes_devices_go_offline_from_its_last_renewal_and_its_tasks_follow_the_grace(
    launch, phones, cluster_settings
):
    a = launch("a", TASKSERVER_DEVICE_LOST_GRACE="2")
    wait_until(lambda: has_swept(a), 10.0, "node a to lead")
    b = launch("b", TASKSERVER_DEVICE_LOST_GRACE="2")
    phone = phones(b.url, "android_001")
    task_id = a.dispatch()["task_id"]
    phone.wait("new_task")

    b.kill()
    last_renewal = lapse(cluster_settings["DATABASE"], "b")
    wait_until(lambda: device(a, "android_001")["status"] == "offline", 10.0, "android_001 offline")
    with psycopg.connect(cluster_settings["DATABASE"]) as db:
        (disconnected_at,) = db.execute("SELECT disconnected_at FROM devices").fetchone()
    assert disconnected_at == last_renewal
    wait_until(lambda: a.task(task_id)["status"] == "failed", 10.0, "the task to end after the lost-device grace")
    assert a.task(task_id)["error_code"] == "DEVICE_OFFLINE"


def test_when_the_leader_is_killed_another_node_takes_over_timeouts(launch, phones):
    a = launch("a")
    wait_until(lambda: has_swept(a), 10.0, "node a to lead")
    b = launch("b")
    phone = phones(b.url, "android_001")
    task_id = b.dispatch(timeout=2)["task_id"]
    phone.wait("new_task")

    a.kill()  # its connection closes, and the leader lock with it
    wait_until(lambda: b.task(task_id)["status"] == "failed", 15.0, "node b to time the task out")
    assert b.task(task_id)["error_code"] == "TASK_TIMEOUT"
    assert phone.wait("cancel_task")["task_id"] == task_id


def test_a_node_stopped_with_sigterm_leaves_the_cluster_and_its_devices_are_offline_at_once(
    launch, phones, cluster_settings
):
    a = launch("a", TASKSERVER_WATCHDOG_INTERVAL="3600")  # no sweep of dead nodes during the test
    b = launch("b")
    phone = phones(b.url, "android_001")
    assert device(a, "android_001")["node_id"] == "b"

    assert b.stop(signal.SIGTERM) == 0, b.log()
    assert device(a, "android_001")["status"] == "offline"  # right away: not when b's lease would have lapsed
    assert a.get("/").json()["connected_devices"] == 0
    with psycopg.connect(cluster_settings["DATABASE"]) as db:
        assert db.execute("SELECT node_id FROM nodes").fetchall() == [("a",)]
    wait_until(lambda: not phone.sio.connected, message="the device to see its connection closed")
    assert "Traceback" not in b.log(), b.log()
