"""The operator CLI's fleet commands against a real server and real devices: tags, dispatch by tags, batches.

As in ``test_cli.py``: ``--wait`` and exit codes run the CLI as a subprocess, tables use click's runner in this
process, and the test drives each device's reports, waiting until the CLI has shown one before sending the next."""

import json

from test_cli import ANSI, CliProcess, invoke, rows, run

from taskserver.cli.client import Exit

DELIST = json.dumps({"product_ids": ["1", "2"]})


def batch_wait(server, *args, terminal=False):
    """``batch DELIST ARGS --wait`` polling every 20 ms, in a subprocess."""
    return CliProcess("--url", server.url, "batch", "DELIST", *args, "--wait", "--interval", "0.02", terminal=terminal)


def only_batch(server):
    """The id of the one batch on the server."""
    [batch] = server.get("/api/batches").json()["batches"]
    return batch["batch_id"]


def batch_tasks(server, batch_id):
    return server.get(f"/api/tasks?batch_id={batch_id}").json()["tasks"]


# ---- tags ----


def test_tag_sets_a_devices_operator_tags_and_devices_lists_by_tag(server, devices):
    devices("phone_1", tags=["android13"])
    devices("phone_2")
    tagged = invoke(server, "tag", "phone_1", "shopA", "vip,floor1")
    assert tagged.exit_code == 0, tagged.output
    assert tagged.output.splitlines() == [
        "phone_1: 设备标签已更新",
        "tags: android13, floor1, shopA, vip (registered: android13; operator: floor1, shopA, vip)",
    ]
    assert server.get("/api/device/phone_1").json()["device"]["operator_tags"] == ["floor1", "shopA", "vip"]

    listed = invoke(server, "devices", "--tag", "shopA", "--tag", "android13")
    assert listed.exit_code == 0, listed.output
    [row] = rows(listed.output, "phone_1")
    assert row[6] == "android13, floor1, shopA, vip"
    assert rows(listed.output, "phone_2") == [] and "1 devices" in listed.output
    assert "0 devices" in invoke(server, "devices", "--tag", "shopA,nowhere").output

    cleared = invoke(server, "tag", "phone_1", "--clear")
    assert cleared.exit_code == 0
    assert cleared.output.splitlines()[1] == "tags: android13 (registered: android13; operator: -)"
    invoke(server, "tag", "phone_1", "vip")
    assert invoke(server, "tag", "phone_1").exit_code == 0  # no TAG clears them too
    assert server.get("/api/device/phone_1").json()["device"]["operator_tags"] == []

    both = invoke(server, "tag", "phone_1", "vip", "--clear")
    assert both.exit_code == Exit.USAGE and "--clear and TAGS do not go together" in both.output
    code, _out, err = run(server, "tag", "ghost", "vip")
    assert code == Exit.REFUSED and err.strip() == "Error: 设备 ghost 不存在 (DEVICE_NOT_FOUND, HTTP 404)"


def test_dispatch_with_tags_goes_to_a_device_with_all_of_them_and_not_with_device(server, devices):
    plain = devices("plain")
    tagged = devices("tagged", tags=["shopA"])
    invoke(server, "tag", "tagged", "vip")
    sent = invoke(server, "dispatch", "DELIST", "--data", DELIST, "--tags", "shopA", "--tags", "vip")
    assert sent.exit_code == 0, sent.output
    task_id = tagged.wait("new_task")["task_id"]
    assert sent.output.strip() == f"task {task_id} dispatched on tagged: 任务分发成功"
    assert server.get(f"/api/task/{task_id}").json()["task"]["tags"] == ["shopA", "vip"]
    assert plain.events["new_task"] == []

    code, out, err = run(server, "dispatch", "DELIST", "--data", DELIST, "--tags", "shopA", "--device", "tagged")
    assert code == Exit.USAGE and out == ""
    assert "--tags and --device do not go together" in err
    assert server.get("/api/tasks").json()["total"] == 1


# ---- batch --wait: progress over the whole batch, and its outcome as the exit code ----


