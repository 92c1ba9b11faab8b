"""Device SDK: run a phone (or any worker) against taskserver with plain functions as task handlers.

    from taskserver.device import DeviceAgent

    def delist(task, progress):
        ids = task.data["product_ids"]
        for done, product_id in enumerate(ids, 1):
            if task.cancelled.is_set():
                return False  # the agent reports TASK_CANCELLED
            ...  # take product_id off sale
            progress(100 * done // len(ids), f"已下架 {product_id}")
        return {"processed_count": len(ids), "message": "下架完成"}

    DeviceAgent("http://localhost:1888", "android_001", handlers={"DELIST": delist}).run_forever()

The agent connects (python-socketio's client), registers on every connect, sends heartbeats, reconnects forever
with exponential backoff and jitter, runs each task's handler in its own thread, and keeps every result in an
in-memory outbox until the server acknowledges it. It needs no gevent monkey patching, and works under it too.
"""

from taskserver.device.agent import DeviceAgent
from taskserver.device.work import Task

__all__ = ["DeviceAgent", "Task"]
