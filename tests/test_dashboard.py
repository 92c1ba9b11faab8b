"""The web console in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright
(``tests/js/browser.js``) against the real server, with phones on real Socket.IO connections.

Every wait is for a selector or a condition in the page, never a sleep. Each view's screenshot is saved in
``tests/artifacts/`` (and ``failed-<test>.png`` when a step fails)."""

import json
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import LiveServer
from taskserver.service import DispatchRequest
from taskserver.serving import wsgi_server

JS_DIR = Path(__file__).parent / "js"
ARTIFACTS = Path(__file__).parent / "artifacts"
OPERATOR, DEVICE = "operator-secret", "device-secret"
ANSWER_TIMEOUT = 30.0


class BrowserError(AssertionError):
    """A step failed in the browser (a selector never showed up, a click missed, ...)."""


class Browser:
    """``node browser.js``: one Chromium for the module, one fresh context per ``open``; calls are JSON lines."""

    def __init__(self):
        self.process = subprocess.Popen(
            ["node", "browser.js"],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.answers = queue.Queue()
        self.calls = 0
        self.test_name = "browser"
        threading.Thread(target=self._read, daemon=True).start()
        self.version = self._answer(0)  # the browser started

    def _read(self):
        for line in self.process.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)

    def _answer(self, call_id):
        try:
            answer = self.answers.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            raise BrowserError(f"browser.js did not answer call {call_id}") from None
        if answer is None:
            raise BrowserError(f"browser.js exited: {self.process.stderr.read()}")
        assert answer["id"] == call_id, answer
        if not answer["ok"]:
            raise BrowserError(answer["error"])
        return answer["value"]

    def call(self, op, **args):
        self.calls += 1
        self.process.stdin.write(json.dumps({"id": self.calls, "op": op, **args}) + "\n")
        self.process.stdin.flush()
        try:
            return self._answer(self.calls)
        except BrowserError as error:
            if op not in ("open", "screenshot", "close"):
                self.screenshot(f"failed-{self.test_name}")
                log = self.call("log")
                raise BrowserError(f"{op} {args}: {error}\npage errors: {log['pageErrors']}") from None
            raise

    # the steps tests use
    def open(self, url):
        return self.call("open", url=url)

    def go(self, hash_):
        return self.call("hash", hash=hash_)

    def click(self, selector):
        return self.call("click", selector=selector)

    def fill(self, selector, value):
        return self.call("fill", selector=selector, value=value)

    def select(self, selector, value):
        return self.call("select", selector=selector, value=value)

    def check(self, selector):
        return self.call("check", selector=selector)

    def on_dialog(self, accept=True):
        """Accept (or dismiss) the next ``confirm()`` the page shows; its message goes to ``log()["dialogs"]``."""
        return self.call("dialog", accept=accept)

    def wait(self, selector, state="visible", timeout=5000):
        return self.call("wait", selector=selector, state=state, timeout=timeout)

    def until(self, expression, timeout=5000):
        return self.call("until", expression=expression, timeout=timeout)

    def text(self, selector):
        return self.call("text", selector=selector)

    def texts(self, selector):
        return self.call("texts", selector=selector)

    def attr(self, selector, name):
        return self.call("attr", selector=selector, name=name)

    def count(self, selector):
        return self.call("count", selector=selector)

    def eval(self, expression):
        return self.call("eval", expression=expression)

    def log(self):
        return self.call("log")

    def screenshot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        return self.call("screenshot", path=str(ARTIFACTS / f"{name}.png"))

    def quit(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the whole module (starting it is the slow part)."""
    browser = Browser()
    yield browser
    browser.quit()


@pytest.fixture
def console(chromium, request):
    """``console(server, path)`` opens the page in a fresh context; no uncaught error may happen in it."""

    def open_page(server, path="/dashboard", live=True):
        chromium.test_name = request.node.name
        chromium.open(server.url + path)
        if live:
            chromium.wait('#live[data-state="live"]')
            chromium.until("Number(document.body.dataset.syncs) > 0")
        return chromium

    yield open_page
    errors = chromium.log()["pageErrors"]
    chromium.call("close")
    assert errors == []


@pytest.fixture
def guarded(tmp_path):
    """A server with operator tokens (and device tokens) set."""
    live = LiveServer(tmp_path / "guarded.db", API_TOKENS=(OPERATOR,), DEVICE_TOKENS=(DEVICE,))
    yield live
    live.stop()


def device_row(device_id, **attributes):
    """The fleet table's row of a device, e.g. ``device_row("a", status="online")``."""
    return f'#devices tr[data-device-id="{device_id}"]' + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())


