"""One error shape for every HTTP error, from every layer: ``{success: false, message, error_code}``."""

import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

from taskserver.domain import ErrorCode
from taskserver.errors import TaskServerError

log = logging.getLogger("taskserver.api")

HTTP_ERRORS = {
    400: ("请求无效", ErrorCode.BAD_REQUEST),
    404: ("接口不存在", ErrorCode.NOT_FOUND),
    405: ("不支持该请求方法", ErrorCode.METHOD_NOT_ALLOWED),
    413: ("请求体过大", ErrorCode.PAYLOAD_TOO_LARGE),
    415: ("不支持的内容类型", ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    429: ("请求过于频繁", ErrorCode.RATE_LIMITED),
}


def error_response(error):
    """The JSON response for a ``TaskServerError``."""
    response = jsonify(error.to_dict())
    response.status_code = error.status
    return response


def from_http_exception(exc):
    """Werkzeug's HTTP errors (unknown route, wrong method, ...) in our shape and with their status."""
    message, code = HTTP_ERRORS.get(exc.code, (exc.name, f"HTTP_{exc.code}"))
    error = TaskServerError(message, code)
    error.status = exc.code
    response = error_response(error)
    for name, value in exc.get_headers() if exc.code == 405 else []:
        if name.lower() == "allow":
            response.headers["Allow"] = value
    return response


def from_unexpected(exc):
    """Anything else: logged with its trace, answered without one."""
    if isinstance(exc, HTTPException):
        return from_http_exception(exc)
    log.exception("unexpected error")
    error = TaskServerError("服务器内部错误", ErrorCode.INTERNAL_ERROR)
    error.status = 500
    return error_response(error)


def init_app(app):
    """Install the handlers (after flask-smorest's, so ours win)."""
    app.register_error_handler(TaskServerError, error_response)
    app.register_error_handler(HTTPException, from_http_exception)
    app.register_error_handler(Exception, from_unexpected)