def test_batch_wait_shows_the_batchs_progress_and_exits_0_when_every_task_completes(server, devices):
    phones = [devices(f"phone_{n}", tags=["shopA"]) for n in range(3)]
    other = devices("other")
    cli_process = batch_wait(server, "--each", "--tags", "shopA", "--data", DELIST)
    task_ids = [phone.wait("new_task")["task_id"] for phone in phones]
    phones[0].progress(task_ids[0], 50, "已下架 1/2")
    cli_process.wait_for_output("running 16.7% 1 running, 2 dispatched\n")  # not a terminal: one line per change
    phones[0].result(task_ids[0], processed_count=2)
    cli_process.wait_for_output("running 33.3% 1 completed, 2 dispatched\n")
    for phone, task_id in zip(phones[1:], task_ids[1:], strict=True):
        phone.result(task_id, processed_count=2)

    code, out, err = cli_process.finish()
    batch_id = only_batch(server)
    assert code == Exit.OK == 0, err
    assert out.splitlines() == [f"batch {batch_id} created: 3 tasks", f"batch {batch_id} completed: 3 completed"]
    assert err.splitlines()[-1] == "completed 100% 3 completed"
    assert other.events["new_task"] == []
    assert sorted(task["task_id"] for task in batch_tasks(server, batch_id)) == sorted(task_ids)


def test_batch_wait_draws_a_bar_and_exits_1_when_a_task_fails(server, devices):
    first, second = devices("phone_1"), devices("phone_2")
    cli_process = batch_wait(server, "--each", "--devices", "phone_1,phone_2", "--data", DELIST, terminal=True)
    failing = first.wait("new_task")["task_id"]
    first.result(failing, success=False, error_code="ELEMENT_NOT_FOUND", message="找不到下架按钮")
    cli_process.wait_for_output("1 failed")
    second.result(second.wait("new_task")["task_id"], processed_count=2)

    code, out, err = cli_process.finish()
    batch_id = only_batch(server)
    assert code == Exit.FAILED == 1, err
    assert ANSI.sub("", out).splitlines()[1:] == [
        f"batch {batch_id} completed: 1 completed, 1 failed",
        f"the failed tasks: tasks --batch {batch_id} --status failed",
    ]
    assert "━" in err and "\x1b[" in err  # drawn as a bar, on a terminal


def test_batch_wait_exits_1_when_the_abort_rule_stops_the_batch(server, devices, tmp_path):
    phone = devices("phone_1", tags=["shopA"])
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"product_ids": [str(n)]}) + "\n\n" for n in range(3)))
    rollout = ["--max-in-flight", "1", "--abort-ratio", "0.5", "--abort-min", "1", "--priority", "3", "--timeout", "60"]
    cli_process = batch_wait(server, "--spread", "--tags", "shopA", "--items", str(items), *rollout, "--json")
    phone.result(phone.wait("new_task")["task_id"], success=False, error_code="LOGIN_EXPIRED")

    code, out, err = cli_process.finish()
    batch_id = only_batch(server)
    assert code == Exit.FAILED, err
    shown = json.loads(out)["batch"]
    assert (shown["batch_id"], shown["status"], shown["counts"]["failed"]) == (batch_id, "aborted", 1)
    assert (shown["max_in_flight"], shown["abort"]) == (1, {"failure_ratio": 0.5, "min_finished": 1})
    assert (shown["options"]["priority"], shown["options"]["timeout"]) == (3, 60)
    assert sorted(task["data"]["product_ids"] for task in batch_tasks(server, batch_id)) == [["0"], ["1"], ["2"]]


