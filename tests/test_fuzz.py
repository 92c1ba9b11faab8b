"""Property-based fuzzing (hypothesis) of every endpoint and every device event with random and hostile input:
never a 5xx, every refusal in the documented error shape, and a refused request changes nothing."""

import json
from urllib.parse import quote

import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Device, LiveServer, wait_until
from taskserver import schemas

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)

# Hostile classes: surrogates and control characters in text, times out of range once shifted by their time zone,
# integers beyond 64 bits (and beyond 100 digits), NaN and infinities, nesting deeper than anything keeps.
HOSTILE_TEXT = ["", "DELIST", "pending", "../../etc/passwd", "' OR 1=1 --", "\x00", "9" * 400, "😀" * 50, "\ud800"]
EXTREME_TIMES = [
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59",
    "1969-12-31T23:59:59Z",
]
text = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(HOSTILE_TEXT)
iso_times = st.sampled_from(EXTREME_TIMES) | st.builds(
    lambda moment, zone: moment.isoformat() + zone, st.datetimes(), st.sampled_from(["", "Z", "+14:00", "-12:00"])
)
integers = st.integers(-(2**70), 2**70) | st.sampled_from([2**63, -(2**63) - 1, 10**30, 10**100, 10**400, -(10**400)])
deep = st.integers(30, 60).map(lambda depth: json.loads("[" * depth + "]" * depth))
scalars = st.none() | st.booleans() | integers | st.floats() | text | iso_times
json_values = (
    st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5), max_leaves=20
    )
    | deep
)
# Query strings and paths are text a URL can carry (a client cannot even encode a lone surrogate into one).
url_text = (
    st.text(st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from([h for h in HOSTILE_TEXT if h != "\ud800"] + EXTREME_TIMES + ["9" * 30, "-1", "1e3", "NaN"])
    | integers.map(str)
)


def keys_of(*schema_classes):
    """Every field name of these schemas: the fuzz reaches each field the server reads."""
    return sorted({name for schema_class in schema_classes for name in schema_class().fields})


def objects_of(*schema_classes, extra=()):
    """Objects whose keys are those of the schemas (plus ``extra``), each with a hostile or ordinary value."""
    return st.dictionaries(st.sampled_from(keys_of(*schema_classes) + list(extra)), json_values, max_size=8)


dispatch_bodies = json_values | objects_of(schemas.DispatchSchema)
data_schemas = (schemas.DelistDataSchema, schemas.CollectDataSchema, schemas.UploadDataSchema)
task_data = objects_of(*data_schemas, extra=["x"]) | st.fixed_dictionaries(
    {"product_ids": st.lists(text, min_size=1, max_size=3)}
)
product_data = st.fixed_dictionaries({"title": text}) | objects_of(schemas.ProductDataSchema)
typed_bodies = st.fixed_dictionaries(
    {"task_type": st.sampled_from(["DELIST", "COLLECT", "UPLOAD", "NOPE"]), "data": task_data},
    optional={key: json_values for key in keys_of(schemas.DispatchSchema) if key not in ("task_type", "data")},
)
upload_bodies = st.fixed_dictionaries(
    {"task_type": st.just("UPLOAD"), "data": st.fixed_dictionaries({"product_data": product_data})},
    optional={"schedule_time": integers | iso_times | st.floats()},
)
results = st.fixed_dictionaries({"success": st.booleans()}) | objects_of(schemas.ResultSchema)
device_infos = objects_of(schemas.DeviceInfoSchema, extra=["x"])
EVENT_SCHEMAS = {
    "device_register": schemas.DeviceRegisterSchema,
    "heartbeat": schemas.HeartbeatSchema,
    "task_progress": schemas.TaskProgressSchema,
    "task_result": schemas.TaskResultSchema,
}
SPECIAL = {"result": results, "device_info": device_infos, "timestamp": integers | iso_times | st.floats()}


def payloads_of(schema_class):
    """A socket payload for one event: each of its fields possibly present, hostile values preferred where typed."""
    fields = keys_of(schema_class)
    return st.fixed_dictionaries({}, optional={key: SPECIAL.get(key, json_values) for key in fields})


def assert_error_shape(response):
    assert response.status_code < 500, response.text
    body = strict_json(response.text)
    if response.status_code >= 400:
        assert body["success"] is False and isinstance(body["message"], str) and isinstance(body["error_code"], str)
    return body


def strict_json(text):
    """Parse JSON as a strict client would: NaN or Infinity in an answer is a bug."""

    def refuse(constant):
        raise AssertionError(f"{constant} in an answer: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def task_total(server):
    return server.get("/api/tasks").json()["total"]


def assert_showable(server, task_id):
    """Every stored task can always be shown, in every view, as strict JSON."""
    for path in (f"/api/task/{task_id}", f"/api/task/{task_id}/status", f"/api/task/{task_id}/events", "/api/tasks"):
        response = server.get(path)
        assert response.status_code == 200, response.text
        strict_json(response.text)


@FUZZ
@given(body=dispatch_bodies | typed_bodies | upload_bodies)
def test_dispatch_never_fails_badly(server, body):
    before = task_total(server)
    response = server.post("/api/dispatch-task", data=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = assert_error_shape(response)
    assert task_total(server) == before + (1 if response.status_code in (200, 202) else 0)
    if response.status_code in (200, 202):
        assert_showable(server, answer["task_id"])


VALID_TASK = {"task_type": "DELIST", "data": {"product_ids": ["123"]}}
CRONS = ["0 9 * * *", "*/5 * * * *", "0 0 31 4 *", "0 9 * *", "61 * * * *", "R 9 * * *", "0 0 L * *", "0 0 * * 5#3"]
ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Asia/Nowhere", "../../etc/passwd", "localtime"]
scheduled_tasks = typed_bodies | st.fixed_dictionaries(
    {"task_type": st.just("DELIST"), "data": st.just({"product_ids": ["123"]})},
    optional={key: json_values for key in keys_of(schemas.DispatchSchema) if key not in ("task_type", "data")},
)
schedule_fields = {
    "name": st.just("每日下架") | text,
    "cron": st.sampled_from(CRONS) | text,
    "timezone": st.sampled_from(ZONES) | text,
    "task": scheduled_tasks,
    "batch": objects_of(schemas.BatchSchema, schemas.BatchTargetSchema),
    "misfire": st.sampled_from(["coalesce", "skip"]) | json_values,
    "enabled": st.booleans() | json_values,
}
schedule_bodies = json_values | objects_of(schemas.ScheduleSchema) | st.fixed_dictionaries({}, optional=schedule_fields)
# stored, so that changes to a schedule are fuzzed too
good_schedules = st.fixed_dictionaries(
    {"name": st.just("每日下架"), "cron": st.sampled_from(CRONS[:2]), "task": st.just(VALID_TASK)},
    optional={"timezone": st.sampled_from(ZONES[:3]), "misfire": st.sampled_from(["coalesce", "skip"])},
)
good_changes = st.fixed_dictionaries(
    {}, optional={"cron": st.sampled_from(CRONS[:2]), "enabled": st.booleans(), "task": st.just(VALID_TASK)}
)


def schedule_total(server):
    return server.get("/api/schedules").json()["total"]


@FUZZ
@given(body=good_schedules | schedule_bodies, change=good_changes | schedule_bodies)
def test_schedules_never_fail_badly(server, body, change):
    before = schedule_total(server)
    response = server.post("/api/schedules", data=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = assert_error_shape(response)
    assert schedule_total(server) == before + (1 if response.status_code == 201 else 0)
    if response.status_code != 201:
        return
    path = f"/api/schedule/{answer['schedule']['schedule_id']}"
    shown = strict_json(server.get(path).text)["schedule"]
    response = server.session.patch(server.url + path, data=json.dumps(change), timeout=10)
    assert_error_shape(response)
    if response.status_code >= 400:
        assert strict_json(server.get(path).text)["schedule"] == shown, "a refused change changed the schedule"


@FUZZ
@given(raw=st.binary(max_size=200))
def test_dispatch_with_raw_bytes(server, raw):
    before = task_total(server)
    response = server.post("/api/dispatch-task", data=raw, headers={"Content-Type": "application/json"})
    assert_error_shape(response)
    if response.status_code >= 400:
        assert task_total(server) == before


def query_params(*schema_classes):
    return st.dictionaries(st.sampled_from(keys_of(*schema_classes)), url_text | st.lists(url_text, max_size=3))


@FUZZ
@given(
    tasks=query_params(schemas.TaskListQuerySchema),
    devices=query_params(schemas.DeviceListQuerySchema),
    stats=query_params(schemas.StatsQuerySchema),
)
def test_list_and_stats_queries(server, tasks, devices, stats):
    assert_error_shape(server.get("/api/tasks", params=tasks))
    assert_error_shape(server.get("/api/devices", params=devices))
    assert_error_shape(server.get("/api/stats/throughput", params=stats))
    assert_error_shape(server.get("/api/stats/devices", params=stats))


@FUZZ
@given(identifier=url_text.filter(lambda s: "/" not in s and s not in (".", "..")))
def test_paths_with_any_id(server, identifier):
    for method, path in [
        ("GET", f"/api/task/{identifier}/status"),
        ("GET", f"/api/task/{identifier}"),
        ("GET", f"/api/task/{identifier}/events"),
        ("POST", f"/api/task/{identifier}/cancel"),
        ("GET", f"/api/device/{identifier}"),
        ("POST", f"/api/device/{identifier}/disable"),
        ("POST", f"/api/device/{identifier}/enable"),
        ("POST", f"/api/device/{identifier}/token"),
        ("DELETE", f"/api/device/{identifier}/token"),
        ("DELETE", f"/api/device/{identifier}"),
        ("GET", f"/api/schedule/{identifier}"),
        ("PATCH", f"/api/schedule/{identifier}"),
        ("DELETE", f"/api/schedule/{identifier}"),
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
    device = Device(unlimited.url, "fuzz_phone", max_concurrent_tasks=100).connect()
    yield device
    device.disconnect()


def assert_refusal(ack):
    assert isinstance(ack, dict) and isinstance(ack["success"], bool), ack
    if not ack["success"]:
        assert isinstance(ack["error_code"], str) and ack["error_code"] != "INTERNAL_ERROR" and ack["message"]
    return ack


@FUZZ
@given(
    event=st.sampled_from([*EVENT_SCHEMAS, "fuzz"]) | json_values,
    payload=json_values | st.one_of(*(payloads_of(schema) for schema in EVENT_SCHEMAS.values())),
)
def test_device_events_never_fail_badly(unlimited, phone, event, payload):
    server = unlimited
    devices_before = server.get("/api/devices").json()["devices"]
    errors_before = len(phone.events["error"])
    ack = assert_refusal(phone.call(event, payload))
    if not ack["success"]:
        assert phone.wait("error", count=errors_before + 1)["error_code"] == ack["error_code"]
        assert server.get("/api/devices").json()["devices"] == devices_before
    assert phone.sio.connected
    assert_error_shape(server.get("/api/devices"))


@FUZZ
@given(report=payloads_of(schemas.TaskProgressSchema) | payloads_of(schemas.TaskResultSchema))
def test_reports_on_a_real_task_never_fail_badly(unlimited, phone, report):
    server = unlimited
    task_id = server.dispatch(device_id="fuzz_phone")["task_id"]
    event = "task_result" if "result" in report else "task_progress"
    assert_refusal(phone.call(event, {**report, "task_id": task_id}))
    assert_showable(server, task_id)
    server.post(f"/api/task/{task_id}/cancel")


@FUZZ
@given(token=json_values)
def test_connect_tokens_never_fail_badly(unlimited, token):
    client, refusals = Device(unlimited.url, "fuzz_connect", token=token), []
    client.sio.on("connect_error", refusals.append)
    try:
        client.connect(register=False)
    except socketio.exceptions.ConnectionError:
        assert refusals and refusals[0]["data"]["error_code"] != "INTERNAL_ERROR", refusals
    finally:
        client.disconnect()
    assert unlimited.get("/healthz").status_code == 200


# ---- every device id that registers can be managed over HTTP ----

DEVICE_IDS = st.from_regex(rf"\A{schemas.DEVICE_ID_PATTERN}\Z").filter(lambda s: len(s) <= schemas.MAX_ID)


def manage_over_http(server, device_id):
    """Fetch, disable, enable, give a token, revoke it, and (once offline) delete the device, by its id in the URL."""
    path = f"/api/device/{quote(device_id, safe='')}"
    request = server.session.request
    assert server.get(path).json()["device"]["device_id"] == device_id
    assert server.post(path + "/disable").json()["device"]["disabled"] is True
    assert server.post(path + "/enable").json()["device"]["disabled"] is False
    token = server.post(path + "/token")
    assert token.status_code == 201 and token.json()["device_id"] == device_id, token.text
    assert request("DELETE", server.url + path + "/token", timeout=10).json()["device_id"] == device_id
    return path


@FUZZ
@given(device_id=DEVICE_IDS | text)
def test_every_device_id_that_registers_can_be_managed(server, device_id):
    phone = Device(server.url, device_id).connect(register=False)
    ack = phone.call("device_register", {"device_id": device_id})
    if not ack["success"]:
        phone.disconnect()
        assert ack["error_code"] == "VALIDATION_ERROR" and "device_id" in ack["errors"], ack
        return
    path = manage_over_http(server, device_id)
    phone.disconnect()
    wait_until(lambda: server.get(path).json()["device"]["status"] == "offline", message="device offline")
    deleted = server.session.request("DELETE", server.url + path, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["device_id"] == device_id, deleted.text
    assert server.get(path).json()["error_code"] == "DEVICE_NOT_FOUND"
