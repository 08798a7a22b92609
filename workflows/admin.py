"""Django admin for operators: runs with their journal, steps, events, the outbox, webhook
deliveries, API keys and pools.

Machine-written rows (runs, steps, events, outbox, deliveries) are read-only: operators repair
runs only through the actions below, which call the engine's services (``cancel``,
``restart``) exactly as the API and the run pages do. API keys and pool limits are the only
rows people edit, with the tenant of each web user (an inline on the user's page).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import ActionLocation, IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename, get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from workflows import operations, webhooks
from workflows.access import sees_every_run
from workflows.core import outbox
from workflows.core.audit import MAX_REASON, Actor, reason_problem
from workflows.core.definitions import registered_workflows
from workflows.keys import SCOPES, assign_new_secret, forget_keys
from workflows.models import (
    ApiKey,
    Event,
    OidcIdentity,
    Outbox,
    Pool,
    Run,
    RunAudit,
    Step,
    TenantMembership,
    WebhookAttempt,
    WebhookDelivery,
)
from workflows.timeline import status_label
from workflows.webhooks import retry_now

admin.site.site_header = "Sluice administration"
admin.site.site_title = "Sluice admin"

JSON_LIMIT = 20_000


def pretty_json(value: Any) -> SafeString:
    """A JSON value as an indented, escaped <pre> (long values cut, with a note)."""
    if value is None:
        return mark_safe('<span class="quiet">—</span>')  # noqa: S308  (constant)
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    if len(text) > JSON_LIMIT:
        text = text[:JSON_LIMIT] + f"\n… ({len(text) - JSON_LIMIT:,} more characters)"
    return format_html(
        '<pre style="white-space:pre-wrap;max-height:24rem;overflow:auto;margin:0;'
        'font-size:12px">{}</pre>',
        text,
    )


# --- long histories: no changelist reads every run or journal row -----------------------------


class CappedPaginator(Paginator):
    """Counts at most ``CAP`` rows (``COUNT`` over a ``LIMIT``): a full count of a million runs
    or ten million journal rows took 0.1–0.6 s, twice per changelist (with the full result
    count, turned off below). ``templates/admin/workflows/pagination.html`` says "more than"."""

    CAP = 10_000

    @cached_property
    def _counted(self) -> int:
        rows: Any = self.object_list
        return int(rows.order_by()[: self.CAP + 1].count())

    @property
    def count(self) -> int:  # type: ignore[override]
        return min(self._counted, self.CAP)

    @property
    def capped(self) -> bool:
        return self._counted > self.CAP


# The values a filter offers from the newest runs (and the values' own sources): Django's
# AllValuesFieldListFilter is a DISTINCT over the whole table (0.2–0.5 s at 1,000,000 runs).
RECENT_RUNS = 2000
NONE = "-"  # the URL value of the empty tenant


class _RunValueFilter(admin.SimpleListFilter):
    column = ""

    def known(self) -> set[str]:
        return set()

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        newest = Run.objects.order_by("-created_at").values_list(self.column, flat=True)
        values = sorted(self.known() | set(newest[:RECENT_RUNS]))
        return [(v or NONE, v or "(none)") for v in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.column: "" if value == NONE else value})


class PipelineFilter(_RunValueFilter):
    title = "pipeline"
    parameter_name = column = "workflow"

    def known(self) -> set[str]:
        return set(registered_workflows())


class TenantFilter(_RunValueFilter):
    title = "tenant"
    parameter_name = column = "tenant"

    def known(self) -> set[str]:
        keys = ApiKey.objects.order_by().values_list("tenant", flat=True).distinct()
        members = TenantMembership.objects.order_by().values_list("tenant", flat=True).distinct()
        return set(keys) | set(members)


class PoolFilter(admin.SimpleListFilter):
    """The configured pools (settings and Pool rows): a DISTINCT over the journal took 4 s."""

    title = "pool"
    parameter_name = "pool"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(settings.SLUICE_POOLS) | set(Pool.objects.values_list("name", flat=True))
        return [(n, n) for n in sorted(names | {"default"})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(pool=value)


STATUS_COLORS = {
    "succeeded": ("#1a7f37", "#e6f4ea"),
    "delivered": ("#1a7f37", "#e6f4ea"),
    "failed": ("#c62828", "#fde8e8"),
    "canceled": ("#c62828", "#fde8e8"),
    "dead": ("#c62828", "#fde8e8"),
    "refused": ("#c62828", "#fde8e8"),
    "running": ("#1f6feb", "#e8f0fe"),
    "pending": ("#9a6700", "#fff5d6"),
    "suspended": ("#9a6700", "#fff5d6"),
    "compensating": ("#bc4c00", "#fff1e5"),
    "waiting": ("#9a6700", "#fff5d6"),
    "retrying": ("#9a6700", "#fff5d6"),
}


def status_badge(status: str, label: str | None = None) -> SafeString:
    fg, bg = STATUS_COLORS.get(status, ("#5b6472", "#eef0f3"))
    return format_html(
        '<span style="display:inline-block;padding:1px 8px;border-radius:999px;font-weight:600;'
        'font-size:11px;color:{};background:{}">{}</span>',
        fg,
        bg,
        label or status,
    )


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


class ReadOnlyMixin:
    """Machine-written rows: visible, never added, edited or deleted by hand.

    Seen with the table's view permission only. Django's default also shows a table to its
    change permission, but ``change_run`` is the permission to act on runs (cancel, retry,
    restart): alone, it must not show every tenant's runs, nor act on them here."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        opts = self.opts  # type: ignore[attr-defined]
        codename = get_permission_codename("view", opts)
        return bool(request.user.has_perm(f"{opts.app_label}.{codename}"))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- runs -------------------------------------------------------------------------------------


