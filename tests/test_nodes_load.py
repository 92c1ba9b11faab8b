"""Several nodes under load, as real processes: three ``python app.py`` nodes on PostgreSQL and Redis (a schema and a
channel of the test's own) behind Debian's nginx, 300 phones that complete every task they get, and 3,000 tasks
dispatched over all three nodes' HTTP with idempotency keys and client retries. One node is killed with SIGKILL in the
middle and started again; Redis is stopped and started again under dispatches and cancels.

What must hold: every task an HTTP answer named ends, and every key maps to one task; no ``(task, attempt)`` reaches
two devices; every completed task has the result its device sent; the killed node's phones register again through
nginx on the other nodes and work. Waits are for the work to be done, with generous bounds; the figures the issue
asks for (phones back and working within 15 s) are measured and printed (``pytest -s``).

As in ``test_nodes.py``, the killed node's lease is made to run out by the test (as it would
``TASKSERVER_NODE_LEASE`` seconds after its last renewal), so that the leader's sweep releases its devices now and
the lost-device grace runs from its last renewal."""

import itertools
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import gevent
import psycopg
import pytest
import redis
import requests
import socketio
from test_nginx import NGINX, Nginx
from test_nodes import has_swept, lapse
from test_run_server import APP_PY, ServerProcess, free_port

from conftest import wait_until

PHONES = 300
TASKS = 3000
CAPACITY = 2  # tasks a phone takes at once
KILL_AFTER = 1000  # acknowledged dispatches before one node is killed
NODE_SETTINGS = {
    "TASKSERVER_DEVICE_EVENT_RATE": "0",  # these phones finish tasks far faster than the per-connection limit
    "TASKSERVER_DEVICE_LOST_GRACE": "5",
    "TASKSERVER_RETRY_DELAY": "1",
}
MAX_RETRIES = 2  # an attempt lost with the killed node goes back to pending and ends on another phone
CLOSE_TIMEOUT = 10.0  # seconds a phone waits for its disconnect at the end of a test


class Nodes:
    """``python app.py`` nodes of one cluster (``start("a")``, again after a kill); every one killed at the end."""

    def __init__(self, tmp_path, database, queue, channel):
        self.tmp_path = tmp_path
        self.database = database
        self.env = {"TASKSERVER_MESSAGE_QUEUE": queue, "TASKSERVER_MESSAGE_QUEUE_CHANNEL": channel, **NODE_SETTINGS}
        self.started = []

    def start(self, node_id, port=None):
        server = ServerProcess(
            APP_PY, self.tmp_path, database=self.database, port=port, TASKSERVER_NODE_ID=node_id, **self.env
        )
        self.started.append(server)
        return server.start()

    def kill_all(self):
        for server in self.started:
            server.kill()


@pytest.fixture
def nodes(tmp_path, cluster_settings):
    """Start nodes on the test's schema and the shared Redis, on a channel of the test's own."""
    made = Nodes(tmp_path, *(cluster_settings[k] for k in ("DATABASE", "MESSAGE_QUEUE", "MESSAGE_QUEUE_CHANNEL")))
    yield made
    made.kill_all()