def task_row(task_id, **attributes):
    return f'#tasks tr[data-task-id="{task_id}"]' + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())


# ---- the fleet ----


def test_fleet_view_shows_devices_connecting_and_dropping(server, devices, console):
    page = console(server)
    page.wait("#devices-empty")

    first = devices("android_001", manufacturer="Xiaomi", model="Mi 13", max_concurrent_tasks=2)
    devices("android_002", manufacturer="HUAWEI", model="P60")
    page.wait(device_row("android_001", status="online"))
    page.wait(device_row("android_002", status="online"))
    assert page.text('[data-count="online"]') == "2"
    row = page.text(device_row("android_001"))
    assert "Xiaomi Mi 13" in row and "Android 13" in row and "0 / 2" in row

    server.dispatch(device_id="android_002")
    page.wait(device_row("android_002", status="busy"))
    assert page.text(f"{device_row('android_002')} td.num") == "1"

    first.disconnect()
    page.wait(device_row("android_001", status="offline"))
    counts = {key: page.text(f'[data-count="{key}"]') for key in ("all", "online", "busy", "offline", "disabled")}
    assert counts == {"all": "2", "online": "0", "busy": "1", "offline": "1", "disabled": "0"}
    page.screenshot("fleet")

    page.fill("#device-search", "p60")
    page.wait(device_row("android_001"), state="detached")
    assert page.count("#devices tbody tr") == 1
    page.fill("#device-search", "")
    page.click('#device-counts [data-status="offline"]')
    page.wait(device_row("android_002"), state="detached")
    assert page.count("#devices tbody tr") == 1 and page.count(device_row("android_001")) == 1


# ---- tasks ----


def test_a_task_dispatched_from_the_page_reaches_a_device_and_completes(server, devices, console):
    phone = devices("android_001", manufacturer="Xiaomi", model="Mi 13")
    page = console(server, "/dashboard#/dispatch")
    page.wait('#dispatch-type option[value="DELIST"]', state="attached")
    page.wait('#dispatch-device option[value="android_001"]', state="attached")

    page.click("#dispatch-submit")  # product_ids is required: the server's answer says so, next to the field
    page.wait('#dispatch-answer[data-ok="false"][data-status="400"]')
    assert "VALIDATION_ERROR" in page.text("#dispatch-answer")
    page.wait('[data-field="product_ids"] .field-error:not(:empty)')
    page.wait('.notice[data-ok="false"]')

    page.fill('[name="data.product_ids"]', "123\n456, 789")
    page.fill('[name="data.batch_size"]', "2")
    page.select("#dispatch-device", "android_001")
    page.screenshot("dispatch")
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="200"]')
    assert "任务分发成功" in page.text("#dispatch-answer")
    new_task = phone.wait("new_task")
    task_id = new_task["task_id"]
    assert new_task["data"]["product_ids"] == ["123", "456", "789"] and new_task["data"]["batch_size"] == 2

    page.click(f'[data-task-link="{task_id}"]')
    page.wait('#task-timeline li[data-kind="delivered"]')  # the phone acked new_task: delivered, not started
    assert page.attr("#view-task", "data-status") == "dispatched"
    phone.progress(task_id, 40, "第 1 批")
    page.wait(f'#view-task[data-task-id="{task_id}"][data-status="running"]')  # its first progress started it
    page.wait('#task-progress[data-progress="40"]')
    page.wait('#task-timeline li[data-kind="started"]')

    page.go("#/tasks")
    page.wait(task_row(task_id, status="running") + ' .progress[data-progress="40"]')
    phone.progress(task_id, 80, "第 2 批")
    page.wait(task_row(task_id) + ' .progress[data-progress="80"]')
    phone.result(task_id, processed_count=3, message="下架完成")
    page.wait(task_row(task_id, status="completed") + ' .progress[data-progress="100"]')
    assert page.count(task_row(task_id) + ' [data-action="cancel"]') == 0
    page.screenshot("tasks")

    page.click(task_row(task_id) + " a")
    page.wait(f'#view-task[data-task-id="{task_id}"][data-status="completed"]')
    kinds = page.eval("[...document.querySelectorAll('#task-timeline li')].map((li) => li.dataset.kind)")
    assert kinds[:4] == ["created", "dispatched", "delivered", "started"] and kinds[-1] == "completed"
    assert kinds.count("progress") == 1  # 40 started it; 80 crossed 50 and 75, as the history keeps it
    assert "下架完成" in page.text("#task-result") and '"789"' in page.text("#task-data")
    assert page.count('#task-attempts tbody tr[data-attempt="1"]') == 1
    assert page.attr("#task-cancel", "hidden") is not None
    page.screenshot("task")