# Journal rows shown inline on a run's change page; the rest are in the Steps list.
JOURNAL_SHOWN = 200


class StepInline(ReadOnlyMixin, admin.TabularInline):
    model = Step
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("superseded", "position", "branch", "id")
    fields = (
        "where",
        "kind",
        "name",
        "badge",
        "attempts",
        "pool",
        "started_at",
        "took",
        "tokens",
        "cost",
        "value",
    )
    readonly_fields = fields
    verbose_name = "journal entry"
    verbose_name_plural = f"journal (its first {JOURNAL_SHOWN} entries; all: the link above)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        """The run's first ``JOURNAL_SHOWN`` entries: a form per row, a 10,000-branch map made
        the change page 25 MB (12 s), a 50,000-branch one 124 MB (118 s, 1.2 GB)."""
        qs = super().get_queryset(request)
        match = request.resolver_match
        run_id = match.kwargs.get("object_id") if match is not None else None
        if run_id is None:
            return qs
        try:
            first = list(
                qs.filter(run_id=uuid.UUID(str(run_id)))
                .order_by(*self.ordering)
                .values_list("pk", flat=True)[:JOURNAL_SHOWN]
            )
        except ValueError:
            return qs.none()
        return qs.filter(pk__in=first)

    @admin.display(description="#")
    def where(self, obj: Step) -> str:
        if obj.superseded:
            return f"{obj.label} (superseded, gen {obj.generation})"
        return obj.label

    @admin.display(description="status")
    def badge(self, obj: Step) -> SafeString:
        return status_badge(obj.status, status_label(obj))

    @admin.display(description="attempts")
    def attempts(self, obj: Step) -> str:
        return f"{obj.attempt}/{obj.max_attempts}" if obj.kind in ("step", "branch") else "—"

    @admin.display(description="duration")
    def took(self, obj: Step) -> str:
        return seconds(obj.duration)

    @admin.display(description="tokens")
    def tokens(self, obj: Step) -> str:
        usage = obj.usage if isinstance(obj.usage, dict) else {}
        if "input_tokens" not in usage and "output_tokens" not in usage:
            return "—"
        return f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"

    @admin.display(description="result or error")
    def value(self, obj: Step) -> SafeString:
        return pretty_json(obj.error if obj.error else obj.result)


class WebhookDeliveryInline(ReadOnlyMixin, admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "id",
        "url",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    )
    readonly_fields = fields


class RunActionForm(helpers.ActionForm):
    """The action bar of the runs list, with the reason that goes into each run's audit."""

    reason = forms.CharField(
        required=False,
        max_length=MAX_REASON,
        label="Reason",
        widget=forms.TextInput(attrs={"placeholder": "why (optional, kept in the audit trail)"}),
    )