def test_cancel_a_batch_while_waiting_exits_3_and_product_ids_are_cut_into_items(server, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("101\n102, 103\n\n104 105\n")
    cli_process = batch_wait(server, "--spread", "--tags", "shopZ", "--product-ids", str(ids), "--batch-size", "2")
    cli_process.wait_for_output("running 0% 3 pending\n")  # no device has the tag: the tasks wait
    batch_id = only_batch(server)
    items = sorted(task["data"]["product_ids"] for task in batch_tasks(server, batch_id))
    assert items == [["101", "102"], ["103", "104"], ["105"]]

    cancelled = invoke(server, "cancel", batch_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.output.strip() == f"batch {batch_id} cancelled: 批次已取消 (3 cancelled)"
    code, out, err = cli_process.finish()
    assert code == Exit.CANCELLED == 3, err
    assert out.splitlines() == [f"batch {batch_id} created: 3 tasks", f"batch {batch_id} cancelled: 3 cancelled"]

    again = invoke(server, "cancel", batch_id)
    assert again.exit_code == Exit.REFUSED
    assert again.output.strip() == "Error: 批次已结束（cancelled），无法取消 (INVALID_STATE, HTTP 409)"


# ---- what the server refuses, and what the CLI refuses before asking ----


def test_a_batch_the_server_refuses_prints_its_message_and_error_code_and_exits_4(server, devices):
    devices("phone_1")
    code, out, err = run(server, "batch", "DELIST", "--each", "--tags", "nobody", "--data", DELIST)
    assert code == Exit.REFUSED and out == ""
    assert err.strip() == "Error: 没有符合目标的设备 (NO_MATCHING_DEVICES, HTTP 400)"

    code, _out, err = run(server, "batch", "DELIST", "--each", "--all", "--data", '{"batch_size": 0}')
    assert code == Exit.REFUSED and "(VALIDATION_ERROR, HTTP 400)" in err and "  data.product_ids: " in err

    code, _out, err = run(server, "show", "batch_nope")
    assert code == Exit.REFUSED and err.strip() == "Error: 批次 batch_nope 不存在 (BATCH_NOT_FOUND, HTTP 404)"
    assert server.get("/api/batches").json()["total"] == 0


def test_a_batch_without_a_mode_or_one_target_or_with_bad_items_is_a_usage_error(server, devices, tmp_path):
    devices("phone_1")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"product_ids": ["1"]}\n{product_ids: 2}\n')
    mistakes = {
        "say --each (one task per device) or --spread": ["--all", "--data", DELIST],
        "give one target: --tags, --devices or --all": ["--each", "--data", DELIST],
        "give one target": ["--each", "--all", "--tags", "a", "--data", DELIST],
        "Invalid value for --items: not a JSON array nor JSON lines": ["--spread", "--all", "--items", str(broken)],
        "--abort-min goes with --abort-ratio": ["--each", "--all", "--data", DELIST, "--abort-min", "2"],
        "--batch-size goes with --product-ids": ["--spread", "--all", "--batch-size", "2"],
    }
    for message, args in mistakes.items():
        refused = invoke(server, "batch", "DELIST", *args)
        assert refused.exit_code == Exit.USAGE and message in refused.output, (args, refused.output)
    assert server.get("/api/batches").json()["total"] == 0


# ---- batches, show BATCH, tasks --batch ----


def test_batches_lists_them_show_describes_one_and_tasks_lists_its_tasks(server, devices):
    phone = devices("phone_1", tags=["shopA"])
    body = {"task_type": "DELIST", "mode": "spread", "target": {"tags": ["shopA"]}, "max_in_flight": 1}
    spread = server.post("/api/batches", json={**body, "items": [{"product_ids": ["1"]}, {"product_ids": ["2"]}]})
    spread_id = spread.json()["batch_id"]
    phone.progress(phone.wait("new_task")["task_id"], 40)
    each = {**body, "mode": "each", "target": {"device_ids": ["phone_1"]}, "data": {"product_ids": ["9"]}}
    each_id = server.post("/api/batches", json=each).json()["batch_id"]  # the phone is busy: it waits
    loose = server.dispatch()["task_id"]

    listed = invoke(server, "batches")
    assert listed.exit_code == 0, listed.output
    [row] = rows(listed.output, spread_id)
    assert row[1:7] == ["DELIST", "spread", "tags shopA", "running", "20%", "2: 1 running, 1 pending"]
    assert rows(listed.output, each_id)[0][2:7] == ["each", "devices phone_1", "running", "0%", "1: 1 pending"]
    assert "1-2 of 2 batches" in listed.output
    assert json.loads(invoke(server, "batches", "--json").output) == server.get("/api/batches").json()

    shown = invoke(server, "show", spread_id)
    assert shown.exit_code == 0, shown.output
    lines = [line.rstrip() for line in shown.output.splitlines()]
    assert f"batch          {spread_id}" in lines and "status         running  20%" in lines
    assert "tasks          2: 1 running, 1 pending" in lines and "target         tags shopA" in lines
    assert "max in flight  1" in lines and "abort          -" in lines
    as_json = json.loads(invoke(server, "show", spread_id, "--json").output)
    assert as_json == server.get(f"/api/batch/{spread_id}").json()

    tasks = invoke(server, "tasks", "--batch", spread_id)
    task_ids = {task["task_id"] for task in batch_tasks(server, spread_id)}
    assert all(len(rows(tasks.output, task_id)) == 1 for task_id in task_ids)
    assert rows(tasks.output, loose) == [] and "1-2 of 2 tasks" in tasks.output
    one = invoke(server, "show", sorted(task_ids)[0])
    assert f"batch            {spread_id}" in [line.strip() for line in one.output.splitlines()]
