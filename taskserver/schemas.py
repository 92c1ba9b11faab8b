"""Marshmallow schemas for every REST body, query and socket payload, and for each task type's ``data``."""

from datetime import UTC, datetime

from marshmallow import EXCLUDE, INCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from taskserver import cron, wirejson
from taskserver.domain import MAX_BATCH, BatchMode, DeviceStatus, ErrorCode, Misfire, ScheduleKind, TaskStatus, TaskType
from taskserver.errors import TaskServerError, ValidationFailed
from taskserver.orders import BatchRequest, DispatchRequest, ScheduleRequest

MAX_ID = 128
MAX_TEXT = 2000
PRINTABLE = validate.Regexp(r"^[^\x00-\x1f\x7f]+$", error="不能包含控制字符")
MAX_PRODUCT_IDS = 10_000
MAX_OFFSET = 1_000_000_000
# A device id is a path segment of /api/device/{device_id}: letters (any script) and digits, then also - _ . : @
DEVICE_ID_PATTERN = r"[^\W_][\w.:@-]*"
DEVICE_ID = validate.Regexp(
    rf"^{DEVICE_ID_PATTERN}\Z", error="设备 ID 只能含字母、数字和 - _ . : @，并以字母或数字开头"
)
# Times are kept as epoch seconds from 1970 to 9999-01-01 UTC: shown in any local time zone, they stay in years 1-9999.
LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


MAX_TAGS = 32  # on a device (registered and an operator's, each) and in a target


def Tag(**kwargs):
    """One tag: 1 to 64 printable characters but a comma (queries take comma-separated tags)."""
    printable_no_comma = validate.Regexp(r"^[^\x00-\x1f\x7f,]+$", error="不能包含控制字符或逗号")
    return fields.String(validate=[validate.Length(1, 64), printable_no_comma], **kwargs)


def Tags(least=0, **kwargs):
    """A list of ``least`` to ``MAX_TAGS`` tags; loads sorted and without repeats."""
    return SortedTags(Tag(), validate=validate.Length(least, MAX_TAGS), **kwargs)


class SortedTags(fields.List):
    """A list of tags, loaded sorted and without repeats (the form stores and compares)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return sorted(set(super()._deserialize(value, attr, data, **kwargs)))


def Identifier(**kwargs):
    """A task id (or a filter on any id): 1 to 128 printable characters."""
    return fields.String(validate=[validate.Length(1, MAX_ID), PRINTABLE], **kwargs)


def DeviceId(**kwargs):
    """A device id a phone may register with: 1 to 128 characters of ``DEVICE_ID_PATTERN``."""
    return fields.String(validate=[validate.Length(1, MAX_ID), DEVICE_ID], **kwargs)


class WireSchema(Schema):
    """A schema for a whole payload off the wire: refuses what JSON allows but nothing can keep (``wirejson``)."""

    @pre_load
    def _refuse_unkeepable(self, data, **kwargs):
        errors = wirejson.field_problems(data) if isinstance(data, dict) else None
        if errors:
            raise ValidationError(errors)
        return data


class Timestamp(fields.Field):
    """A point in time given as ISO 8601 text or epoch seconds / milliseconds; loads as epoch seconds."""

    default_error_messages = {"invalid": "不是有效的时间（ISO 8601 文本或毫秒时间戳，1970 年至 9998 年）"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.strip()
            try:
                value = float(value)
            except ValueError:
                return self._from_iso(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LATEST * 1000:
            raise self.make_error("invalid")  # NaN fails the comparison; huge integers are never divided
        return self._in_range(value / 1000 if value > 1e11 else float(value))

    def _from_iso(self, text):
        try:
            return self._in_range(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except (ValueError, OverflowError, OSError) as exc:
            raise self.make_error("invalid") from exc

    def _in_range(self, seconds):
        if not 0 <= seconds <= LATEST:
            raise self.make_error("invalid")
        return seconds


# ---- socket payloads (liberal: unknown keys are ignored) ----


class DeviceInfoSchema(Schema):
    """What a phone says about itself; unknown keys are kept and shown."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(validate=validate.Length(max=MAX_ID))
    version = fields.String(validate=validate.Length(max=MAX_ID))
    app_version = fields.String(validate=validate.Length(max=MAX_ID))
    model = fields.String(validate=validate.Length(max=MAX_ID))
    manufacturer = fields.String(validate=validate.Length(max=MAX_ID))
    max_concurrent_tasks = fields.Integer(strict=True, validate=validate.Range(1, 100))
    tags = Tags()


