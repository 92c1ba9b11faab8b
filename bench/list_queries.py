"""Time the operator's list queries on a store holding 100,000 tasks.

    .venv/bin/python bench/list_queries.py [TASKS]

Fills a temporary SQLite file through the store (``add_task``, one transaction each, as the server writes them),
then times each query through the store and through the real HTTP handlers (Flask's test client: routing,
validation and JSON included, no network). Prints the median and worst of repeated runs in milliseconds."""

import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from taskserver import create_app  # noqa: E402
from taskserver.domain import Device, Event, Task, TaskStatus  # noqa: E402
from taskserver.present import iso  # noqa: E402
from taskserver.store import SQLiteStore  # noqa: E402

DEVICES = 200
DAYS = 30
STATUS_WEIGHTS = {
    TaskStatus.COMPLETED: 85,
    TaskStatus.FAILED: 8,
    TaskStatus.CANCELLED: 2,
    TaskStatus.PENDING: 3,
    TaskStatus.DISPATCHED: 1,
    TaskStatus.RUNNING: 1,
}
TYPE_WEIGHTS = {"DELIST": 50, "COLLECT": 30, "UPLOAD": 20}


def fill(store, count, now, rng):
    """Add ``count`` tasks spread over the last ``DAYS`` days (and ``DEVICES`` devices) through the store."""
    for number in range(DEVICES):
        store.save_device(Device(f"android_{number:03d}", f"phone {number}", created_at=now - DAYS * 86400))
    statuses, status_weights = zip(*STATUS_WEIGHTS.items(), strict=True)
    types, type_weights = zip(*TYPE_WEIGHTS.items(), strict=True)
    for number in range(count):
        created = now - DAYS * 86400 * (1 - number / count)
        status = rng.choices(statuses, status_weights)[0]
        device = f"android_{rng.randrange(DEVICES):03d}"
        target = device if rng.random() < 0.2 else None
        placed = status != TaskStatus.PENDING
        task = Task(
            task_id=f"task_{number:08d}",
            task_type=rng.choices(types, type_weights)[0],
            data={"product_ids": [str(rng.randrange(10**6)) for _ in range(3)]},
            status=status,
            device_id=device if placed else None,
            target_device_id=target,
            created_at=created,
            updated_at=created + 60,
            dispatched_at=created + 1 if placed else None,
            finished_at=created + 60 if status in (TaskStatus.COMPLETED, TaskStatus.FAILED) else None,
        )
        store.add_task(task, Event("created", "operator", target, {"task_type": task.task_type}))


def timed(call, repeat):
    """Median and worst wall time of ``call`` in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def store_queries(now):
    day_ago = now - 86400
    window = {"created_after": now - 15 * 86400, "created_before": now - 14 * 86400}
    return [
        ("no filter, limit 100", {}),
        ("no filter, limit 1000", {"limit": 1000}),
        ("no filter, offset 50000", {"offset": 50000}),
        ("no filter, offset 99900", {"offset": 99900}),
        ("status=pending", {"statuses": ["pending"]}),
        ("status=dispatched,running", {"statuses": ["dispatched", "running"]}),
        ("status=completed", {"statuses": ["completed"]}),
        ("status=failed, offset 5000", {"statuses": ["failed"], "offset": 5000}),
        ("status=completed,failed,cancelled", {"statuses": ["completed", "failed", "cancelled"]}),
        ("status=completed, task_type=DELIST", {"statuses": ["completed"], "task_type": "DELIST"}),
        ("task_type=COLLECT", {"task_type": "COLLECT"}),
        ("task_type=UPLOAD, status=failed", {"task_type": "UPLOAD", "statuses": ["failed"]}),
        ("device_id=android_042", {"device_id": "android_042"}),
        ("device_id + status=completed", {"device_id": "android_042", "statuses": ["completed"]}),
        ("created in the last day", {"created_after": day_ago}),
        ("created in a 1-day window 15 days ago", window),
        ("created_before 29 days ago", {"created_before": now - 29 * 86400}),
        ("window + status=failed + type", {**window, "statuses": ["failed"], "task_type": "DELIST"}),
    ]


def http_queries(now):
    return [
        "/api/tasks",
        "/api/tasks?limit=1000",
        "/api/tasks?status=pending",
        "/api/tasks?status=dispatched&status=running",
        "/api/tasks?task_type=COLLECT&offset=20000",
        "/api/tasks?device_id=android_042",
        f"/api/tasks?created_after={iso(now - 86400)}",
        f"/api/tasks?status=failed&created_after={iso(now - 15 * 86400)}&created_before={iso(now - 14 * 86400)}",
        "/api/devices",
        "/api/devices?status=offline",
        "/api/task/task_00050000",
        "/api/task/task_00050000/events",
        "/api/device/android_042",
        "/",
        "/readyz",
        "/metrics",
    ]


def main(count):
    rng = random.Random(42)
    now = time.time()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.db")
        store = SQLiteStore(path)
        start = time.perf_counter()
        fill(store, count, now, rng)
        print(f"filled {count:,} tasks over {DEVICES} devices in {time.perf_counter() - start:.1f} s ({path})")
        print(f"\n{'store.list_tasks(...)':<44} {'total':>7} {'median ms':>10} {'worst ms':>9}")
        for name, kwargs in store_queries(now):
            total = store.list_tasks(**kwargs)[1]
            median, worst = timed(lambda kwargs=kwargs: store.list_tasks(**kwargs), 20)
            print(f"{name:<44} {total:>7} {median:>10.2f} {worst:>9.2f}")
        for name, call in [
            ("count_tasks_by_status (GET /)", store.count_tasks_by_status),
            ("count_tasks_by_status_and_type (/metrics)", store.count_tasks_by_status_and_type),
            ("list_devices(statuses=['offline'])", lambda: store.list_devices(statuses=["offline"])),
            ("device_history('android_042', 50)", lambda: store.device_history("android_042", 50)),
        ]:
            median, worst = timed(call, 20)
            print(f"{name:<44} {'':>7} {median:>10.2f} {worst:>9.2f}")
        store.close()

        app = create_app({"DATABASE": path, "WATCHDOG_INTERVAL": 0, "LOG_LEVEL": "WARNING"})
        client = app.test_client()
        print(f"\n{'HTTP GET (test client, JSON included)':<96} {'median ms':>10} {'worst ms':>9}")
        for url in http_queries(now):
            status = client.get(url).status_code
            assert status == (503 if url == "/readyz" else 200), (url, status)  # readyz: no watchdog in a bench
            median, worst = timed(lambda url=url: client.get(url), 10)
            print(f"{url:<96} {median:>10.2f} {worst:>9.2f}")
        app.extensions["taskserver"].store.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
