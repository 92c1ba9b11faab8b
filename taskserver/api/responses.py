"""Response schemas: they document every answer's shape in the OpenAPI document (the spec's fields first)."""

from marshmallow import Schema, fields


class ConnectionInfoSchema(Schema):
    sid = fields.String(allow_none=True)
    registered_at = fields.String(allow_none=True)


class DeviceOutSchema(Schema):
    device_id = fields.String()
    device_name = fields.String()
    status = fields.String()
    last_heartbeat = fields.String(allow_none=True)
    task_count = fields.Integer()
    connection_info = fields.Nested(ConnectionInfoSchema)
    device_info = fields.Dict()
    capacity = fields.Integer()
    disabled = fields.Boolean()


class DeviceListSchema(Schema):
    success = fields.Boolean()
    devices = fields.List(fields.Nested(DeviceOutSchema))
    total = fields.Integer()


class TaskOutSchema(Schema):
    task_id = fields.String()
    task_type = fields.String()
    status = fields.String()
    device_id = fields.String(allow_none=True)
    created_at = fields.String()
    data = fields.Dict()
    progress = fields.Integer()
    priority = fields.Integer()
    attempt = fields.Integer()
    max_retries = fields.Integer()
    timeout = fields.Integer()
    error_code = fields.String(allow_none=True)
    updated_at = fields.String()


class TaskListSchema(Schema):
    success = fields.Boolean()
    tasks = fields.List(fields.Nested(TaskOutSchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class TaskStatusOutSchema(Schema):
    task_id = fields.String()
    status = fields.String()
    progress = fields.Integer()
    result = fields.Dict(allow_none=True)
    updated_at = fields.String()
    task_type = fields.String()
    device_id = fields.String(allow_none=True)
    progress_message = fields.String(allow_none=True)
    error_code = fields.String(allow_none=True)
    attempt = fields.Integer()


class TaskStatusSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    task = fields.Nested(TaskStatusOutSchema)


class DispatchOutSchema(Schema):
    success = fields.Boolean()
    task_id = fields.String()
    device_id = fields.String(allow_none=True)
    device_name = fields.String(allow_none=True)
    status = fields.String()
    message = fields.String()


class SystemSchema(Schema):
    system = fields.String()
    version = fields.String()
    status = fields.String()
    port = fields.Integer()
    connected_devices = fields.Integer()
    active_tasks = fields.Integer()
    pending_tasks = fields.Integer()
    timestamp = fields.String()


class ErrorResponseSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    error_code = fields.String()
    errors = fields.Dict()


class AttemptOutSchema(Schema):
    attempt = fields.Integer()
    device_id = fields.String(allow_none=True)
    dispatched_at = fields.String()
    delivered_at = fields.String(allow_none=True)
    ended_at = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True, metadata={"description": "completed / failed / cancelled；进行中为 null"})
    error_code = fields.String(allow_none=True)


class TaskDetailOutSchema(TaskOutSchema):
    target_device_id = fields.String(allow_none=True)
    progress_message = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    dispatched_at = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    not_before = fields.String(allow_none=True, metadata={"description": "排期或重试退避：此前不会分发"})
    timeout_at = fields.String(allow_none=True, metadata={"description": "进行中的执行在此时超时"})
    idempotency_key = fields.String(allow_none=True)
    attempts = fields.List(fields.Nested(AttemptOutSchema))


class TaskDetailSchema(Schema):
    success = fields.Boolean()
    task = fields.Nested(TaskDetailOutSchema)


class TaskEventOutSchema(Schema):
    at = fields.String()
    kind = fields.String(
        metadata={
            "description": "created, dispatched, delivered, started, progress, completed, failed, retry_scheduled, "
            "cancelled, cancel_confirmed"
        }
    )
    actor = fields.String(metadata={"description": "operator, server, watchdog 或设备 id"})
    device_id = fields.String(allow_none=True)
    attempt = fields.Integer(allow_none=True)
    detail = fields.Dict(allow_none=True)
    message = fields.String()


class TaskEventsSchema(Schema):
    success = fields.Boolean()
    task_id = fields.String()
    events = fields.List(fields.Nested(TaskEventOutSchema))
    total = fields.Integer()


class DeviceEventOutSchema(Schema):
    at = fields.String()
    kind = fields.String(metadata={"description": "registered, offline, disabled, enabled, 或其任务的事件"})
    actor = fields.String()
    task_id = fields.String(allow_none=True)
    attempt = fields.Integer(allow_none=True)
    detail = fields.Dict(allow_none=True)
    message = fields.String()


class DeviceDetailOutSchema(DeviceOutSchema):
    created_at = fields.String()
    disconnected_at = fields.String(allow_none=True)
    active_tasks = fields.List(fields.Nested(TaskOutSchema))
    recent_history = fields.List(fields.Nested(DeviceEventOutSchema))


class DeviceDetailSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    device = fields.Nested(DeviceDetailOutSchema)


class DeviceTokenSchema(Schema):
    success = fields.Boolean()
    device_id = fields.String()
    token = fields.String()
    message = fields.String()


class DeletedSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    device_id = fields.String()


class HealthSchema(Schema):
    success = fields.Boolean()
    status = fields.String()


class CheckSchema(Schema):
    ok = fields.Boolean()
    reason = fields.String(allow_none=True)


class WatchdogCheckSchema(CheckSchema):
    interval = fields.Float(allow_none=True)
    lag = fields.Float(allow_none=True)
    last_sweep_age = fields.Float(allow_none=True)


class ChecksSchema(Schema):
    store = fields.Nested(CheckSchema)
    watchdog = fields.Nested(WatchdogCheckSchema)


class ReadinessSchema(Schema):
    success = fields.Boolean()
    status = fields.String()
    message = fields.String()
    error_code = fields.String()
    checks = fields.Nested(ChecksSchema)


# ---- the console's read-only endpoints (task types, throughput, devices online) ----


class ThroughputTotalsSchema(Schema):
    completed = fields.Integer()
    failed = fields.Integer()
    cancelled = fields.Integer()


class ThroughputMinuteSchema(ThroughputTotalsSchema):
    at = fields.String(metadata={"description": "这一分钟的开始"})


class ThroughputSchema(Schema):
    success = fields.Boolean()
    minutes = fields.Integer()
    totals = fields.Nested(ThroughputTotalsSchema)
    per_minute = fields.List(fields.Nested(ThroughputMinuteSchema))


class FleetMinuteSchema(Schema):
    at = fields.String(metadata={"description": "这一分钟的开始"})
    online = fields.Integer(allow_none=True, metadata={"description": "在线（已连接）的设备数；无采样为 null"})
    busy = fields.Integer(allow_none=True)


class FleetNowSchema(Schema):
    online = fields.Integer()
    busy = fields.Integer()


class FleetHistorySchema(Schema):
    success = fields.Boolean()
    minutes = fields.Integer()
    now = fields.Nested(FleetNowSchema)
    per_minute = fields.List(fields.Nested(FleetMinuteSchema))


class TaskTypeOutSchema(Schema):
    task_type = fields.String()
    data_schema = fields.Dict(metadata={"description": "data 的 JSON Schema（必填字段、默认值、范围）"})


class TaskTypesSchema(Schema):
    success = fields.Boolean()
    task_types = fields.List(fields.Nested(TaskTypeOutSchema))