class DeviceRegisterSchema(WireSchema):
    """``device_register``."""

    class Meta:
        unknown = EXCLUDE

    device_id = DeviceId(required=True)
    device_name = fields.String(validate=validate.Length(max=MAX_ID), allow_none=True)
    device_info = fields.Nested(DeviceInfoSchema, load_default=dict)
    token = fields.String(validate=validate.Length(1, 512), load_default=None, allow_none=True)


class ConnectSchema(WireSchema):
    """What a connection presents when it opens: an optional device token."""

    class Meta:
        unknown = EXCLUDE

    token = fields.String(validate=validate.Length(1, 512), load_default=None, allow_none=True)


class HeartbeatSchema(WireSchema):
    """``heartbeat``: ``timestamp`` is informational only; liveness uses the server's clock."""

    class Meta:
        unknown = EXCLUDE

    device_id = DeviceId()
    timestamp = Timestamp(allow_none=True)


class TaskProgressSchema(WireSchema):
    """``task_progress``."""

    class Meta:
        unknown = EXCLUDE

    task_id = Identifier(required=True)
    progress = fields.Integer(required=True, validate=validate.Range(0, 100))
    message = fields.String(validate=validate.Length(max=MAX_TEXT), allow_none=True)
    attempt = fields.Integer(strict=True, validate=validate.Range(1, 100))


class ResultSchema(Schema):
    """The ``result`` of ``task_result``; extra keys are stored as sent."""

    class Meta:
        unknown = INCLUDE

    success = fields.Boolean(required=True)
    message = fields.String(validate=validate.Length(max=MAX_TEXT), allow_none=True)
    error_code = fields.String(validate=validate.Length(max=MAX_ID), allow_none=True)
    processed_count = fields.Integer(validate=validate.Range(min=0), allow_none=True)
    failed_count = fields.Integer(validate=validate.Range(min=0), allow_none=True)
    execution_time = fields.Float(allow_nan=False, allow_none=True)
    data = fields.Raw(allow_none=True)


class TaskResultSchema(WireSchema):
    """``task_result``."""

    class Meta:
        unknown = EXCLUDE

    task_id = Identifier(required=True)
    result = fields.Nested(ResultSchema, required=True)
    attempt = fields.Integer(strict=True, validate=validate.Range(1, 100))


# ---- task data per type (known fields checked, defaults filled, extra keys passed to the device) ----


class TaskDataSchema(Schema):
    """Base for a task type's ``data``: unknown keys go to the device untouched."""

    class Meta:
        unknown = INCLUDE


class DelistDataSchema(TaskDataSchema):
    """DELIST: take products off sale."""

    product_ids = fields.List(
        fields.String(validate=[validate.Length(1, MAX_ID), PRINTABLE]),
        required=True,
        validate=validate.Length(1, MAX_PRODUCT_IDS),
    )
    batch_size = fields.Integer(load_default=10, validate=validate.Range(1, 1000))
    delay_between_items = fields.Float(load_default=1.0, validate=validate.Range(0, 3600))
    retry_failed = fields.Boolean(load_default=True)


class CollectDataSchema(TaskDataSchema):
    """COLLECT: scrape products from a shop page."""

    target_url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    max_items = fields.Integer(load_default=50, validate=validate.Range(1, 10_000))
    scroll_delay = fields.Float(load_default=2.0, validate=validate.Range(0, 3600))
    extract_images = fields.Boolean(load_default=True)
    extract_details = fields.Boolean(load_default=True)


class ProductDataSchema(Schema):
    """The product an UPLOAD puts on sale."""

    class Meta:
        unknown = INCLUDE

    title = fields.String(required=True, validate=validate.Length(1, 500))
    price = fields.Float(validate=validate.Range(0, 1e9), allow_nan=False)
    description = fields.String(validate=validate.Length(max=20_000))
    images = fields.List(fields.String(validate=validate.Length(1, 2048)), validate=validate.Length(max=100))


