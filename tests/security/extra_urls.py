"""The project's URLconf plus routes nobody put in the authorization matrix's table: a page, and
a second NinjaAPI whose operations are partly hidden from its schema (include_in_schema=False)
and which serves no schema at all, so the matrix cannot learn them from an OpenAPI document."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from ninja import NinjaAPI

from config.urls import urlpatterns as project_urlpatterns


def secrets(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing to see")


internal = NinjaAPI(urls_namespace="matrix-internal", openapi_url=None, docs_url=None)


@internal.api_operation(["GET", "POST"], "/hidden", include_in_schema=False)
def hidden(request: HttpRequest) -> dict[str, str]:
    return {"secret": "hidden"}


@internal.put("/visible")
def visible(request: HttpRequest) -> dict[str, str]:
    return {"secret": "visible"}


urlpatterns = [*project_urlpatterns, path("secrets/", secrets), path("internal/", internal.urls)]
