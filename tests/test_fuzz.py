"""Property-based fuzzing (hypothesis) of every endpoint and every device event with random and hostile input:
never a 5xx, every refusal in the documented error shape, and a refused request changes nothing."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Device, LiveServer

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)

text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "DELIST", "COLLECT", "UPLOAD", "pending", "../../etc/passwd", "' OR 1=1 --", "\x00", "9" * 400, "😀" * 50]
)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5), max_leaves=20
)
dispatch_keys = st.sampled_from(
    ["task_type", "data", "device_id", "priority", "timeout", "max_retries", "schedule_time", "idempotency_key"]
)
dispatch_bodies = json_values | st.dictionaries(dispatch_keys, json_values, max_size=8)
task_data = st.dictionaries(
    st.sampled_from(["product_ids", "batch_size", "target_url", "max_items", "product_data", "schedule_time", "x"]),
    json_values,
    max_size=5,
)
typed_bodies = st.fixed_dictionaries(
    {"task_type": st.sampled_from(["DELIST", "COLLECT", "UPLOAD", "NOPE"]), "data": task_data},
    optional={"priority": json_values, "timeout": json_values, "device_id": json_values},
)


def assert_error_shape(response):
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert body["success"] is False and isinstance(body["message"], str) and isinstance(body["error_code"], str)
    return body


def task_total(server):
    return server.get("/api/tasks").json()["total"]


@FUZZ
@given(body=dispatch_bodies | typed_bodies)
def test_dispatch_never_fails_badly(server, body):
    before = task_total(server)
    response = server.post("/api/dispatch-task", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_error_shape(response)
    assert task_total(server) == before + (1 if response.status_code in (200, 202) else 0)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_dispatch_with_raw_bytes(server, raw):
    before = task_total(server)
    response = server.post("/api/dispatch-task", data=raw, headers={"Content-Type": "application/json"})
    assert_error_shape(response)
    if response.status_code >= 400:
        assert task_total(server) == before


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["status", "limit", "offset", "task_type", "created_after"]), text))
def test_task_list_queries(server, params):
    assert_error_shape(server.get("/api/tasks", params=params))
    assert_error_shape(server.get("/api/devices", params={"status": params.get("status", "")}))


@FUZZ
@given(identifier=text.filter(lambda s: "/" not in s and s not in (".", "..")))
def test_paths_with_any_id(server, identifier):
    for method, path in [
        ("GET", f"/api/task/{identifier}/status"),
        ("GET", f"/api/task/{identifier}"),
        ("GET", f"/api/task/{identifier}/events"),
        ("POST", f"/api/task/{identifier}/cancel"),
        ("GET", f"/api/device/{identifier}"),
        ("POST", f"/api/device/{identifier}/disable"),
        ("DELETE", f"/api/device/{identifier}"),
    ]:
        assert_error_shape(server.session.request(method, server.url + path, timeout=10))


@pytest.fixture
def unlimited(tmp_path):
    """A server without the per-connection event rate limit, so every fuzzed event reaches the handlers."""
    live = LiveServer(tmp_path / "fuzz.db", DEVICE_EVENT_RATE=0)
    yield live
    live.stop()


@pytest.fixture
def phone(unlimited):
    device = Device(unlimited.url, "fuzz_phone").connect()
    yield device
    device.disconnect()


@FUZZ
@given(
    event=st.sampled_from(["device_register", "heartbeat", "task_progress", "task_result", "fuzz"]),
    payload=json_values | st.dictionaries(st.sampled_from(["device_id", "task_id", "progress", "result"]), json_values),
)
def test_device_events_never_fail_badly(unlimited, phone, event, payload):
    server = unlimited
    devices_before = server.get("/api/devices").json()["devices"]
    ack = phone.call(event, payload)
    assert isinstance(ack, dict) and isinstance(ack["success"], bool), ack
    if not ack["success"]:
        assert isinstance(ack["error_code"], str) and ack["error_code"] != "INTERNAL_ERROR" and ack["message"]
        assert server.get("/api/devices").json()["devices"] == devices_before
    assert phone.sio.connected
