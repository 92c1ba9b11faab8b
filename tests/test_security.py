"""Security against the real server: operator and device tokens, per-device tokens, production mode, limits, CORS,
and nothing leaking into responses or logs."""

import json
import logging
import struct
import subprocess
from pathlib import Path

import psycopg
import pytest
import requests
import socketio
import websocket
from test_plainws import PlainDevice
from test_run_server import APP_PY, ROOT, free_port, procfile_command, server_env

from conftest import Device, LiveServer, wait_until
from taskserver import REFUSED_TO_START

pytestmark = pytest.mark.backends("sqlite", "postgresql")

OPERATOR = "op-token-0123456789"
FLEET = "fleet-token-0123456789"


@pytest.fixture
def secured(database):
    """A server with operator and fleet tokens configured."""
    live = LiveServer(database, API_TOKENS=(OPERATOR,), DEVICE_TOKENS=(FLEET,))
    live.session.headers["Authorization"] = f"Bearer {OPERATOR}"
    yield live
    live.stop()


def anonymous(server, method, path, **kwargs):
    """A request without the operator token."""
    return requests.request(method, server.url + path, timeout=10, **kwargs)


def assert_unauthorized(response):
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["success"] is False and body["error_code"] == "UNAUTHORIZED" and body["message"]


# ---- operators ----


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/tasks"),
        ("GET", "/api/devices"),
        ("POST", "/api/dispatch-task"),
        ("GET", "/api/task/task_x/status"),
        ("POST", "/api/task/task_x/cancel"),
        ("POST", "/api/device/android_001/token"),
        ("GET", "/metrics"),
    ],
)
def test_api_needs_an_operator_token(secured, method, path):
    assert_unauthorized(anonymous(secured, method, path))
    assert_unauthorized(anonymous(secured, method, path, headers={"Authorization": "Bearer wrong"}))
    assert_unauthorized(anonymous(secured, method, path, headers={"Authorization": f"Bearer {FLEET}"}))
    assert_unauthorized(anonymous(secured, method, path, headers={"Authorization": OPERATOR}))


def test_operator_token_as_bearer_or_api_key(secured):
    assert anonymous(secured, "GET", "/api/tasks", headers={"Authorization": f"Bearer {OPERATOR}"}).ok
    assert anonymous(secured, "GET", "/api/tasks", headers={"X-API-Key": OPERATOR}).ok
    assert secured.dispatch(expect=(202,))["success"]


def test_rejected_dispatch_stores_nothing(secured):
    anonymous(secured, "POST", "/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": ["1"]}})
    assert secured.get("/api/tasks").json()["total"] == 0


def test_status_and_health_stay_open_and_reveal_nothing(secured):
    Device(secured.url, "android_001", token=FLEET).connect().disconnect()
    for path in ("/", "/healthz", "/api/openapi.json"):
        response = anonymous(secured, "GET", path)
        assert response.status_code == 200, path
        assert OPERATOR not in response.text and FLEET not in response.text
    assert set(anonymous(secured, "GET", "/").json()) >= {"system", "status", "connected_devices"}


# ---- devices ----


def test_device_with_a_fleet_token_in_auth_registers(secured):
    phone = Device(secured.url, "android_001", token=FLEET).connect()
    try:
        assert phone.wait("register_success")["device_id"] == "android_001"
    finally:
        phone.disconnect()


def test_wrong_token_at_connect_is_refused(secured):
    client = socketio.Client(reconnection=False)
    refusals = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(secured.url, transports=["websocket"], auth={"token": "nope"}, wait_timeout=5)
    assert refusals[0]["data"]["error_code"] == "UNAUTHORIZED" and refusals[0]["message"], refusals
    client.disconnect()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(secured.url, transports=["websocket"], auth={"token": OPERATOR}, wait_timeout=5)
    client.disconnect()


