"""The admin app, with Sluice's admin site as ``admin.site`` (Django's documented way to
override the default site): its login and password change are throttled (config.security)."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class SluiceAdminConfig(AdminConfig):
    default_site = "config.security.SluiceAdminSite"
