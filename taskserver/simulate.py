"""A fleet of simulated phones in one process: ``python -m taskserver.simulate --url http://localhost:1888``.

Each phone is a ``DeviceAgent`` that acts out DELIST / COLLECT / UPLOAD with realistic durations (``--speed``
scales time) and progress steps, fails some tasks (``--failure-rate``) and loses its network now and then
(``--disconnect-rate``); ``--tags`` and ``--tag-groups`` give them the tags they register with. One status line
shows connected / running / done / failed; Ctrl-C (or ``--duration``) disconnects every phone and prints the final
count. ``--dispatch-rate`` also sends tasks, so there is something to watch without a second shell."""

import argparse
import itertools
import logging
import math
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from taskserver.device import DeviceAgent

log = logging.getLogger("taskserver.simulate")

TICK = 0.25  # seconds between status refreshes (and disconnect dice rolls)
PLAIN_EVERY = 5.0  # seconds between status lines when stdout is not a terminal
MAX_STEPS = 20  # progress reports per task, at most
MODELS = [("Xiaomi", "Mi 13"), ("HUAWEI", "P60"), ("OPPO", "Find X6"), ("vivo", "X90"), ("samsung", "Galaxy S23")]
FAILURES = {
    "DELIST": [("ELEMENT_NOT_FOUND", "找不到下架按钮"), ("LOGIN_EXPIRED", "登录已过期，请重新登录")],
    "COLLECT": [("PAGE_LOAD_TIMEOUT", "页面加载超时"), ("CAPTCHA_REQUIRED", "出现验证码，无法继续采集")],
    "UPLOAD": [("IMAGE_UPLOAD_FAILED", "图片上传失败"), ("PUBLISH_REJECTED", "商品发布被平台拒绝")],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m taskserver.simulate", description="Simulated phones that run tasks from a taskserver."
    )
    parser.add_argument("--url", default="http://localhost:1888", help="the server (default: %(default)s)")
    parser.add_argument("--devices", type=int, default=10, help="how many phones (default: %(default)s)")
    parser.add_argument("--prefix", default="sim_", help="device id prefix: sim_001, sim_002, ... (default: sim_)")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale: 10 runs tasks ten times faster")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="share of tasks that fail (default: 0.1)")
    parser.add_argument(
        "--disconnect-rate", type=float, default=0.1, help="network losses per phone per simulated minute (0.1)"
    )
    parser.add_argument("--capacity", type=int, default=None, help="tasks at once per phone (server default: 1)")
    parser.add_argument("--tags", type=tag_list, default=[], help="tags every phone registers with: a,b")
    parser.add_argument(
        "--tag-groups",
        type=tag_groups,
        default=[],
        help="a tag for the first phones, in order: shopA:5,shopB:5 tags sim_001-005 shopA and sim_006-010 shopB",
    )
    parser.add_argument("--dispatch-rate", type=float, default=0.0, help="also dispatch this many tasks per second")
    parser.add_argument("--token", default=None, help="device token every phone presents (when the server asks)")
    parser.add_argument("--api-token", default=None, help="operator token for --dispatch-rate (when the server asks)")
    parser.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    parser.add_argument("--verbose", action="store_true", help="log connections and results to stderr")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.speed <= 0 or not 0 <= args.failure_rate <= 1 or args.disconnect_rate < 0:
        parser.error("--devices >= 1, --speed > 0, 0 <= --failure-rate <= 1, --disconnect-rate >= 0")
    if sum(count for _tag, count in args.tag_groups) > args.devices:
        parser.error("--tag-groups counts more phones than --devices")
    return args


def tag_list(text):
    """``a,b`` as ``["a", "b"]``."""
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def tag_groups(text):
    """``shopA:5,shopB:5`` as ``[("shopA", 5), ("shopB", 5)]``."""
    groups = []
    for group in tag_list(text):
        tag, _, count = group.rpartition(":")
        if not tag or not count.isdigit():
            raise argparse.ArgumentTypeError(f"{group!r} is not TAG:COUNT")
        groups.append((tag, int(count)))
    return groups


def phone_tags(args):
    """Each phone's tags, in order: ``--tags``, and its group's tag for the first phones of ``--tag-groups``."""
    grouped = [[tag] for tag, count in args.tag_groups for _ in range(count)]
    grouped += [[]] * (args.devices - len(grouped))
    return [sorted({*args.tags, *group}) for group in grouped]


