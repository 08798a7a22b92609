"""What every JSON API router shares: API-key authentication with scopes and a rate limit, the
one error shape, and small parsing helpers.

An operation declares ``auth=key_auth("runs:read")``. A request then needs a key (as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``): none or an unknown one is a 401, a
key over its rate limit a 429 with ``Retry-After``, a key without the scope a 403. The key is
``request.auth`` inside the operation.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest
from ninja import Schema
from ninja.security import APIKeyHeader, HttpBearer

from workflows import keys
from workflows.models import ApiKey


class ApiError(Exception):
    """An error the API answers with ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def not_found(what: str = "object") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    """Every error response: a machine-readable ``code``, a sentence, and details (field errors
    for 422, the allowed scopes for 403 …)."""

    error: ErrorBody


def errors(*statuses: int) -> dict[int, type[ErrorOut]]:
    """Document error responses of an operation (for ``response={200: X, **errors(404)}``),
    and the 503 ``database_unavailable`` (with ``Retry-After``) every operation may answer."""
    return dict.fromkeys((*statuses, 503), ErrorOut)


# Query strings and headers reach SQL: PostgreSQL refuses NUL characters in text, so they are
# refused here, as a 422, instead of failing in the database.
NO_NUL = r"^[^\x00]*$"

AUTH_ERRORS = (401, 403, 429)
# A JSON body may be malformed (400), sent without a length (411), too large (413), not JSON at
# all (415) or invalid (422).
BODY_ERRORS = (400, 411, 413, 415, 422)


def _check(request: HttpRequest, raw: str | None, scopes: tuple[str, ...]) -> ApiKey | None:
    key = keys.find_key(raw)
    if key is None:
        return None  # The next scheme may find one; if none does, ninja answers 401.
    try:
        decision = keys.take_request(key)
    except keys.KeyGone:
        return None  # deleted while this process remembered it: unknown now
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"this API key is over its rate limit of {decision.limit} requests; retry in "
            f"{decision.retry_after} s",
            {"limit": decision.limit, "retry_after": decision.retry_after},
            headers={"Retry-After": str(decision.retry_after)},
        )
    if scopes and not any(key.has_scope(s) for s in scopes):
        raise ApiError(
            403,
            "forbidden",
            f"this API key lacks the scope {' or '.join(scopes)}",
            {"required": list(scopes), "granted": list(key.scopes or [])},
        )
    return key


class BearerKey(HttpBearer):
    """``Authorization: Bearer <API key>``."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        self.scopes = scopes
        super().__init__()

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        # RFC 9110 allows several spaces after "Bearer"; ninja keeps all but the first.
        return _check(request, token.strip(), self.scopes)


class HeaderKey(APIKeyHeader):
    """``X-API-Key: <API key>``."""

    param_name = "X-API-Key"

    def __init__(self, scopes: tuple[str, ...]) -> None:
        self.scopes = scopes
        super().__init__()

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiKey | None:
        return _check(request, key, self.scopes)


def key_auth(*scopes: str) -> list[Any]:
    """Auth for an operation needing any one of ``scopes`` (none: any valid key)."""
    for scope in scopes:
        assert scope in keys.SCOPES, scope
    return [BearerKey(scopes), HeaderKey(scopes)]


def api_key(request: HttpRequest) -> ApiKey:
    key = getattr(request, "auth", None)
    assert isinstance(key, ApiKey)
    return key


def parse_uuid(value: str, what: str = "run") -> uuid.UUID:
    """A path id as a UUID; anything else is simply not found (404), never a 422 or 500."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise not_found(what) from None


def parse_int(value: str, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise not_found(what) from None
    if not 0 < number < 2**63:
        raise not_found(what)
    return number
