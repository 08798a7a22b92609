"""Admin for gates: read-only (gates change only through ``reviews.services``), with an action
to free gates whose reviewer walked away from a claim."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest

from reviews import services
from reviews.models import Gate, GateEvent
from workflows.admin import DateHierarchyChangeList


class GateEventInline(admin.TabularInline):
    model = GateEvent
    extra = 0
    can_delete = False
    fields = ("at", "kind", "actor", "detail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Gate)
class GateAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "title",
        "pipeline",
        "group",
        "status",
        "outcome",
        "deadline",
        "claimed_by",
        "decided_by",
        "decided_at",
    )
    list_filter = ("status", "pipeline", "group", "timed_out")
    search_fields = ("title", "pipeline", "decided_by", "=run__id")
    date_hierarchy = "deadline"
    list_select_related = ("claimed_by",)
    readonly_fields = [f.name for f in Gate._meta.fields]
    inlines = [GateEventInline]
    actions = ["release_claims"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        # ?deadline__year=9999 is a bad filter (?e=1), not a 500.
        return DateHierarchyChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Staff with view permission get the read-only detail page; nothing on it can be saved.
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Every tenant's gates: staff with the gate view permission (services.sees_every_gate);
        the change permission alone does not show them (Django's default would)."""
        return services.sees_every_gate(request.user)

    def has_release_permission(self, request: HttpRequest) -> bool:
        """Freeing another reviewer's claim changes the gate: staff with the gate change
        permission (a permission the read-only pages never use), not viewers, and who may see
        every gate the action can be given."""
        user = request.user
        return services.overrides_claims(user) and services.sees_every_gate(user)

    @admin.action(
        description="Release the claim on the selected open gates", permissions=["release"]
    )
    def release_claims(self, request: HttpRequest, queryset: QuerySet[Gate]) -> None:
        released = 0
        for gate in queryset.filter(status="open", claimed_by__isnull=False):
            try:
                services.release_gate(gate.pk, request.user)
                released += 1
            except (services.GateClosedError, services.GateClaimedError) as exc:
                self.message_user(request, f"Gate {gate.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"Released {released} claim(s).", messages.SUCCESS)
