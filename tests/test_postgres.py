"""PostgreSQL's own behaviour: the database going away and coming back (through a TCP proxy the test cuts), schema
versions and migrations under two servers at once, and the commands that upgrade and copy a database."""

import json
import sqlite3
import subprocess
import sys
import threading
from urllib.parse import urlsplit, urlunsplit

import gevent
import psycopg
import pytest
from gevent.server import StreamServer
from gevent.socket import create_connection

from conftest import Device, LiveServer, admin_connect, wait_until
from taskserver.domain import device_tags
from taskserver.store.migrations import SchemaMismatch
from taskserver.store.postgres import POSTGRES_MIGRATIONS, SCHEMA_VERSION, PostgresStore


class Proxy:
    """A TCP proxy in front of PostgreSQL that the test cuts (every connection closed, new ones refused) and
    restores."""

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.open = True
        self.links = set()
        self.server = StreamServer(("127.0.0.1", 0), self._serve)
        self.server.start()
        self.port = self.server.server_port

    def _serve(self, client, _address):
        if not self.open:
            client.close()
            return
        upstream = create_connection(self.upstream)
        link = (client, upstream)
        self.links.add(link)
        pumps = [gevent.spawn(self._pump, client, upstream), gevent.spawn(self._pump, upstream, client)]
        gevent.joinall(pumps, count=1)
        self._close(link)
        gevent.killall(pumps)

    @staticmethod
    def _pump(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def _close(self, link):
        self.links.discard(link)
        for sock in link:
            sock.close()

    def cut(self):
        self.open = False
        for link in list(self.links):
            self._close(link)

    def restore(self):
        self.open = True

    def stop(self):
        self.cut()
        self.server.stop()


def through(url, port):
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@127.0.0.1:{port}".lstrip("@")))


@pytest.fixture
def proxied(postgres_url):
    parts = urlsplit(postgres_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    live = LiveServer(through(postgres_url, proxy.port), DATABASE_TIMEOUT=1.0)
    yield live, proxy
    live.stop()
    proxy.stop()


def test_while_the_database_is_away_writes_answer_503_and_nothing_unstored_is_acknowledged(proxied):
    server, proxy = proxied
    phone = Device(server.url, "android_001").connect()
    first = server.dispatch()["task_id"]
    phone.wait("new_task")
    assert server.get("/readyz").json()["checks"]["store"]["ok"] is True

    proxy.cut()
    refused = server.post("/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": ["9"]}})
    assert refused.status_code == 503 and refused.json()["error_code"] == "STORE_UNAVAILABLE", refused.text
    ack = phone.progress(first, 50)
    assert ack["success"] is False and ack["error_code"] == "STORE_UNAVAILABLE", ack
    readiness = server.get("/readyz")
    assert readiness.status_code == 503 and readiness.json()["checks"]["store"]["ok"] is False
    assert server.get("/api/tasks").status_code == 503

    proxy.restore()  # no restart: the pool connects again on demand
    wait_until(lambda: server.get("/readyz").json()["checks"]["store"]["ok"], message="the store to be back")
    tasks = server.get("/api/tasks").json()["tasks"]
    assert [task["task_id"] for task in tasks] == [first]  # the refused dispatch left nothing behind
    assert server.task(first)["status"] == "dispatched" and server.task(first)["progress"] == 0
    assert phone.progress(first, 50)["success"] is True
    assert phone.result(first)["status"] == "completed"
    assert server.dispatch()["status"] in ("pending", "dispatched")
    phone.disconnect()


def test_a_database_newer_than_the_code_is_refused(postgres_url):
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaMismatch, match=f"schema version {SCHEMA_VERSION + 1}"):
        PostgresStore(postgres_url)