class Ledger:
    """What every phone saw: each ``new_task`` by ``(task_id, attempt)`` and device, and each result acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = defaultdict(set)  # (task_id, attempt) -> device ids it reached
        self.results = {}  # task_id -> the result its device sent and got acknowledged

    def new_task(self, device_id, task):
        with self.lock:
            self.sent[(task["task_id"], task["attempt"])].add(device_id)

    def twice(self):
        """The ``(task, attempt)`` pairs that reached more than one device."""
        return {pair: devices for pair, devices in self.sent.items() if len(devices) > 1}


class Phone:
    """A phone that acks and completes every task it gets, and when its connection ends (its node killed) connects
    again, through nginx, and registers; ``register_success`` lists its tasks still open, which it completes too."""

    def __init__(self, device_id, ledger, fallback_url, keeps=lambda task: False, capacity=CAPACITY):
        self.device_id = device_id
        self.ledger = ledger
        self.fallback_url = fallback_url  # None: a phone that does not come back
        self.keeps = keeps  # the tasks it acks and never finishes
        self.capacity = capacity
        self.cancels = []
        self.probes = []  # what the test itself sent over the message queue
        self.sio = None
        self.url = None
        self.registered_at = []  # (url, monotonic time) of each registration
        self.errors = []
        self.closing = False

    def connect(self, url):
        """Connect to ``url`` and register; raises if either fails."""
        sio = socketio.Client(reconnection=False)
        sio.on("new_task", self._new_task)
        sio.on("register_success", self._open_tasks)
        sio.on("error", self.errors.append)
        sio.on("cancel_task", lambda cancel: self.cancels.append(cancel["task_id"]))
        sio.on("disconnect", self._lost)
        sio.on("probe", self.probes.append)
        sio.connect(url, transports=["websocket"], wait_timeout=10)
        self.sio, self.url = sio, url
        info = {"type": "android", "max_concurrent_tasks": self.capacity}
        answer = sio.call("device_register", {"device_id": self.device_id, "device_info": info}, timeout=10)
        assert answer["success"], answer
        self.registered_at.append((url, time.monotonic()))
        return self

    def _new_task(self, task):
        self.ledger.new_task(self.device_id, task)
        if not self.keeps(task):
            threading.Thread(target=self._finish, args=(task["task_id"],), daemon=True).start()
        return {"received": True}

    def _open_tasks(self, answer):
        for task_id in answer.get("active_tasks", []):  # running ones are not sent again: finish them anyway
            threading.Thread(target=self._finish, args=(task_id,), daemon=True).start()

    def _finish(self, task_id):
        result = {"success": True, "processed_count": 1, "message": f"done {task_id}"}
        try:
            ack = self.sio.call("task_result", {"task_id": task_id, "result": result}, timeout=10)
        except (socketio.exceptions.SocketIOError, OSError):
            return  # the node went away: the task is listed again when this phone registers
        if ack.get("success") and ack.get("status") == "completed":
            with self.ledger.lock:
                self.ledger.results[task_id] = result

    def _lost(self, *_reason):
        if not self.closing and self.fallback_url:
            threading.Thread(target=self._come_back, daemon=True).start()

    def _come_back(self):
        while not self.closing:
            try:
                self.connect(self.fallback_url)
                return
            except Exception:  # nginx finds no live node for a moment, or the register ack timed out
                time.sleep(0.2)

    def close(self):
        """Disconnect, bounded: once a disconnect through nginx never returned (seen once on a loaded machine)."""
        self.closing = True
        if self.sio is not None and self.sio.connected:
            with gevent.Timeout(CLOSE_TIMEOUT, False):
                self.sio.disconnect()


class Operators:
    """Threads dispatching ``TASKS`` tasks with idempotency keys over every node's HTTP in turn; a dispatch that fails
    with a connection error or a 503 is sent again, with the same key, to the next node."""

    def __init__(self, urls, count, threads=8, prefix="load", body_of=lambda n: {}, pace=0.0):
        self.urls = urls
        self.pace = pace  # seconds each thread waits between two dispatches
        self.keys = iter(range(count))
        self.lock = threading.Lock()
        self.answers = defaultdict(list)  # key -> task ids the answers named
        self.retries = defaultdict(int)  # why a dispatch was sent again: "503" or the connection error's name
        self.failures = []
        self.prefix = prefix
        self.body_of = body_of  # what the body of dispatch ``n`` adds to a DELIST task
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def acknowledged(self):
        return sum(len(ids) > 0 for ids in self.answers.values())

    def _run(self):
        session = requests.Session()
        while True:
            with self.lock:
                n = next(self.keys, None)
            if n is None:
                return
            self._dispatch(session, n)
            time.sleep(self.pace)

    def _dispatch(self, session, n):
        key = f"{self.prefix}-{n}"
        body = {"task_type": "DELIST", "data": {"product_ids": [str(n)]}, "idempotency_key": key, **self.body_of(n)}
        for attempt in itertools.count():
            url = self.urls[(n + attempt) % len(self.urls)]
            try:
                response = session.post(url + "/api/dispatch-task", json=body, timeout=10)
            except requests.RequestException as error:
                response, why = None, type(error).__name__
            if response is not None and response.status_code in (200, 202):
                with self.lock:
                    self.answers[key].append(response.json()["task_id"])
                return
            if response is not None and response.status_code != 503:
                self.failures.append((key, response.status_code, response.text))
                return
            with self.lock:
                self.retries[why if response is None else str(response.status_code)] += 1
            time.sleep(0.05 * min(attempt, 10))

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        assert not any(thread.is_alive() for thread in self.threads), "the dispatches did not finish"
        assert self.failures == [], self.failures[:5]


def tasks_in(database):
    """Every task as the database keeps it: ``{task_id: (status, error_code, attempt, result, key)}``."""
    with psycopg.connect(database) as db:
        rows = db.execute("SELECT task_id, status, error_code, attempt, result, idempotency_key FROM tasks").fetchall()
    return {row[0]: row[1:] for row in rows}


def unfinished(database):
    with psycopg.connect(database) as db:
        return db.execute(
            "SELECT count(*) FROM tasks WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        ).fetchone()[0]


def node_of_devices(database):
    with psycopg.connect(database) as db:
        return dict(db.execute("SELECT device_id, node_id FROM devices WHERE connected").fetchall())


def connect_all(phones, url_of):
    """Connect and register the phones (each to ``url_of(phone)``), a few dozen at a time."""
    for start in range(0, len(phones), 50):
        group = [
            threading.Thread(target=phone.connect, args=(url_of(phone),), daemon=True)
            for phone in phones[start : start + 50]
        ]
        for thread in group:
            thread.start()
        for thread in group:
            thread.join(30)
    assert all(phone.registered_at for phone in phones), "every phone registered"


def check_nothing_lost(ledger, database, *operators, others=()):
    """Every key maps to one task and every task the answers named is stored (and no other); no attempt reached two
    devices; every completed task has its device's result. ``others``: the ids of tasks dispatched otherwise. Return
    the tasks."""
    tasks = tasks_in(database)
    answers = {key: ids for each in operators for key, ids in each.answers.items()}
    assert {key: set(ids) for key, ids in answers.items() if len(set(ids)) != 1} == {}
    answered = {ids[0] for ids in answers.values()}
    assert answered <= set(tasks), f"lost {len(answered - set(tasks))} acknowledged tasks"
    assert set(tasks) == answered | set(others), "one task per key"
    assert ledger.twice() == {}
    for task_id, (status, *_rest, result, _key) in tasks.items():
        if status == "completed":
            assert result == {"success": True, "processed_count": 1, "message": f"done {task_id}"}, result
    for task_id, result in ledger.results.items():
        assert tasks[task_id][0] == "completed" and tasks[task_id][3] == result
    return tasks


STUCK = 5  # of node b's phones: they take tasks, never finish them, and do not come back after the kill


def test_300_phones_3000_tasks_over_three_nodes_one_killed_and_restarted_loses_nothing(nodes, tmp_path):
    if not Path(NGINX).exists():
        pytest.fail("this test needs Debian's nginx: scripts/test installs it (apt-get install nginx)")
    a = nodes.start("a")
    wait_until(lambda: has_swept(a), 10.0, "node a to lead")
    b, c = nodes.start("b"), nodes.start("c")
    cluster = [a, b, c]
    proxy = Nginx(tmp_path, [node.port for node in cluster])
    ledger = Ledger()
    phones = [Phone(f"load_{n:03d}", ledger, proxy.url) for n in range(PHONES)]
    home = {phone.device_id: cluster[n % 3].url for n, phone in enumerate(phones)}
    on_b = phones[1::3]
    stuck, moving = on_b[:STUCK], on_b[STUCK:]
    for phone in stuck:
        phone.keeps, phone.fallback_url = (lambda task: True), None
    try:
        connect_all(stuck, lambda phone: b.url)  # alone on b at first: b gives a task to each
        first = Operators([b.url], STUCK, threads=1, prefix="first", body_of=lambda n: {"max_retries": MAX_RETRIES})
        first.join(10)
        wait_until(lambda: len(ledger.sent) == STUCK, 10.0, "a task for each stuck phone")
        connect_all([p for p in phones if p not in stuck], lambda phone: home[phone.device_id])
        urls = [node.url for node in cluster]
        operators = Operators(urls, TASKS, body_of=lambda n: {"max_retries": MAX_RETRIES})
        wait_until(lambda: operators.acknowledged() >= KILL_AFTER, 60.0, f"{KILL_AFTER} acknowledged dispatches")

        b.kill()
        killed_at = time.monotonic()
        lapse(nodes.database, "b")  # the leader releases its devices now; the grace runs from its last renewal
        wait_until(lambda: all(len(p.registered_at) == 2 for p in moving), 30.0, "node b's phones back via nginx")
        back = max(p.registered_at[-1][1] for p in moving) - killed_at
        to_moved = Operators(
            urls, len(moving), threads=4, prefix="moved", body_of=lambda n: {"device_id": moving[n].device_id}
        )
        to_moved.join(30)  # a task pinned to each phone that moved, dispatched over every node while the load goes on
        moved_tasks = {ids[0] for ids in to_moved.answers.values()}
        wait_until(lambda: moved_tasks <= set(ledger.results), 30.0, "the moved phones to complete a task each")
        working = time.monotonic() - killed_at
        b = nodes.start("b", port=b.port)  # started again on its port: nginx and the operators find it there
        operators.join(120)
        wait_until(lambda: unfinished(nodes.database) == 0, 60.0, "every task to end")
        after = b.dispatch(device_id=moving[0].device_id)["task_id"]  # through b, started again, to a moved phone
        wait_until(lambda: after in ledger.results, 10.0, "a task dispatched through b, started again")

        tasks = check_nothing_lost(ledger, nodes.database, first, operators, to_moved, others=[after])
        assert {status for status, *_ in tasks.values()} == {"completed"}
        # the stuck phones' attempts were lost with node b: after the grace each went to another phone, attempt 2
        stuck_ids = {p.device_id for p in stuck}
        lost = {task_id for (task_id, attempt), devices in ledger.sent.items() if devices & stuck_ids}
        assert STUCK <= len(lost) <= STUCK * CAPACITY  # a task each at least: free phones are given work first
        assert all(tasks[task_id][2] == 2 and (task_id, 2) in ledger.sent for task_id in lost)
        held = node_of_devices(nodes.database)
        assert len(held) == PHONES - STUCK and not stuck_ids & set(held)
        assert {held[p.device_id] for p in moving} <= {"a", "c"}
        assert all(p.errors == [] for p in phones)
        assert b.get("/readyz").status_code == 200
        print(
            f"\nnode b's {len(moving)} phones back through nginx {back:.1f} s after the kill, each with a task "
            f"completed {working:.1f} s after it; dispatches sent again: {dict(operators.retries)}; "
            f"{sum(attempt > 1 for _s, _e, attempt, *_ in tasks.values())} tasks on a second attempt"
        )
        assert working < 30, "the issue asks for 15 s: a generous bound for a loaded machine"
    finally:
        for phone in phones:
            phone.close()
        proxy.stop()


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, without persistence, that the test stops and starts."""

    def __init__(self, tmp_path):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("this test needs redis-server: scripts/test installs it (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path
        self.process = None

    def start(self):
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        wait_until(self._answers, 10.0, f"redis-server on port {self.port}")
        return self

    def _answers(self):
        assert self.process.poll() is None, "redis-server exited"
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def redis_ready(node):
    return node.get("/readyz").json()["checks"]["redis"]["ok"]


def cancel_round(operator_url, holder, ledger, n):
    """Dispatch two tasks pinned to the holder through one node, cancel them through it once they
    reached the holder (on another node), and wait for the holder's ``cancel_task`` for each; return their ids."""
    body = {"task_type": "DELIST", "data": {"product_ids": ["held"]}, "device_id": holder.device_id}
    ids = []
    for k in range(2):  # the holder keeps a slot for the load's tasks, which it completes
        answer = requests.post(
            operator_url + "/api/dispatch-task", json={**body, "idempotency_key": f"c{n}-{k}"}, timeout=10
        )
        assert answer.status_code in (200, 202), answer.text
        ids.append(answer.json()["task_id"])
    wait_until(lambda: all((task_id, 1) in ledger.sent for task_id in ids), 10.0, "the holder to get its tasks")
    for task_id in ids:
        answer = requests.post(f"{operator_url}/api/task/{task_id}/cancel", timeout=10)
        assert answer.status_code == 200 and answer.json()["success"], answer.text
    wait_until(lambda: set(ids) <= set(holder.cancels), 10.0, "the holder to get cancel_task for each")
    return ids


def test_redis_restarted_under_cross_node_dispatches_and_cancels_loses_nothing(tmp_path, cluster_settings, own_redis):
    nodes = Nodes(tmp_path, cluster_settings["DATABASE"], own_redis.url, cluster_settings["MESSAGE_QUEUE_CHANNEL"])
    ledger = Ledger()
    phones = [Phone(f"redis_{n:02d}", ledger, None) for n in range(20)]
    holder = Phone("holder", ledger, None, keeps=lambda task: task["data"]["product_ids"] == ["held"], capacity=3)
    try:
        a = nodes.start("a")
        wait_until(lambda: has_swept(a), 10.0, "node a to lead")
        b = nodes.start("b")
        connect_all([*phones, holder], lambda phone: b.url)  # every phone on b, every dispatch and cancel through a
        operators = Operators([a.url], 900, threads=4, body_of=lambda n: {"max_retries": MAX_RETRIES}, pace=0.02)
        cancelled = cancel_round(a.url, holder, ledger, 0)
        wait_until(lambda: operators.acknowledged() >= 150, 30.0, "150 acknowledged dispatches")

        own_redis.kill()
        wait_until(lambda: not redis_ready(a) and not redis_ready(b), 10.0, "the nodes to see Redis gone")
        cancelled += cancel_round(a.url, holder, ledger, 1)  # dispatch and cancel need no Redis: PostgreSQL wakes b
        wait_until(lambda: operators.acknowledged() >= 450, 30.0, "450 acknowledged dispatches")
        own_redis.start()
        restarted_at, restarted_with = time.monotonic(), operators.acknowledged()
        wait_until(lambda: redis_ready(a) and redis_ready(b), 30.0, "both nodes subscribed to Redis again")
        resubscribed = time.monotonic() - restarted_at
        cancelled += cancel_round(a.url, holder, ledger, 2)
        queue = socketio.RedisManager(own_redis.url, channel=cluster_settings["MESSAGE_QUEUE_CHANNEL"], write_only=True)
        queue.emit("probe", {"n": 1}, to=holder.sio.get_sid(), namespace="/")  # heard by b, which holds the phone
        wait_until(lambda: holder.probes == [{"n": 1}], 10.0, "an emit over the restarted Redis")
        operators.join(60)
        wait_until(lambda: unfinished(nodes.database) == 0, 30.0, "every task to end")

        assert restarted_with < 900, "dispatches went on after Redis came back"
        tasks = check_nothing_lost(ledger, nodes.database, operators, others=cancelled)
        assert {tasks[task_id][0] for task_id in cancelled} == {"cancelled"}
        assert {tasks[ids[0]][0] for ids in operators.answers.values()} == {"completed"}
        assert all(p.errors == [] for p in phones)
        print(
            f"\nboth nodes subscribed again {resubscribed:.1f} s after Redis restarted; "
            f"dispatches sent again: {dict(operators.retries)}"
        )
    finally:
        for phone in [*phones, holder]:
            phone.close()
        nodes.kill_all()


def test_a_redis_that_stops_answering_holds_up_no_device(tmp_path, cluster_settings, own_redis):
    """Redis paused (SIGSTOP: its connections stay open, nothing answers), as when it hangs or the network drops its
    packets: the nodes go on giving tasks to their devices and taking their results, and Redis is heard again once
    it answers."""
    nodes = Nodes(tmp_path, cluster_settings["DATABASE"], own_redis.url, cluster_settings["MESSAGE_QUEUE_CHANNEL"])
    ledger = Ledger()
    phones = [Phone(f"paused_{n:02d}", ledger, None) for n in range(10)]
    try:
        a = nodes.start("a")
        wait_until(lambda: has_swept(a), 10.0, "node a to lead")
        b = nodes.start("b")
        connect_all(phones, lambda phone: b.url)
        Operators([a.url], 50, threads=2, prefix="before").join(30)  # every emit so far went through Redis too
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            while_paused = Operators([a.url, b.url], 200, threads=4, prefix="paused")
            while_paused.join(30)
            wait_until(lambda: unfinished(nodes.database) == 0, 30.0, "every task to end while Redis is paused")
            assert not redis_ready(a)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        wait_until(lambda: redis_ready(a) and redis_ready(b), 30.0, "both nodes hearing Redis again")
        assert {status for status, *_ in tasks_in(nodes.database).values()} == {"completed"}
        assert len(ledger.results) == 250 and ledger.twice() == {}
    finally:
        for phone in phones:
            phone.close()
        nodes.kill_all()
