"""``deploy/nginx.conf`` in front of a real cluster (``python app.py`` nodes on PostgreSQL and Redis), run by Debian's
nginx: polling-first Socket.IO clients (as the Android app's io.socket starts) stay on one node through every poll
and upgrade to WebSocket, the plain WebSocket and the console's feed pass, and when the node holding the clients is
killed they reconnect through nginx to another one."""

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import socketio
import websocket
from test_dashboard import Browser
from test_run_server import APP_PY, ROOT, ServerProcess, free_port

from conftest import wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """Debian's nginx in the foreground, with the shipped ``deploy/nginx.conf`` pointed at the test's nodes."""

    def __init__(self, tmp_path, ports):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in ports)
        site, replaced = re.subn(r"(    server \S+ max_fails=1 fail_timeout=10s;\n)+", servers, site)
        assert replaced == 1, "deploy/nginx.conf lists its nodes as this test expects"
        site = site.replace("listen 1888;", f"listen 127.0.0.1:{self.port};")
        (tmp_path / "site.conf").write_text(site)
        (tmp_path / "nginx.conf").write_text(
            f"error_log {tmp_path}/error.log;\npid {tmp_path}/nginx.pid;\nevents {{}}\n"
            f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
            f"    proxy_temp_path {tmp_path}/proxy;\n    include {tmp_path}/site.conf;\n}}\n"
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, message=f"nginx on {self.url}")

    def _answers(self):
        assert self.process.poll() is None, "nginx exited"
        try:
            return requests.get(self.url + "/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def cluster(tmp_path, cluster_settings):
    """Two nodes of one cluster (PostgreSQL schema and Redis channel of the test's own) behind nginx;
    ``(nginx, [node, node])``."""
    if not Path(NGINX).exists():
        pytest.fail("these tests need Debian's nginx: scripts/test installs it (apt-get install nginx)")
    env = {
        "TASKSERVER_MESSAGE_QUEUE": cluster_settings["MESSAGE_QUEUE"],
        "TASKSERVER_MESSAGE_QUEUE_CHANNEL": cluster_settings["MESSAGE_QUEUE_CHANNEL"],
    }
    nodes = [
        ServerProcess(APP_PY, tmp_path, database=cluster_settings["DATABASE"], TASKSERVER_NODE_ID=name, **env)
        for name in ("a", "b")
    ]
    for node in nodes:
        node.start()
    proxy = Nginx(tmp_path, [node.port for node in nodes])
    yield proxy, nodes
    proxy.stop()
    for node in nodes:
        node.kill()


class Phone:
    """A Socket.IO phone with the client's default transports (long-polling first, then WebSocket), which
    registers again whenever it (re)connects, as the Android app does."""

    def __init__(self, url, device_id, transports=None):
        self.device_id = device_id
        self.registered = 0
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5)
        self.sio.on("connect", self._register)
        self.sio.on("register_success", self._registered)
        self.sio.connect(url, transports=transports, wait_timeout=10)

    def _register(self):
        self.sio.emit("device_register", {"device_id": self.device_id, "device_info": {"type": "android"}})

    def _registered(self, _answer):
        self.registered += 1

    def heartbeat(self):
        return self.sio.call("heartbeat", {"device_id": self.device_id}, timeout=10)


def held_devices(node):
    """How many devices this node holds the connection of (each device names its node in ``GET /api/devices``)."""
    devices = node.get("/api/devices").json()["devices"]
    return sum(device["node_id"] == node.env["TASKSERVER_NODE_ID"] for device in devices)


def test_polling_first_clients_stay_on_one_node_upgrade_and_fail_over_when_it_dies(cluster):
    proxy, nodes = cluster
    polling_only = [Phone(proxy.url, f"poll_{n:02d}", transports=["polling"]) for n in range(5)]
    upgrading = [Phone(proxy.url, f"phone_{n:02d}") for n in range(5)]
    phones = polling_only + upgrading
    wait_until(lambda: all(phone.registered == 1 for phone in phones), timeout=10, message="every phone registered")
    for _ in range(3):  # every poll of a session must reach the node that holds it, or the session breaks
        assert all(phone.heartbeat()["success"] for phone in phones)
    wait_until(lambda: all(phone.sio.transport() == "websocket" for phone in upgrading), message="the upgrades")
    assert all(phone.sio.transport() == "polling" for phone in polling_only)
    holder = next(node for node in nodes if held_devices(node) == len(phones))  # one client address, one node
    survivor = next(node for node in nodes if node is not holder)
    across = survivor.dispatch(device_id="poll_00")  # stored on the other node, sent by the one holding the phone
    assert across["status"] in ("pending", "dispatched"), across
    wait_until(lambda: holder.get(f"/api/task/{across['task_id']}/status").json()["task"]["status"] == "dispatched")

    holder.kill()
    wait_until(lambda: all(phone.registered == 2 for phone in phones), timeout=30, message="phones back via nginx")
    assert held_devices(survivor) == len(phones)
    assert all(phone.heartbeat()["success"] for phone in phones)
    dispatched = requests.post(
        proxy.url + "/api/dispatch-task",
        json={"task_type": "DELIST", "data": {"product_ids": ["1"]}, "device_id": "phone_00"},
        timeout=10,
    )
    assert dispatched.status_code == 200 and dispatched.json()["status"] == "dispatched", dispatched.text
    for phone in phones:
        phone.sio.disconnect()


def test_plain_websocket_and_the_console_pass_through_nginx(cluster):
    proxy, _nodes = cluster
    plain = websocket.create_connection(proxy.url.replace("http", "ws") + "/ws", timeout=10)
    assert '"connected"' in plain.recv()
    plain.send('{"event": "device_register", "data": {"device_id": "autojs_01"}}')
    answer = plain.recv()
    assert '"register_success"' in answer, answer
    plain.close()

    browser = Browser()
    browser.test_name = "nginx_console"
    try:
        browser.open(proxy.url + "/dashboard")
        browser.wait('#live[data-state="live"]')  # the console's feed connected through nginx
        browser.until("Number(document.body.dataset.syncs) > 0")
        assert browser.log()["pageErrors"] == []
    finally:
        browser.quit()