class UploadDataSchema(TaskDataSchema):
    """UPLOAD: put a product on sale, now or at ``schedule_time``."""

    product_data = fields.Nested(ProductDataSchema, required=True)
    auto_publish = fields.Boolean(load_default=True)
    schedule_time = Timestamp(load_default=None, allow_none=True)


DATA_SCHEMAS = {
    TaskType.DELIST.value: DelistDataSchema(),
    TaskType.COLLECT.value: CollectDataSchema(),
    TaskType.UPLOAD.value: UploadDataSchema(),
}


class UnknownTaskType(TaskServerError):
    """A ``task_type`` the server does not know."""

    error_code = ErrorCode.UNKNOWN_TASK_TYPE


def load_task_data(task_type, data, extra_types=()):
    """Validate ``data`` for ``task_type`` and fill its defaults; return ``(data, schedule_time or None)``."""
    known = [*DATA_SCHEMAS, *extra_types]
    if task_type not in known:
        raise UnknownTaskType(f"未知的任务类型 {task_type}，可用类型: {', '.join(known)}", known_types=known)
    schema = DATA_SCHEMAS.get(task_type)
    if schema is None:
        return dict(data), None
    try:
        loaded = schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed({"data": exc.messages}) from exc
    schedule_time = loaded.get("schedule_time")
    if schedule_time is not None:
        loaded["schedule_time"] = datetime.fromtimestamp(schedule_time).isoformat(timespec="seconds")
    return loaded, schedule_time


# ---- REST bodies and queries (strict: unknown keys are an error) ----


class DispatchSchema(WireSchema):
    """Body of ``POST /api/dispatch-task``."""

    class Meta:
        unknown = RAISE

    task_type = fields.String(required=True, validate=validate.Length(1, 64))
    data = fields.Dict(keys=fields.String(), load_default=dict)
    device_id = DeviceId(load_default=None, allow_none=True)
    priority = fields.Integer(strict=True, load_default=0, validate=validate.Range(-1000, 1000))
    timeout = fields.Integer(strict=True, load_default=None, validate=validate.Range(1, 604_800))
    max_retries = fields.Integer(strict=True, load_default=0, validate=validate.Range(0, 10))
    schedule_time = Timestamp(load_default=None, allow_none=True)
    idempotency_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200))
    tags = Tags(
        load_default=None,
        allow_none=True,
        metadata={"description": "只分发给同时具有这些标签的设备（任一空闲的）；不能与 device_id 同用"},
    )

    @validates_schema
    def _one_target(self, data, **kwargs):
        if data.get("device_id") is not None and data.get("tags"):
            raise ValidationError("不能与 device_id 同时指定", "tags")


def dispatch_request(body, extra_types=(), operator="", idempotency_key=None):
    """The ``DispatchRequest`` of a body ``DispatchSchema`` loaded: its data validated for its type, its not-before
    the later of ``schedule_time`` and the data's own."""
    data, data_schedule = load_task_data(body["task_type"], body["data"], extra_types)
    times = [t for t in (body.get("schedule_time"), data_schedule) if t is not None]
    return DispatchRequest(
        task_type=body["task_type"],
        data=data,
        device_id=body.get("device_id"),
        tags=tuple(body.get("tags") or ()) or None,
        priority=body.get("priority", 0),
        timeout=body.get("timeout"),
        max_retries=body.get("max_retries", 0),
        not_before=max(times) if times else None,
        idempotency_key=idempotency_key,
        operator=operator,
    )


# ---- batches ----


class BatchTargetSchema(Schema):
    """Which devices a batch is for: exactly one of ``tags``, ``device_ids`` and ``all``."""

    class Meta:
        unknown = RAISE

    tags = Tags(least=1)
    device_ids = fields.List(DeviceId(), validate=validate.Length(1, MAX_BATCH))
    all = fields.Boolean(validate=validate.Equal(True, error="只能为 true"))

    @validates_schema
    def _exactly_one(self, data, **kwargs):
        if len(data) != 1:
            raise ValidationError("必须且只能指定 tags、device_ids、all 之一")


