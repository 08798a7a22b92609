"""The JSON API: each app's ninja routers assembled into one ``NinjaAPI``, mounted at ``/api/``.

Every error leaves in one shape, ``{"error": {"code", "message", "details"}}``: the exception
handlers below translate the engine's errors (unknown run → 404, a state conflict → 409, bad
input → 422, too large → 413) and ninja's own (401, request validation, malformed JSON).
Bad input is never a 500.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import URLPattern, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.schema import OpenAPISchema
from ninja.parser import Parser

from workflows.api import pipelines_router, runs_router
from workflows.api_auth import ApiError
from workflows.core.errors import (
    InvalidInputError,
    InvalidStateError,
    PayloadTooLargeError,
    RunNotFoundError,
    UnknownWorkflowError,
)
from workflows.core.services import MAX_LISTED_ERRORS, listed_errors

log = logging.getLogger("workflows.api")

MAX_JSON_DEPTH = 64


class BadJson(ValueError):
    """A request body that is not JSON Sluice can store."""


def _check_value(value: Any, depth: int = 0) -> None:
    """PostgreSQL's jsonb refuses NUL characters and lone surrogates, and deep nesting is a
    denial of service: refuse them here, as a 400, rather than as a database error (a 500)."""
    if depth > MAX_JSON_DEPTH:
        raise BadJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise BadJson("JSON strings must not contain NUL (\\u0000) characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("JSON strings must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_value(k, depth + 1)
            _check_value(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_value(v, depth + 1)


class NotJson(BadJson):
    """A request body sent with a content type other than JSON."""


def _no_constants(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    # Python reads 1e400 as Infinity, which no JSON column can store.
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:40]} is out of range (not a finite number)")
    return value


def is_json_type(content_type: str) -> bool:
    """``application/json`` or a structured ``+json`` type such as ``application/merge+json``."""
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


class StrictJsonParser(Parser):
    """JSON bodies only (415 otherwise), without NaN/Infinity (spelled out or overflowing), NUL
    characters, lone surrogates or extreme nesting (400)."""

    def parse_body(self, request: HttpRequest) -> Any:
        if not is_json_type(request.content_type or ""):
            raise NotJson(
                f"the body must be JSON (Content-Type: application/json), "
                f"not {request.content_type or 'without a content type'}"
            )
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise NotJson(f"Content-Encoding {encoding[:40]} is not taken: send the body as is")
        try:
            data = json.loads(request.body, parse_constant=_no_constants, parse_float=_finite)
        except RecursionError:  # nesting deep enough to exhaust the parser itself
            raise BadJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            # Python converts at most 4,300 digits to an int (sys.set_int_max_str_digits):
            # valid JSON, but not one Sluice can read, nor write (workflows.core.jsonvalues).
            if not isinstance(exc, json.JSONDecodeError) and "digits" in str(exc):
                raise BadJson(
                    "the body contains an integer too long to read as JSON (over 4,300 digits)"
                ) from None
            raise
        _check_value(data)
        return data


RETRY_AFTER = {
    "429": "Seconds until the key's rate-limit window has room again.",
    "503": "Seconds to wait before sending the request again (database_unavailable).",
}


class SluiceApi(NinjaAPI):
    """The schema documents the ``Retry-After`` of every 429 and 503 answer (ninja maps a
    status to a body schema only)."""

    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        for methods in schema.get("paths", {}).values():
            for operation in methods.values():
                for status, answer in operation.get("responses", {}).items():
                    if str(status) in RETRY_AFTER:
                        answer.setdefault("headers", {})["Retry-After"] = {
                            "description": RETRY_AFTER[str(status)],
                            "schema": {"type": "integer", "minimum": 1},
                        }
        return schema


api = SluiceApi(
    title="Sluice API",
    version="1",
    description=(
        "Start and follow durable AI pipeline runs, send them events and decide their review "
        "gates. Authenticate with an API key as `Authorization: Bearer <key>` or "
        '`X-API-Key: <key>`. Errors are `{"error": {"code", "message", "details"}}`.'
    ),
    urls_namespace="api",
    parser=StrictJsonParser(),
)

api.add_router("", runs_router)
api.add_router("", pipelines_router)

try:
    from reviews.api import router as gates_router
    from reviews.services import GateNotFoundError
except ImportError as exc:  # The reviews app is built in its own issue; its gates join later.
    log.warning("the gates API is not mounted: %s", exc)
else:
    api.add_router("", gates_router)

    @api.exception_handler(GateNotFoundError)
    def _gate_not_found(request: HttpRequest, exc: GateNotFoundError) -> HttpResponse:
        return error_response(404, "not_found", "no such gate")


# --- one error shape --------------------------------------------------------------------------

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> HttpResponse:
    response = JsonResponse(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="sluice"'
    return response


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(
        401,
        "unauthorized",
        "a valid API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key'",
    )


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, NotJson):
        return error_response(415, "unsupported_media_type", str(exc.__cause__))
    if exc.status_code == 400 and isinstance(exc.__cause__, Exception):
        cause = exc.__cause__
        message = str(cause) if isinstance(cause, BadJson) else "the request body is not valid JSON"
        return error_response(400, "malformed_json", message)
    return error_response(exc.status_code, CODES.get(exc.status_code, "error"), exc.message)


def _field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", [])]
        location = loc[0] if loc else ""
        # ninja puts the parameter name after the location for bodies ("body", "body", "x").
        field = loc[2:] if location == "body" and len(loc) > 2 else loc[1:]
        out.append(
            {
                "field": ".".join(field),
                "location": location,
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
        )
    return out


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    # A body of 120,000 unknown fields is as many errors: the first ones named, the rest counted.
    listing, details = listed_errors(
        _field_errors(exc.errors[:MAX_LISTED_ERRORS]),
        lambda d: f"{d['field'] or d['location']}: {d['message']}",
        total=len(exc.errors),
    )
    return error_response(422, "invalid_request", f"the request is invalid: {listing}", details)


@api.exception_handler(InvalidInputError)
def _invalid_input(request: HttpRequest, exc: InvalidInputError) -> HttpResponse:
    return error_response(422, "invalid_input", str(exc), exc.errors)


@api.exception_handler(UnknownWorkflowError)
def _unknown_pipeline(request: HttpRequest, exc: UnknownWorkflowError) -> HttpResponse:
    return error_response(422, "unknown_pipeline", str(exc).strip("'\""))


@api.exception_handler(InvalidStateError)
def _conflict(request: HttpRequest, exc: InvalidStateError) -> HttpResponse:
    return error_response(409, "conflict", str(exc))


@api.exception_handler(RunNotFoundError)
def _run_not_found(request: HttpRequest, exc: RunNotFoundError) -> HttpResponse:
    return error_response(404, "not_found", "no such run")


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "not_found", "not found")


@api.exception_handler(PayloadTooLargeError)
def _too_large(request: HttpRequest, exc: PayloadTooLargeError) -> HttpResponse:
    return error_response(413, "payload_too_large", str(exc))


@api.exception_handler(RequestDataTooBig)
def _body_too_large(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    from django.conf import settings

    return error_response(
        413,
        "payload_too_large",
        f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes",
    )


@api.exception_handler(SuspiciousOperation)
def _suspicious(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
    """Django's refusals of a malformed request (too many query or form fields, a bad
    multipart body…): the client's error, as the HTML pages answer it."""
    return error_response(400, "bad_request", str(exc) or "the request is malformed")


