"""The front door's one error hierarchy, and its one mapping to each client dialect.

Code anywhere on the request path raises a ``FrontDoorError``; the consumer
base class catches it and calls ``render`` with the dialect of the endpoint the
client called, so an OpenAI SDK sees ``{"error": {message, type, param, code}}``
and an Anthropic SDK sees ``{"type": "error", "error": {type, message}}``, each
with the status code its SDK maps to its own exception class.
"""

from __future__ import annotations

import json
from typing import Any

from inference.wire import Dialect


class FrontDoorError(Exception):
    status_code = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or []

    def status_in(self, dialect: Dialect) -> int:
        """The status this error answers with in ``dialect`` (the same in every dialect, unless a peer differs)."""
        return self.status_code


class InvalidRequest(FrontDoorError):
    status_code = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(FrontDoorError):
    status_code = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(FrontDoorError):
    status_code = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"
    default_code = "insufficient_scope"


class Conflict(FrontDoorError):
    status_code = 409
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "conflict"


class Unprocessable(FrontDoorError):
    status_code = 422
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "unprocessable"


class NotFound(FrontDoorError):
    status_code = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    default_code = "not_found"


class MethodNotAllowed(FrontDoorError):
    status_code = 405
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(FrontDoorError):
    status_code = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    default_code = "request_too_large"


class RateLimited(FrontDoorError):
    status_code = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExhausted(FrontDoorError):
    """A key's budget is spent: OpenAI's 429 ``insufficient_quota``; on /v1/messages what Anthropic answers when a
    spend limit is reached (400 ``invalid_request_error``). Never worth an SDK's automatic retry."""

    status_code = 429
    openai_type = "insufficient_quota"
    anthropic_type = "invalid_request_error"
    default_code = "insufficient_quota"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.append((b"x-should-retry", b"false"))

    def status_in(self, dialect: Dialect) -> int:
        return 400 if dialect is Dialect.ANTHROPIC else self.status_code


class UpstreamFailed(FrontDoorError):
    status_code = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "upstream_error"


class Unavailable(FrontDoorError):
    status_code = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    default_code = "unavailable"


class UpstreamTimeout(FrontDoorError):
    status_code = 504
    openai_type = "server_error"
    anthropic_type = "timeout_error"
    default_code = "upstream_timeout"


class InternalError(FrontDoorError):
    """A failure of Anvil's own: the last resort, logged with its traceback under the request id."""

    default_code = "internal_error"


class UpstreamRejected(FrontDoorError):
    """The serve refused the request itself (a 4xx of its own): passed on with its status."""

    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "upstream_rejected"

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        if status_code == 429:
            self.openai_type = self.anthropic_type = "rate_limit_error"
        elif status_code == 413:
            self.anthropic_type = "request_too_large"


def error_body(error: FrontDoorError, dialect: Dialect) -> bytes:
    """The JSON body of ``error`` in ``dialect``'s shape."""
    if dialect is Dialect.NATIVE:
        return json.dumps({"detail": error.message, "field": error.param}).encode()
    if dialect is Dialect.ANTHROPIC:
        payload: dict[str, object] = {
            "type": "error",
            "error": {"type": error.anthropic_type, "message": error.message},
        }
    else:
        payload = {
            "error": {
                "message": error.message,
                "type": error.openai_type,
                "param": error.param,
                "code": error.code,
            }
        }
    return json.dumps(payload).encode()


def error_event(error: FrontDoorError, dialect: Dialect) -> bytes:
    """The server-sent event that ends a broken stream, in ``dialect``: the error body as its data."""
    head = b"event: error\n" if dialect is Dialect.ANTHROPIC else b""
    return head + b"data: " + error_body(error, dialect) + b"\n\n"
