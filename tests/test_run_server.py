"""The server started as a real process, each way the README documents: ``python app.py`` and the Procfile's gunicorn.

Each run gets a free port and its own SQLite file; a real Socket.IO device (WebSocket and long-polling) registers,
receives a task dispatched over HTTP and completes it. ``ServerProcess`` is also used by ``test_restart.py``.
"""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import Device, wait_until
from taskserver.store import open_store

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


def free_port():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def server_env(port, database, **extra):
    """The environment of a server process: ours without any TASKSERVER_* setting, plus PORT and the database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVER_") and k != "PORT"}
    env.update(PORT=str(port), TASKSERVER_DATABASE=str(database), PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    env.update(extra)
    return env


def procfile_command(port):
    """The Procfile's ``web:`` command line with ``$PORT`` filled in."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    return shlex.split(line.removeprefix("web:").replace("$PORT", str(port)))


class ServerProcess:
    """A server process in its own session, logging to a file; ``stop``/``kill`` end it and all its children."""

    def __init__(self, command, tmp_path, database=None, port=None, api_token=None, **env):
        self.port = port or free_port()
        self.headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self.database = database or tmp_path / "taskserver.db"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.command = command
        self.env = server_env(self.port, self.database, **env)
        self.process = None

    def start(self, timeout=20.0):
        """Start the process and wait until ``GET /`` answers."""
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + timeout
        while not self._answers():
            assert self.process.poll() is None, f"server exited {self.process.returncode}:\n{self.log()}"
            assert time.time() < deadline, f"server not answering on {self.url}:\n{self.log()}"
            time.sleep(0.05)
        return self

    def _answers(self):
        try:
            return requests.get(self.url + "/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Send ``sig`` to the server; return its exit code, or None if it had to be SIGKILLed after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return self.process and self.process.returncode
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        """SIGKILL the whole process group (gunicorn's workers included)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    # ---- HTTP helpers ----

    def get(self, path, **kwargs):
        return requests.get(self.url + path, timeout=10, headers=self.headers, **kwargs)

    def post(self, path, **kwargs):
        return requests.post(self.url + path, timeout=10, headers=self.headers, **kwargs)

    def dispatch(self, expect=(200, 202), **body):
        body.setdefault("task_type", "DELIST")
        body.setdefault("data", {"product_ids": ["123", "456"]})
        response = requests.post(self.url + "/api/dispatch-task", json=body, timeout=10, headers=self.headers)
        assert response.status_code in expect, response.text
        return response.json()

    def task(self, task_id):
        return self.get(f"/api/task/{task_id}/status").json()["task"]


class PollingDevice(Device):
    """A ``conftest.Device`` on the client's default transports (long-polling, then upgrade), like the apps."""

    def connect(self, register=True):
        self.sio.connect(self.url, wait_timeout=5, auth=self.auth)
        if register:
            answer = self.call("device_register", {"device_id": self.device_id, "device_info": self.device_info})
            assert answer["success"], answer
        return self


APP_PY = [str(VENV_BIN / "python"), "app.py"]
API_TOKEN = "operator-secret-for-tests"
PRODUCTION_ENV = {
    "TASKSERVER_API_TOKENS": API_TOKEN,
    "TASKSERVER_DEVICE_TOKENS": "fleet-secret-for-tests",
    "SECRET_KEY": "secret-key-for-tests",
}


@pytest.fixture(params=["python app.py", "Procfile (gunicorn)"])
def running_server(request, tmp_path):
    """The server as a process started one documented way; always stopped at the end.

    The Procfile runs production mode, which needs its tokens and secret key."""
    if request.param == "python app.py":
        server = ServerProcess(APP_PY, tmp_path)
    else:
        server = ServerProcess(procfile_command("{port}"), tmp_path, api_token=API_TOKEN, **PRODUCTION_ENV)
    server.device_token = PRODUCTION_ENV["TASKSERVER_DEVICE_TOKENS"] if request.param != "python app.py" else None
    try:
        yield server.start()
    finally:
        server.stop()
        server.kill()


def run_one_task(server, device):
    """Dispatch a task to ``device`` over HTTP, let the device complete it, and check it over HTTP."""
    answer = server.dispatch(device_id=device.device_id)
    assert answer["status"] == "dispatched" and answer["device_id"] == device.device_id, answer
    new_task = device.wait("new_task")
    assert new_task["task_id"] == answer["task_id"] and new_task["data"]["product_ids"] == ["123", "456"]
    assert device.progress(answer["task_id"], 50)["success"] is True
    ack = device.result(answer["task_id"], processed_count=2, failed_count=0, message="下架完成")
    assert ack == {"success": True, "task_id": answer["task_id"], "status": "completed"}
    task = server.task(answer["task_id"])
    assert task["status"] == "completed" and task["result"]["processed_count"] == 2
    return task


def test_server_process_serves_http_and_devices(running_server):
    server = running_server
    status = server.get("/").json()
    assert status["system"] == "分布式任务系统" and status["status"] == "running"
    assert status["port"] == server.port
    assert server.get("/healthz").json()["status"] == "ok"

    token = server.device_token
    phones = [Device(server.url, "android_ws", token=token), PollingDevice(server.url, "android_poll", token=token)]
    try:
        for phone in phones:
            phone.connect()
            assert phone.wait("register_success")["device_id"] == phone.device_id
            assert phone.call("heartbeat", {"device_id": phone.device_id, "timestamp": int(time.time() * 1000)})[
                "success"
            ]
        assert server.get("/").json()["connected_devices"] == 2
        for phone in phones:
            run_one_task(server, phone)
        devices = {d["device_id"]: d for d in server.get("/api/devices").json()["devices"]}
        assert {devices[p.device_id]["status"] for p in phones} == {"online"}
    finally:
        for phone in phones:
            phone.disconnect()
    wait_until(lambda: server.get("/").json()["connected_devices"] == 0, 10.0, "devices to disconnect")
    assert server.database.exists()
    assert "Traceback" not in server.log(), server.log()


def test_sigterm_shuts_the_app_down_at_once_and_its_devices_go_offline(running_server):
    phone = Device(running_server.url, "android_001", token=running_server.device_token).connect()
    assert running_server.get("/").json()["connected_devices"] == 1

    started = time.monotonic()
    assert running_server.stop(signal.SIGTERM) == 0, running_server.log()
    assert time.monotonic() - started < 5  # not gunicorn's graceful timeout (30 s) for a connection that stays open
    wait_until(lambda: not phone.sio.connected, message="the client to see its connection closed")
    store = open_store({"DATABASE": str(running_server.database), "SQLITE_SYNCHRONOUS": "NORMAL"})
    try:
        assert [device.connected for device in store.list_devices()] == [False]
    finally:
        store.close()
    assert "Traceback" not in running_server.log(), running_server.log()


def test_procfile_is_the_readme_command():
    readme = (ROOT / "README.md").read_text()
    command = procfile_command("$PORT")
    assert command[0] == "gunicorn" and "--preload" not in command
    assert " ".join(command[1:]) in " ".join(readme.replace("\\\n", " ").split())
