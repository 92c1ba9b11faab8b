"""``GET /metrics`` on the real server: Prometheus text from prometheus-client, one registry per app."""

from prometheus_client.parser import text_string_to_metric_families

from conftest import LiveServer, wait_until


def scrape(server):
    """Every sample of ``GET /metrics`` as ``{(name, frozenset(labels)): value}``."""
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_and_latency_follow_the_lifecycle(server, devices):
    first, second = devices("phone_a"), devices("phone_b", ack_new_task=False)
    done = server.dispatch(device_id="phone_a")["task_id"]
    first.wait("new_task")
    server.clock.advance(12)
    first.result(done)  # success after 12 s

    retried = server.dispatch(device_id="phone_b", max_retries=1, timeout=30)["task_id"]
    second.wait("new_task")
    server.sweep(advance=30)  # timeout, retry due in 5 s (pinned: it waits for phone_b)
    server.sweep(advance=5)
    second.wait("new_task", count=2)
    second.result(retried, success=False, error_code="APP_CRASHED")  # failure after 0 s, no retries left

    cancelled = server.dispatch(device_id="phone_b", task_type="COLLECT", data={"target_url": "http://x.io"})
    server.post(f"/api/task/{cancelled['task_id']}/cancel")
    second.call("heartbeat", {"device_id": "phone_b"})

    samples = scrape(server)
    assert value(samples, "taskserver_tasks_created_total", task_type="DELIST") == 2
    assert value(samples, "taskserver_tasks_created_total", task_type="COLLECT") == 1
    assert value(samples, "taskserver_dispatches_total", task_type="DELIST") == 3
    assert value(samples, "taskserver_results_total", task_type="DELIST", outcome="success") == 1
    assert value(samples, "taskserver_results_total", task_type="DELIST", outcome="failure") == 1
    assert value(samples, "taskserver_timeouts_total", task_type="DELIST") == 1
    assert value(samples, "taskserver_retries_total", task_type="DELIST") == 1
    assert value(samples, "taskserver_cancels_total", task_type="COLLECT") == 1
    assert value(samples, "taskserver_dispatch_to_result_seconds_count", task_type="DELIST") == 2
    assert value(samples, "taskserver_dispatch_to_result_seconds_sum", task_type="DELIST") == 12
    assert value(samples, "taskserver_dispatch_to_result_seconds_bucket", task_type="DELIST", le="10.0") == 1
    assert value(samples, "taskserver_dispatch_to_result_seconds_bucket", task_type="DELIST", le="30.0") == 2
    assert value(samples, "taskserver_device_events_total", event="device_register") == 2
    assert value(samples, "taskserver_device_events_total", event="task_result") == 2
    assert value(samples, "taskserver_device_events_total", event="heartbeat") == 1
    assert value(samples, "taskserver_device_events_total", event="new_task_ack") >= 1
    assert ("taskserver_timeouts_total", frozenset({("task_type", "UPLOAD")})) in samples  # known types start at 0


def test_gauges_are_read_from_the_store_at_scrape_time(server, devices):
    phone, drained = devices("phone_a"), devices("phone_b")
    gone = devices("phone_c")
    gone.disconnect()
    server.post("/api/device/phone_b/disable")
    server.dispatch(device_id="phone_a")
    phone.wait("new_task")
    server.dispatch(expect=(202,), device_id="phone_b")
    wait_until(lambda: server.service.store.get_device("phone_c").status == "offline")

    samples = scrape(server)
    assert value(samples, "taskserver_devices", status="busy") == 1
    assert value(samples, "taskserver_devices", status="online") == 1
    assert value(samples, "taskserver_devices", status="offline") == 1
    assert value(samples, "taskserver_devices_disabled") == 1
    assert value(samples, "taskserver_tasks", status="pending", task_type="DELIST") == 1
    assert value(samples, "taskserver_tasks", status="dispatched", task_type="DELIST") == 1  # not started yet
    assert ("taskserver_tasks", frozenset({("status", "failed"), ("task_type", "DELIST")})) in samples
    assert value(samples, "taskserver_watchdog_running") == 0
    assert drained.sio.connected

    server.post("/api/device/phone_b/enable")
    samples = scrape(server)
    assert value(samples, "taskserver_devices_disabled") == 0
    assert value(samples, "taskserver_tasks", status="pending", task_type="DELIST") == 0


def test_each_app_has_its_own_registry(server, tmp_path, devices):
    other = LiveServer(tmp_path / "other.db", WATCHDOG_INTERVAL=0.05)
    try:
        server.dispatch(expect=(202,))
        assert value(scrape(server), "taskserver_tasks_created_total", task_type="DELIST") == 1
        assert value(scrape(other), "taskserver_tasks_created_total", task_type="DELIST") == 0
        watchdog = other.app.extensions["watchdog"]
        wait_until(lambda: watchdog.last_sweep_at is not None, message="a first sweep")
        samples = scrape(other)
        assert value(samples, "taskserver_watchdog_running") == 1
        assert 0 <= value(samples, "taskserver_watchdog_lag_seconds") < 5
        assert 0 <= value(samples, "taskserver_watchdog_last_sweep_age_seconds") < 5
    finally:
        other.app.extensions["watchdog"].stop()
        other.stop()
