"""The small tree of domain errors; each carries the spec's ``error_code`` and an HTTP status."""

from taskserver.domain import ErrorCode


class TaskServerError(Exception):
    """Base of every error a client may see: ``message`` for people, ``error_code`` for programs."""

    status = 400
    error_code = ErrorCode.BAD_REQUEST

    def __init__(self, message, error_code=None, **extra):
        super().__init__(message)
        self.message = message
        self.error_code = error_code or self.error_code
        self.extra = extra

    def to_dict(self):
        """The spec's error body: ``{success: false, message, error_code}`` plus any extra fields."""
        return {"success": False, "message": self.message, "error_code": self.error_code, **self.extra}


class NotFound(TaskServerError):
    """The named task or device does not exist."""

    status = 404
    error_code = ErrorCode.NOT_FOUND


class InvalidState(TaskServerError):
    """The request conflicts with the current state (a finished task, a stale attempt, ...)."""

    status = 409
    error_code = ErrorCode.INVALID_STATE


class InvalidTransition(InvalidState):
    """A move the transition table does not allow."""


class Unauthorized(TaskServerError):
    """No or wrong credentials, or a connection that has not registered."""

    status = 401
    error_code = ErrorCode.UNAUTHORIZED


class Forbidden(TaskServerError):
    """Known caller, but not allowed to act on this task or device."""

    status = 403
    error_code = ErrorCode.FORBIDDEN


class ValidationFailed(TaskServerError):
    """Input that does not match its schema; ``errors`` names each bad field."""

    status = 400
    error_code = ErrorCode.VALIDATION_ERROR

    def __init__(self, errors, message="请求参数无效", error_code=None):
        super().__init__(message, error_code, errors=errors)


class StoreUnavailable(TaskServerError):
    """The store cannot take writes now (a failed commit, a full disk): nothing was acknowledged; retry later."""

    status = 503
    error_code = ErrorCode.STORE_UNAVAILABLE


class StoreConflict(StoreUnavailable):
    """The database undid a whole operation that collided with another (a deadlock): it may simply run again."""
