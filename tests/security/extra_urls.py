"""The project's URLconf plus one page nobody put in the authorization matrix's table."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import urlpatterns as project_urlpatterns


def secrets(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing to see")


urlpatterns = [*project_urlpatterns, path("secrets/", secrets)]
