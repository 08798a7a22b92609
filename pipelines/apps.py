"""App config: registers the built-in pipelines, the system check and the outbox handler."""

from __future__ import annotations

from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Pipelines"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing the modules registers their workflows in every process that loads Django
        # (web, workers, beat), so workers find them without SLUICE_WORKFLOW_MODULES.
        from pipelines import checks  # noqa: F401  (registers the system check)
        from pipelines.builtin import document_batch, support_ticket, thread_analysis  # noqa: F401