@pytest.mark.parametrize("token", [{"nested": 1}, 12345, ["fleet"], "x" * 600, "\ud800", "fleet\udfff"])
def test_malformed_token_at_connect_is_refused_in_the_error_shape(secured, token):
    client = socketio.Client(reconnection=False)
    refusals = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(secured.url, transports=["websocket"], auth={"token": token}, wait_timeout=5)
    assert refusals[0]["data"]["error_code"] == "VALIDATION_ERROR" and refusals[0]["message"], refusals
    client.disconnect()
    assert Device(secured.url, "android_001", token=FLEET).connect().wait("register_success")


def test_token_in_device_register_for_clients_without_auth(secured):
    phone = Device(secured.url, "android_001").connect(register=False)
    try:
        refused = phone.call("device_register", {"device_id": "android_001"})
        assert refused["success"] is False and refused["error_code"] == "UNAUTHORIZED"
        assert phone.wait("register_error")["error_code"] == "UNAUTHORIZED"
        assert phone.call("device_register", {"device_id": "android_001", "token": OPERATOR})["success"] is False
        assert phone.call("device_register", {"device_id": "android_001", "token": FLEET})["success"] is True
    finally:
        phone.disconnect()
    assert [d["device_id"] for d in secured.get("/api/devices").json()["devices"]] == ["android_001"]


def test_query_string_token_is_accepted(secured):
    client = socketio.Client(reconnection=False)
    client.connect(f"{secured.url}?token={FLEET}", transports=["websocket"], wait_timeout=5)
    try:
        assert client.call("device_register", {"device_id": "android_001"}, timeout=5)["success"]
    finally:
        client.disconnect()


def test_plain_websocket_takes_the_token_as_header_or_query(secured):
    url = secured.url.replace("http://", "ws://")
    refused = websocket.create_connection(url + "/ws?token=nope", timeout=5)
    assert json.loads(refused.recv())["data"]["error_code"] == "UNAUTHORIZED"
    refused.close()
    for ws in (
        websocket.create_connection(url + f"/ws?token={FLEET}", timeout=5),
        websocket.create_connection(url + "/ws", timeout=5, header=[f"Authorization: Bearer {FLEET}"]),
    ):
        assert json.loads(ws.recv())["event"] == "connected"
        ws.send(json.dumps({"event": "device_register", "data": {"device_id": "autojs_1"}, "id": 1}))
        frames = [json.loads(ws.recv()) for _ in range(2)]
        assert any(f["event"] == "ack" and f["data"]["success"] for f in frames), frames
        ws.close()


# ---- per-device tokens ----


def test_per_device_token_is_the_only_key_for_its_id(secured):
    issued = secured.post("/api/device/android_001/token")
    assert issued.status_code == 201
    token = issued.json()["token"]
    assert secured.service.store.device_token_hash("android_001") not in (None, token)

    with_fleet = Device(secured.url, "android_001", token=FLEET).connect(register=False)
    assert with_fleet.call("device_register", {"device_id": "android_001"})["error_code"] == "UNAUTHORIZED"
    with_fleet.disconnect()

    own = Device(secured.url, "android_001", token=token).connect()
    assert own.wait("register_success")["device_id"] == "android_001"
    assert own.call("device_register", {"device_id": "android_002"})["error_code"] == "UNAUTHORIZED"
    own.disconnect()

    assert_unauthorized(anonymous(secured, "GET", "/api/tasks", headers={"Authorization": f"Bearer {token}"}))


def test_reissue_replaces_and_revoke_removes(secured):
    first = secured.post("/api/device/android_001/token").json()["token"]
    second = secured.post("/api/device/android_001/token").json()["token"]
    stale = Device(secured.url, "android_001").connect(register=False)
    assert stale.call("device_register", {"device_id": "android_001", "token": first})["error_code"] == "UNAUTHORIZED"
    assert stale.call("device_register", {"device_id": "android_001", "token": second})["success"]
    stale.disconnect()

    assert secured.session.delete(secured.url + "/api/device/android_001/token").status_code == 200
    assert secured.session.delete(secured.url + "/api/device/android_001/token").status_code == 404
    assert Device(secured.url, "android_001", token=FLEET).connect().wait("register_success")