def test_task_list_filters_like_the_api(server, devices, console):
    phone = devices("android_001")
    delist = server.dispatch()["task_id"]
    collect_body = {"task_type": "COLLECT", "data": {"target_url": "https://shop.example/a"}}
    collect = server.dispatch(expect=(202,), **collect_body)["task_id"]
    phone.wait("new_task")
    page = console(server, "/dashboard#/tasks")
    page.wait(task_row(delist))
    page.wait(task_row(collect, status="pending"))
    page.select('#task-filters [name="task_type"]', "COLLECT")
    page.wait(task_row(delist), state="detached")
    assert page.count("#tasks tbody tr") == 1
    page.select('#task-filters [name="task_type"]', "")
    page.select('#task-filters [name="status"]', "dispatched")  # delivered, not started
    page.wait(task_row(collect), state="detached")
    page.wait(task_row(delist, status="dispatched"))

    phone.result(delist)  # leaves the filtered list on its own; the queued COLLECT starts and joins it
    page.wait(task_row(delist), state="detached")
    phone.wait("new_task", count=2)
    page.wait(task_row(collect, status="dispatched"))

    page.go("#/tasks?device_id=android_001&status=")
    page.wait(task_row(delist, status="completed"))
    assert page.text("#task-shown").endswith("共 2")


def test_cancel_and_disable_work_from_the_page(server, devices, console):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    page = console(server, "/dashboard#/tasks")

    page.click(task_row(task_id) + ' [data-action="cancel"]')
    page.wait(task_row(task_id, status="cancelled"))
    assert phone.wait("cancel_task")["task_id"] == task_id
    assert "任务已取消" in page.text('.notice[data-ok="true"]')
    assert server.task(task_id)["status"] == "cancelled"

    page.go("#/fleet")
    page.click(device_row("android_001") + ' [data-action="disable"]')
    page.wait(device_row("android_001", shown="disabled"))
    assert "设备已停用" in page.text('.notice[data-ok="true"]')
    assert server.get("/api/device/android_001").json()["device"]["disabled"] is True
    waiting = server.dispatch(expect=(202,), device_id="android_001")["task_id"]
    page.screenshot("fleet-disabled")

    page.click(device_row("android_001") + ' [data-action="enable"]')
    page.wait(device_row("android_001", shown="busy"))  # enabled, it took the task that waited for it
    assert phone.wait("new_task", count=2)["task_id"] == waiting
    assert "设备已启用" in page.text('.notice[data-ok="true"]')


def test_an_action_refused_by_the_server_shows_its_answer(server, devices, console):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    page = console(server, "/dashboard#/tasks")
    page.wait(task_row(task_id) + ' [data-action="cancel"]')
    feed = server.app.extensions["dashboard"]
    feed.watchers.clear()  # the page stops hearing of changes, so its cancel button stays
    phone.result(task_id)
    page.click(task_row(task_id) + ' [data-action="cancel"]')
    page.wait('.notice[data-ok="false"]')
    refused = page.text('.notice[data-ok="false"]')
    assert "任务已结束" in refused and "HTTP 409" in refused and "INVALID_STATE" in refused


# ---- the overview ----


