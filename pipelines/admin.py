"""Admin for support tickets: written by the pipeline, so read-only here."""

from __future__ import annotations

from django.contrib import admin

from pipelines.models import Ticket
from workflows.admin import ReadOnlyMixin


@admin.register(Ticket)
class TicketAdmin(ReadOnlyMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Every tenant's tickets, so (like the engine's tables) shown to the view permission only:
    Django's default also shows a table to its change permission (docs/security.md)."""

    list_display = (
        "id",
        "subject",
        "customer_email",
        "tenant",
        "category",
        "urgency",
        "status",
        "grade",
        "attempts",
        "reply_sent_at",
        "created_at",
    )
    list_filter = ("status", "category", "urgency", "tenant")
    search_fields = ("subject", "customer_email", "message")
    readonly_fields = [f.name for f in Ticket._meta.fields]