class BatchAbortSchema(Schema):
    """When a batch stops: once ``min_finished`` of its tasks ran to an outcome and the failed share reached
    ``failure_ratio``."""

    class Meta:
        unknown = RAISE

    failure_ratio = fields.Float(required=True, validate=validate.Range(0, 1, min_inclusive=False))
    min_finished = fields.Integer(strict=True, load_default=1, validate=validate.Range(1, MAX_BATCH))


class BatchSchema(WireSchema):
    """Body of ``POST /api/batches``."""

    class Meta:
        unknown = RAISE

    task_type = fields.String(required=True, validate=validate.Length(1, 64))
    mode = fields.String(required=True, validate=validate.OneOf([mode.value for mode in BatchMode]))
    target = fields.Nested(BatchTargetSchema, required=True)
    data = fields.Dict(keys=fields.String(), metadata={"description": "each：每台设备的任务数据"})
    items = fields.List(
        fields.Dict(keys=fields.String()),
        validate=validate.Length(1, MAX_BATCH),
        metadata={"description": "spread：每个任务的数据，一项一个任务"},
    )
    online_only = fields.Boolean(load_default=False, metadata={"description": "each：只发给此刻在线的设备"})
    priority = fields.Integer(strict=True, load_default=0, validate=validate.Range(-1000, 1000))
    timeout = fields.Integer(strict=True, load_default=None, validate=validate.Range(1, 604_800))
    max_retries = fields.Integer(strict=True, load_default=0, validate=validate.Range(0, 10))
    schedule_time = Timestamp(load_default=None, allow_none=True)
    max_in_flight = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        validate=validate.Range(1, MAX_BATCH),
        metadata={"description": "同时处于待执行队列、已分发或执行中的任务最多几个"},
    )
    abort = fields.Nested(BatchAbortSchema, load_default=None, allow_none=True)
    idempotency_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200))

    @validates_schema
    def _mode_fields(self, data, **kwargs):
        if data.get("mode") == BatchMode.SPREAD:
            if "items" not in data:
                raise ValidationError("spread 模式必须给出 items", "items")
            if "data" in data:
                raise ValidationError("spread 模式用 items 给出每个任务的数据", "data")
            if "device_ids" in data.get("target", {}):
                raise ValidationError("spread 模式的目标只能是 tags 或 all（要用指定设备，请先给它们打标签）", "target")
        elif data.get("mode") == BatchMode.EACH and "items" in data:
            raise ValidationError("each 模式用 data 给出每台设备的任务数据", "items")


def batch_request(body, extra_types=(), operator="", idempotency_key=None):
    """The ``BatchRequest`` of a body ``BatchSchema`` loaded: each task's data validated for the type (an item's
    error names its index), each task's not-before the later of ``schedule_time`` and its data's own."""
    if body["mode"] == BatchMode.SPREAD:
        tasks = [_item_data(body, index, item, extra_types) for index, item in enumerate(body["items"])]
    else:
        tasks = [_task_data(body, body.get("data", {}), extra_types)]
    abort = body["abort"] or {}
    options = {name: body[name] for name in ("priority", "timeout", "max_retries", "online_only")}
    options["schedule_time"] = body["schedule_time"]
    return BatchRequest(
        task_type=body["task_type"],
        mode=body["mode"],
        target=body["target"],
        tasks=tuple(tasks),
        online_only=body["online_only"],
        priority=body["priority"],
        timeout=body["timeout"],
        max_retries=body["max_retries"],
        max_in_flight=body["max_in_flight"],
        abort_failure_ratio=abort.get("failure_ratio"),
        abort_min_finished=abort.get("min_finished"),
        options=options,
        idempotency_key=idempotency_key,
        operator=operator,
    )


def _item_data(body, index, item, extra_types):
    """``_task_data`` of the item at ``index`` of a spread batch; its errors name it (``items.<index>``)."""
    try:
        return _task_data(body, item, extra_types)
    except ValidationFailed as exc:
        raise ValidationFailed({"items": {index: exc.extra["errors"]["data"]}}) from exc


def _task_data(body, data, extra_types):
    """``(data, not_before)`` of one task of a batch."""
    loaded, data_schedule = load_task_data(body["task_type"], data, extra_types)
    times = [t for t in (body["schedule_time"], data_schedule) if t is not None]
    return loaded, max(times) if times else None


