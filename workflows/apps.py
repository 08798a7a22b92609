"""App config: discovers workflow modules when Django starts."""

from __future__ import annotations

import importlib
import os

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects run_finished and registers the "webhook" outbox handler, in every process.
        from workflows import webhooks  # noqa: F401

        # The engine's Celery tasks live in the core package, where Celery's autodiscovery
        # (which looks for ``<app>.tasks``) does not look; their names stay ``workflows.*``.
        from workflows.core import tasks  # noqa: F401
        from workflows.core.instrument import observe
        from workflows.health import record_sweep

        # Every sweep pass stamps the heartbeat /readyz reads.
        observe(record_sweep)
        checks.register(check_secret_key, checks.Tags.security, deploy=False)
        discover()


def check_secret_key(**kwargs: object) -> list[checks.CheckMessage]:
    """sluice.W001: without SECRET_KEY each machine makes its own (config.settings): fine for
    one machine, wrong for several serving one Sluice (sessions and webhook signatures)."""
    if not getattr(settings, "SLUICE_SECRET_KEY_FROM_FILE", False):
        return []
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        return []
    return [
        checks.Warning(
            "SECRET_KEY is not set: this machine uses a key of its own, made once in "
            "var/secret_key",
            hint="Set SECRET_KEY, the same on every machine that serves this Sluice.",
            id="sluice.W001",
        )
    ]


def discover() -> None:
    """Import ``workflows.py`` / ``pipelines.py`` of installed apps and SLUICE_WORKFLOW_MODULES."""
    autodiscover_modules("workflows", "pipelines")
    names = list(getattr(settings, "SLUICE_WORKFLOW_MODULES", []) or [])
    names += [m for m in os.environ.get("SLUICE_WORKFLOW_MODULES", "").split(",") if m]
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        importlib.import_module(name)
