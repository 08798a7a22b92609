"""The ``workflows`` app's models: the engine's tables (defined in ``workflows.core.models``,
re-exported here) and the product's own: JSON API keys, completion webhooks, web users' tenants.

Django loads an app's models from ``<app>.models``; the engine's models live in the core
package so that the core never imports product code, and keep the app label ``workflows``
(Django takes it from the containing app), so no table or migration changed.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models

from workflows.core.models import (
    ACTIVE_RUN,
    TERMINAL_RUN,
    TERMINAL_STEP,
    Blob,
    Event,
    Lease,
    Outbox,
    OutboxStatus,
    Pool,
    Run,
    RunAction,
    RunAudit,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
)
from workflows.core.signals import runs_pruning

# --- JSON API keys and completion webhooks ----------------------------------------------------


class ApiScope(models.TextChoices):
    RUNS_READ = "runs:read", "runs:read — list and read runs, steps and pipelines"
    RUNS_WRITE = "runs:write", "runs:write — start, cancel and restart runs, send events"
    GATES_DECIDE = "gates:decide", "gates:decide — list and decide open gates"


class ApiKey(models.Model):
    """A service's credential for the JSON API.

    Only a hash of the key is stored; ``prefix`` is its visible first part, shown in admin and
    logs and used to find the row. A key acts for one ``tenant`` (it sees only that tenant's
    runs) and may be restricted to some pipelines. ``webhook_secret`` signs the completion
    webhooks of the runs it starts.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=24, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    tenant = models.CharField(max_length=100, blank=True, default="", db_index=True)
    scopes = models.JSONField(default=list, blank=True)
    # Pipeline names this key may use; empty means every pipeline.
    pipelines = models.JSONField(default=list, blank=True)
    # Requests per rate period (SLUICE_API_RATE_PERIOD); null uses SLUICE_API_RATE_LIMIT.
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    webhook_secret = models.CharField(max_length=80, editable=False)
    is_active = models.BooleanField(default=True)
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # The rate limiter's fixed window: both columns change only by compare-and-swap.
    window_start = models.DateTimeField(null=True, blank=True, editable=False)
    window_count = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["name", "id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def allows_pipeline(self, name: str) -> bool:
        return not self.pipelines or name in self.pipelines

    @property
    def actor(self) -> str:
        """How runs, events and decisions made with this key name who did it."""
        return f"api:{self.prefix}"


class WebhookStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    # Gave up: the receiver kept failing for the outbox's whole retry window (24 h).
    FAILED = "failed"
    # Never sent: the URL is not allowed (a loopback or private address, say).
    REFUSED = "refused"


class WebhookDelivery(models.Model):
    """One completion webhook of a run: its body, fixed when the run ended, and its fate.

    ``id`` is the delivery id: the ``Idempotency-Key`` header and the body's ``id`` are both
    this value on every attempt, so a receiver can drop repeats.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="webhook_deliveries")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_deliveries"
    )
    url = models.URLField(max_length=2000)
    event = models.CharField(max_length=64, default="run.finished")
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} {self.id}"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a webhook delivery, as the operators see it in admin."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="")
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["delivery", "number", "id"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"


# --- web users' tenants -----------------------------------------------------------------------


class TenantMembership(models.Model):
    """The tenant a web user works for, as ``ApiKey.tenant`` is a key's.

    One row per user at most: a user without a row works for the default tenant ``""`` (the
    tenant of runs started from Python and the demo). Staff see every tenant regardless; see
    ``workflows.access`` and docs/security.md.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_membership"
    )
    tenant = models.CharField(
        max_length=100,
        blank=True,
        default="",
        db_index=True,
        help_text="The user sees runs and gates of this tenant only (staff see all). "
        "Empty is the default tenant.",
    )

    class Meta:
        verbose_name = "tenant membership"

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant or '(default tenant)'}"


class OidcIdentity(models.Model):
    """The OpenID Connect identity a web user signs in with: the provider's ``iss`` and the
    stable ``sub`` it gives the person. SSO matches users by this pair only, never by e-mail
    (an e-mail at the provider equal to a local admin's must not log in as that admin); see
    config.oidc and docs/security.md."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "OpenID Connect identity"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer} → {self.user}"


# --- process heartbeats -----------------------------------------------------------------------


class Heartbeat(models.Model):
    """The last time a periodic duty ran, e.g. ``sweep``: what ``/readyz`` reads to tell a live
    beat from a dead one. One row per duty, overwritten on every pass (no history). Written by
    ``workflows.health.record_sweep``, an observer of the engine's ``sweep_finished`` event."""

    name = models.CharField(max_length=64, primary_key=True)
    at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%Y-%m-%d %H:%M:%S}"


# --- the ops overview's rollup ------------------------------------------------------------------


class HistoryHour(models.Model):
    """One closed hour of history, counted once for the ops overview (``workflows.ops``):
    runs finished in it by outcome, runs started in it, and the LLM cost of the steps that
    finished in it per pipeline. Written the first time the overview needs an hour that ended
    (its rows' times are set before their commits: ``ops.GRACE`` later); the open hour is
    always counted live. A closed hour does not change: a run restarted later was still
    finished then. Never pruned with the runs: the charts outlive the retention."""

    hour = models.DateTimeField(primary_key=True)  # an hour's start, in UTC
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    canceled = models.PositiveIntegerField(default=0)
    started = models.PositiveIntegerField(default=0)
    # {pipeline: cost as a decimal string}
    cost = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00}"


def _keep_pruned_hours(sender: Any, run_ids: list[Any], **kwargs: Any) -> None:
    """Receiver of the prune's ``runs_pruning``: the charts' closed hours of the runs about to
    go are counted into ``HistoryHour`` first, in the batch's transaction (``ops``'s own
    count; the engine core may not import ``ops``). Connected here, where Django imports it in
    every process, web and worker."""
    from workflows import ops

    ops.keep_pruned_hours(run_ids)


runs_pruning.connect(_keep_pruned_hours, dispatch_uid="workflows.ops_keep_pruned_hours")


__all__ = [
    "ACTIVE_RUN",
    "TERMINAL_RUN",
    "TERMINAL_STEP",
    "ApiKey",
    "ApiScope",
    "Blob",
    "Event",
    "Heartbeat",
    "HistoryHour",
    "Lease",
    "Outbox",
    "OutboxStatus",
    "Pool",
    "Run",
    "RunAction",
    "RunAudit",
    "RunStatus",
    "Step",
    "StepKind",
    "StepStatus",
    "OidcIdentity",
    "TenantMembership",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookStatus",
]