class BatchListQuerySchema(Schema):
    """Query of ``GET /api/batches``."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


class OneOrSeveral(fields.List):
    """A query filter of one or several choices: repeated (``?status=a&status=b``) or comma-separated (``a,b``)."""

    is_multiple = True

    def __init__(self, choices, **kwargs):
        super().__init__(fields.String(validate=validate.OneOf(choices)), load_default=list, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return list(dict.fromkeys(super()._deserialize(split_commas(value), attr, data, **kwargs)))


def split_commas(value):
    """The values of a repeated or comma-separated query parameter."""
    values = [value] if isinstance(value, str) else value
    if isinstance(values, list | tuple):
        values = [part.strip() for item in values for part in (item.split(",") if isinstance(item, str) else [item])]
    return values


class TagFilter(fields.List):
    """A query filter of tags that must all match: repeated (``?tag=a&tag=b``) or comma-separated; sorted."""

    is_multiple = True

    def __init__(self, **kwargs):
        super().__init__(Tag(), load_default=list, validate=validate.Length(max=MAX_TAGS), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return sorted(set(super()._deserialize(split_commas(value), attr, data, **kwargs)))


class TaskListQuerySchema(Schema):
    """Query of ``GET /api/tasks``: every filter narrows the list; ``created_after <= created_at < created_before``."""

    class Meta:
        unknown = EXCLUDE

    status = OneOrSeveral([s.value for s in TaskStatus], metadata={"description": "任务状态，可重复或用逗号分隔"})
    task_type = fields.String(validate=[validate.Length(1, 64), PRINTABLE])
    device_id = Identifier()
    batch_id = Identifier()
    created_after = Timestamp(metadata={"type": "string", "description": "ISO 8601 或毫秒时间戳；含此时刻"})
    created_before = Timestamp(metadata={"type": "string", "description": "ISO 8601 或毫秒时间戳；不含此时刻"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))

    @validates_schema
    def _window(self, data, **kwargs):
        after, before = data.get("created_after"), data.get("created_before")
        if after is not None and before is not None and after >= before:
            raise ValidationError("必须早于 created_before", "created_after")


class DeviceListQuerySchema(Schema):
    """Query of ``GET /api/devices``."""

    class Meta:
        unknown = EXCLUDE

    status = OneOrSeveral([s.value for s in DeviceStatus], metadata={"description": "设备状态，可重复或用逗号分隔"})
    disabled = fields.Boolean(metadata={"description": "true 只列出已停用的设备，false 只列出未停用的"})
    tag = TagFilter(metadata={"description": "只列出同时具有这些标签的设备，可重复或用逗号分隔"})


class DeviceTagsSchema(WireSchema):
    """Body of ``PUT /api/device/{device_id}/tags``: the operator's tags of the device (replacing the earlier)."""

    class Meta:
        unknown = RAISE

    tags = Tags(required=True)


# ---- path parameters and the console's queries ----


class DevicePathSchema(Schema):
    device_id = DeviceId(required=True)


class StatsQuerySchema(Schema):
    """Query of ``GET /api/stats/*``."""

    class Meta:
        unknown = EXCLUDE

    minutes = fields.Integer(
        load_default=60, validate=validate.Range(1, 1440), metadata={"description": "最近多少分钟（含当前分钟）"}
    )


def load_payload(schema, payload):
    """Validate a socket payload (a JSON object, or JSON text of one) with ``schema``."""
    if isinstance(payload, str | bytes):
        try:
            payload = wirejson.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise ValidationFailed({"_schema": ["不是有效的 JSON"]}, "消息格式无效") from exc
    if not isinstance(payload, dict):
        raise ValidationFailed({"_schema": ["消息内容必须是 JSON 对象"]}, "消息格式无效")
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise ValidationFailed(exc.messages) from exc


# ---- schedules ----


def _cron_expression(expression):
    if (problem := cron.problem(expression)) is not None:
        raise ValidationError(problem)


def _time_zone(name):
    if cron.zone(name) is None:
        raise ValidationError(f"未知的时区 {name}（IANA 时区名，如 Asia/Shanghai）")


