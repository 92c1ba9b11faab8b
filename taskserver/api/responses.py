"""Response schemas: they document every answer's shape in the OpenAPI document (the spec's fields first).

Tasks, devices and their histories are shaped in ``present.py``, which answers are built from: their schemas come from
there, so that a field is added in one place."""

from marshmallow import Schema, fields

from taskserver import present


class DeviceListSchema(Schema):
    success = fields.Boolean()
    devices = fields.List(fields.Nested(present.DEVICE_SUMMARY.schema))
    total = fields.Integer()


class PageSchema(Schema):
    """One page of a list: its items (a field of the subclass), how many there are in all, and the page asked for."""

    success = fields.Boolean()
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class TaskListSchema(PageSchema):
    tasks = fields.List(fields.Nested(present.TASK_SUMMARY.schema))


class TaskStatusSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    task = fields.Nested(present.TASK_STATUS.schema)


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


class TaskDetailSchema(Schema):
    success = fields.Boolean()
    task = fields.Nested(present.TASK_DETAIL.schema)


class TaskEventsSchema(Schema):
    success = fields.Boolean()
    task_id = fields.String()
    events = fields.List(fields.Nested(present.TASK_EVENT.schema))
    total = fields.Integer()


class DeviceDetailSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    device = fields.Nested(present.DEVICE_DETAIL.schema)


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
    redis = fields.Nested(CheckSchema, metadata={"description": "仅多节点：Redis 可访问，且本节点已订阅频道"})
    lease = fields.Nested(CheckSchema, metadata={"description": "仅多节点：本节点的租约在有效期内"})


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


class BatchCreatedSchema(Schema):
    success = fields.Boolean()
    batch_id = fields.String()
    total = fields.Integer()
    task_ids = fields.List(fields.String())


class BatchDetailSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    batch = fields.Nested(present.BATCH.schema)


class BatchListSchema(PageSchema):
    batches = fields.List(fields.Nested(present.BATCH.schema))


# ---- schedules ----


class ScheduleListSchema(PageSchema):
    schedules = fields.List(fields.Nested(present.SCHEDULE.schema))


class ScheduleDetailSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    schedule = fields.Nested(present.SCHEDULE_DETAIL.schema)


class ScheduleDeletedSchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    schedule_id = fields.String()
