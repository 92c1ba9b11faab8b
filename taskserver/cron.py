"""Cron expressions in a time zone: what is wrong with one, and its fire times around a moment.

Pure functions of epoch seconds. Fire times are worked out in the zone's local time (croniter on ``zoneinfo``
times), so that daylight saving time moves them as it moves the zone's clocks: a fire time in the hour skipped in
spring runs when the clocks have jumped, and a time shown twice in autumn fires once, at its first showing, unless
the minute or hour field starts with ``*`` (then each real hour fires), as cron(8) does."""

import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

FIELDS = 5  # minute hour day-of-month month day-of-week
# croniter's own extensions: R (a random value, drawn anew each time an expression is read) and H (hashed)
UNSTABLE = re.compile(r"(?<![a-z])[rh](?![a-z])", re.IGNORECASE)


def zone(name):
    """The time zone named ``name`` (an IANA name such as ``Asia/Shanghai``), or None if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def problem(expression):
    """Why ``expression`` is not a cron expression of five fields that fires at some time, or None if it is."""
    if len(expression.split()) != FIELDS:
        return "必须是 5 个字段：分 时 日 月 周（如 0 9 * * *）"
    if UNSTABLE.search(expression) or not croniter.is_valid(expression):
        return "不是有效的 cron 表达式"
    try:
        next_after(expression, "UTC", 0.0)
    except CroniterBadDateError:
        return "这个 cron 表达式永远不会触发"
    return None


def next_after(expression, zone_name, moment):
    """The first fire time after ``moment``."""
    return next(_fire_times(expression, zone_name, moment))


def last_at_or_before(expression, zone_name, moment):
    """The last fire time at or before ``moment``."""
    earlier = next(_fire_times(expression, zone_name, moment, backwards=True))  # strictly before
    later = next_after(expression, zone_name, earlier)
    return later if later <= moment else earlier


def _fire_times(expression, zone_name, start, backwards=False):
    """The fire times after ``start`` (or before it, ``backwards``), nearest first."""
    local = zone(zone_name)
    times = croniter(expression, datetime.fromtimestamp(start, local))
    step = times.get_prev if backwards else times.get_next
    minute, hour = expression.split()[:2]
    every_hour = minute.startswith("*") or hour.startswith("*")
    while True:
        moment = step(float)
        if every_hour or datetime.fromtimestamp(moment, local).fold == 0:
            yield moment
