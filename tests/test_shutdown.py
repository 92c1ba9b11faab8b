"""An app ends what it started: after ``shutdown`` no greenlet of its own runs on, and its devices are offline."""

import gc
import threading

import gevent
import websocket
from test_dashboard_feed import Console

from conftest import Device, LiveServer, wait_until
from taskserver.store import open_store


def running_greenlets():
    """Every greenlet of this process that has started and not yet ended, but for the test's clients' threads
    (python-socketio's client runs on ``threading``, which gevent turns into greenlets; the server never does)."""
    return {
        obj
        for obj in gc.get_objects()
        if isinstance(obj, gevent.Greenlet)
        and obj
        and not obj.dead
        and not isinstance(getattr(obj._run, "__self__", None), threading.Thread)
    }


def test_a_shut_down_server_leaves_no_greenlet_running_and_its_devices_offline(tmp_path):
    before = running_greenlets()
    live = LiveServer(tmp_path / "taskserver.db", WATCHDOG_INTERVAL=0.05)
    phone = Device(live.url, "android_sio").connect()
    plain = websocket.create_connection(live.url.replace("http", "ws") + "/ws", timeout=5)
    plain.send('{"event": "device_register", "data": {"device_id": "android_ws"}, "id": 1}')
    wait_until(lambda: live.get("/").json()["connected_devices"] == 2, message="two devices connected")
    console = Console(live.url)
    wait_until(lambda: live.app.extensions["dashboard"].watchers, message="console watching")
    watchdog = live.app.extensions["watchdog"]
    wait_until(lambda: watchdog.last_sweep_at is not None, message="a first sweep")

    live.stop()  # with every client still connected

    wait_until(lambda: not phone.sio.connected and not console.sio.connected, message="clients disconnected")
    plain.close()
    wait_until(lambda: not (running_greenlets() - before), message="no greenlet of the app left")
    store = open_store({"DATABASE": str(tmp_path / "taskserver.db"), "SQLITE_SYNCHRONOUS": "NORMAL"})
    try:
        assert {device.device_id: device.connected for device in store.list_devices()} == {
            "android_sio": False,
            "android_ws": False,
        }
    finally:
        store.close()
