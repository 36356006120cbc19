"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Invalid requests are ``400`` as with OpenAI (schema violations included); echoed client input is shortened.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# HTTP status -> OpenAI error ``type``.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered to the client with an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        """The JSON error object."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {...}}`` with the OpenAI ``type`` for ``status``."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def brief(value: object, limit: int = 80) -> str:
    """``repr`` of client input, cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's error list -> one 400 naming the bad field: the first specific error (a union's
    "wrong type" errors from the members that did not apply come last)."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request", code="invalid_request")
    first = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0])
    if first.get("type") == "json_invalid":
        return APIError(400, f"could not parse the JSON body of the request: {first.get('msg')}", code="json_invalid")
    parts = [str(part) for part in first.get("loc", ())]
    parts = parts[1:] if parts[:1] == ["body"] else parts
    param = ".".join(part for part in parts if not _is_union_tag(part)) or None
    message = f"{param or 'request body'}: {first.get('msg')}"
    return APIError(400, message, param=param, code=first.get("type"))


def _is_union_tag(part: str) -> bool:
    """pydantic puts the union member it tried ("str", "list[str]", "TextPart") into error locations."""
    return part[:1].isupper() or any(c in part for c in "[](),-") or part in {"str", "int", "float", "bool", "list"}


def install_error_handlers(app: FastAPI) -> None:
    """Route APIError, FastAPI validation errors, unknown routes and crashes to OpenAI error bodies."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = brief(request.url.path)
        if exc.status_code == 404:
            message, code = f"unknown request URL: {request.method} {path}", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"method {request.method} not allowed on {path}", "method_not_allowed"
        elif exc.status_code == 400:   # FastAPI could not read the body: not UTF-8, nesting too deep, ...
            message, code = "could not parse the body of the request as UTF-8 JSON", "json_invalid"
        else:
            message, code = str(exc.detail), None
        return APIError(exc.status_code, message, code=code, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(exc).__name__}", code="internal_error").response()
