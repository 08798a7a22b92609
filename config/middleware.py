"""Refuse requests carrying NUL characters, before any view reads them; answer a page whose
database was busy with a 503 (``DatabaseBusyMiddleware``).

PostgreSQL text cannot hold NUL (``\\x00``): a query parameter or header value with one, used in
a filter (the review queue's ``?pipeline=``, the admin's list filters, an API key looked up by
its prefix), makes the database driver raise, which is a 500. No legitimate request carries a
NUL in its query string, path or headers, so one check here answers every such request with a
400 with the styled error page instead of fixing each view that might pass the value on. Under
``/api/`` the answer is the API's own for a bad request parameter: a 422 ``invalid_request`` in
its JSON error shape (config.api), as ninja's validation answers any other bad query value.
``workflows.keys.find_key`` also refuses such a key itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import get_template

NUL = "\x00"
RETRY_AFTER_SECONDS = 5

logger = logging.getLogger("config.middleware")


def nul_in_request(request: HttpRequest) -> str:
    """Where the request carries a NUL ("" if nowhere): the query, the path or a header."""
    query = request.META.get("QUERY_STRING", "")
    # Decoded as Django decodes it (%00 and, in a form-encoded query, nothing else makes NUL).
    if NUL in unquote(query, errors="replace") or NUL in query:
        return "the query string"
    if NUL in request.path_info:
        return "the path"
    for name, value in request.META.items():
        if (name.startswith("HTTP_") or name == "CONTENT_TYPE") and NUL in str(value):
            return "a header"
    return ""


class RefuseNulMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = nul_in_request(request)
        if not where:
            return self.get_response(request)
        message = f"{where} contains a NUL character (%00), which no request may carry"
        if request.path_info.startswith("/api/"):
            from config.api import error_response  # the API's one error shape

            details = [{"field": "", "location": where, "message": message, "type": "nul"}]
            return error_response(
                422, "invalid_request", f"the request is invalid: {message}", details
            )
        return render(request, "400.html", {"exception": message}, status=400)


class DatabaseBusyMiddleware:
    """A page whose database was busy or away answers 503 "this may not have been saved: look,
    then try again", as the API does (``config.api.transient``: a deadlock, a lock or
    statement timeout, a lost connection, SQLite's "database is locked" after its 30 s wait).
    It was the 500 page, which says "a run you started is not lost" when the run was never
    written. A POST may have committed before the error, so it does not say "not saved"."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        from django.db import Error

        from config.api import transient

        if request.path_info.startswith("/api/") or not isinstance(exception, Error):
            return None  # the API answers its own 503; anything else is the 500 it is
        if not transient(exception):
            return None
        logger.warning(
            "database busy or unavailable for %s %s: %s", request.method, request.path, exception
        )
        # Without the request, as Django renders 500.html: its context processors (the user,
        # the session) would ask the same database.
        page = get_template("503.html").render({"posted": request.method == "POST"})
        response = HttpResponse(page, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