# What each fire time decides for what it creates, so that a schedule's task or batch body may not say it.
FIRE_TIME_DECIDES = {
    "idempotency_key": "每个触发时间只创建一次，不需要也不能指定幂等键",
    "schedule_time": "每个触发时间即创建时间，不能指定 schedule_time",
}


class DecidedByFireTime:
    """Refuses in a body what each fire time decides (``FIRE_TIME_DECIDES``); mixed into a body's schema."""

    @validates_schema
    def _decided_by_fire_time(self, data, **kwargs):
        errors = {name: [message] for name, message in FIRE_TIME_DECIDES.items() if data.get(name) is not None}
        if errors:
            raise ValidationError(errors)


class ScheduledDispatchSchema(DecidedByFireTime, DispatchSchema):
    """A schedule's ``task``: a dispatch body without ``idempotency_key`` or ``schedule_time``."""


class ScheduledBatchSchema(DecidedByFireTime, BatchSchema):
    """A schedule's ``batch``: a batch body without ``schedule_time``."""


class ScheduleSchema(WireSchema):
    """Body of ``POST /api/schedules``: what each fire time creates (``task`` or ``batch``) and when."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=[validate.Length(1, MAX_ID), PRINTABLE])
    cron = fields.String(
        required=True,
        validate=[validate.Length(1, 200), _cron_expression],
        metadata={"description": "5 个字段：分 时 日 月 周（如 0 9 * * *），按 timezone 的当地时间"},
    )
    timezone = fields.String(
        load_default="UTC",
        validate=[validate.Length(1, 64), _time_zone],
        metadata={"description": "IANA 时区名，如 Asia/Shanghai"},
    )
    task = fields.Nested(
        ScheduledDispatchSchema,
        metadata={"description": "每个触发时间创建的任务：即 POST /api/dispatch-task 的请求体，但不含幂等键和排期时间"},
    )
    batch = fields.Nested(
        ScheduledBatchSchema,
        metadata={"description": "每个触发时间创建的批次：即 POST /api/batches 的请求体，但不含排期时间"},
    )
    enabled = fields.Boolean(load_default=True)
    misfire = fields.Enum(
        Misfire,
        by_value=True,
        load_default=Misfire.COALESCE,
        metadata={"description": "服务器停机错过的触发时间：coalesce 合并为一次运行，skip 跳过（只运行准时的）"},
    )

    @validates_schema
    def _one_thing_runs(self, data, partial=None, **kwargs):
        given = [name for name in ("task", "batch") if name in data]
        if len(given) > 1 or (not given and not partial):
            message = "task 和 batch 只能指定一个" if given else "需要指定 task 或 batch"
            raise ValidationError({name: [message] for name in ("task", "batch")})


class SchedulePatchSchema(ScheduleSchema):
    """Body of ``PATCH /api/schedule/{schedule_id}``: any of ``ScheduleSchema``'s fields (none has a default here); a
    ``task`` or ``batch`` replaces what the schedule creates."""

    def __init__(self, **kwargs):
        super().__init__(partial=("name", "cron", "timezone", "enabled", "misfire"), **kwargs)


class ScheduleListQuerySchema(Schema):
    """Query of ``GET /api/schedules``."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


def schedule_changes(body, extra_types=()):
    """What a body ``ScheduleSchema`` loaded (whole, or a change's part) sets on a schedule: its ``task`` or
    ``batch`` as ``kind`` and ``body``, checked as each fire time will build its request (an error names the field
    inside ``task`` or ``batch``)."""
    changes = {name: body[name] for name in ("name", "cron", "timezone", "enabled", "misfire") if name in body}
    for kind, build in ((ScheduleKind.TASK, dispatch_request), (ScheduleKind.BATCH, batch_request)):
        if kind in body:
            try:
                build(body[kind], extra_types)
            except ValidationFailed as exc:
                raise ValidationFailed({kind.value: exc.extra["errors"]}) from exc
            changes.update(kind=kind, body=body[kind])
    return changes


def schedule_request(body, extra_types=()):
    """The ``ScheduleRequest`` of a body ``ScheduleSchema`` loaded."""
    return ScheduleRequest(**schedule_changes(body, extra_types))