def test_a_version_1_database_is_migrated_to_the_latest_schema_keeping_its_rows(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(POSTGRES_MIGRATIONS[1])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1)")
        db.execute(
            "INSERT INTO devices (device_id, device_name, device_info, capacity, created_at) "
            'VALUES (\'android_001\', \'one\', \'{"tags": ["shopB", "shopA", 7, "shopA"]}\', 1, 0)'
        )
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("SELECT device_id, node_id, tags FROM devices").fetchall() == [
            ("android_001", None, ["shopA", "shopB"])  # the tags it registered with, as a later registration keeps
        ]
        assert db.execute("SELECT count(*) FROM nodes").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM batches").fetchone() == (0,)


@pytest.fixture(params=["default", "en-US"])
def collated_url(request, postgres_database):
    """An empty database to migrate: the test's schema (the server's default collation), or a database of its own
    whose collation sorts text as people do (en-US: "apple" < "Zed"), not by code point as Python does."""
    if request.param == "default":
        yield request.getfixturevalue("postgres_url")
        return
    name = f"{urlsplit(postgres_database).path.lstrip('/')}_icu"
    with admin_connect(postgres_database) as admin:
        if admin.info.server_version < 150000:
            pytest.skip("a database's ICU collation needs PostgreSQL 15")
        admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    yield urlsplit(postgres_database)._replace(path=f"/{name}").geturl()
    with admin_connect(postgres_database) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_a_version_2_database_is_migrated_with_its_devices_tags_and_its_pending_tasks_still_dispatch(collated_url):
    registered = {
        "mixed": {"tags": ["shopB", "店铺", 7, "shopA", None, "shopB", {"a": 1}, ["shopC"], "Zed"]},
        "not_a_list": {"tags": "shopA"},
        "untagged": {"model": "Mi 13"},
    }
    with psycopg.connect(collated_url, autocommit=True) as db:
        db.execute(POSTGRES_MIGRATIONS[1])
        db.execute(POSTGRES_MIGRATIONS[2])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (2)")
        for device_id, device_info in registered.items():  # connected, as a server of version 2 left them
            db.execute(
                "INSERT INTO devices (device_id, device_name, device_info, capacity, connected, sid, registered_at, "
                "created_at) VALUES (%s, %s, %s, 1, TRUE, %s, 100, 100)",
                (device_id, device_id, json.dumps(device_info), f"sid-{device_id}"),
            )
        db.execute(
            "INSERT INTO tasks (task_id, task_type, data, status, timeout, created_at, updated_at) "
            "VALUES ('waiting', 'DELIST', '{}', 'pending', 300, 100, 100)"
        )
    store = PostgresStore(collated_url)
    try:
        for device_id, device_info in registered.items():  # the tags a registration now gives, and no operator's
            device = store.get_device(device_id)
            assert (device.tags, device.operator_tags) == (device_tags(device_info, []), []), device_id
        assert store.get_device("mixed").tags == ["Zed", "shopA", "shopB", "店铺"]
        assert [device.device_id for device in store.list_devices(tags=["shopA"])] == ["mixed"]
        (waiting,) = store.due_pending_tasks(1000.0, 10)
        assert (waiting.task_id, waiting.target_tags, waiting.batch_id) == ("waiting", None, None)
        changes = {"status": "dispatched", "device_id": "mixed", "dispatched_at": 200.0, "updated_at": 200.0}
        assert store.update_task_if(waiting, changes) is not None
        assert store.get_device("mixed").active_tasks == 1 and store.list_batches() == ([], 0)
    finally:
        store.close()


def test_a_version_3_database_gets_a_tags_index_that_takes_each_change_at_once(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as db:
        for version in (1, 2, 3):
            db.execute(POSTGRES_MIGRATIONS[version])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3)")
        db.execute(
            "INSERT INTO devices (device_id, device_name, device_info, capacity, tags, registered_at, created_at) "
            "VALUES ('phone', 'phone', '{}', 1, '[\"shopA\"]', 100, 100)"
        )
        assert db.execute("SELECT reloptions FROM pg_class WHERE relname = 'devices_tags'").fetchone() == (None,)
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        (options,) = db.execute("SELECT reloptions FROM pg_class WHERE relname = 'devices_tags'").fetchone()
        assert options == ["fastupdate=off"]
        assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        found = db.execute("SELECT device_id FROM devices WHERE tags @> '[\"shopA\"]'").fetchall()
        assert found == [("phone",)]