class Phone:
    """One simulated phone: a DeviceAgent whose handlers act out the work step by step."""

    def __init__(self, url, device_id, tags, args, rng):
        self.rng = rng
        self.speed = args.speed
        self.failure_rate = args.failure_rate
        manufacturer, model = rng.choice(MODELS)
        info = {"type": "android", "version": str(rng.randint(11, 14)), "app_version": "1.0.0", "simulated": True}
        if tags:
            info["tags"] = tags
        self.agent = DeviceAgent(
            url,
            device_id,
            token=args.token,
            device_name=f"{manufacturer} {model} ({device_id})",
            device_info={**info, "manufacturer": manufacturer, "model": model},
            max_concurrent_tasks=args.capacity,
            handlers={"DELIST": self.delist, "COLLECT": self.collect, "UPLOAD": self.upload},
            reconnection_delay_max=10.0,
        )

    def act(self, task, progress, steps):
        """Spend each step's time and report progress; a failure dict if this run fails, None if it succeeds."""
        fail_at = self.rng.randrange(len(steps)) if self.rng.random() < self.failure_rate else None
        total, done = sum(seconds for seconds, _ in steps) or 1.0, 0.0
        for index, (seconds, message) in enumerate(steps):
            if task.cancelled.wait(seconds / self.speed):
                return {"success": False}  # the agent reports it as TASK_CANCELLED
            if index == fail_at:
                error_code, text = self.rng.choice(FAILURES[task.task_type])
                return {"success": False, "error_code": error_code, "message": text}
            done += seconds
            progress(round(100 * done / total), message)
        return None

    def delist(self, task, progress):
        """Open each product, tap 下架, confirm: about a second or two each, plus the configured delay."""
        ids = task.data.get("product_ids") or []
        delay = float(task.data.get("delay_between_items", 1.0))
        failed = [product_id for product_id in ids if self.rng.random() < 0.03]
        seconds = [delay + self.rng.uniform(0.8, 2.0) for _ in ids]
        steps = [(sum(chunk), f"已处理 {end}/{len(ids)} 件商品") for end, chunk in chunked(seconds)]
        outcome = self.act(task, progress, steps or [(1.0, "没有商品")])
        details = [f"商品{product_id}已下架" for product_id in ids if product_id not in failed]
        return outcome or {
            "processed_count": len(ids) - len(failed),
            "failed_count": len(failed),
            "message": "下架完成",
            "data": {"details": details[:20]},
        }

    def collect(self, task, progress):
        """Scroll the shop page by page (ten items a page), extracting items as they appear."""
        wanted = int(task.data.get("max_items", 50))
        per_item = 0.3 if task.data.get("extract_details", True) else 0.05
        page_seconds = float(task.data.get("scroll_delay", 2.0)) + 10 * per_item
        pages = math.ceil(wanted / 10)
        seconds = [page_seconds + self.rng.uniform(0.5, 2.0) for _ in range(pages)]
        steps = [(sum(chunk), f"已采集 {end}/{pages} 页") for end, chunk in chunked(seconds)]
        outcome = self.act(task, progress, steps)
        found = self.rng.randint(max(1, wanted * 8 // 10), wanted)
        items = [{"title": f"商品 {n}", "price": round(self.rng.uniform(5, 500), 2)} for n in range(1, found + 1)]
        return outcome or {
            "processed_count": found,
            "failed_count": 0,
            "message": f"采集完成，共 {found} 件商品",
            "data": {"target_url": task.data.get("target_url"), "items": items[:10]},
        }

    def upload(self, task, progress):
        """Open the publish page, upload each image, fill in the form, publish (or save a draft)."""
        images = (task.data.get("product_data") or {}).get("images") or []
        publish = task.data.get("auto_publish", True)
        steps = [(self.rng.uniform(2, 4), "打开发布页面")]
        steps += [(self.rng.uniform(2, 5), f"上传图片 {n}/{len(images)}") for n in range(1, len(images) + 1)]
        steps += [(self.rng.uniform(3, 6), "填写标题和描述"), (self.rng.uniform(1, 2), "设置价格")]
        steps.append((self.rng.uniform(2, 4), "发布商品" if publish else "保存草稿"))
        outcome = self.act(task, progress, steps)
        item_id = str(self.rng.randrange(10**11, 10**12))
        return outcome or {
            "processed_count": 1,
            "failed_count": 0,
            "message": "上架完成" if publish else "已保存草稿",
            "data": {"item_id": item_id, "published": publish},
        }


def chunked(seconds):
    """Group per-item durations into at most MAX_STEPS steps: ``(items done so far, durations of the step)``."""
    size = max(1, math.ceil(len(seconds) / MAX_STEPS))
    return [(min(start + size, len(seconds)), seconds[start : start + size]) for start in range(0, len(seconds), size)]


def sample_task(rng, number):
    """A task like an operator would send: a few products to delist, a shop to collect, a product to upload."""
    kind = rng.choice(["DELIST", "COLLECT", "UPLOAD"])
    if kind == "DELIST":
        data = {"product_ids": [str(rng.randrange(10**6, 10**7)) for _ in range(rng.randint(1, 8))]}
    elif kind == "COLLECT":
        data = {"target_url": f"https://example.com/shop/{number}", "max_items": rng.choice([10, 20, 50])}
    else:
        images = [f"image{n}.jpg" for n in range(1, rng.randint(1, 4))]
        product = {"title": f"二手商品 {number}", "price": round(rng.uniform(10, 999), 2), "images": images}
        data = {"product_data": product}
    return {"task_type": kind, "data": data}


class Fleet:
    """The simulated phones, the optional dispatcher, and the counts the status line shows."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        width = max(3, len(str(args.devices)))
        self.phones = [
            Phone(args.url, f"{args.prefix}{n:0{width}d}", tags, args, random.Random(self.rng.random()))
            for n, tags in enumerate(phone_tags(args), start=1)
        ]
        self.dispatched = 0
        self.dispatch_errors = 0
        self.network_losses = 0

    def start(self, stop):
        """Start the phones a little apart (a burst of hundreds of handshakes helps nobody)."""
        pause = min(0.02, 2.0 / len(self.phones))
        for phone in self.phones:
            if stop.is_set():
                return
            phone.agent.start()
            stop.wait(pause)
        if self.args.dispatch_rate > 0:
            threading.Thread(target=self._dispatch, args=(stop,), name="dispatcher", daemon=True).start()

    def _dispatch(self, stop):
        session = requests.Session()
        if self.args.api_token:
            session.headers["Authorization"] = f"Bearer {self.args.api_token}"
        url = self.args.url.rstrip("/") + "/api/dispatch-task"
        started = time.monotonic()
        for number in itertools.count(1):
            if stop.wait(max(0.0, started + number / self.args.dispatch_rate - time.monotonic())):
                return
            try:
                session.post(url, json=sample_task(self.rng, number), timeout=5).raise_for_status()
                self.dispatched += 1
            except requests.RequestException as exc:
                self.dispatch_errors += 1
                log.warning("dispatch failed: %s", exc)

    def lose_network(self, seconds):
        """Roll the dice for each connected phone: some lose their network for a few (simulated) seconds."""
        chance = self.args.disconnect_rate * self.args.speed * seconds / 60.0
        for phone in self.phones:
            if phone.agent.connected and self.rng.random() < chance:
                self.network_losses += phone.agent.reconnect(delay=self.rng.uniform(2.0, 15.0) / self.args.speed)

    def counts(self):
        agents = [phone.agent for phone in self.phones]
        counts = {
            "phones": len(agents),
            "connected": sum(agent.connected for agent in agents),
            "running": sum(len(agent.running) for agent in agents),
            "done": sum(agent.stats["completed"] for agent in agents),
            "failed": sum(agent.stats["failed"] for agent in agents),
            "unsent": sum(len(agent.outbox) for agent in agents),
            "refused": sum(agent.stats["refused"] + agent.stats["dropped"] for agent in agents),
            "interrupted": sum(agent.stats["interrupted"] for agent in agents),
            "network losses": self.network_losses,
        }
        if self.args.dispatch_rate > 0:
            counts.update(dispatched=self.dispatched, dispatch_errors=self.dispatch_errors)
        return counts

    def stop(self):
        """Disconnect every phone (several at a time)."""
        with ThreadPoolExecutor(max_workers=min(32, len(self.phones))) as pool:
            list(pool.map(lambda phone: phone.agent.stop(), self.phones))


def summary(counts, elapsed, always=("connected", "running", "done", "failed")):
    """``12s | phones 50 | connected 48 | running 12 | done 140 | failed 9`` (other counts only when not zero)."""
    parts = [f"{elapsed:4.0f}s", f"phones {counts['phones']}"]
    for name, value in counts.items():
        if name in always or (name != "phones" and value):
            parts.append(f"{name.replace('_', ' ')} {value}")
    return " | ".join(parts)


class StatusLine:
    """One line refreshed in place on a terminal; a line every few seconds otherwise (logs, pipes)."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0
        self.last_plain = 0.0

    def show(self, text):
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY:
            self.stream.write(text + "\n")
            self.last_plain = time.monotonic()
        self.stream.flush()

    def finish(self, text):
        self.stream.write(("\r" + text.ljust(self.width) if self.tty else text) + "\n")
        self.stream.flush()


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C forces the exit

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"simulating {args.devices} phones against {args.url} (speed x{args.speed:g}); Ctrl-C stops", flush=True)
    fleet = Fleet(args)
    status = StatusLine(sys.stdout)
    started = time.monotonic()
    fleet.start(stop)
    while not stop.wait(TICK):
        elapsed = time.monotonic() - started
        if args.duration is not None and elapsed >= args.duration:
            break
        fleet.lose_network(TICK)
        status.show(summary(fleet.counts(), elapsed))
    stop.set()
    elapsed = time.monotonic() - started
    fleet.stop()
    status.finish("stopped after " + summary(fleet.counts(), elapsed).lstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