def test_overview_charts_throughput_and_devices_online(server, devices, console):
    phone = devices("android_001")
    devices("android_002")
    for count, success in enumerate([True, True, False], start=1):
        task_id = server.dispatch(device_id="android_001")["task_id"]
        phone.wait("new_task", count=count)
        phone.result(task_id, success=success)
    server.app.extensions["fleet_history"].record(server.clock() - 300, online=5, busy=3)

    page = console(server, "/dashboard#/overview")
    page.wait('#chart-throughput g.minute[data-completed="2"][data-failed="1"] rect.failed', state="attached")
    assert page.count("#chart-throughput g.minute") == 60
    assert page.count("#chart-devices circle.online-point") == 2
    assert page.attr('#chart-devices circle.online-point[data-online="5"]', "data-busy") == "3"
    stats = {key: page.text(f'[data-stat="{key}"]') for key in ("online", "completed", "failed")}
    assert stats == {"online": "2", "completed": "2", "failed": "1"}
    page.screenshot("overview")


# ---- the live connection ----


def test_a_dropped_connection_is_shown_and_the_page_catches_up(server, devices, console):
    page = console(server)
    syncs = int(page.attr("body", "data-syncs"))
    port = server.http.server_port
    server.app.extensions["socketio"].server.eio.disconnect()  # what a restart does to every connection
    server.http.stop(timeout=1)
    page.wait('#live[data-state="offline"]')
    page.wait("#banner")
    assert "实时连接" in page.text("#banner")
    page.screenshot("disconnected")

    # while the page is away
    missed, _ = server.service.dispatcher.dispatch(DispatchRequest("DELIST", {"product_ids": ["1"]}))
    server.http = wsgi_server(server.app, "127.0.0.1", port)
    server.http.start()
    page.wait('#live[data-state="live"]', timeout=10000)
    page.wait("#banner", state="hidden")
    page.until(f"Number(document.body.dataset.syncs) > {syncs}")
    page.wait(task_row(missed.task_id, status="pending"), state="attached")
    devices("android_009")  # live updates flow again: the phone shows up and takes the task it missed
    page.wait(device_row("android_009", status="busy"))
    page.wait(task_row(missed.task_id, status="dispatched"), state="attached")


# ---- operator tokens ----


def test_console_asks_for_an_operator_token_and_refuses_others(guarded, console):
    page = console(guarded, live=False)
    page.wait("#login[open]")
    page.wait('#login-reasons li[data-source="live"]')
    assert "需要操作员令牌" in page.text('#login-reasons li[data-source="live"]')
    assert page.attr("#live", "data-state") == "refused"
    page.screenshot("login")

    page.fill("#login-token", DEVICE)  # a device token does not open the console
    page.click('#login-form button[type="submit"]')
    page.wait('#login-reasons li[data-source="live"]')
    assert "操作员令牌无效" in page.text('#login-reasons li[data-source="live"]')

    page.fill("#login-token", OPERATOR)
    page.click('#login-form button[type="submit"]')
    page.wait('#live[data-state="live"]')
    page.wait("#login", state="hidden")
    page.until("Number(document.body.dataset.syncs) > 0")
    assert page.eval("sessionStorage.getItem('taskserver.operatorToken')") == OPERATOR
    after_login = [r for r in page.log()["responses"] if r["authorization"] == f"Bearer {OPERATOR}"]
    assert {r["path"].split("?")[0] for r in after_login} >= {"/api/devices", "/api/tasks", "/api/task-types"}
    assert all(r["status"] == 200 for r in after_login)


def test_a_wrong_token_gets_401_from_the_api_in_the_page(guarded, console):
    page = console(guarded, live=False)
    page.wait("#login[open]")
    page.fill("#login-token", "wrong-token")
    page.click('#login-form button[type="submit"]')
    page.wait('#login-reasons li[data-source="api"]')
    answers = [r for r in page.log()["responses"] if r["path"].startswith("/api/tasks")]
    assert {"status": 401, "authorization": "Bearer wrong-token"}.items() <= answers[-1].items(), answers
    assert "操作员令牌" in page.text('#login-reasons li[data-source="api"]')