def test_servers_starting_together_migrate_once(postgres_url):
    errors, barrier = [], threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            PostgresStore(postgres_url).close()
        except Exception as error:  # each failure is reported below
            errors.append(error)

    starters = [threading.Thread(target=start) for _ in range(4)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    assert errors == []
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def run_command(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "taskserver", *args], capture_output=True, text=True, timeout=60, env=env or None
    )


def test_db_upgrade_creates_the_schema_and_says_so(postgres_url, monkeypatch):
    done = run_command("db", "upgrade", "--database", postgres_url)
    assert done.returncode == 0, done.stderr
    assert "schema is up to date" in done.stdout and "password" not in done.stdout
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)


# a batch of three tasks for devices tagged shopA, one out at a time
SPREAD = {
    "task_type": "DELIST",
    "mode": "spread",
    "target": {"tags": ["shopA"]},
    "items": [{"product_ids": [str(n)]} for n in range(3)],
    "max_in_flight": 1,
}


def fill_sqlite(path):
    """A SQLite database as a server leaves it: devices, tokens, tasks in every state, history, an owed cancel; a
    device with its own tags and an operator's, a task waiting for them, a batch whose tasks wait for a tag, all but
    one held; a schedule and its runs."""
    server = LiveServer(path, DEVICE_LOST_GRACE=10)
    try:
        token = server.post("/api/device/android_002/token").json()["token"]
        one = Device(server.url, "android_001").connect()
        two = Device(server.url, "android_002", token=token).connect()
        done = server.dispatch(device_id="android_001")["task_id"]
        one.progress(done, 50)
        one.result(done, data={"count": 2})
        running = server.dispatch(device_id="android_002")["task_id"]
        two.progress(running, 10)
        keyed = server.dispatch(device_id="android_002", idempotency_key="order-7")["task_id"]
        server.post(f"/api/task/{running}/cancel")
        two.disconnect()
        wait_until(lambda: server.get("/api/device/android_002").json()["device"]["status"] == "offline")
        stuck = server.dispatch(device_id="android_001", max_retries=1)["task_id"]
        one.disconnect()
        wait_until(lambda: server.get("/api/device/android_001").json()["device"]["status"] == "offline")
        server.sweep(advance=11)  # android_001 is lost: its attempt ends and it is owed a cancel
        tagged = Device(server.url, "android_003", tags=["shopA"]).connect()
        server.session.put(f"{server.url}/api/device/android_003/tags", json={"tags": ["vip"]}, timeout=10)
        tagged.disconnect()
        wait_until(lambda: server.get("/api/device/android_003").json()["device"]["status"] == "offline")
        for_tags = server.dispatch(tags=["shopA", "vip"])["task_id"]
        assert server.post("/api/batches", json=SPREAD).status_code == 201
    finally:
        server.stop()
    with sqlite3.connect(path) as db:  # no server makes them yet: as the schedules' will
        db.execute(
            "INSERT INTO schedules VALUES ('sched_1', 'nightly', '0 3 * * *', 'Asia/Shanghai', 'batch', ?, 1, "
            "'coalesce', 5000.0, 100.0, 100.0)",
            (json.dumps(SPREAD),),
        )
        db.execute("INSERT INTO schedule_runs VALUES ('sched_1', 4000.0, 4000.5, NULL, 'batch_x', NULL)")
        db.execute(
            "INSERT INTO schedule_runs VALUES ('sched_1', 4100.0, 4100.5, NULL, NULL, ?)",
            (json.dumps({"message": "没有符合目标的设备", "error_code": "NO_MATCHING_DEVICES"}),),
        )
    return {"done": done, "running": running, "keyed": keyed, "stuck": stuck, "for_tags": for_tags}


