"""The HTTP side's guards: operator tokens on /api/* and /metrics, CORS, and a per-token dispatch rate limit."""

from flask import current_app, request
from flask_cors import CORS

from taskserver import auth
from taskserver.domain import ErrorCode
from taskserver.errors import TaskServerError, Unauthorized
from taskserver.ratelimit import RateLimiter

OPEN_API_PATHS = ("/api/docs", "/api/openapi.json")  # the API's description is not a secret
DISPATCHES = ("/api/dispatch-task", "/api/batches")  # what the dispatch rate limit counts (a batch as one request)


def needs_operator(path):
    """True for the paths only operators may use."""
    return (path.startswith("/api/") and not path.startswith(OPEN_API_PATHS)) or path == "/metrics"


def init_app(app, clock):
    """Install the guards on ``app``; ``clock`` drives the dispatch rate limit's refill."""
    settings = app.config
    if settings["CORS_ORIGINS"]:
        CORS(app, origins=list(settings["CORS_ORIGINS"]), resources=[r"/api/*", "/metrics"])
    dispatches = RateLimiter(settings["DISPATCH_RATE"], settings["DISPATCH_BURST"], clock)

    @app.before_request
    def require_operator():
        if request.method == "OPTIONS" or not needs_operator(request.path):
            return
        token = auth.request_token(request.headers)
        if not auth.operator_allowed(current_app.config, token):
            raise Unauthorized(
                "需要有效的操作员令牌（Authorization: Bearer <token> 或 X-API-Key）", ErrorCode.UNAUTHORIZED
            )
        if (
            request.method == "POST"
            and request.path in DISPATCHES
            and not dispatches.allow(token or request.remote_addr)
        ):
            error = TaskServerError("分发任务过于频繁，请稍后再试", ErrorCode.RATE_LIMITED)
            error.status = 429
            raise error
