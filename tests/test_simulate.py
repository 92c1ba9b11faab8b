"""The fleet simulator as a newcomer runs it: ``python app.py`` and ``python -m taskserver.simulate`` as processes.

Tasks are dispatched over HTTP and must end ``completed`` or ``failed``; the simulator stops cleanly on Ctrl-C
(SIGINT) or after ``--duration``, disconnecting its phones and printing a summary."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import wait_until
from taskserver.simulate import FAILURES

ROOT = Path(__file__).resolve().parent.parent
TASKS = [
    {"task_type": "DELIST", "data": {"product_ids": ["123", "456", "789"]}},
    {"task_type": "COLLECT", "data": {"target_url": "https://example.com/shop", "max_items": 20}},
    {"task_type": "UPLOAD", "data": {"product_data": {"title": "商品标题", "price": 99.99, "images": ["1.jpg"]}}},
]
SIMULATED_ERRORS = {code for failures in FAILURES.values() for code, _ in failures}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process of this test whose output goes to a file in ``tmp_path``."""

    def __init__(self, args, output, **env):
        self.output = output
        with open(output, "w") as sink:
            self.popen = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
            )

    def text(self):
        return self.output.read_text()

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


class Server(Process):
    """``python app.py`` on a free port with its own SQLite file, and an HTTP session to it."""

    def __init__(self, tmp_path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        database = str(tmp_path / "taskserver.db")
        super().__init__(
            ["app.py"],
            tmp_path / "server.log",
            PORT=str(port),
            TASKSERVER_HOST="127.0.0.1",
            TASKSERVER_DATABASE=database,
            TASKSERVER_LOG_LEVEL="WARNING",
        )
        wait_until(self.healthy, timeout=20, message=f"the server to start: {self.output}")

    def healthy(self):
        assert self.popen.poll() is None, self.text()
        try:
            return self.session.get(self.url + "/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    def get(self, path):
        return self.session.get(self.url + path, timeout=10).json()

    def dispatch(self, body):
        response = self.session.post(self.url + "/api/dispatch-task", json=body, timeout=10)
        assert response.status_code in (200, 202), response.text
        return response.json()["task_id"]

    def tasks(self, task_ids):
        return [self.get(f"/api/task/{task_id}/status")["task"] for task_id in task_ids]

    def devices(self):
        return self.get("/api/devices")["devices"]


@pytest.fixture
def server(tmp_path):
    live = Server(tmp_path)
    yield live
    live.stop()


@pytest.fixture
def simulator(server, tmp_path):
    """A factory: start ``python -m taskserver.simulate`` against the server with the given options."""
    started = []

    def start(*options):
        process = Process(
            ["-m", "taskserver.simulate", "--url", server.url, "--prefix", "sim_", *options],
            tmp_path / "simulator.out",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def final_counts(output):
    """The counts on the simulator's last line: ``stopped after 3s | phones 5 | ... | done 14 | failed 6``."""
    last = output.strip().splitlines()[-1]
    assert last.startswith("stopped after"), output
    pairs = (part.strip().rsplit(" ", 1) for part in last.split("|")[1:])
    return {name: int(value) for name, value in pairs}


def dispatch_all(server, copies):
    return [server.dispatch(body) for body in TASKS * copies]


def ended(server, task_ids):
    return all(task["status"] in ("completed", "failed") for task in server.tasks(task_ids))


def test_simulated_phones_run_dispatched_tasks_and_stop_on_ctrl_c(server, simulator):
    phones = simulator("--devices", "5", "--speed", "50", "--failure-rate", "0.3", "--disconnect-rate", "0")
    wait_until(lambda: sum(d["status"] != "offline" for d in server.devices()) == 5, timeout=20, message="5 phones")
    assert {d["device_id"] for d in server.devices()} == {f"sim_{n:03d}" for n in range(1, 6)}

    task_ids = dispatch_all(server, copies=6)
    wait_until(lambda: ended(server, task_ids), timeout=60, message="every task to end")
    tasks = server.tasks(task_ids)
    completed = [task for task in tasks if task["status"] == "completed"]
    failed = [task for task in tasks if task["status"] == "failed"]
    assert completed and all(task["progress"] == 100 and task["result"]["processed_count"] >= 1 for task in completed)
    assert all(task["error_code"] in SIMULATED_ERRORS for task in failed)

    phones.popen.send_signal(signal.SIGINT)
    assert phones.popen.wait(20) == 0, phones.text()
    counts = final_counts(phones.text())
    assert counts["phones"] == 5 and counts["connected"] == 0 and counts["running"] == 0
    assert (counts["done"], counts["failed"]) == (len(completed), len(failed))
    wait_until(lambda: all(d["status"] == "offline" for d in server.devices()), message="every phone offline")


def test_phones_that_keep_losing_their_network_still_finish_and_stop_after_duration(server, simulator):
    phones = simulator("--devices", "4", "--speed", "50", "--disconnect-rate", "2", "--duration", "10")
    wait_until(lambda: len(server.devices()) == 4, timeout=20, message="4 phones")

    task_ids = dispatch_all(server, copies=4)
    wait_until(lambda: ended(server, task_ids), timeout=60, message="every task to end")

    assert phones.popen.wait(30) == 0, phones.text()
    counts = final_counts(phones.text())
    assert counts["connected"] == 0 and counts["done"] + counts["failed"] == len(task_ids)
    assert counts["network losses"] > 0
    wait_until(lambda: all(d["status"] == "offline" for d in server.devices()), message="every phone offline")


def test_tagged_phones_show_their_tags_and_a_batch_by_tag_runs_on_them_alone(server, simulator):
    options = ["--devices", "5", "--speed", "50", "--failure-rate", "0", "--disconnect-rate", "0"]
    simulator(*options, "--tags", "sim,android", "--tag-groups", "shopA:2,shopB:2")
    wait_until(lambda: sum(d["status"] != "offline" for d in server.devices()) == 5, timeout=20, message="5 phones")
    tags = {device["device_id"]: device["tags"] for device in server.devices()}
    assert tags == {
        "sim_001": ["android", "shopA", "sim"],
        "sim_002": ["android", "shopA", "sim"],
        "sim_003": ["android", "shopB", "sim"],
        "sim_004": ["android", "shopB", "sim"],
        "sim_005": ["android", "sim"],
    }

    data = '{"product_ids": ["1", "2"], "delay_between_items": 0}'
    command = ["-m", "taskserver.cli", "--url", server.url, "batch", "DELIST", "--each", "--tags", "shopA,sim"]
    done = subprocess.run(
        [sys.executable, *command, "--data", data, "--wait", "--interval", "0.05"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith(" completed: 2 completed")
    tasks = server.get("/api/tasks")["tasks"]
    assert sorted(task["device_id"] for task in tasks) == ["sim_001", "sim_002"]
