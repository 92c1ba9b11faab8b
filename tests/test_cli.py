"""The operator CLI against a real server and real devices.

Exit codes and the entry point run the CLI as a subprocess (``python -m taskserver.cli``); tables and ``--json`` use
click's ``CliRunner`` in this process. The device's reports are driven by the test, which waits until the CLI has
shown each one before sending the next, so nothing depends on how fast the machine is."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from gevent.pywsgi import WSGIServer
from test_run_server import ROOT, free_port

from conftest import LiveServer
from taskserver.cli.client import Exit
from taskserver.cli.main import cli

OPERATOR = "op-token-0123456789"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDE = {"COLUMNS": "200", "TASKSERVER_URL": None, "TASKSERVER_API_TOKEN": None}


class CliProcess:
    """``python -m taskserver.cli ARGS`` in a subprocess whose stderr (progress) the test reads as it comes."""

    def __init__(self, *args, terminal=False, **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVER_")}
        environ.update(COLUMNS="160", PYTHONUTF8="1", **env)
        if terminal:  # rich draws its live progress bar as on a terminal, into the pipe
            environ.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
        command = [sys.executable, "-m", "taskserver.cli", *args]
        self.process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := self.process.stderr.read1(4096):
            self.err += chunk

    def wait_for_output(self, text, timeout=10.0):
        """Wait until stderr shows ``text``."""
        deadline = time.time() + timeout
        while text not in self.stderr:
            assert self.process.poll() is None or self.reader.is_alive(), f"exited without {text!r}: {self.stderr}"
            assert time.time() < deadline, f"no {text!r} on stderr: {self.stderr!r}"
            time.sleep(0.01)

    @property
    def stderr(self):
        return self.err.decode("utf-8", errors="replace")

    def finish(self, timeout=10.0):
        """Wait for the exit; return (exit code, stdout, stderr)."""
        out = self.process.stdout.read().decode()
        code = self.process.wait(timeout)
        self.reader.join(timeout)
        return code, out, self.stderr


def run(server, *args, **env):
    """The CLI in a subprocess, to its end, against ``server``."""
    return CliProcess("--url", server.url, *args, **env).finish()


def invoke(server, *args, token=None):
    """The CLI in this process (click's runner), against ``server``; the result has ``exit_code`` and ``output``."""
    options = ["--url", server.url] + (["--token", token] if token else [])
    return CliRunner().invoke(cli, [*options, *args], env=WIDE)


def rows(output, first_cell):
    """The cells of the table rows whose first cell is ``first_cell``."""
    found = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if cells[0] == first_cell:
            found.append(cells)
    return found


def dispatch_wait(server, device_id=None, terminal=False):
    """``dispatch DELIST --wait`` polling every 20 ms, in a subprocess."""
    target = ["--device", device_id] if device_id else []
    data = json.dumps({"product_ids": ["1", "2", "3"]})
    args = ["--url", server.url, "dispatch", "DELIST", "--data", data, *target, "--wait", "--interval", "0.02"]
    return CliProcess(*args, terminal=terminal)


# ---- dispatch --wait: progress, and the outcome as the exit code ----


def test_dispatch_wait_shows_the_progress_bar_and_exits_0_when_the_task_completes(server, devices):
    phone = devices("phone_1")
    cli_process = dispatch_wait(server, "phone_1", terminal=True)
    task_id = phone.wait("new_task")["task_id"]
    cli_process.wait_for_output("dispatched")
    phone.progress(task_id, 30, "已下架 1/3")
    cli_process.wait_for_output("30%")
    cli_process.wait_for_output("已下架 1/3")
    phone.progress(task_id, 60, "已下架 2/3")
    cli_process.wait_for_output("60%")
    cli_process.wait_for_output("已下架 2/3")
    phone.result(task_id, processed_count=3)

    code, out, err = cli_process.finish()
    assert code == Exit.OK == 0, err
    out = ANSI.sub("", out)  # a terminal's colours
    assert f"task {task_id} dispatched on phone_1: 任务分发成功" in out
    assert f"task {task_id} completed" in out and '"processed_count": 3' in out
    assert "━" in err and "\x1b[" in err  # drawn as a bar, on a terminal


def test_dispatch_wait_exits_1_with_the_error_code_when_the_device_fails_the_task(server, devices):
    phone = devices("phone_1")
    cli_process = dispatch_wait(server)
    task_id = phone.wait("new_task")["task_id"]
    phone.progress(task_id, 30, "已下架 1/3")
    cli_process.wait_for_output("running 30% 已下架 1/3\n")  # not a terminal: one line per change
    phone.result(task_id, success=False, error_code="ELEMENT_NOT_FOUND", message="找不到下架按钮")

    code, out, err = cli_process.finish()
    assert code == Exit.FAILED == 1, err
    assert f"task {task_id} failed (ELEMENT_NOT_FOUND): 找不到下架按钮" in out
    assert err.splitlines()[-1] == "failed 30% 已下架 1/3"


def test_dispatch_wait_exits_3_when_the_task_is_cancelled(server):
    cli_process = dispatch_wait(server)  # no device: the task waits as pending
    cli_process.wait_for_output("pending 0%\n")
    task_id = server.get("/api/tasks").json()["tasks"][0]["task_id"]

    cancelled = invoke(server, "cancel", task_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.output.strip() == f"task {task_id} cancelled: 任务已取消"

    code, out, err = cli_process.finish()
    assert code == Exit.CANCELLED == 3, err
    waiting = f"task {task_id} pending: 暂无可用设备，任务已进入等待队列"
    assert out.splitlines() == [waiting, f"task {task_id} cancelled"]


def test_ctrl_c_while_waiting_exits_130_and_leaves_the_task_alone(server):
    cli_process = dispatch_wait(server)
    cli_process.wait_for_output("pending 0%\n")
    cli_process.process.send_signal(signal.SIGINT)

    code, out, err = cli_process.finish()
    task_id = server.get("/api/tasks").json()["tasks"][0]["task_id"]
    assert code == Exit.INTERRUPTED == 130, err
    assert f"stopped waiting; task {task_id} goes on" in err and "Traceback" not in err
    assert server.task(task_id)["status"] == "pending"


def test_dispatch_wait_with_json_prints_the_final_status_answer(server, devices):
    phone = devices("phone_1")
    data = '{"product_ids": ["1"]}'
    cli_process = CliProcess("--url", server.url, "dispatch", "DELIST", "--data", data, "--wait", "--json")
    task_id = phone.wait("new_task")["task_id"]
    phone.result(task_id, processed_count=1)

    code, out, err = cli_process.finish()
    assert code == 0, err
    assert json.loads(out) == server.get(f"/api/task/{task_id}/status").json()


# ---- dispatch without waiting, and what the server refuses ----


def test_dispatch_prints_the_task_id_and_status_and_sends_every_option(server, devices):
    devices("phone_1")
    options = ["--priority", "5", "--timeout", "60", "--max-retries", "2", "--idempotency-key", "k-1"]
    first = invoke(server, "dispatch", "DELIST", "--data", '{"product_ids": ["9"]}', "--device", "phone_1", *options)
    assert first.exit_code == 0, first.output
    task_id = server.get("/api/tasks").json()["tasks"][0]["task_id"]
    assert first.output.strip() == f"task {task_id} dispatched on phone_1: 任务分发成功"
    task = server.get(f"/api/task/{task_id}").json()["task"]
    assert (task["priority"], task["timeout"], task["max_retries"], task["idempotency_key"]) == (5, 60, 2, "k-1")
    assert task["data"]["product_ids"] == ["9"] and task["device_id"] == "phone_1"

    again = invoke(server, "dispatch", "DELIST", "--data", '{"product_ids": ["9"]}', "--json", "--device", "phone_1")
    assert again.exit_code == 0, again.output
    answer = json.loads(again.output)
    assert answer["success"] is True and answer["task_id"] != task_id and answer["status"] == "pending"


def test_dispatch_reads_data_from_a_file_and_schedules(server, tmp_path):
    payload = tmp_path / "delist.json"
    payload.write_text(json.dumps({"product_ids": [str(n) for n in range(500)]}))
    answer = invoke(server, "dispatch", "DELIST", "--data", f"@{payload}", "--schedule-time", "2099-01-01T09:00:00")
    assert answer.exit_code == 0, answer.output
    assert answer.output.strip().endswith("pending: 任务已排期，到时自动分发")
    task = server.get("/api/tasks").json()["tasks"][0]
    assert len(task["data"]["product_ids"]) == 500


def test_a_refused_request_prints_the_servers_message_error_code_and_fields_and_exits_4(server):
    code, out, err = run(server, "dispatch", "DELIST", "--data", '{"batch_size": 0}')
    assert code == Exit.REFUSED == 4 and out == ""
    assert err.splitlines()[0] == "Error: 请求参数无效 (VALIDATION_ERROR, HTTP 400)"
    assert "  data.product_ids: Missing data for required field." in err.splitlines()
    assert any(line.startswith("  data.batch_size: ") for line in err.splitlines())

    code, _out, err = run(server, "dispatch", "NOPE")
    assert code == 4 and "UNKNOWN_TASK_TYPE, HTTP 400" in err and "DELIST" in err

    code, _out, err = run(server, "show", "no-such-task")
    assert code == 4 and err.strip() == "Error: 任务 no-such-task 不存在 (TASK_NOT_FOUND, HTTP 404)"
    assert "Traceback" not in err


def test_data_that_is_not_json_is_a_usage_error(server):
    code, out, err = run(server, "dispatch", "DELIST", "--data", "{product_ids: 1}")
    assert code == Exit.USAGE == 2 and out == ""
    assert "Invalid value for '--data': not JSON" in err
    assert server.get("/api/tasks").json()["total"] == 0


# ---- tokens and unreachable servers ----


@pytest.fixture
def guarded(database):
    """A server that asks for an operator token."""
    live = LiveServer(database, API_TOKENS=(OPERATOR,))
    yield live
    live.stop()


def test_the_token_is_sent_as_a_bearer_and_a_wrong_one_gets_the_servers_401(guarded):
    code, out, err = run(guarded, "--token", OPERATOR, "devices", "--json")
    assert code == 0, err
    assert json.loads(out) == {"success": True, "devices": [], "total": 0}

    code, out, err = CliProcess("--url", guarded.url, "tasks", TASKSERVER_API_TOKEN=OPERATOR).finish()
    assert code == 0 and "none of 0 tasks" in out, err

    code, out, err = run(guarded, "--token", "wrong-token", "devices")
    assert code == Exit.REFUSED == 4 and out == ""
    assert err.strip() == (
        "Error: 需要有效的操作员令牌（Authorization: Bearer <token> 或 X-API-Key） (UNAUTHORIZED, HTTP 401)"
    )
    code, _out, err = run(guarded, "dispatch", "DELIST", "--data", '{"product_ids": ["1"]}')
    assert code == 4 and "UNAUTHORIZED" in err and "wrong-token" not in err


def test_an_unreachable_server_exits_5_with_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = CliProcess("devices", TASKSERVER_URL=url).finish()
    assert code == Exit.UNREACHABLE == 5 and out == ""
    assert err.strip() == f"Error: cannot reach {url}: Connection refused; check --url or TASKSERVER_URL"


def test_something_that_is_not_a_taskserver_exits_5():
    def gateway(environ, start_response):  # a proxy whose upstream is down
        start_response("502 Bad Gateway", [("Content-Type", "text/html")])
        return [b"<html><body>502 Bad Gateway</body></html>"]

    proxy = WSGIServer(("127.0.0.1", 0), gateway, log=None)
    proxy.start()
    try:
        code, out, err = CliProcess("--url", f"http://127.0.0.1:{proxy.server_port}", "devices").finish()
    finally:
        proxy.stop()
    assert code == 5 and out == ""
    assert err.strip().endswith("is not a taskserver (it answered HTTP 502, text/html); check --url or TASKSERVER_URL")


# ---- tables and --json ----


def test_devices_shows_status_load_capacity_disabled_and_heartbeat_and_filters(server, devices):
    busy = devices("phone_busy", max_concurrent_tasks=1)
    devices("phone_idle", max_concurrent_tasks=3)
    devices("phone_gone").disconnect()
    server.dispatch(device_id="phone_busy")
    busy.wait("new_task")
    server.post("/api/device/phone_idle/disable")
    busy.call("heartbeat", {"device_id": "phone_busy"})

    listed = invoke(server, "devices")
    assert listed.exit_code == 0, listed.output
    [gone] = rows(listed.output, "phone_gone")
    [idle] = rows(listed.output, "phone_idle")
    [full] = rows(listed.output, "phone_busy")
    heartbeat = server.get("/api/device/phone_busy").json()["device"]["last_heartbeat"]
    assert full[2:5] == ["busy", "1/1", ""] and full[5] == heartbeat.replace("T", " ")
    assert idle[2:5] == ["online", "0/3", "disabled"]
    assert gone[2:4] == ["offline", "0/1"]
    assert "3 devices" in listed.output

    online = invoke(server, "devices", "--status", "online", "--status", "busy")
    assert rows(online.output, "phone_gone") == [] and len(rows(online.output, "phone_idle")) == 1
    drained = invoke(server, "devices", "--disabled")
    assert [row[0] for row in rows(drained.output, "phone_idle")] == ["phone_idle"] and "1 devices" in drained.output

    as_json = invoke(server, "devices", "--json", "--status", "busy")
    assert json.loads(as_json.output) == server.get("/api/devices?status=busy").json()


def test_tasks_lists_newest_first_with_filters_and_paging(server, devices):
    phone = devices("phone_1")
    first = server.dispatch(device_id="phone_1")["task_id"]
    phone.wait("new_task")
    phone.result(first, success=False, error_code="LOGIN_EXPIRED")
    collect = server.dispatch(task_type="COLLECT", data={"target_url": "https://shop.example/a"})["task_id"]
    phone.wait("new_task", count=2)
    waiting = server.dispatch()["task_id"]  # the phone is busy

    listed = invoke(server, "tasks")
    assert listed.exit_code == 0, listed.output
    assert [row[2] for row in rows(listed.output, waiting)] == ["pending"]
    assert rows(listed.output, first)[0][1:7] == ["DELIST", "failed", "0%", "phone_1", "1/1", "LOGIN_EXPIRED"]
    assert rows(listed.output, collect)[0][1:3] == ["COLLECT", "dispatched"]
    assert "1-3 of 3 tasks" in listed.output

    only = invoke(server, "tasks", "--status", "failed", "--device", "phone_1", "--type", "DELIST")
    assert len(rows(only.output, first)) == 1 and not rows(only.output, waiting) and "1-1 of 1 tasks" in only.output
    page = invoke(server, "tasks", "--limit", "1", "--offset", "1", "--json")
    assert json.loads(page.output) == server.get("/api/tasks?limit=1&offset=1").json()
    assert invoke(server, "tasks", "--limit", "0").exit_code == 2


def test_show_prints_the_task_its_attempts_and_its_history(server, devices):
    phone = devices("phone_1")
    task_id = server.dispatch(device_id="phone_1")["task_id"]
    phone.wait("new_task")
    phone.progress(task_id, 10)
    phone.progress(task_id, 50, "已下架 [1/2]")  # brackets are text, not rich markup
    phone.result(task_id, processed_count=2)

    shown = invoke(server, "show", task_id)
    assert shown.exit_code == 0, shown.output
    lines = [line.strip() for line in shown.output.splitlines()]
    assert f"task             {task_id}" in lines and "status           completed  100%" in lines
    assert "message          已下架 [1/2]" in lines and "device           phone_1" in lines
    assert rows(shown.output, "1")[0][1] == "phone_1" and rows(shown.output, "1")[0][5] == "completed"
    events = server.get(f"/api/task/{task_id}/events").json()["events"]
    history = [row[1].strip() for row in _history_rows(shown.output)]
    assert history == [event["kind"] for event in events]
    assert "进度 50%：已下架 [1/2]" in shown.output and "分发到设备 phone_1" in shown.output

    as_json = json.loads(invoke(server, "show", task_id, "--json").output)
    assert as_json == {"task": server.get(f"/api/task/{task_id}").json()["task"], "events": events}


def _history_rows(output):
    """The rows of ``show``'s history table (after its title)."""
    history = output[output.index("history") :]
    return [cells for cells in (line.strip("│ ").split("│") for line in history.splitlines()) if len(cells) == 5]


def test_cancel_and_a_cancel_too_late(server):
    task_id = server.dispatch()["task_id"]
    code, out, err = run(server, "cancel", task_id)
    assert code == 0 and out.strip() == f"task {task_id} cancelled: 任务已取消", err
    code, out, err = run(server, "cancel", task_id)
    assert code == 4 and err.strip() == "Error: 任务已结束（cancelled），无法取消 (INVALID_STATE, HTTP 409)"


def test_disable_and_enable_a_device(server, devices):
    devices("phone_1")
    disabled = invoke(server, "disable", "phone_1")
    assert disabled.exit_code == 0 and disabled.output.strip() == "phone_1: 设备已停用，不再分配新任务"
    assert server.get("/api/device/phone_1").json()["device"]["disabled"] is True
    enabled = invoke(server, "enable", "phone_1")
    assert enabled.exit_code == 0 and enabled.output.strip() == "phone_1: 设备已启用"
    assert server.get("/api/device/phone_1").json()["device"]["disabled"] is False
    missing = invoke(server, "disable", "no such phone")
    assert missing.exit_code == 4 and "DEVICE_NOT_FOUND" in missing.output


def test_the_cli_imports_without_the_server_stack():
    """An operator's laptop has click, rich and requests only: the CLI must not pull in Flask, gevent or the store."""
    heavy = ["flask", "flask_socketio", "gevent", "marshmallow", "taskserver.factory", "taskserver.store", "sqlite3"]
    probe = f"import sys; import taskserver.cli.main; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
