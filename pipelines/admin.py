"""Admin for support tickets: written by the pipeline, so read-only here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from pipelines.models import Ticket


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "id",
        "subject",
        "customer_email",
        "category",
        "urgency",
        "status",
        "grade",
        "attempts",
        "reply_sent_at",
        "created_at",
    )
    list_filter = ("status", "category", "urgency")
    search_fields = ("subject", "customer_email", "message")
    readonly_fields = [f.name for f in Ticket._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
