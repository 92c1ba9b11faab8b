"""Restarts of a real server process on the same database (a SQLite file, or one PostgreSQL schema): a clean stop
(SIGTERM), a crash (SIGKILL) with hundreds of tasks in every state, and a crash in the middle of a burst of dispatches.

What the HTTP API and the socket acks confirmed before the stop must be there after it: devices (offline until they
come back), every task with its status, device, progress and result. Devices that reconnect get their active tasks
listed in ``register_success``, can finish them, and pending tasks are dispatched to them.
"""

import signal
import threading
from collections import defaultdict

import pytest
import requests
from test_run_server import APP_PY, ServerProcess

from conftest import Device, wait_until

pytestmark = pytest.mark.backends("sqlite", "postgresql")

ACTIVE = {"dispatched", "running"}


class Worker(Device):
    """A device that completes every ``new_task`` it gets (after acking it), with a result naming the task."""

    def __init__(self, url, device_id, **device_info):
        super().__init__(url, device_id, **device_info)
        self.sio.on("new_task", self._work)

    def _work(self, task):
        self.events["new_task"].append(task)
        threading.Thread(target=self._finish, args=(task["task_id"],), daemon=True).start()

    def _finish(self, task_id):
        self.result(task_id, processed_count=1, message=f"done {task_id}")


@pytest.fixture
def launch(tmp_path, database):
    """Start ``python app.py`` processes on one database and port; every one is killed at the end."""
    started = []

    def start():
        previous = started[-1] if started else None
        port = previous.port if previous else None
        # simulated phones here finish dozens of tasks a second, far beyond the per-connection rate limit
        server = ServerProcess(APP_PY, tmp_path, database=database, port=port, TASKSERVER_DEVICE_EVENT_RATE="0")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def phones():
    """Devices (connected by the test); all are disconnected at the end."""
    made = []

    def connect(kind, url, device_id, **device_info):
        phone = kind(url, device_id, **device_info).connect()
        made.append(phone)
        return phone

    yield connect
    for phone in made:
        phone.disconnect()


def all_tasks(server):
    """Every task as ``GET /api/tasks`` lists it, by id."""
    answer = server.get("/api/tasks", params={"limit": 1000}).json()
    assert answer["total"] <= 1000, answer["total"]
    return {task["task_id"]: task for task in answer["tasks"]}


def devices_by_id(server):
    return {device["device_id"]: device for device in server.get("/api/devices").json()["devices"]}


def count(server, status):
    return server.get("/api/tasks", params={"status": status, "limit": 1}).json()["total"]


# ---- (a) clean stop and start ----


def test_sigterm_restart_keeps_devices_and_tasks(launch, phones):
    server = launch()
    phone = phones(Device, server.url, "android_A", ack_new_task=False)
    away = phones(Device, server.url, "android_B")
    away.disconnect()
    wait_until(lambda: devices_by_id(server)["android_B"]["status"] == "offline", 5.0, "android_B offline")

    done = server.dispatch()["task_id"]
    assert phone.wait("new_task")["task_id"] == done
    assert phone.result(done, processed_count=2, failed_count=0, message="下架完成")["status"] == "completed"
    running = server.dispatch()["task_id"]
    assert phone.wait("new_task", count=2)["task_id"] == running
    assert phone.progress(running, 40, "处理中")["status"] == "running"
    queued = server.dispatch(expect=(202,))
    pinned = server.dispatch(expect=(202,), device_id="android_B")
    assert queued["status"] == pinned["status"] == "pending"
    before = all_tasks(server)

    assert server.stop(signal.SIGTERM) is not None, "the server ignored SIGTERM"
    phone.disconnect()
    server = launch()

    devices = devices_by_id(server)
    assert {devices["android_A"]["status"], devices["android_B"]["status"]} == {"offline"}
    assert server.get("/").json()["connected_devices"] == 0
    assert all_tasks(server) == before
    assert server.task(done)["status"] == "completed" and server.task(done)["result"]["message"] == "下架完成"
    assert server.task(running)["status"] == "running" and server.task(running)["progress"] == 40
    assert server.task(running)["device_id"] == "android_A"
    assert server.task(queued["task_id"])["status"] == "pending"
    assert server.task(pinned["task_id"])["status"] == "pending"

    phone = phones(Device, server.url, "android_A", ack_new_task=False)
    assert phone.wait("register_success")["active_tasks"] == [running]
    assert phone.progress(running, 80)["status"] == "running"
    assert phone.result(running, processed_count=2)["status"] == "completed"
    assert phone.wait("new_task")["task_id"] == queued["task_id"]
    assert server.task(queued["task_id"])["device_id"] == "android_A"

    away = phones(Device, server.url, "android_B")
    assert away.wait("register_success")["active_tasks"] == []
    assert away.wait("new_task")["task_id"] == pinned["task_id"]
    assert phone.events["error"] == [] and away.events["error"] == []


# ---- (b) crash with hundreds of tasks ----

DEVICES = 5
CAPACITY = 20
TASKS = 300
FINISH_PER_DEVICE = 6
PROGRESS_PER_DEVICE = 4
SILENT = "crash_0"  # never acks new_task, like the Android app: none of its tasks is ever delivered