def device_status(server, device_id):
    return server.get(f"/api/device/{device_id}").json()["device"]["status"]


def test_reissuing_a_token_closes_the_socketio_connection_registered_with_the_old_one(secured):
    first = secured.post("/api/device/android_001/token").json()["token"]
    phone = Device(secured.url, "android_001", token=first).connect()
    task_id = secured.dispatch(device_id="android_001")["task_id"]
    phone.wait("new_task")
    second = secured.post("/api/device/android_001/token").json()["token"]
    error = phone.wait("error")
    assert error["error_code"] == "UNAUTHORIZED" and "令牌" in error["message"], error
    wait_until(lambda: not phone.sio.connected, message="server to close the connection with the old token")
    assert device_status(secured, "android_001") == "offline"
    secured.sweep(advance=60)  # within the lost-device grace the task waits for its device
    back = Device(secured.url, "android_001", token=second).connect()
    try:
        assert back.wait("register_success")["active_tasks"] == [task_id]
        assert back.result(task_id)["status"] == "completed"
    finally:
        back.disconnect()


def test_revoking_a_token_closes_the_plain_websocket_registered_with_it(secured):
    token = secured.post("/api/device/autojs_1/token").json()["token"]
    phone = PlainDevice(secured.url, f"/ws?token={token}")
    try:
        assert phone.call("device_register", {"device_id": "autojs_1"})["success"]
        assert secured.session.delete(secured.url + "/api/device/autojs_1/token").status_code == 200
        error = phone.wait("error")["data"]
        assert error["error_code"] == "UNAUTHORIZED" and "令牌" in error["message"], error
        assert phone.ws.recv_data()[0] == websocket.ABNF.OPCODE_CLOSE  # closed by the server, no timeout
        assert device_status(secured, "autojs_1") == "offline"
    finally:
        phone.close()


def everything_stored(database):
    """All the store keeps, as text: the SQLite file and its journal, or every row of the PostgreSQL schema."""
    if str(database).startswith("postgresql://"):
        with psycopg.connect(database) as db:
            tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            rows = psycopg.sql.SQL("SELECT t::text FROM {} t")
            return "\n".join(
                row
                for (table,) in db.execute(tables).fetchall()
                for (row,) in db.execute(rows.format(psycopg.sql.Identifier(table)))
            )
    path = Path(database)
    return b"".join(part.read_bytes() for part in path.parent.glob(path.name + "*")).decode(errors="replace")


def test_idempotency_keys_belong_to_the_operator_token_that_made_them(database):
    other = "op-token-other-9876543210"
    live = LiveServer(database, API_TOKENS=(OPERATOR, other))

    def dispatch(token, **change):
        body = {"task_type": "DELIST", "data": {"product_ids": ["1"]}, "idempotency_key": "order-42", **change}
        return live.post("/api/dispatch-task", json=body, headers={"Authorization": f"Bearer {token}"})

    try:
        mine = dispatch(OPERATOR).json()["task_id"]
        assert dispatch(OPERATOR).json()["task_id"] == mine
        theirs = dispatch(other)
        assert theirs.status_code == 202 and theirs.json()["task_id"] != mine  # an independent task
        assert dispatch(other, priority=3).json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"  # their own key now
        assert dispatch(OPERATOR, priority=3).json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
        assert live.get("/api/tasks", headers={"Authorization": f"Bearer {OPERATOR}"}).json()["total"] == 2
        live.service.store.durable()
        stored = everything_stored(database)
        assert stored and OPERATOR not in stored and other not in stored  # only an identity is kept
    finally:
        live.stop()


def test_per_device_token_binds_the_id_even_on_an_open_server(server):
    token = server.post("/api/device/android_001/token").json()["token"]
    intruder = Device(server.url, "android_001").connect(register=False)
    assert intruder.call("device_register", {"device_id": "android_001"})["error_code"] == "UNAUTHORIZED"
    assert intruder.call("device_register", {"device_id": "android_001", "token": token})["success"]
    intruder.disconnect()


