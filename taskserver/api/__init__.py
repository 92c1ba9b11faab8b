"""The HTTP API: flask-smorest blueprints whose every input goes through a marshmallow schema."""

import flask_smorest
from flask import current_app, request
from webargs.flaskparser import FlaskParser

from taskserver import auth, wirejson
from taskserver.api.responses import ErrorResponseSchema
from taskserver.domain import ErrorCode
from taskserver.errors import TaskServerError, ValidationFailed


class JsonBodyParser(FlaskParser):
    """Reads a JSON body whatever its Content-Type, and turns every parse error into our error shape."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        try:
            return wirejson.loads(req.get_data(cache=True).decode())
        except RecursionError as exc:
            raise TaskServerError("请求体不是有效的 JSON（嵌套过深）", ErrorCode.INVALID_JSON) from exc

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        raise TaskServerError("请求体不是有效的 JSON", ErrorCode.INVALID_JSON)

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:
            (messages,) = messages.values()  # drop the location level ("json", "query")
        raise ValidationFailed(messages)


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest blueprint using ``JsonBodyParser``."""

    ARGUMENTS_PARSER = JsonBodyParser()


def service():
    """The app's ``TaskService``."""
    return current_app.extensions["taskserver"]


def error_doc(*codes):
    """``alt_response`` arguments documenting an error status with the ``error_code`` values it can carry."""
    listed = ", ".join(f"`{code}`" for code in codes)
    return {
        "description": f"错误 {{success: false, message, error_code}}；error_code: {listed}",
        "schema": ErrorResponseSchema,
    }


def idempotency_key(body):
    """The request's idempotency key: the ``Idempotency-Key`` header, else the body's ``idempotency_key``, or None."""
    key = request.headers.get("Idempotency-Key") or body["idempotency_key"]
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationFailed({"Idempotency-Key": ["长度必须在 1 到 200 之间"]})
    return key


def operator_identity():
    """Whose idempotency keys this request's are: its operator token's identity, or "" when the API is open."""
    token = auth.request_token(request.headers)
    return auth.token_identity(token) if current_app.config["API_TOKENS"] and token else ""
