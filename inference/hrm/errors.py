"""The worker's one error hierarchy, and its one mapping to each route's dialect.

The seed's routes (/generate, /loglikelihood) answer ``{"detail", "field"}``; the OpenAI and
vLLM routes answer ``{"error": {message, type, param, code}}``, as vLLM does, so an OpenAI SDK
raises its own exception class for each status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Dialect(StrEnum):
    NATIVE = "native"
    OPENAI = "openai"


# The routes whose clients are OpenAI SDKs, lm-eval or vLLM's tokenizer clients (and any other
# path under /v1/, say an SDK asking for embeddings); every other path keeps the seed's shape.
VLLM_ROUTES = frozenset({"/tokenize", "/detokenize", "/tokenizer_info"})


def dialect_of(path: str) -> Dialect:
    return Dialect.OPENAI if path.startswith("/v1/") or path in VLLM_ROUTES else Dialect.NATIVE


class WorkerError(Exception):
    status = 500
    openai_type = "server_error"
    default_code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field
        if status is not None:
            self.status = status
        self.code = code or self.default_code

    def body(self, dialect: Dialect) -> dict[str, Any]:
        if dialect is Dialect.NATIVE:
            return {"detail": self.message, "field": self.field}
        return {"error": {"message": self.message, "type": self.openai_type, "param": self.field, "code": self.code}}


class RequestError(WorkerError):
    """Bad input: 400 when a value is out of range, 422 when it has the wrong type."""

    openai_type = "invalid_request_error"

    def __init__(self, status: int, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(message, field=field, status=status,
                         code=code or ("invalid_type" if status == 422 else "invalid_value"))


class Busy(WorkerError):
    status = 429
    openai_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class Unavailable(WorkerError):
    """Shutting down, or the scheduler thread is gone."""

    status = 503
    openai_type = "server_error"
    default_code = "unavailable"


class GenerationFailed(WorkerError):
    """The engine failed while working on a request (the worker itself goes on)."""


class HTTPError(WorkerError):
    """aiohttp's own refusals (unknown path, wrong method, a body over the size limit), in our shape."""

    openai_type = "invalid_request_error"
    CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status, code=self.CODES.get(status, "http_error"))
        if status >= 500:
            self.openai_type = "server_error"
