"""Refuse requests carrying NUL characters, before any view reads them.

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

from collections.abc import Callable
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

NUL = "\x00"


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