def test_bad_device_id_for_a_token_is_a_validation_error(server):
    response = server.post("/api/device/" + "x" * 200 + "/token")
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR"


# ---- production mode ----


def run_app(database, command=APP_PY, wait=3, **env):
    """Start ``command`` (``python app.py``) and return its exit code and output once it exits or after ``wait`` s."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=server_env(0, database, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def test_production_refuses_to_start_open(tmp_path):
    code, output = run_app(tmp_path / "prod.db", TASKSERVER_ENV="production")
    assert code not in (0, None) and code != -9, output
    assert "production mode refuses to start" in output
    assert "TASKSERVER_API_TOKENS" in output and "TASKSERVER_DEVICE_TOKENS" in output and "SECRET_KEY" in output


def test_procfile_refuses_to_start_open_and_gunicorn_stops(tmp_path):
    code, output = run_app(tmp_path / "prod.db", command=procfile_command(free_port()), wait=20)
    assert code == 3, output  # gunicorn's "worker failed to boot": the master exits instead of looping
    assert "production mode refuses to start" in output and "Worker failed to boot" in output


def test_production_starts_with_everything_set(database):
    code, output = run_app(
        database,
        TASKSERVER_ENV="production",
        TASKSERVER_API_TOKENS=OPERATOR,
        TASKSERVER_DEVICE_TOKENS=FLEET,
        SECRET_KEY="s3cret",
        PORT="0",
    )
    assert code == -9, output  # still running after 3 s: it started
    assert "refuses" not in output


def test_unknown_environment_refuses_to_start_and_names_the_known_ones(tmp_path):
    code, output = run_app(tmp_path / "prod.db", TASKSERVER_ENV="prod")
    assert code == REFUSED_TO_START, output  # not an open development server
    assert "TASKSERVER_ENV='prod'" in output and "development, testing, production" in output


def test_a_test_config_mapping_ignores_the_developers_environment(monkeypatch, database):
    for name, value in {"ENV": "testing", "API_TOKENS": OPERATOR, "TASK_TIMEOUT": "7", "DATABASE": "x.db"}.items():
        monkeypatch.setenv(f"TASKSERVER_{name}", value)
    live = LiveServer(database, MAX_BODY_BYTES=4096)
    try:
        assert live.app.config["ENV_NAME"] == "development" and live.app.config["MAX_BODY_BYTES"] == 4096
        assert live.app.config["DATABASE"] == str(database)
        task_id = live.dispatch(expect=(202,))["task_id"]  # no operator token needed: API_TOKENS did not leak in
        assert live.get(f"/api/task/{task_id}").json()["task"]["timeout"] == 300
    finally:
        live.stop()


def test_development_mode_warns_that_it_is_open(caplog, database):
    with caplog.at_level(logging.WARNING, logger="taskserver"):
        LiveServer(database).stop()
    assert any("OPEN SERVER" in record.getMessage() for record in caplog.records)


# ---- limits ----


def test_oversized_body_is_413_json(server):
    body = json.dumps({"task_type": "DELIST", "data": {"product_ids": ["1" * 100] * 11_000}})
    response = server.post("/api/dispatch-task", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert server.get("/api/tasks").json()["total"] == 0


def test_oversized_socket_message_closes_only_that_connection(server, devices):
    bystander = devices("android_002")
    flooder = devices("android_001")
    flooder.sio.emit("task_progress", {"task_id": "x" * (2 * 1024 * 1024), "progress": 1})
    wait_until(lambda: not flooder.sio.connected, message="server to close the oversized connection")
    assert bystander.call("heartbeat", {"device_id": "android_002"})["success"]


def test_oversized_plain_websocket_frame_closes_the_connection(server):
    ws = websocket.create_connection(server.url.replace("http://", "ws://") + "/ws", timeout=5)
    ws.recv()
    with pytest.raises((websocket.WebSocketException, OSError)):
        ws.send("x" * (2 * 1024 * 1024))
        while True:
            ws.recv()
    assert server.get("/healthz").ok


def test_event_flood_is_rate_limited_without_slowing_others(database):
    live = LiveServer(database, DEVICE_EVENT_RATE=5, DEVICE_EVENT_BURST=10)
    try:
        flooder = Device(live.url, "android_001").connect()
        calm = Device(live.url, "android_002").connect()
        answers = [flooder.call("heartbeat", {"device_id": "android_001"}) for _ in range(30)]
        limited = [a for a in answers if a.get("error_code") == "RATE_LIMITED"]
        assert len(limited) >= 15, answers
        assert calm.call("heartbeat", {"device_id": "android_002"})["success"]
        task_id = live.dispatch(device_id="android_002")["task_id"]
        calm.wait("new_task")
        assert calm.result(task_id)["status"] == "completed"
        flooder.disconnect()
        calm.disconnect()
    finally:
        live.stop()


def test_dispatch_rate_limit_per_token(database):
    live = LiveServer(database, DISPATCH_RATE=1, DISPATCH_BURST=3)  # the fake clock stands still: no refill
    dispatch = {"task_type": "DELIST", "data": {"product_ids": ["1"]}}
    batch = {"task_type": "DELIST", "mode": "spread", "target": {"all": True}, "items": [{"product_ids": ["1"]}] * 5}
    try:
        codes = [live.post("/api/dispatch-task", json=dispatch) for _ in range(4)]
        assert [r.status_code for r in codes] == [202, 202, 202, 429]
        assert codes[3].json()["error_code"] == "RATE_LIMITED"
        limited_batch = live.post("/api/batches", json=batch)  # a batch is a dispatch request too
        assert limited_batch.status_code == 429 and limited_batch.json()["error_code"] == "RATE_LIMITED"
        assert live.get("/api/batches").status_code == 200  # reading is not limited
        live.clock.advance(1.0)  # one token back
        assert live.post("/api/batches", json=batch).status_code == 201
        assert live.post("/api/dispatch-task", json=dispatch).status_code == 429
        assert live.get("/api/tasks").json()["total"] == 3 + 5
    finally:
        live.stop()


# ---- browsers ----


def test_cors_is_same_origin_by_default(server):
    response = server.get("/api/tasks", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    refused = requests.get(
        server.url + "/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://evil.example"}, timeout=5
    )
    assert refused.status_code == 400
    ws = websocket.create_connection(
        server.url.replace("http://", "ws://") + "/ws", timeout=5, header=["Origin: http://evil.example"]
    )
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert frame.data == struct.pack("!H", 1008) + b"origin not allowed"  # a well-formed close: policy violation
    ws.close()


def test_configured_origin_is_allowed(database):
    live = LiveServer(database, CORS_ORIGINS=("https://console.example",))
    try:
        response = live.get("/api/tasks", headers={"Origin": "https://console.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://console.example"
        assert "Access-Control-Allow-Origin" not in live.get("/api/tasks", headers={"Origin": "http://evil"}).headers
    finally:
        live.stop()


# ---- nothing leaks ----


def test_tokens_never_reach_the_logs(secured, caplog):
    with caplog.at_level(logging.DEBUG):
        token = secured.post("/api/device/android_009/token").json()["token"]
        phone = Device(secured.url, "android_009", token=token).connect()
        phone.wait("register_success")
        anonymous(secured, "GET", "/api/tasks", headers={"Authorization": "Bearer wrong-token-xyz"})
        polling = socketio.Client(reconnection=False)
        polling.connect(f"{secured.url}?token={FLEET}", transports=["polling"], wait_timeout=5)
        sid = polling.get_sid("/")
        polling.call("device_register", {"device_id": "android_010"}, timeout=5)
        polling.disconnect()
        secured.dispatch()
        phone.disconnect()
    client_side = ("urllib3", "engineio.client", "socketio.client")  # this process also runs the test's clients
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(client_side))
    for secret in (OPERATOR, FLEET, token, "wrong-token-xyz", sid):
        assert secret not in text