# SQLSTATEs of a failure the same request may well not meet a moment later: serialization
# failure, deadlock, lock not available, statement timeout / canceled, the server shutting down
# or restarting, and every connection exception (class 08).
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})


def transient(exc: BaseException) -> bool:
    """Whether a database error is one to retry (``TRANSIENT_SQLSTATES``, a lost connection,
    SQLite's "database is locked"), not a bug: "no such table" or a program limit is not."""
    cause = exc.__cause__
    state = getattr(cause, "sqlstate", None)
    if state:
        return str(state) in TRANSIENT_SQLSTATES or str(state).startswith("08")
    if isinstance(exc, InterfaceError):
        return True  # the connection is closed
    if type(cause).__module__.startswith("psycopg"):
        return True  # no SQLSTATE from the server: the connection failed
    return "database is locked" in str(exc)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    """A deadlock, a serialization failure, a lock or statement timeout, a lost connection: the
    same request may well succeed a moment later (a release's migration holding a table,
    PostgreSQL restarting). A 503 with ``Retry-After`` says so; a 500 said "unexpected", and a
    start looked lost. Whether it was applied is not known here (a fork commits before its
    answer reads the new run), so the answer says how to retry safely. Any other database error
    is a bug: a 500, logged with its traceback."""
    if not transient(exc):
        return _unexpected(request, exc)
    log.warning(
        "database unavailable in %s %s: %s: %s",
        request.method,
        request.path,
        type(exc.__cause__ or exc).__name__,
        str(exc)[:200],
    )
    response = error_response(
        503,
        "database_unavailable",
        "the database could not complete the request (a deadlock, a lock wait or a lost "
        "connection): send it again after Retry-After. A start with the same Idempotency-Key "
        "starts one run; look at the run before resending a fork, restart or cancel, which may "
        "have been applied",
    )
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "an unexpected error occurred; it was logged")