def load_fleet(server, fleet):
    """Each device finishes a few of its tasks and reports progress on a few; returns (results, progress)."""
    results, progress = {}, {}
    for phone in fleet:
        phone.wait("new_task", count=CAPACITY)
        mine = [task["task_id"] for task in phone.events["new_task"]]
        for task_id in mine[:FINISH_PER_DEVICE]:
            results[task_id] = {"success": True, "processed_count": 1, "message": f"done {task_id}"}
            assert phone.result(task_id, **results[task_id])["status"] == "completed"
        for n, task_id in enumerate(mine[FINISH_PER_DEVICE : FINISH_PER_DEVICE + PROGRESS_PER_DEVICE]):
            progress[task_id] = 10 + n
            assert phone.progress(task_id, progress[task_id])["status"] == "running"
    for phone in fleet:
        phone.wait("new_task", count=CAPACITY + FINISH_PER_DEVICE)
    # delivered or not, a task is running from its first progress only
    assert count(server, "dispatched") == DEVICES * (CAPACITY - PROGRESS_PER_DEVICE)
    return results, progress


def active_by_device(tasks):
    active = defaultdict(dict)
    for task_id, task in tasks.items():
        if task["status"] in ACTIVE:
            active[task["device_id"]][task_id] = task["status"]
    return active


def test_sigkill_loses_nothing_that_was_acknowledged(launch, phones):
    server = launch()
    fleet = [
        phones(Device, server.url, f"crash_{i}", ack_new_task=f"crash_{i}" != SILENT, max_concurrent_tasks=CAPACITY)
        for i in range(DEVICES)
    ]
    keyed = server.dispatch(idempotency_key="order-42")
    acknowledged = [keyed] + [server.dispatch(data={"product_ids": [str(n)]}) for n in range(TASKS - 1)]
    assert sum(a["status"] == "dispatched" for a in acknowledged) == DEVICES * CAPACITY
    results, progress = load_fleet(server, fleet)
    before = all_tasks(server)
    assert set(before) == {a["task_id"] for a in acknowledged}

    server.kill()
    for phone in fleet:
        phone.disconnect()
    server = launch()

    after = all_tasks(server)
    assert set(after) == set(before)
    for task_id, was in before.items():
        now = after[task_id]
        assert (now["status"], now["device_id"]) == (was["status"], was["device_id"]), (was, now)
        assert now["progress"] == progress.get(task_id, 100 if task_id in results else 0), now
    for task_id, result in results.items():
        assert server.task(task_id)["result"] == result
    expected = {"completed": len(results), "pending": TASKS - DEVICES * (CAPACITY + FINISH_PER_DEVICE)}
    assert {status: count(server, status) for status in expected} == expected
    assert server.dispatch(idempotency_key="order-42")["task_id"] == keyed["task_id"]
    assert count(server, "pending") == expected["pending"]

    active = active_by_device(before)
    devices = devices_by_id(server)
    for phone in fleet:
        device = devices[phone.device_id]
        assert device["status"] == "offline" and device["task_count"] == len(active[phone.device_id]), device

    workers = [phones(Worker, server.url, f"crash_{i}", max_concurrent_tasks=CAPACITY) for i in range(DEVICES)]
    for worker in workers:
        assert set(worker.wait("register_success")["active_tasks"]) == set(active[worker.device_id])
    for worker in workers:
        for task_id, status in active[worker.device_id].items():
            if status == "running":  # unstarted ones are sent again on register, and the Worker finishes those
                assert worker.result(task_id, processed_count=1)["status"] == "completed"

    wait_until(lambda: count(server, "completed") == TASKS, 20.0, "every task to complete after the crash")
    for worker in workers:  # each got again the tasks it had not started, acknowledged or not, and no other
        resent = {task["task_id"] for task in worker.events["new_task"]}
        mine = active[worker.device_id]
        unstarted = {task_id for task_id, status in mine.items() if status == "dispatched"}
        assert unstarted and unstarted <= resent and not resent & set(mine) - unstarted
    finished = all_tasks(server)
    assert {task["device_id"] for task in finished.values()} == {w.device_id for w in workers}
    assert all(worker.events["error"] == [] for worker in workers)


def test_sigkill_during_a_dispatch_burst_keeps_every_acknowledged_task(launch):
    """Operators keep dispatching from several threads while the server is killed: every 202 they got survives."""
    server = launch()
    acknowledged, stop = [], threading.Event()

    def operator(n):
        while not stop.is_set():
            try:
                answer = server.dispatch(expect=(202,), data={"product_ids": [f"op{n}"]})
            except requests.RequestException:
                return
            acknowledged.append(answer["task_id"])

    operators = [threading.Thread(target=operator, args=(n,), daemon=True) for n in range(4)]
    for thread in operators:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 150, 20.0, "150 acknowledged dispatches")
    server.kill()
    stop.set()
    for thread in operators:
        thread.join(timeout=10)
    seen = list(acknowledged)

    server = launch()
    after = all_tasks(server)
    assert set(seen) <= set(after), f"lost {len(set(seen) - set(after))} acknowledged tasks"
    assert {task["status"] for task in after.values()} == {"pending"}