class RestartForm(forms.Form):
    from_step = forms.IntegerField(
        min_value=1,
        max_value=1_000_000,
        label="Restart from journal position",
        help_text="Entries from this position on are superseded (kept, not deleted) and run "
        "again under a new generation.",
    )
    reason = forms.CharField(
        required=False,
        max_length=MAX_REASON,
        label="Reason",
        help_text="Optional; kept in each run's audit trail with your name.",
    )
    max_cost = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=14,
        decimal_places=6,
        label="New budget (max_cost, $)",
        help_text="Optional; raises (or sets) the runs' budget, e.g. after BudgetExceeded. "
        "Empty: unchanged.",
    )


class RunAuditInline(ReadOnlyMixin, admin.TabularInline):
    """Who canceled, restarted or retried the run, and why (append-only, read-only)."""

    model = RunAudit
    extra = 0
    can_delete = False
    ordering = ("created_at", "id")
    fields = ("created_at", "action", "generation", "from_step", "actor", "api_key", "reason")
    readonly_fields = fields
    verbose_name = "audit entry"
    verbose_name_plural = "audit trail"


def _actor(request: HttpRequest) -> Actor:
    return Actor.of_user(request.user, via="admin")


def _reason(request: HttpRequest) -> str:
    return str(request.POST.get("reason", ""))[:MAX_REASON]


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "short_id",
        "workflow",
        "badge",
        "current_step",
        "tenant",
        "created_at",
        "took",
        "cost",
    )
    # No date_hierarchy: its month links are a DISTINCT over every run (0.5–0.9 s at
    # 1,000,000); the created_at filter's periods cost nothing.
    list_filter = ("status", PipelineFilter, "created_at", TenantFilter)
    paginator = CappedPaginator
    show_full_result_count = False
    search_fields = ("idempotency_key",)
    search_help_text = "Search by run id (full UUID) or idempotency key."
    list_select_related = False
    ordering = ("-created_at",)
    actions = ("cancel_runs", "retry_failed_step", "restart_from_step")
    action_form = RunActionForm
    inlines = (RunAuditInline, StepInline, WebhookDeliveryInline)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "workflow",
                    "version",
                    "badge",
                    "generation",
                    "current_step",
                    "page_link",
                    "journal_link",
                )
            },
        ),
        (
            "Who and when",
            {
                "fields": (
                    "tenant",
                    "created_by",
                    "idempotency_key",
                    "parent",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "took",
                )
            },
        ),
        ("Values", {"fields": ("input_json", "output_json", "error_json", "context_json")}),
        (
            "Budget and callbacks",
            {"fields": ("cost", "max_cost", "callback_url", "on_complete", "max_parallel")},
        ),
        (
            "Engine",
            {
                "classes": ("collapse",),
                "fields": ("lease_owner", "lease_expires_at", "wake_requested_at"),
            },
        ),
    )
    readonly_fields = (
        "id",
        "workflow",
        "version",
        "badge",
        "generation",
        "current_step",
        "page_link",
        "journal_link",
        "tenant",
        "created_by",
        "idempotency_key",
        "parent",
        "created_at",
        "started_at",
        "finished_at",
        "took",
        "input_json",
        "output_json",
        "error_json",
        "context_json",
        "cost",
        "max_cost",
        "callback_url",
        "on_complete",
        "max_parallel",
        "lease_owner",
        "lease_expires_at",
        "wake_requested_at",
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        term = search_term.strip()
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Acting on runs (cancel, retry, restart) needs staff with change rights on runs, and
        the admin acts on any tenant's runs: so also the right to see them all (view_run), as
        the run pages require a run to be visible before acting on it."""
        user = request.user
        return bool(user.has_perm("workflows.change_run") and sees_every_run(user))

    @admin.display(description="run", ordering="created_at")
    def short_id(self, obj: Run) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Run) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="duration")
    def took(self, obj: Run) -> str:
        if obj.started_at and obj.finished_at:
            return seconds((obj.finished_at - obj.started_at).total_seconds())
        return "—"

    @admin.display(description="run page")
    def page_link(self, obj: Run) -> SafeString:
        return format_html('<a href="/runs/{}/">Open the run page (timeline, graph)</a>', obj.pk)

    @admin.display(description="journal")
    def journal_link(self, obj: Run) -> SafeString:
        count = Step.objects.filter(run_id=obj.pk).count()
        return format_html(
            '<a href="{}?q={}">All {} journal entries in the Steps list</a>{}',
            reverse("admin:workflows_step_changelist"),
            obj.pk,
            f"{count:,}",
            f" (the first {JOURNAL_SHOWN} are below)" if count > JOURNAL_SHOWN else "",
        )

    @admin.display(description="input")
    def input_json(self, obj: Run) -> SafeString:
        return pretty_json(obj.input)

    @admin.display(description="output")
    def output_json(self, obj: Run) -> SafeString:
        return pretty_json(obj.output)

    @admin.display(description="error")
    def error_json(self, obj: Run) -> SafeString:
        return pretty_json(obj.error)

    @admin.display(description="context")
    def context_json(self, obj: Run) -> SafeString:
        return pretty_json(obj.context or None)

    def response_action(
        self,
        request: HttpRequest,
        queryset: QuerySet[Run],
        action_location: ActionLocation = ActionLocation.CHANGE_LIST,
    ) -> HttpResponse | None:
        # Django answers any invalid action bar with "No action selected."; a reason with a
        # NUL character or over MAX_REASON characters gets its own message instead.
        for name, value in request.POST.items():
            problem = reason_problem(str(value)) if name.split("-")[-1] == "reason" else ""
            if problem:
                self.message_user(request, f"Nothing was done: {problem}", messages.ERROR)
                return None
        return super().response_action(request, queryset, action_location=action_location)

    def _report(
        self,
        request: HttpRequest,
        verb: str,
        results: list[operations.Outcome],
        *,
        where: str = "",
        plain: str = "",
    ) -> None:
        """One success line ("Restarted 2 run(s) from step 3."), then each run whose outcome
        says more than ``plain`` (it restarted elsewhere: its undone steps run again; where a
        retry resumed), then each refusal."""
        done = [r for r in results if r.ok]
        if done:
            self.message_user(request, f"{verb} {len(done)} run(s){where}.", messages.SUCCESS)
        for r in done:
            if r.message != plain:
                self.message_user(request, f"Run {str(r.run_id)[:8]}: {r.message}.", messages.INFO)
        for r in results:
            if not r.ok:
                self.message_user(
                    request, f"Run {str(r.run_id)[:8]}: {r.message}", messages.WARNING
                )

    @admin.action(description="Cancel selected runs", permissions=["operate"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor, reason = _actor(request), _reason(request)
        self._report(
            request,
            "Canceled",
            [operations.cancel_run(run.pk, actor, reason) for run in queryset],
            plain="canceled",
        )

    @admin.action(description="Retry the failed step of selected runs", permissions=["operate"])
    def retry_failed_step(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor, reason = _actor(request), _reason(request)
        self._report(
            request,
            "Restarted",
            [operations.retry_failed_step(run.pk, actor, reason) for run in queryset],
        )

    @admin.action(description="Restart selected runs from a step…", permissions=["operate"])
    def restart_from_step(
        self, request: HttpRequest, queryset: QuerySet[Run]
    ) -> HttpResponse | None:
        if "apply" in request.POST:
            form = RestartForm(request.POST)
        else:  # From the action bar: carry its reason over.
            form = RestartForm(initial={"reason": _reason(request)})
        if form.is_bound and form.is_valid():
            position = form.cleaned_data["from_step"]
            actor, reason = _actor(request), form.cleaned_data["reason"]
            self._report(
                request,
                "Restarted",
                [
                    operations.restart_run(
                        run.pk, position, actor, reason, form.cleaned_data.get("max_cost")
                    )
                    for run in queryset
                ],
                where=f" from step {position}",
                plain=f"restarted from step {position}",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Restart runs from a step",
            "runs": queryset,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "workflows/admin_restart.html", context)


@admin.register(Step)
class StepAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "run_link",
        "kind",
        "badge",
        "attempt",
        "max_attempts",
        "pool",
        "started_at",
        "took",
        "cost",
        "superseded",
    )
    list_filter = ("status", "kind", PoolFilter, "superseded")
    search_fields = ("name",)
    search_help_text = "Search by step name, or a run's full UUID."
    list_select_related = ("run",)
    # Newest journal rows first, by the primary key: the model's order (position, branch)
    # across every run was a sort of the whole journal (12 s at 10,000,000 rows).
    ordering = ("-id",)
    paginator = CappedPaginator
    show_full_result_count = False
    readonly_fields = (
        "run",
        "generation",
        "superseded",
        "position",
        "branch",
        "kind",
        "name",
        "badge",
        "pool",
        "held",
        "attempt",
        "max_attempts",
        "target",
        "args_json",
        "result_json",
        "error_json",
        "usage_json",
        "cost",
        "wake_at",
        "started_at",
        "finished_at",
        "took",
        "lease_owner",
        "lease_expires_at",
    )
    fields = readonly_fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Step], search_term: str
    ) -> tuple[QuerySet[Step], bool]:
        try:
            return queryset.filter(run_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    @admin.display(description="run")
    def run_link(self, obj: Step) -> SafeString:
        return format_html(
            '<a href="../run/{}/change/">{} {}</a>',
            obj.run_id,
            obj.run.workflow,
            str(obj.run_id)[:8],
        )

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Step) -> SafeString:
        return status_badge(obj.status, status_label(obj))

    @admin.display(description="duration")
    def took(self, obj: Step) -> str:
        return seconds(obj.duration)

    @admin.display(description="arguments")
    def args_json(self, obj: Step) -> SafeString:
        return pretty_json(obj.args)

    @admin.display(description="result")
    def result_json(self, obj: Step) -> SafeString:
        return pretty_json(obj.result)

    @admin.display(description="error")
    def error_json(self, obj: Step) -> SafeString:
        return pretty_json(obj.error)

    @admin.display(description="usage")
    def usage_json(self, obj: Step) -> SafeString:
        return pretty_json(obj.usage)


class DateHierarchyChangeList(ChangeList):
    """A changelist whose ``date_hierarchy`` filter past the calendar is a bad filter, which
    the admin answers as any other (a redirect to ``?e=1``), not a 500: Django bounds
    ``?<field>__year=9999`` by the next year (10000: a ValueError) and ``&<field>__month=12``
    or ``&<field>__day=31`` by the next month or day (an OverflowError). Every admin with a
    ``date_hierarchy`` returns it (or a subclass) from ``get_changelist``."""

    def get_filters(self, request: HttpRequest) -> Any:
        try:
            filters = super().get_filters(request)
        except (ValueError, OverflowError) as exc:
            if self.date_hierarchy and f"{self.date_hierarchy}__year" in self.params:
                raise IncorrectLookupParameters(exc) from exc
            raise
        if self.date_hierarchy:
            # The bounds are in the site's zone: 0001-01-01 east of UTC is in year 0 in UTC,
            # which SQLite's adapter cannot write (PostgreSQL can): an OverflowError when the
            # query runs, past this guard. Tried here, where it is still a bad filter.
            lookups: dict[str, Any] = filters[2]  # the remaining lookups, the bounds among them
            for key in (f"{self.date_hierarchy}__gte", f"{self.date_hierarchy}__lt"):
                for bound in lookups.get(key, ()):
                    if isinstance(bound, datetime) and bound.tzinfo is not None:
                        try:
                            bound.astimezone(UTC)
                        except OverflowError as exc:
                            raise IncorrectLookupParameters(exc) from exc
        return filters

    def get_results(self, request: HttpRequest) -> None:
        # The same bound given as a plain lookup (?deadline__gte=0001-01-01 in a zone east of
        # UTC) reaches SQLite's adapter only when the query runs, here.
        try:
            super().get_results(request)
        except OverflowError as exc:
            raise IncorrectLookupParameters(exc) from exc


class EventChangeList(ChangeList):
    """The events list reads only what it shows: an event's payload (up to the hard limit,
    8 MB) and the values of its run and step are left in the database. Reading them made a
    page of 80 large events take 3–4 s and 1.18 GB. The change form reads the whole event."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .only(
                "name",
                "created_at",
                "run__workflow",  # str(run)
                "consumed_by__position",  # str(step), with branch, name and status
                "consumed_by__branch",
                "consumed_by__name",
                "consumed_by__status",
            )
        )


