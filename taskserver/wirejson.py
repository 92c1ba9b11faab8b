"""JSON as it arrives from clients (HTTP bodies, Socket.IO packets, plain WebSocket frames), and what the server
refuses in it although JSON's grammar allows it: lone surrogates, NaN and infinities, integers beyond 64 bits,
nesting deeper than ``MAX_DEPTH``. Nothing refused here could be stored or sent back out."""

import json
import math

MAX_INT_DIGITS = 100  # longer integer literals are not converted at all (python-engineio's guard, kept)
MAX_INT = 2**63 - 1  # what SQLite and PostgreSQL keep as an integer
MAX_DEPTH = 32  # objects and arrays inside one another


class OversizedInteger:
    """An integer literal of more than ``MAX_INT_DIGITS`` digits, kept unconverted: every schema refuses it."""

    __slots__ = ("digits",)

    def __init__(self, digits):
        self.digits = len(digits)


def _parse_int(literal):
    return int(literal) if len(literal) <= MAX_INT_DIGITS else OversizedInteger(literal)


def loads(text, **kwargs):
    """``json.loads`` that never converts a huge integer literal (Socket.IO calls it for every packet)."""
    return json.loads(text, **{"parse_int": _parse_int, **kwargs})


dumps = json.dumps  # with ``loads``, the module interface python-socketio expects


def problem(value, depth=0):
    """Why ``value`` (decoded JSON) is refused, as ``(path, message)``, or None if it is acceptable."""
    if isinstance(value, str):
        return None if _encodable(value) else ("", "含有孤立的代理字符，不是有效的 Unicode 文本")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -MAX_INT <= value <= MAX_INT else ("", "整数超出 64 位范围")
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", "不能是 NaN 或无穷大")
    if isinstance(value, OversizedInteger):
        return "", "整数超出 64 位范围"
    if depth >= MAX_DEPTH:
        return "", f"嵌套超过 {MAX_DEPTH} 层"
    return _first_in(value.items() if isinstance(value, dict) else enumerate(value), depth)


def _first_in(items, depth):
    for key, item in items:
        if isinstance(key, str) and not _encodable(key):
            return "", "键含有孤立的代理字符，不是有效的 Unicode 文本"
        found = problem(item, depth + 1)
        if found is not None:
            path, message = found
            return f"{key}.{path}" if path else str(key), message
    return None


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def field_problems(payload):
    """Each top-level field of an object whose value is refused, as marshmallow-style ``{field: [message]}``."""
    errors = {}
    for key, value in payload.items():
        if not _encodable(key):
            errors.setdefault("_schema", []).append("字段名含有孤立的代理字符，不是有效的 Unicode 文本")
            continue
        found = problem(value, 1)
        if found is not None:
            path, message = found
            errors[key] = [f"{path}: {message}" if path else message]
    return errors