def started_apart(answer):
    """An API answer without ``disconnected_at``: each server marks every device offline from its own start."""
    if isinstance(answer, dict):
        return {key: started_apart(value) for key, value in answer.items() if key != "disconnected_at"}
    if isinstance(answer, list):
        return [started_apart(item) for item in answer]
    return answer


def test_db_copy_moves_a_sqlite_database_whole_and_refuses_a_second_time(tmp_path, postgres_url):
    sqlite_path = str(tmp_path / "old.db")
    ids = fill_sqlite(sqlite_path)

    copied = run_command("db", "copy", sqlite_path, postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert "counts match" in copied.stdout
    again = run_command("db", "copy", sqlite_path, postgres_url)
    assert again.returncode != 0 and "already has rows" in again.stderr

    before, after = LiveServer(sqlite_path), LiveServer(postgres_url)
    try:
        (batch,) = before.get("/api/batches").json()["batches"]
        batch_tasks = before.get(f"/api/tasks?batch_id={batch['batch_id']}").json()["tasks"][::-1]  # batch order
        for path in [
            "/api/tasks?limit=100",
            "/api/devices",
            *(f"/api/task/{task_id}" for task_id in ids.values()),
            *(f"/api/task/{task_id}/events" for task_id in ids.values()),
            "/api/device/android_001",
            "/api/device/android_002",
            "/api/device/android_003",
            "/api/batches",
            f"/api/batch/{batch['batch_id']}",
            f"/api/tasks?batch_id={batch['batch_id']}",
        ]:
            assert started_apart(after.get(path).json()) == started_apart(before.get(path).json()), path
        keyed = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}, "device_id": "android_002"}
        again = after.post("/api/dispatch-task", json={**keyed, "idempotency_key": "order-7"}).json()
        assert again["task_id"] == ids["keyed"]
        owed = Device(after.url, "android_001").connect()  # the copy sends the cancel it is owed
        assert owed.wait("cancel_task")["task_id"] == ids["stuck"]
        owed.disconnect()
        tagged = Device(after.url, "android_003", tags=["shopA"]).connect()  # it keeps the operator's tag
        for count, task_id in enumerate([ids["for_tags"], *(task["task_id"] for task in batch_tasks)], start=1):
            assert tagged.wait("new_task", count=count)["task_id"] == task_id  # each held task released in turn
            assert tagged.result(task_id)["success"] is True
        shown = after.get(f"/api/batch/{batch['batch_id']}").json()["batch"]
        assert (shown["status"], shown["counts"]["completed"]) == ("completed", 3)
        tagged.disconnect()
        with psycopg.connect(postgres_url) as db:
            schedules = db.execute("SELECT schedule_id, enabled, body, next_run_at FROM schedules").fetchall()
            runs = db.execute("SELECT fire_at, batch_id, error ->> 'error_code' FROM schedule_runs ORDER BY 1")
            assert schedules == [("sched_1", True, SPREAD, 5000.0)]
            assert runs.fetchall() == [(4000.0, "batch_x", None), (4100.0, None, "NO_MATCHING_DEVICES")]
    finally:
        before.stop()
        after.stop()


def test_a_server_whose_psycopg_would_block_the_event_loop_refuses_to_start(postgres_url):
    PostgresStore(postgres_url).close()  # a database it could use: the refusal is about the driver alone
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import psycopg\n"  # imported before gevent patched select: psycopg picks its blocking C wait
            "from gevent import monkey; monkey.patch_all()\n"
            f"from taskserver import create_app; create_app({{'DATABASE': {postgres_url!r}}})",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 3, started.stderr
    assert "psycopg was imported before gevent" in started.stderr


def test_a_libpq_keyword_string_is_refused_not_taken_for_a_sqlite_file(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        LiveServer("host=127.0.0.1 dbname=taskserver user=postgres password=hunter2")
    assert refused.value.code == 3
    assert "postgresql:// URL" in caplog.text and "hunter2" not in caplog.text
    assert list(tmp_path.iterdir()) == []  # no file named after it