@admin.register(Event)
class EventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("name", "run", "consumed_by", "created_at")
    search_fields = ("name",)
    list_select_related = ("run", "consumed_by")
    # Newest first, by the primary key: with a capped count the pages reach only so far.
    ordering = ("-id",)
    paginator = CappedPaginator
    show_full_result_count = False
    readonly_fields = ("run", "name", "payload_json", "consumed_by", "created_at")
    fields = readonly_fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    @admin.display(description="payload")
    def payload_json(self, obj: Event) -> SafeString:
        return pretty_json(obj.payload)


@admin.register(Outbox)
class OutboxAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "kind",
        "key",
        "badge",
        "attempts",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "last_error",
    )
    list_filter = ("status", "kind")
    search_fields = ("key",)
    readonly_fields = (
        "run",
        "kind",
        "key",
        "badge",
        "attempts",
        "next_attempt_at",
        "lease_expires_at",
        "last_error",
        "created_at",
        "delivered_at",
        "payload_json",
    )
    fields = readonly_fields
    actions = ("deliver_again",)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Delivering a row again calls out (mail, chat): the change permission, which the page
        itself never uses (rows are read-only here), not the view one."""
        user = request.user
        return bool(user.is_staff and user.has_perm("workflows.change_outbox"))

    @admin.action(description="Deliver selected rows again now", permissions=["operate"])
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[Outbox]) -> None:
        # A webhook's row goes with its delivery's status: retried from Webhook deliveries.
        hooks = queryset.filter(kind=webhooks.KIND).count()
        n = outbox.due_again(queryset.exclude(kind=webhooks.KIND))
        if n:
            self.message_user(
                request,
                f"{n} row{pluralize(n)} due again; the outbox sends them within seconds "
                "(a row past its day of retries gets one attempt).",
                messages.SUCCESS,
            )
        skipped = queryset.count() - hooks - n
        if skipped:
            self.message_user(
                request,
                f"{skipped} row{pluralize(skipped)} left as they are: delivered already, or "
                "in the middle of an attempt.",
                messages.WARNING,
            )
        if hooks:
            self.message_user(
                request,
                f"{hooks} webhook row{pluralize(hooks)} left as they are: retry them from "
                "Webhook deliveries, which keeps each delivery's status.",
                messages.WARNING,
            )

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Outbox) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="payload")
    def payload_json(self, obj: Outbox) -> SafeString:
        return pretty_json(obj.payload)


# --- webhooks ---------------------------------------------------------------------------------


class WebhookAttemptInline(ReadOnlyMixin, admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = (
        "number",
        "started_at",
        "status_code",
        "latency",
        "succeeded",
        "error",
        "response_excerpt",
    )
    readonly_fields = fields
    verbose_name_plural = "attempts"

    @admin.display(description="latency")
    def latency(self, obj: WebhookAttempt) -> str:
        return f"{obj.latency_ms:.0f} ms" if obj.latency_ms is not None else "—"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "run",
        "url",
        "badge",
        "attempts",
        "last_status_code",
        "created_at",
        "delivered_at",
    )
    list_filter = ("status", "event")
    search_fields = ("url",)
    list_select_related = ("run",)
    inlines = (WebhookAttemptInline,)
    actions = ("retry_deliveries",)
    readonly_fields = (
        "id",
        "run",
        "api_key",
        "url",
        "event",
        "badge",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "body_json",
    )
    fields = readonly_fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[WebhookDelivery], search_term: str
    ) -> tuple[QuerySet[WebhookDelivery], bool]:
        try:
            term = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=term) | queryset.filter(run_id=term), False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Sending a delivery again changes it (and calls out): the change permission, which
        the page itself never uses (deliveries are read-only here), not the view one."""
        user = request.user
        return bool(user.is_staff and user.has_perm("workflows.change_webhookdelivery"))

    @admin.display(description="status", ordering="status")
    def badge(self, obj: WebhookDelivery) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="body")
    def body_json(self, obj: WebhookDelivery) -> SafeString:
        return pretty_json(obj.payload)

    @admin.action(description="Retry selected deliveries now", permissions=["operate"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        selected = list(queryset)
        n = sum(retry_now(d) for d in selected)
        if n:
            self.message_user(
                request,
                f"{n} deliveries are due again; the outbox sends them within seconds.",
                messages.SUCCESS,
            )
        if n < len(selected):
            self.message_user(
                request,
                f"{len(selected) - n} of the selected deliveries were left as they are: "
                "delivered already, or being sent at this moment.",
                messages.WARNING,
            )


# --- API keys ---------------------------------------------------------------------------------


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    pipelines = forms.MultipleChoiceField(
        choices=(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Leave all unticked to allow every pipeline.",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "tenant", "scopes", "pipelines", "rate_limit", "is_active")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = set(registered_workflows()) | set(self.initial.get("pipelines") or [])
        pipelines = self.fields["pipelines"]
        assert isinstance(pipelines, forms.MultipleChoiceField)
        pipelines.choices = [(n, n) for n in sorted(names)]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = (
        "name",
        "prefix",
        "tenant",
        "scope_list",
        "pipeline_list",
        "rate_limit",
        "is_active",
        "last_used_at",
        "created_at",
    )
    list_filter = ("is_active", "tenant")
    search_fields = ("name", "prefix", "tenant")
    readonly_fields = ("prefix", "webhook_secret", "created_by", "created_at", "last_used_at")
    actions = ("rotate_keys", "deactivate_keys")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        editable = ["name", "tenant", "scopes", "pipelines", "rate_limit", "is_active"]
        return editable if obj is None else [*editable, *self.get_readonly_fields(request, obj)]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ()
        if self.has_change_permission(request, obj):
            return self.readonly_fields
        # The signing secret forges the key's webhooks: only for who may rotate it.
        return tuple("secret_hidden" if f == "webhook_secret" else f for f in self.readonly_fields)

    @admin.display(description="webhook secret")
    def secret_hidden(self, obj: ApiKey) -> str:
        return "hidden: it takes the permission to change API keys to see it"

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes or []) or "—"

    @admin.display(description="pipelines")
    def pipeline_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.pipelines or []) or "all"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        obj.created_by = f"admin:{request.user.get_username()}"
        raw = assign_new_secret(obj)
        self.message_user(
            request,
            format_html(
                "API key created. Copy it now, it is not shown again: <code>{}</code>", raw
            ),
            messages.SUCCESS,
        )

    # Both actions change keys: they need the change permission, as the key's change page
    # does (a viewer of keys must not mint a working secret or switch keys off).
    @admin.action(
        description="Rotate selected keys (issue new ones, old ones stop working)",
        permissions=["change"],
    )
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            raw = assign_new_secret(key)
            self.message_user(
                request,
                format_html("New key for {}: <code>{}</code> (shown once)", key.name, raw),
                messages.SUCCESS,
            )

    @admin.action(description="Deactivate selected keys", permissions=["change"])
    def deactivate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        n = queryset.update(is_active=False)
        # An update sends no post_save: drop this process's remembered keys here (the other
        # processes' copies expire within SLUICE_API_KEY_CACHE_SECONDS).
        forget_keys()
        self.message_user(request, f"Deactivated {n} key(s).", messages.SUCCESS)


# --- pools ------------------------------------------------------------------------------------


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ("name", "max_concurrency", "rate_limit", "rate_period", "running", "backlog")
    list_editable = ("max_concurrency", "rate_limit", "rate_period")
    fields = (
        "name",
        "max_concurrency",
        "rate_limit",
        "rate_period",
        "window_start",
        "window_count",
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Pool | None = None) -> Any:
        # The window columns are the rate limiter's state: written by workers only.
        return (
            ("window_start", "window_count")
            if obj is None
            else ("name", "window_start", "window_count")
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="running now")
    def running(self, obj: Pool) -> int:
        return Step.objects.filter(pool=obj.name, status="running").count()

    @admin.display(description="waiting for a slot")
    def backlog(self, obj: Pool) -> int:
        return Step.objects.filter(pool=obj.name, status="pending", superseded=False).count()


# --- web users' tenants -----------------------------------------------------------------------


class TenantMembershipInline(admin.StackedInline):
    """The user's tenant, edited on the user's own admin page (docs/security.md)."""

    model = TenantMembership
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name = "tenant"
    verbose_name_plural = (
        "tenant (runs and gates this user sees; operators, staff with the view permissions, see "
        "every tenant)"
    )


class OidcIdentityInline(admin.TabularInline):
    """The single sign-on identities that log in as this user (config.oidc). SSO matches users
    by these rows only, never by e-mail: adding one links an existing account to a provider's
    subject (docs/security.md, Single sign-on)."""

    model = OidcIdentity
    extra = 0
    fields = ("issuer", "subject", "created_at")
    readonly_fields = ("created_at",)
    verbose_name = "single sign-on identity"
    verbose_name_plural = "single sign-on identities (the provider's issuer and the user's sub)"


User = get_user_model()
# django.contrib.auth registered its UserAdmin first (it comes first in INSTALLED_APPS): the
# same admin, plus the tenant.
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class SluiceUserAdmin(BaseUserAdmin):
    inlines = [TenantMembershipInline, OidcIdentityInline]
    list_display = ("username", "email", "first_name", "last_name", "is_staff", "tenant")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups", "tenant_membership__tenant")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).select_related("tenant_membership")

    @admin.display(description="tenant", ordering="tenant_membership__tenant")
    def tenant(self, obj: Any) -> str:
        membership = getattr(obj, "tenant_membership", None)
        return membership.tenant if membership is not None and membership.tenant else "—"