# --- URLs -------------------------------------------------------------------------------------


def unframed_body(request: HttpRequest) -> bool:
    """A body sent with ``Transfer-Encoding`` (chunked) and no ``Content-Length``: Django
    reads ``Content-Length`` bytes only, so it would be read as no body at all, and a restart
    or cancel would run with its defaults (from step 1, without its reason). Under WSGI only:
    Django's ASGI handler reads a chunked body whole."""
    return (
        "wsgi.input" in request.META
        and "HTTP_TRANSFER_ENCODING" in request.META
        and not request.META.get("CONTENT_LENGTH")
    )


def _json_not_allowed(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """ninja answers a wrong method with a plain-text 405; give it the error shape too. HEAD
    is answered as GET (RFC 9110: the same headers; the server sends no body). A body that
    cannot be read (``unframed_body``) is a 411 before anything else."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if unframed_body(request):
            return error_response(
                411,
                "length_required",
                "send the body with a Content-Length header: a body sent with "
                "Transfer-Encoding (chunked) and no Content-Length is not read",
            )
        head = request.method == "HEAD"
        if head:
            request.method = "GET"
        try:
            response = view(request, *args, **kwargs)
        finally:
            if head:
                request.method = "HEAD"
        if response.status_code == 405 and "json" not in response.get("Content-Type", ""):
            allowed = response.get("Allow", "")
            response = error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        return response

    return wrapper


# Exempt from Django's CSRF check, as ninja's operations are (they check it themselves, for
# session auth only): without it, a POST, PUT, PATCH or DELETE to an unknown path got the HTML
# "form expired" 403 page instead of the API's 404, while a GET got the 404.
@csrf_exempt
def unknown_endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Also ``/api`` without its slash (config.urls): an HTML 301, and for a POST under DEBUG
    a 500 (CommonMiddleware's APPEND_SLASH), otherwise."""
    return error_response(404, "not_found", f"no API endpoint at {request.path}")


_patterns, _app_name, _namespace = api.urls
for _p in _patterns:
    if not isinstance(_p, URLPattern):
        continue
    if _p.name == "api-root":
        # ninja's view at /api/ itself only raises Http404 (an HTML page, and a CSRF 403 for
        # a POST); the pattern stays, since ninja reverses its name to find the API's prefix.
        _p.callback = unknown_endpoint
    elif _p.name in ("openapi-json", "openapi-view"):
        # The schema and its docs are read-only: another method is the JSON 405, not a CSRF
        # 403 (or, without the check, the schema again).
        _p.callback = csrf_exempt(require_GET(_p.callback))
    _p.callback = _json_not_allowed(_p.callback)

urlpatterns = [
    path("", (_patterns, _app_name, _namespace)),
    re_path(r"^(?P<rest>.*)$", unknown_endpoint),
]
