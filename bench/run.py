"""Benchmarks: task throughput against the ceiling, latency at a fixed rate, 10,000 devices, SQLite durability,
throughput with a backlog of tasks pinned to offline devices, and several nodes of one cluster.

``.venv/bin/python bench/run.py`` (``--help`` for sizes; ``--only`` picks runs). Every server runs on 127.0.0.1 as a
subprocess; the load comes from one Node process (bench/loadgen.js, socket.io-client over websocket). Prints JSON.

``--only batches``: the time one ``POST /api/batches`` takes to make ``--batch-size`` tasks; and the throughput load,
and the latency at ``--rate``, with ``--batch-size`` pending batch tasks in the store (held behind a small
``max_in_flight`` while the tasks out are on devices that never answer, or for a tag no device has) against the same
without them.

``--only nodes --nodes 3 --database postgresql://...``: 1, 2 and 3 nodes (``python app.py`` on one fresh database and a
Redis channel of the run's own, ``--message-queue``) under the throughput load, the devices and the HTTP dispatches
spread over the nodes; the dispatch → ``new_task`` latency at ``--rate`` when every dispatch reaches one node and
every device another; and ``--scale-devices`` devices spread over the nodes."""

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kb(pid, key):
    """``VmRSS`` or ``VmHWM`` (peak RSS) of the process, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@contextmanager
def running(command, port, env=None, log_path=None):
    """Start a server process, wait until ``GET /`` answers, stop it at the end."""
    log = open(log_path or os.devnull, "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"server did not start: {command}") from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def taskserver(port, database, synchronous="NORMAL"):
    """A taskserver on ``database``: a SQLite file path, or (with ``--database``) a fresh database of that name on
    the PostgreSQL server, dropped afterwards."""
    path = Path(database)
    env = {"PORT": str(port), "TASKSERVER_HOST": "127.0.0.1", "TASKSERVER_SQLITE_SYNCHRONOUS": synchronous}
    with postgres_database(path.stem) if POSTGRES else nullcontext(database) as store:
        server = running([sys.executable, "app.py"], port, {**env, "TASKSERVER_DATABASE": store}, f"{path}.log")
        with server as process:
            yield process


POSTGRES = None  # --database: the PostgreSQL server to run taskserver on, instead of a SQLite file


@contextmanager
def postgres_database(name):
    """A new database on the ``--database`` server for one run; its URL. Dropped at the end."""
    import psycopg  # only for PostgreSQL runs

    name = f"taskserver_bench_{name}".replace("-", "_").lower()
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(POSTGRES)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_cpu_seconds():
    """CPU seconds used so far by every PostgreSQL process on this machine (backends, WAL writer, checkpointer)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        if text[text.index("(") + 1 : text.rindex(")")] in ("postgres", "postmaster"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def ceiling(port):
    return running([sys.executable, str(BENCH / "ceiling_app.py"), str(port)], port)


def loadgen(options, timeout):
    """Run the Node load generator and return its JSON."""
    done = subprocess.run(
        ["node", str(BENCH / "loadgen.js"), json.dumps(options)],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured(server_cm, port, options, timeout, prepare=None):
    """Run the load against one server and add the server's CPU and memory to the load generator's numbers; a
    ``prepare`` run of the load generator (not measured) goes first."""
    with server_cm as process:
        prepared = loadgen({"url": f"http://127.0.0.1:{port}", **prepare}, timeout) if prepare else None
        rss_before = memory_kb(process.pid, "VmRSS")
        cpu_before, database_before = cpu_seconds(process.pid), postgres_cpu_seconds() if POSTGRES else 0.0
        result = loadgen({"url": f"http://127.0.0.1:{port}", **options}, timeout)
        result["server_cpu_seconds"] = round(cpu_seconds(process.pid) - cpu_before, 2)
        if POSTGRES:
            result["postgres_cpu_seconds"] = round(postgres_cpu_seconds() - database_before, 2)
        for key in ("server_cpu_seconds", "postgres_cpu_seconds"):
            if key in result and result.get("completed"):
                result[key.replace("_seconds", "_ms_per_task")] = round(result[key] * 1000 / result["completed"], 3)
        result["server_rss_before_mb"] = round(rss_before / 1024, 1)
        result["server_peak_rss_mb"] = round(memory_kb(process.pid, "VmHWM") / 1024, 1)
    if prepared is not None:
        result["prepared"] = prepared
    return result


def throughput_runs(args, workdir):
    """taskserver and the ceiling under the same load, in alternating rounds (a shared machine drifts: one pair
    measured minutes apart can be off by a third); the ratio is the median of the rounds' ratios, the round that
    gave it is reported in full, and every round's throughputs under ``rounds``."""
    options = {"mode": "tasks", "devices": args.devices, "tasks": args.tasks, "concurrency": args.concurrency}
    rounds = []
    for number in range(args.rounds):
        ours_port, ceiling_port = free_port(), free_port()
        servers = {
            "taskserver": (taskserver(ours_port, str(workdir / f"tasks-{number}.db")), ours_port),
            "ceiling": (ceiling(ceiling_port), ceiling_port),
        }
        order = ["taskserver", "ceiling"] if number % 2 == 0 else ["ceiling", "taskserver"]
        results = {name: measured(*servers[name], options, 900) for name in order}
        ours, top = results["taskserver"], results["ceiling"]
        ratio = round(ours["completed_per_second"] / top["completed_per_second"], 2)
        rounds.append({"taskserver": ours, "ceiling": top, "ratio_to_ceiling": ratio})
        print(
            f"# throughput round {number + 1}: ratio {ratio} ({ours['completed_per_second']} vs "
            f"{top['completed_per_second']} tasks/s)",
            file=sys.stderr,
            flush=True,
        )
    median = sorted(rounds, key=lambda one: one["ratio_to_ceiling"])[len(rounds) // 2]
    every = [
        {"ratio": one["ratio_to_ceiling"]}
        | {f"{name}_per_second": one[name]["completed_per_second"] for name in ("taskserver", "ceiling")}
        for one in rounds
    ]
    return {**median, "rounds": every}


def latency_run(args, workdir):
    """dispatch→new_task latency at a fixed, moderate rate."""
    options = {"mode": "tasks", "devices": args.devices, "tasks": args.rate * args.rate_seconds, "rate": args.rate}
    port = free_port()
    return {"rate_per_second": args.rate, **measured(taskserver(port, str(workdir / "rate.db")), port, options, 600)}


def scale_run(args, workdir):
    """Many devices connected and heartbeating at once."""
    options = {
        "mode": "scale",
        "devices": args.scale_devices,
        "heartbeatSeconds": 30,
        "seconds": args.scale_seconds,
        "connectBatch": 500,
    }
    port = free_port()
    result = measured(taskserver(port, str(workdir / "scale.db")), port, options, 900)
    grown = result["server_peak_rss_mb"] - result["server_rss_before_mb"]
    result["server_kb_per_device"] = round(grown * 1024 / args.scale_devices, 1)
    return result


def storage_runs(args, workdir):
    """The same task run with SQLite synchronous=NORMAL and FULL."""
    options = {"mode": "tasks", "devices": args.devices, "tasks": args.storage_tasks, "concurrency": args.concurrency}
    results = {}
    for mode in ("NORMAL", "FULL"):
        port = free_port()
        run = measured(taskserver(port, str(workdir / f"storage-{mode}.db"), mode), port, options, 900)
        results[mode] = {key: run[key] for key in ("completed_per_second", "dispatch_to_completed_ms", "completed")}
    return results


def pinned_run(args, database, name, options):
    """One server: the offline devices register and hang up; in the ``with`` run, ``--pinned-tasks`` tasks pinned to
    them are dispatched and wait as pending (202); then the throughput load runs."""
    pin = {"mode": "pin", "prefix": "away", "devices": args.pinned_devices, "concurrency": args.concurrency}
    pin["tasks"] = args.pinned_tasks if name == "with" else 0
    port = free_port()
    result = measured(taskserver(port, database), port, options, 900, prepare=pin)
    if result["prepared"]["pending"] != pin["tasks"]:
        raise RuntimeError(f"pinned tasks not all pending: {result['prepared']}")
    return result


def pinned_runs(args, workdir):
    """The throughput load with and without ``--pinned-tasks`` pending tasks pinned to ``--pinned-devices`` offline
    devices (both servers know those devices; only one has tasks waiting for them), in alternating rounds; the
    ratio with/without is the median of the rounds' ratios."""
    options = {"mode": "tasks", "devices": args.devices, "tasks": args.pinned_load, "concurrency": args.concurrency}
    rounds = []
    for number in range(args.rounds):
        order = ["without", "with"] if number % 2 == 0 else ["with", "without"]
        results = {name: pinned_run(args, str(workdir / f"pinned-{name}-{number}.db"), name, options) for name in order}
        one = {f"{name}_per_second": results[name]["completed_per_second"] for name in ("without", "with")}
        one["ratio"] = round(one["with_per_second"] / one["without_per_second"], 2)
        one["dispatch_to_completed_p50_ms"] = {name: results[name]["dispatch_to_completed_ms"]["p50"] for name in order}
        rounds.append(one)
        print(f"# pinned round {number + 1}: {one}", file=sys.stderr, flush=True)
    median = sorted(rounds, key=lambda one: one["ratio"])[len(rounds) // 2]
    return {"pinned_tasks": args.pinned_tasks, "median": median, "rounds": rounds}


def spread_batch(size, **fields):
    """The body of a spread batch of ``size`` DELIST tasks for any device (``fields``: more of it)."""
    items = [{"product_ids": [str(number)]} for number in range(size)]
    return {"task_type": "DELIST", "mode": "spread", "target": {"all": True}, "items": items, **fields}


def create_batch(port, body):
    """``POST /api/batches``; the seconds it took (raises unless the batch was made whole)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/batches", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    seconds = time.perf_counter() - start
    if answer.get("total") != len(body["items"]):
        raise RuntimeError(f"batch not made: {str(answer)[:500]}")
    return seconds


def batch_creation_runs(args, workdir):
    """``--batch-runs`` batches of ``--batch-size`` tasks made one after another on one server (no device connected,
    so the request stores and does not dispatch): all released, then on another server with ``max_in_flight`` 10
    (the others held)."""
    results = {}
    for shape, fields in {"released": {}, "held": {"max_in_flight": 10}}.items():
        port = free_port()
        with taskserver(port, str(workdir / f"batch-create-{shape}.db")):
            seconds = [create_batch(port, spread_batch(args.batch_size, **fields)) for _ in range(args.batch_runs)]
        results[shape] = {
            "median_seconds": round(statistics.median(seconds), 3),
            "seconds": [round(s, 3) for s in seconds],
        }
        print(f"# batches: {shape} made in {results[shape]}", file=sys.stderr, flush=True)
    return results


HOLDERS = 10  # devices that take one task each and never answer


@contextmanager
def holders(port):
    """``HOLDERS`` connected devices (Python Socket.IO clients) that take a task each and never answer."""
    import socketio  # only for this run

    clients = []
    try:
        for number in range(HOLDERS):
            client = socketio.Client(reconnection=False)
            clients.append(client)
            client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)
            answer = client.call("device_register", {"device_id": f"holder_{number}", "device_info": {}}, timeout=10)
            if not answer.get("success"):
                raise RuntimeError(f"holder not registered: {answer}")
        yield
    finally:
        for client in clients:
            client.disconnect()


# The pending batch tasks a server holds before the load runs: none; all but HOLDERS of them held behind
# max_in_flight (those out on devices that never answer, as in a rollout of long tasks); all for a tag no device has.
BATCH_BACKLOGS = {
    "empty": lambda size: None,
    "held": lambda size: spread_batch(size, max_in_flight=HOLDERS, timeout=604800),
    "tagged": lambda size: spread_batch(size, target={"tags": ["bench-nobody"]}),
}


@contextmanager
def with_backlog(server, port, body):
    """``server`` (a ``taskserver``) with the batch ``body`` made on it first, if any; a batch with a
    ``max_in_flight`` sends that many tasks to ``holders`` first."""
    with server as process, holders(port) if body and body.get("max_in_flight") else nullcontext():
        if body is not None:
            create_batch(port, body)
        yield process


def backlog_run(args, workdir, name, options, tag):
    """One server with the backlog ``name`` under the load ``options``."""
    port = free_port()
    server = taskserver(port, str(workdir / f"backlog-{name}-{tag}.db"))
    return measured(with_backlog(server, port, BATCH_BACKLOGS[name](args.batch_size)), port, options, 900)


def batch_backlog_runs(args, workdir):
    """The throughput load (``--batch-load`` tasks) on a server with each backlog of ``BATCH_BACKLOGS``, in rounds
    of rotating order; each backlog's ratio to the empty store is the median of the rounds'. Then the latency at
    ``--rate`` with each backlog, once."""
    options = {"mode": "tasks", "devices": args.devices, "tasks": args.batch_load, "concurrency": args.concurrency}
    names = list(BATCH_BACKLOGS)
    rounds = []
    for number in range(args.rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        results = {name: backlog_run(args, workdir, name, options, number) for name in order}
        one = {f"{name}_per_second": results[name]["completed_per_second"] for name in names}
        one |= {f"{name}_ratio": round(one[f"{name}_per_second"] / one["empty_per_second"], 2) for name in names[1:]}
        for key in ("dispatch_to_new_task_ms", "dispatch_to_completed_ms"):
            one[key] = {name: {p: results[name][key][p] for p in ("p50", "p99")} for name in names}
        one["server_cpu_ms_per_task"] = {name: results[name].get("server_cpu_ms_per_task") for name in names}
        rounds.append(one)
        print(f"# batches round {number + 1}: {one}", file=sys.stderr, flush=True)
    medians = {name: statistics.median(one[f"{name}_ratio"] for one in rounds) for name in names[1:]}
    rate = {"mode": "tasks", "devices": args.devices, "tasks": args.rate * args.rate_seconds, "rate": args.rate}
    latency = {}
    for name in names:
        run = backlog_run(args, workdir, name, rate, "rate")
        latency[name] = {key: run[key] for key in ("completed", "dispatch_to_new_task_ms", "dispatch_to_completed_ms")}
        print(f"# batches: latency at {args.rate}/s, {name}: {latency[name]}", file=sys.stderr, flush=True)
    return {
        "batch_tasks": args.batch_size,
        "median_ratio": medians,
        "rounds": rounds,
        f"at_{args.rate}_per_second": latency,
    }


def batches_runs(args, workdir):
    """Making a large batch; dispatch with a large batch pending."""
    return {"create": batch_creation_runs(args, workdir), "backlog": batch_backlog_runs(args, workdir)}


MESSAGE_QUEUE = None  # --message-queue: the Redis the nodes of a --only nodes run share


@contextmanager
def cluster(count, name):
    """``count`` ``python app.py`` nodes of one cluster on a fresh PostgreSQL database and a Redis channel of this
    run's own; yields ``[(process, port), ...]``."""
    channel = f"taskserver-bench-{secrets.token_hex(4)}"
    with postgres_database(name) as database, ExitStack() as stack:
        nodes = []
        for number in range(count):
            port = free_port()
            env = {
                "PORT": str(port),
                "TASKSERVER_HOST": "127.0.0.1",
                "TASKSERVER_DATABASE": database,
                "TASKSERVER_MESSAGE_QUEUE": MESSAGE_QUEUE,
                "TASKSERVER_MESSAGE_QUEUE_CHANNEL": channel,
                "TASKSERVER_NODE_ID": f"node{number}",
            }
            log = Path(tempfile.gettempdir()) / f"bench-{name}-node{number}.log"
            nodes.append((stack.enter_context(running([sys.executable, "app.py"], port, env, log)), port))
        yield nodes


def node_urls(nodes):
    return [f"http://127.0.0.1:{port}" for _process, port in nodes]


def measured_nodes(nodes, options, timeout):
    """Run the load against the nodes; add each node's CPU and memory, and PostgreSQL's CPU, to the load
    generator's numbers."""
    pids = [process.pid for process, _port in nodes]
    rss_before = [memory_kb(pid, "VmRSS") for pid in pids]
    cpu_before, database_before = [cpu_seconds(pid) for pid in pids], postgres_cpu_seconds()
    result = loadgen(options, timeout)
    cpu = [round(cpu_seconds(pid) - before, 2) for pid, before in zip(pids, cpu_before, strict=True)]
    result["node_cpu_seconds"] = cpu
    result["postgres_cpu_seconds"] = round(postgres_cpu_seconds() - database_before, 2)
    if result.get("completed"):
        done = result["completed"]
        result["node_cpu_ms_per_task"] = [round(one * 1000 / done, 3) for one in cpu]
        result["server_cpu_ms_per_task"] = round(sum(cpu) * 1000 / done, 3)
        result["postgres_cpu_ms_per_task"] = round(result["postgres_cpu_seconds"] * 1000 / done, 3)
    result["node_rss_before_mb"] = [round(kb / 1024, 1) for kb in rss_before]
    result["node_peak_rss_mb"] = [round(memory_kb(pid, "VmHWM") / 1024, 1) for pid in pids]
    return result


def nodes_runs(args, _workdir):
    """Throughput with 1 to ``--nodes`` nodes; cross-node latency; many devices spread over the nodes."""
    if not POSTGRES:
        raise SystemExit("--only nodes needs --database postgresql://... (the nodes of a cluster share PostgreSQL)")
    report = {"nodes": args.nodes, "message_queue": MESSAGE_QUEUE, "throughput": {}}
    load = {"mode": "tasks", "devices": args.devices, "tasks": args.tasks, "concurrency": args.concurrency}
    for count in range(1, args.nodes + 1):
        with cluster(count, f"nodes{count}") as nodes:
            urls = node_urls(nodes)
            run = measured_nodes(nodes, {**load, "deviceUrls": urls, "dispatchUrls": urls}, 900)
        report["throughput"][f"{count}_nodes"] = run
        print(f"# nodes: {count} node(s), {run['completed_per_second']} tasks/s", file=sys.stderr, flush=True)
    with cluster(max(args.nodes, 2), "nodes_latency") as nodes:
        urls = node_urls(nodes)  # every dispatch reaches the first node; every device is on another one
        rate = {"mode": "tasks", "devices": args.devices, "tasks": args.rate * args.rate_seconds, "rate": args.rate}
        run = measured_nodes(nodes, {**rate, "deviceUrls": urls[1:], "dispatchUrls": urls[:1]}, 600)
        report["cross_node_latency"] = {"rate_per_second": args.rate, **run}
    print("# nodes: cross-node latency done", file=sys.stderr, flush=True)
    with cluster(args.nodes, "nodes_scale") as nodes:
        urls = node_urls(nodes)
        scale = {"mode": "scale", "devices": args.scale_devices, "heartbeatSeconds": 30, "seconds": args.scale_seconds}
        run = measured_nodes(nodes, {**scale, "connectBatch": 500, "deviceUrls": urls, "dispatchUrls": urls}, 900)
        per_node = args.scale_devices / len(nodes)
        grown = [peak - before for peak, before in zip(run["node_peak_rss_mb"], run["node_rss_before_mb"], strict=True)]
        run["node_kb_per_device"] = [round(mb * 1024 / per_node, 1) for mb in grown]
        report["scale"] = run
    return report


RUNS = {
    "throughput": throughput_runs,
    "latency": latency_run,
    "scale": scale_run,
    "storage": storage_runs,
    "pinned": pinned_runs,
    "nodes": nodes_runs,
    "batches": batches_runs,
}
DEFAULT_RUNS = ["throughput", "latency", "scale", "storage", "pinned"]  # nodes: with --database only; batches: asked


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50, help="HTTP dispatches in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternating taskserver/ceiling throughput rounds")
    parser.add_argument("--rate", type=int, default=200, help="tasks per second for the latency run")
    parser.add_argument("--rate-seconds", type=int, default=15)
    parser.add_argument("--scale-devices", type=int, default=10000)
    parser.add_argument("--scale-seconds", type=int, default=60)
    parser.add_argument("--storage-tasks", type=int, default=5000)
    parser.add_argument("--pinned-tasks", type=int, default=10000, help="pending tasks pinned to offline devices")
    parser.add_argument("--pinned-devices", type=int, default=10, help="the offline devices they are pinned to")
    parser.add_argument("--pinned-load", type=int, default=10000, help="tasks dispatched in each pinned run")
    parser.add_argument("--batch-size", type=int, default=10000, help="tasks in the batches of --only batches")
    parser.add_argument("--batch-runs", type=int, default=5, help="batches made one after another, per shape")
    parser.add_argument("--batch-load", type=int, default=10000, help="tasks dispatched in each batches load run")
    parser.add_argument("--only", default=",".join(DEFAULT_RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    parser.add_argument("--nodes", type=int, default=3, help="--only nodes: the most nodes of one cluster to run")
    parser.add_argument(
        "--message-queue",
        default="redis://127.0.0.1:6379/0",
        help="--only nodes: the Redis the nodes share (each run takes a channel of its own)",
    )
    parser.add_argument(
        "--database",
        help="postgresql://user@host:port/db: run taskserver on a fresh database of this PostgreSQL server per run "
        "(created and dropped; the server must be on this machine for its CPU to be counted), not on SQLite",
    )
    args = parser.parse_args()
    global POSTGRES, MESSAGE_QUEUE
    POSTGRES, MESSAGE_QUEUE = args.database, args.message_queue
    if not (BENCH / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH, check=True)
    report = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}, "store": POSTGRES or "sqlite"}
    report["load_average_at_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            report[name] = RUNS[name](args, Path(tmp))
            print(f"# {name} done", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
