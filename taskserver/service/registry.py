"""The device registry: connections, registration, heartbeats, draining, forgetting, tokens, and making memory and
the store agree again after a failed commit."""

import logging

from taskserver import domain, logs
from taskserver.domain import Device, ErrorCode, Event, EventKind, TaskStatus, Wake
from taskserver.errors import Forbidden, InvalidState, Unauthorized
from taskserver.present import iso
from taskserver.service.atomic import atomic

log = logging.getLogger("taskserver")


class DeviceRegistry:
    """Knows which device each connection is, and keeps devices' stored state in step with their connections; a
    device that registers is handed what it is owed by the dispatcher."""

    def __init__(self, store, queries, notifier, config, clock, metrics, connections, credentials, dispatcher):
        self.store = store
        self.queries = queries
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.connections = connections
        self.credentials = credentials
        self.dispatcher = dispatcher
        self._failures_converged = store.failed_commits  # failed commits whose effects memory has caught up with

    def connect(self, sid, token=None):
        """A connection opens: a token it presents must be valid when device tokens are required."""
        self.credentials.check_connection(token)
        self.connections.opened(sid, token)

    @atomic
    def register(self, sid, payload):
        """Bind the connection to its device id, resend what the device missed, and hand it work."""
        device_id = payload["device_id"]
        self.credentials.check_registration(device_id, payload.get("token") or self.connections.token(sid))
        now = self.clock()
        previous = self.store.get_device(device_id)
        info = payload.get("device_info") or {}
        operator_tags = previous.operator_tags if previous else []
        device = Device(
            device_id=device_id,
            device_name=payload.get("device_name") or (previous.device_name if previous else device_id),
            device_info=info,
            capacity=info.get("max_concurrent_tasks") or self.config["DEFAULT_DEVICE_CAPACITY"],
            connected=True,
            sid=sid,
            registered_at=now,
            last_heartbeat=previous.last_heartbeat if previous else None,
            created_at=previous.created_at if previous else now,
            tags=domain.device_tags(info, operator_tags),
            operator_tags=operator_tags,
        )
        if self.connections.device_of(sid) not in (None, device_id):
            self._release_sid(sid, now)  # the connection switches to another device id
        self.store.save_device(device)
        replaced_sid = self.connections.bind(sid, device_id, now, device.device_name)
        if replaced_sid is None and previous is not None and previous.connected and previous.sid not in (None, sid):
            replaced_sid = previous.sid  # held by another node: the message queue takes the close there
        if replaced_sid is not None:
            self.notifier.replaced(replaced_sid, device_id)
        active = self.store.active_tasks_of(device_id)
        answer = {
            "success": True,
            "device_id": device_id,
            "message": "注册成功",
            "server_time": iso(now),
            "active_tasks": [task.task_id for task in active],
        }
        self.notifier.registered(sid, answer)
        self.metrics.device_event("device_register")
        self.store.add_device_event(
            device_id, now, Event(EventKind.REGISTERED, device_id, device_id, {"capacity": device.capacity})
        )
        logs.event(log, "device registered", device_id=device_id, active=len(active))
        self.dispatcher.catch_up(sid, device_id, active, now)
        return answer

    @atomic
    def heartbeat(self, sid, payload):
        """Note that the device is alive (by the server's clock) and answer with the server time."""
        device_id = self.device_for(sid, payload.get("device_id"))
        now = self.clock()
        self.connections.heard_from(device_id, now, heartbeat=True)
        self.metrics.device_event("heartbeat")
        self.store.record_heartbeat(device_id, now)
        self.notifier.device_changed(device_id, heartbeat=now)
        answer = {"success": True, "server_time": iso(now)}
        self.notifier.heartbeat_ack(sid, {"server_time": answer["server_time"]})
        return answer

    @atomic
    def disconnect(self, sid):
        """The connection closed: its device, if it still belongs to it, is offline from now."""
        self.metrics.device_event("disconnect")
        try:
            self._release_sid(sid, self.clock())
        finally:
            self.connections.closed(sid)

    def _release_sid(self, sid, now, reason="disconnected"):
        device_id = self.connections.release(sid)
        if device_id is None:
            return
        if self.store.mark_disconnected(device_id, sid, now):
            self._went_offline(device_id, now, reason)

    def _went_offline(self, device_id, now, reason):
        self.store.add_device_event(device_id, now, Event(EventKind.OFFLINE, "server", device_id, {"reason": reason}))
        logs.event(log, "device offline", device_id=device_id, reason=reason)
        self.notifier.device_changed(device_id)

    def device_for(self, sid, claimed_device_id=None):
        """The device id this connection registered as; refuse unregistered or impersonating connections."""
        device_id = self.connections.device_of(sid)
        if device_id is None:
            raise Unauthorized("设备未注册，请先发送 device_register", ErrorCode.NOT_REGISTERED)
        if claimed_device_id is not None and claimed_device_id != device_id:
            raise Forbidden(f"此连接已注册为 {device_id}，不能代表 {claimed_device_id}", ErrorCode.FORBIDDEN)
        self.connections.heard_from(device_id, self.clock())
        return device_id

    @atomic
    def set_device_tags(self, device_id, operator_tags):
        """Set the operator's tags of a device (kept across its registrations); its tags become their union with
        those it registered with, and tasks for them may start on it."""
        device = self.queries.device(device_id)
        tags = domain.device_tags(device.device_info, operator_tags)
        if not self.store.set_device_tags(device_id, operator_tags, tags):
            return self.queries.device(device_id)  # deleted meanwhile: 404
        logs.event(log, "device tagged", device_id=device_id, tags=tags)
        self.notifier.device_changed(device_id)
        self.dispatcher.dispatch_pending(self.clock())
        self.store.wake_nodes(Wake.WORK, device_id)  # another node may hold the device's connection
        return self.queries.device(device_id)

    @atomic
    def set_device_disabled(self, device_id, disabled):
        """Drain (or undrain) a device: disabled, it keeps its tasks but gets no new ones."""
        device = self.queries.device(device_id)
        if device.disabled != disabled:
            now = self.clock()
            self.store.set_device_disabled(device_id, disabled)
            kind = EventKind.DISABLED if disabled else EventKind.ENABLED
            self.store.add_device_event(device_id, now, Event(kind, "operator", device_id))
            logs.event(log, f"device {kind}", device_id=device_id, active=device.active_tasks)
            self.notifier.device_changed(device_id)
            if not disabled:
                self.dispatcher.dispatch_pending(now)
                self.store.wake_nodes(Wake.WORK, device_id)  # another node may hold the device's connection
        return self.queries.device(device_id)

    @atomic
    def forget_device(self, device_id):
        """Delete an offline device with no active task and no task waiting for it; else 409."""
        device = self.queries.device(device_id)
        if device.connected:
            raise InvalidState(f"设备 {device_id} 在线，无法删除", ErrorCode.DEVICE_ONLINE)
        if device.active_tasks:
            raise InvalidState(
                f"设备 {device_id} 还有 {device.active_tasks} 个进行中的任务", ErrorCode.DEVICE_HAS_ACTIVE_TASKS
            )
        _, waiting = self.store.list_tasks(statuses=[TaskStatus.PENDING], device_id=device_id, limit=1)
        if waiting:
            raise InvalidState(f"设备 {device_id} 还有 {waiting} 个等待中的任务", ErrorCode.DEVICE_HAS_PENDING_TASKS)
        if not self.store.delete_device(device_id):  # its tasks changed between the checks and the delete
            raise InvalidState(f"设备 {device_id} 还有任务，无法删除", ErrorCode.DEVICE_HAS_ACTIVE_TASKS)
        logs.event(log, "device forgotten", device_id=device_id)
        self.notifier.device_changed(device_id)

    @atomic
    def issue_device_token(self, device_id):
        """Bind a new token to ``device_id``; its live connection, registered with an older credential, is closed."""
        token = self.credentials.issue(device_id)
        self._close_device_connection(device_id, "token_reissued", f"设备 {device_id} 的令牌已更换，请用新令牌重新连接")
        return token

    @atomic
    def revoke_device_token(self, device_id):
        """Revoke the device's own token (404 if it has none) and close the connection registered with it."""
        self.credentials.revoke(device_id)
        self._close_device_connection(device_id, "token_revoked", f"设备 {device_id} 的令牌已被撤销，连接将被关闭")

    def _close_device_connection(self, device_id, reason, message):
        """Unbind the device's live connection now (it goes offline, its tasks under the usual grace), then tell it
        ``UNAUTHORIZED`` and close it once this is committed (one another node holds is closed and released there)."""
        sid = self.connections.sid_of(device_id)
        if sid is not None:
            self._release_sid(sid, self.clock(), reason=reason)
        elif (device := self.store.get_device(device_id)) is not None and device.connected:
            sid = device.sid  # held by another node: the message queue takes the close there, and it releases it
        if sid is not None:
            self.notifier.close_with_error(sid, message, ErrorCode.UNAUTHORIZED)

    def converge_after_failed_commits(self, now):
        """If a commit failed since the last call, make the store and the live connections agree again."""
        failed = self.store.failed_commits
        if failed != self._failures_converged:
            self._failures_converged = failed  # should this round's own commit fail too, the next call runs again
            self._converge(now)

    @atomic
    def _converge(self, now):
        """A failed commit undid writes that memory had already acted on: a device the store still shows connected
        whose connection is gone goes offline; a connection whose registration was undone is closed (its client
        reconnects and registers again)."""
        bound = self.connections.bound()
        undone = []
        for device in self.store.held_devices():
            sid = bound.pop(device.device_id, None)
            if sid == device.sid:
                continue  # the store and memory agree
            if self.store.mark_disconnected(device.device_id, device.sid, now):
                self._went_offline(device.device_id, now, "converged")
            if sid is not None:
                undone.append((device.device_id, sid))
        for device_id, sid in undone + list(bound.items()):
            logs.event(log, "registration undone", logging.WARNING, device_id=device_id)
            self.connections.release(sid)
            self.notifier.disconnect(sid)

    @atomic
    def expire_silent_devices(self, now):
        """Close connections of heartbeating devices silent for longer than the heartbeat timeout.

        A device that never sends heartbeats (the spec's JavaScript example) is watched by the transport's
        own ping/pong instead, so that such a client is not cut off every 90 seconds."""
        limit = self.config["HEARTBEAT_TIMEOUT"]
        for device_id, sid in self.connections.silent(now, limit):
            logs.event(log, "device silent", logging.WARNING, device_id=device_id, seconds=limit)
            self._release_sid(sid, now, reason="heartbeat_timeout")
            self.notifier.disconnect(sid)

    def deliver_owed_cancels(self):
        """On a cluster: send the cancels that other nodes left for devices whose connection this node holds."""
        for device_id in self.store.devices_owed_cancels():
            sid = self.connections.sid_of(device_id)
            if sid is not None:
                self._send_owed_cancels(sid, device_id)

    @atomic
    def _send_owed_cancels(self, sid, device_id):
        for task_id, attempt in self.store.take_owed_cancels(device_id):
            if not self.store.task_active_on(task_id, device_id):  # not while it runs a later attempt of the task
                self.notifier.cancel_task(sid, task_id, attempt)

    @atomic
    def recover_on_start(self):
        """No connection survives a restart: every device is offline and its tasks get a fresh grace."""
        self.store.disconnect_all(self.clock())
