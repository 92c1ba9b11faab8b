"""Every HTTP error, from every layer, is the spec's JSON ``{success: false, message, error_code}``.

Routing (404/405), body parsing (INVALID_JSON), schema validation (VALIDATION_ERROR with ``errors`` naming each
bad field), the service (TASK_NOT_FOUND, DEVICE_NOT_FOUND, INVALID_STATE) and unexpected exceptions
(INTERNAL_ERROR) all answer in that shape, with the right status and without a stack trace or a file path.
A rejected dispatch stores nothing, and the server keeps answering afterwards.
"""

import pytest

from conftest import LiveServer
from taskserver.service import DispatchRequest

VALID_DISPATCH = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}}

# Text that would betray internals: stack traces, source paths, framework error pages.
LEAK_MARKERS = ("Traceback", 'File "', ".py", "/work/", "site-packages", "<html", "<!doctype", "werkzeug")


def assert_error(response, status, error_code, fields=()):
    """Check the spec's error shape and status; ``fields`` must each be named in ``errors``. Return the body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    text = response.text
    for marker in LEAK_MARKERS:
        assert marker.lower() not in text.lower(), f"{marker!r} leaked in {text}"
    body = response.json()
    assert body["success"] is False
    assert body["error_code"] == error_code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    if fields:
        assert isinstance(body.get("errors"), dict), body
        missing = set(fields) - set(body["errors"])
        assert not missing, f"errors does not name {missing}: {body}"
    return body


def total_tasks(server):
    """How many tasks ``GET /api/tasks`` counts."""
    response = server.get("/api/tasks")
    assert response.status_code == 200, response.text
    return response.json()["total"]


def assert_still_answers(server):
    """The server still serves ordinary requests."""
    assert server.get("/healthz").json() == {"success": True, "status": "ok"}
    assert server.get("/").json()["status"] == "running"


@pytest.fixture
def seeded(server):
    """A server that already holds one (pending) task, so "nothing stored" is measured against a non-zero total."""
    server.dispatch(**VALID_DISPATCH)
    assert total_tasks(server) == 1
    return server


def reject_dispatch(server, status, error_code, fields=(), **request):
    """POST a dispatch that must be refused; check the error, that no task was stored and that the server lives."""
    before = total_tasks(server)
    body = assert_error(server.post("/api/dispatch-task", **request), status, error_code, fields)
    assert total_tasks(server) == before, "a rejected dispatch stored a task"
    assert_still_answers(server)
    return body


# ---- routing ----


@pytest.mark.parametrize(
    "path", ["/nope", "/api/nope", "/api/task/x/unknown", "/api/tasks/", "/api/task/x/status/more", "/api/devices/x"]
)
def test_unknown_route_is_json_404(server, path):
    assert_error(server.get(path), 404, "NOT_FOUND")
    assert_still_answers(server)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api/tasks"),
        ("POST", "/api/devices"),
        ("GET", "/api/dispatch-task"),
        ("PUT", "/api/dispatch-task"),
        ("DELETE", "/api/task/task_x/status"),
        ("GET", "/api/task/task_x/cancel"),
        ("DELETE", "/"),
    ],
)
def test_wrong_method_is_json_405(server, method, path):
    response = server.session.request(method, server.url + path, timeout=10)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert_still_answers(server)


def test_405_names_the_allowed_methods(server):
    response = server.get("/api/dispatch-task")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]


# ---- the body of POST /api/dispatch-task ----


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{bad", id="unterminated"),
        pytest.param('{"task_type": "DELIST",}', id="trailing-comma"),
        pytest.param("{'task_type': 'DELIST'}", id="single-quotes"),
        pytest.param(b"\xff\xfe\x00{", id="not-utf8"),
        pytest.param("[" * 100_000, id="deeply-nested"),
    ],
)
def test_malformed_json_is_invalid_json(seeded, raw):
    reject_dispatch(seeded, 400, "INVALID_JSON", data=raw, headers={"Content-Type": "application/json; charset=utf-8"})


def test_malformed_json_is_invalid_json_whatever_the_content_type(seeded):
    reject_dispatch(seeded, 400, "INVALID_JSON", data="{bad", headers={"Content-Type": "text/plain"})


@pytest.mark.parametrize("raw", ['["DELIST"]', '"DELIST"', "42", "true"], ids=["array", "string", "number", "bool"])
def test_body_that_is_not_an_object_is_a_validation_error(seeded, raw):
    body = reject_dispatch(seeded, 400, "VALIDATION_ERROR", data=raw, headers={"Content-Type": "application/json"})
    assert body["errors"], body


def test_empty_body_names_the_missing_task_type(seeded):
    reject_dispatch(seeded, 400, "VALIDATION_ERROR", ["task_type"], data=b"")


def test_missing_task_type_is_named(seeded):
    reject_dispatch(seeded, 400, "VALIDATION_ERROR", ["task_type"], json={"data": {"product_ids": ["123"]}})


@pytest.mark.parametrize(
    "change, field",
    [
        ({"unexpected": 1}, "unexpected"),
        ({"task_type": 5}, "task_type"),
        ({"task_type": ""}, "task_type"),
        ({"priority": "high"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1001}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"timeout": "300"}, "timeout"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"device_id": ""}, "device_id"),
        ({"device_id": "d" * 200}, "device_id"),
        ({"device_id": 7}, "device_id"),
        ({"data": ["123"]}, "data"),
        ({"data": None}, "data"),
        ({"schedule_time": "someday"}, "schedule_time"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_bad_field_is_a_validation_error_naming_it(seeded, change, field):
    reject_dispatch(seeded, 400, "VALIDATION_ERROR", [field], json={**VALID_DISPATCH, **change})


def test_every_bad_field_is_named_at_once(seeded):
    body = {**VALID_DISPATCH, "priority": "high", "timeout": 0, "max_retries": 11, "unexpected": True}
    reject_dispatch(seeded, 400, "VALIDATION_ERROR", ["priority", "timeout", "max_retries", "unexpected"], json=body)


def test_too_long_idempotency_key_header_is_named(seeded):
    reject_dispatch(
        seeded,
        400,
        "VALIDATION_ERROR",
        ["Idempotency-Key"],
        json=VALID_DISPATCH,
        headers={"Idempotency-Key": "k" * 300},
    )


def test_unknown_device_is_device_not_found(seeded):
    reject_dispatch(seeded, 404, "DEVICE_NOT_FOUND", json={**VALID_DISPATCH, "device_id": "android_404"})


def test_unknown_task_type_is_refused(seeded):
    reject_dispatch(seeded, 400, "UNKNOWN_TASK_TYPE", json={"task_type": "MAKE_COFFEE", "data": {}})


def test_bad_task_data_is_named_under_data(seeded):
    body = reject_dispatch(
        seeded, 400, "VALIDATION_ERROR", ["data"], json={"task_type": "DELIST", "data": {"product_ids": []}}
    )
    assert "product_ids" in body["errors"]["data"], body


# ---- tasks by id ----


@pytest.mark.parametrize("task_id", ["task_does_not_exist", "你好", "x" * 300])
def test_unknown_task_on_status_is_task_not_found(server, task_id):
    assert_error(server.get(f"/api/task/{task_id}/status"), 404, "TASK_NOT_FOUND")
    assert_still_answers(server)


def test_unknown_task_on_cancel_is_task_not_found(seeded):
    before = total_tasks(seeded)
    assert_error(seeded.post("/api/task/task_does_not_exist/cancel"), 404, "TASK_NOT_FOUND")
    assert total_tasks(seeded) == before
    assert_still_answers(seeded)


def test_cancelling_an_ended_task_is_invalid_state(server):
    task_id = server.dispatch(**VALID_DISPATCH)["task_id"]
    assert server.post(f"/api/task/{task_id}/cancel").status_code == 200
    assert_error(server.post(f"/api/task/{task_id}/cancel"), 409, "INVALID_STATE")
    assert server.task(task_id)["status"] == "cancelled"


# ---- the query of GET /api/tasks ----


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=bogus", "status"),
        ("status=pending&status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
    ],
)
def test_bad_list_query_is_a_validation_error_naming_it(seeded, query, field):
    assert_error(seeded.get(f"/api/tasks?{query}"), 400, "VALIDATION_ERROR", [field])
    assert_still_answers(seeded)


def test_every_bad_query_value_is_named_at_once(server):
    response = server.get("/api/tasks?status=bogus&limit=0&offset=-1")
    assert_error(response, 400, "VALIDATION_ERROR", ["status", "limit", "offset"])


# ---- the unexpected ----


def test_unexpected_exception_is_a_bare_internal_error(server, monkeypatch):
    def explode():
        raise RuntimeError("secret /etc/path")

    monkeypatch.setattr(server.service.store, "list_devices", explode)
    response = server.get("/api/devices")
    body = assert_error(response, 500, "INTERNAL_ERROR")
    for secret in ("secret", "/etc/path", "RuntimeError", "explode"):
        assert secret not in response.text, body
    assert set(body) == {"success", "message", "error_code"}
    assert_still_answers(server)
    assert server.dispatch(**VALID_DISPATCH)["success"] is True


# ---- hostile input: what JSON allows but nothing can keep ----

DELIST = '{"task_type": "DELIST", "data": {"product_ids": ["123"]}'
UPLOAD = '{"task_type": "UPLOAD", "data": {"product_data": {"title": "t"}, "schedule_time": %s}}'
HUGE = "9" * 400
DEEP = "[" * 40 + "]" * 40


@pytest.mark.parametrize(
    "raw, field",
    [
        (DELIST + ', "schedule_time": "9999-12-31T23:59:59-01:00"}', "schedule_time"),
        (DELIST + ', "schedule_time": "0001-01-01T00:00:00+01:00"}', "schedule_time"),
        (UPLOAD % '"9999-12-31T23:59:59-01:00"', "data"),
        (UPLOAD % '"0001-01-01T00:00:00+01:00"', "data"),
        (DELIST + f', "schedule_time": {HUGE}}}', "schedule_time"),
        (UPLOAD % HUGE, "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "x": "\\ud800"}}', "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "\\udfff": 1}}', "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["\\ud800"]}}', "data"),
        (DELIST + ', "device_id": "\\ud800"}', "device_id"),
        ('{"task_type": "DELIST\\ud800", "data": {}}', "task_type"),
        (DELIST + ', "idempotency_key": "k\\ud800"}', "idempotency_key"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "x": NaN}}', "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "x": -Infinity}}', "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "x": 1e999}}', "data"),
        ('{"task_type": "DELIST", "data": {"product_ids": ["1"], "x": 99999999999999999999}}', "data"),
        (f'{{"task_type": "DELIST", "data": {{"product_ids": ["1"], "x": {HUGE}}}}}', "data"),
        (f'{{"task_type": "DELIST", "data": {{"product_ids": ["1"], "x": {DEEP}}}}}', "data"),
        (DELIST + ', "device_id": "a/b"}', "device_id"),
    ],
    ids=lambda value: repr(value)[-45:],
)
def test_hostile_dispatch_is_a_validation_error_naming_the_field(seeded, raw, field):
    reject_dispatch(seeded, 400, "VALIDATION_ERROR", [field], data=raw, headers={"Content-Type": "application/json"})


def test_surrogate_as_a_top_level_key_is_a_validation_error(seeded):
    raw = DELIST + ', "\\ud800": 1}'
    reject_dispatch(
        seeded, 400, "VALIDATION_ERROR", ["_schema"], data=raw, headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    "query, field",
    [
        ("offset=" + "9" * 30, "offset"),
        ("created_after=9999-12-31T23:59:59-01:00", "created_after"),
        ("created_before=0001-01-01T00:00:00%2B01:00", "created_before"),
    ],
    ids=lambda value: value[:30],
)
def test_hostile_list_query_is_a_validation_error(seeded, query, field):
    assert_error(seeded.get(f"/api/tasks?{query}"), 400, "VALIDATION_ERROR", [field])
    assert_still_answers(seeded)


def test_token_for_an_id_that_cannot_register_is_a_validation_error(server):
    assert_error(server.post("/api/device/a b/token"), 400, "VALIDATION_ERROR", ["device_id"])


@pytest.mark.parametrize("not_before", [253402304399.0, -62135600400.0, 1e300])
def test_a_stored_time_out_of_range_is_shown_not_a_500(server, not_before):
    """A task an older server stored with a schedule beyond year 9999 (or before year 1) can still be shown."""
    task, _ = server.service.dispatcher.dispatch(
        DispatchRequest("DELIST", {"product_ids": ["1"]}, not_before=not_before)
    )
    server.service.store.durable()
    response = server.get(f"/api/task/{task.task_id}")
    assert response.status_code == 200, response.text
    assert response.json()["task"]["not_before"] in ("9999-12-31T23:59:59", "0001-01-01T00:00:00")
    assert server.get("/api/tasks").status_code == 200


def test_nan_kept_by_an_older_server_is_shown_as_null(tmp_path):
    """An older server stored NaN and Infinity in a task's data; after an upgrade the task shows as strict JSON."""
    older = LiveServer(tmp_path / "old.db")
    data = {"product_ids": ["1"], "x": float("nan"), "y": [float("inf"), float("-inf")]}
    task, _ = older.service.dispatcher.dispatch(DispatchRequest("DELIST", data))
    older.stop()
    upgraded = LiveServer(tmp_path / "old.db")
    try:
        for path in (f"/api/task/{task.task_id}", "/api/tasks"):
            response = upgraded.get(path)
            assert response.status_code == 200 and "NaN" not in response.text and "Infinity" not in response.text
        assert upgraded.get(f"/api/task/{task.task_id}").json()["task"]["data"]["y"] == [None, None]
    finally:
        upgraded.stop()
