"""The one place where errors become HTTP responses, in OpenAI's nested error shape.

| error                                   | status | type                   |
|-----------------------------------------|--------|------------------------|
| RequestError, InputError, DimError      | 400    | invalid_request_error  |
| AuthError                               | 401    | invalid_request_error  |
| ModelNotFound                           | 404    | invalid_request_error  |
| PayloadTooLarge                         | 413    | invalid_request_error  |
| OverloadedError                         | 429    | rate_limit_error       |
| NonFiniteEmbeddingError, anything else  | 500    | server_error           |
| DeviceError, EmbedderClosedError, NotReady | 503 | server_error           |
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from mrl_infer.errors import (
    DeviceError,
    DimError,
    EmbedderClosedError,
    InputError,
    NonFiniteEmbeddingError,
    OverloadedError,
)

logger = logging.getLogger("mrl_infer.server")


class HTTPError(Exception):
    """An error the HTTP layer raises itself; ``param`` and ``code`` go into the body."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class RequestError(HTTPError):
    """A malformed or invalid request body."""


class AuthError(HTTPError):
    status = 401


class ModelNotFound(HTTPError):
    status = 404


class PayloadTooLarge(HTTPError):
    status = 413


class NotReady(HTTPError):
    status = 503
    type = "server_error"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: BaseException) -> JSONResponse:
    """The response for ``exc`` (see the table in the module docstring)."""
    headers: dict[str, str] = {}
    param = code = None
    if isinstance(exc, HTTPError):
        status, type_, param, code = exc.status, exc.type, exc.param, exc.code
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, (InputError, DimError)):
        status, type_ = 400, "invalid_request_error"
    elif isinstance(exc, OverloadedError):
        status, type_, code = 429, "rate_limit_error", "overloaded"
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    elif isinstance(exc, (DeviceError, EmbedderClosedError)):
        status, type_ = 503, "server_error"
    elif isinstance(exc, NonFiniteEmbeddingError):
        status, type_ = 500, "server_error"
    else:
        logger.exception("internal error", exc_info=exc)
        status, type_ = 500, "server_error"
    return JSONResponse(error_body(str(exc), type_, param, code), status_code=status, headers=headers)
