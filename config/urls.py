"""URL configuration: each app mounts its own URLs; the JSON API is assembled in config.api."""

from __future__ import annotations

from importlib import import_module

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from config.api import unknown_endpoint
from config.metrics import metrics_view
from config.oidc import SluiceOIDCAuthenticate, SluiceOIDCCallback
from config.security import (
    ThrottledLoginView,
    ThrottledPasswordChangeView,
    ThrottledPasswordResetView,
)

# Both login pages, and both password-change forms, count failed guesses and lock out a
# username or address (config.security); the admin's are config.security.SluiceAdminSite's.
urlpatterns = [
    path("", RedirectView.as_view(url="/reviews/", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path(
        "accounts/password_change/",
        ThrottledPasswordChangeView.as_view(),
        name="password_change",
    ),
    path("accounts/password_reset/", ThrottledPasswordResetView.as_view(), name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    # Single sign-on (config.oidc): 404 unless OIDC_RP_CLIENT_ID is set. Logout is the usual
    # /accounts/logout/ for SSO users too.
    path("oidc/authenticate/", SluiceOIDCAuthenticate.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", SluiceOIDCCallback.as_view(), name="oidc_authentication_callback"),
    # Prometheus: off unless SLUICE_METRICS_TOKEN or SLUICE_METRICS_ALLOW is set.
    path("metrics", metrics_view, name="metrics"),
    # The API's JSON 404, as at /api/ itself: not APPEND_SLASH's HTML 301 (for a POST under
    # DEBUG, its RuntimeError 500).
    path("api", unknown_endpoint),
]


def _mount(prefix: str, module: str) -> None:
    """Mount an app's urls module when it exists (apps are built one issue at a time)."""
    try:
        import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    urlpatterns.append(path(prefix, include(module)))


_mount("api/", "config.api")
_mount("reviews/", "reviews.urls")
_mount("pipelines/", "pipelines.urls")
_mount("", "workflows.urls")  # /runs/ and /ops/
