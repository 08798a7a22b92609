"""The engine's tables. PostgreSQL (or SQLite in the embedded default) is the truth.

Every state change below is a compare-and-swap in ``workflows.core.executor`` / ``services``:
``filter(pk=..., status=OLD).update(...)`` and act only when it touched one row.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    # The handler failed or the run was canceled, and the undos (``compensate=``) of its
    # completed steps are running, last completed first. Active: a worker advances it under
    # the run lease (``lease_owner`` says whether one holds it now) and it parks between undos
    # without changing status. Ends failed or canceled (``Run.after_compensation``).
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_RUN = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED)
ACTIVE_RUN = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED, RunStatus.COMPENSATING)
# A run a worker may be advancing right now: its lease is renewed and reclaimed when it expires.
LEASED_RUN = (RunStatus.RUNNING, RunStatus.COMPENSATING)
# A pool's rate window, in seconds (``Pool.rate_period``; ``pools.period_seconds``).
MIN_RATE_PERIOD = 0.001
MAX_RATE_PERIOD = 366 * 86400.0


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STEP = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELED)


class StepKind(models.TextChoices):
    STEP = "step"
    PARALLEL = "parallel"
    BRANCH = "branch"
    SLEEP = "sleep"
    EVENT = "event"
    CHILD = "child"
    NOW = "now"
    RANDOM = "random"
    UUID = "uuid"
    GATE = "gate"
    PATCH = "patch"  # a ``ctx.patched`` / ``ctx.deprecate_patch`` marker (no result)
    # The undo of a completed step, run while the run is compensating.
    COMPENSATE = "compensate"


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    # Bumped by cancel and restart; every task and step completion carries the generation it
    # was started under, and a stale one is ignored.
    generation = models.PositiveIntegerField(default=1)
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    on_complete = models.CharField(max_length=255, blank=True, default="")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    parent_step = models.ForeignKey(
        "Step", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    max_parallel = models.PositiveIntegerField(default=10)
    # Who started the run (an API key's tenant, a user); the API shows a tenant only its own.
    tenant = models.CharField(max_length=100, blank=True, default="")
    created_by = models.CharField(max_length=150, blank=True, default="")
    # The id of the signed-in user who started it (the start form, a fork from the run page);
    # null for an API key, a Python start that gives none, or a run older than the column.
    # Who started a run is decided by this id when it is set, by ``created_by`` only when not:
    # a renamed user stays the starter, and an account later given the name is not
    # (separation of duties, the run pages' "they started it" rule).
    # A plain integer, not a foreign key: deleting the account must not clear it (back to
    # matching by name, which a new account could then take) nor update the run table.
    created_by_user_id = models.BigIntegerField(null=True, blank=True)
    # Where to POST the run summary when it ends (delivered through the outbox).
    callback_url = models.URLField(max_length=2000, blank=True, default="")
    # A budget: the run stops cleanly before a step once its recorded cost reaches this.
    max_cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    # How long reviewers have to decide each gate this run opens without a timeout of its own
    # (``ctx.review``, a machine's ``human`` state); null means the default, 24 hours.
    review_timeout = models.DurationField(null=True, blank=True)
    # ``fork(run_id, from_step=N)``: the run this one was forked from, reusing its journal
    # before position N (``forked_at_step``). SET_NULL: pruning the original keeps the fork.
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )
    forked_at_step = models.PositiveIntegerField(null=True, blank=True)
    # The run lease: whoever holds it advances the run. Renewed with every checkpoint and by
    # the worker's heartbeat; when it expires the sweep rings for the run again.
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Set in the same transaction as whatever made the run runnable (start, a branch joined,
    # a timer fired, an event arrived). Cleared when a worker takes the lease. A value older
    # than the doorbell grace means the message was lost: the sweep rings again.
    wake_requested_at = models.DateTimeField(null=True, blank=True)
    # Where the run is, for people: the last step name the handler reached.
    current_step = models.CharField(max_length=200, blank=True, default="")
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # While compensating: the status the run takes once its undos ran ("failed" when its
    # handler failed, "canceled" when it was canceled). Empty otherwise.
    after_compensation = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Lists are newest first, ``-created_at, -id`` (the id breaks ties for the API's
            # cursor): read backwards, these give the order without a sort, for everyone and
            # for one tenant (an API key's or a web user's), at any depth of history.
            models.Index(fields=["created_at", "id"], name="run_created"),
            models.Index(fields=["tenant", "created_at", "id"], name="run_tenant_created"),
            models.Index(fields=["status", "created_at"], name="run_status_created"),
            models.Index(
                fields=["wake_requested_at"],
                name="run_wake_requested",
                condition=Q(wake_requested_at__isnull=False),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="run_lease",
                condition=Q(status="running"),
            ),
            models.Index(fields=["finished_at"], name="run_finished"),
            # A plain b-tree, declared here rather than with db_index=True: on PostgreSQL that
            # also builds a varchar_pattern_ops twin for LIKE 'prefix%', which no query uses
            # and every write of a run row pays for. (run_tenant_created leads with tenant.)
            models.Index(fields=["workflow"], name="run_workflow"),
        ]
        # Starting a run from the web spends LLM money: only users (or groups) granted this
        # permission see the start form (docs/security.md). The API has its own key scope.
        permissions = [("start_run", "Can start runs from the web")]

    def __str__(self) -> str:
        return f"{self.workflow} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN


class Step(models.Model):
    """One journal entry: a step call, a timer, an event wait, a fan-out group or branch."""

    # No index of its own: step_run_position (run, position) serves every lookup by run, so a
    # third index over the same leading column would only slow every journal write.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    generation = models.PositiveIntegerField(default=1)
    # Restart-from-step marks later rows superseded (with the generation they belonged to)
    # instead of deleting them: the journal is the audit trail.
    superseded = models.BooleanField(default=False)
    position = models.PositiveIntegerField()
    # -1 for an entry of the handler itself; 0..n-1 for the branches of a fan-out group.
    branch = models.IntegerField(default=-1)
    kind = models.CharField(max_length=16, choices=StepKind.choices, default=StepKind.STEP)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    pool = models.CharField(max_length=64, default="default")
    # Branches over the run's parallelism cap wait here until an earlier branch finishes.
    held = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    # Where to find the code of a branch, and its arguments (branches run in other processes).
    target = models.CharField(max_length=300, blank=True, default="")
    args = models.JSONField(null=True, blank=True)
    # The dotted path of this step's undo (``compensate=``): run with the step's arguments
    # and its result if the run fails or is canceled after the step succeeded.
    undo = models.CharField(max_length=300, blank=True, default="")
    # A digest of the call's arguments (a step) or of its branches' calls (a fan-out), compared
    # on replay; empty on rows journaled before digests were (they are not compared).
    digest = models.CharField(max_length=32, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Timer deadline, event timeout, or retry backoff: fired by the sweep, never an ETA task.
    wake_at = models.DateTimeField(null=True, blank=True)
    # For fan-out groups: branches not yet finished. The branch that takes it to 0 rings.
    remaining = models.IntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    usage = models.JSONField(null=True, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position", "branch", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "position", "branch"],
                condition=Q(superseded=False),
                name="step_unique_live_position",
            ),
        ]
        indexes = [
            models.Index(fields=["run", "position"], name="step_run_position"),
            models.Index(
                fields=["status", "wake_at"],
                name="step_due",
                condition=Q(status__in=["waiting", "retrying"]),
            ),
            models.Index(
                fields=["pool", "status", "id"],
                name="step_pool_queue",
                condition=Q(branch__gte=0, status__in=["pending", "running"]),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="step_lease",
                condition=Q(status="running", branch__gte=0),
            ),
            # The ops overview over a long history: step latency from the newest finished
            # steps, the load of each pool from the few busy ones, LLM cost from costed steps.
            # Partial: a step is inserted unfinished, so the insert skips this index.
            models.Index(
                fields=["finished_at"],
                name="step_finished",
                condition=Q(finished_at__isnull=False),
            ),
            # The same small partial index serves the metrics' pool in-flight and backlog gauges
            # (inline steps included): a count over it, never over the journal.
            models.Index(
                fields=["pool", "status"],
                name="step_busy",
                condition=Q(status__in=["running", "pending", "retrying"]),
            ),
            models.Index(fields=["finished_at"], name="step_costed", condition=Q(cost__gt=0)),
            # The next held branch of a fan-out to let go (``storage``'s finish statement and
            # ``_release_held``, ``executor.release_held``): only the branches still held, so
            # the lookup does not walk past every branch already released (a wide map was
            # O(n^2), under the group row's lock). A branch leaves it when it is released.
            models.Index(
                fields=["run", "position", "branch"],
                name="step_held_pending",
                condition=Q(held=True, superseded=False, status="pending"),
            ),
        ]

    def __str__(self) -> str:
        where = f"{self.position}" if self.branch < 0 else f"{self.position}.{self.branch}"
        return f"#{where} {self.name} ({self.status})"

    @classmethod
    def new(cls, **fields: Any) -> Step:
        """A new, unsaved journal row, as ``Step(**fields)`` builds it, but without
        ``Model.__init__``'s work per field: the engine makes one for every step it runs, so
        the defaults are copied from a template. Falls back to ``Step(**fields)`` for anything
        the template does not cover (a related object, an unknown name, an init signal)."""
        template, made = _step_template()
        if not fields.keys() <= template.keys() or _has_init_receivers(cls):
            return cls(**fields)
        row = cls.__new__(cls)
        row.__dict__.update(template)
        for field in made:  # a callable default (dict, list): a fresh value for each row
            row.__dict__[field.attname] = field.get_default()
        row.__dict__.update(fields)
        row._state = models.base.ModelState()
        return row

    @property
    def label(self) -> str:
        return f"{self.position}" if self.branch < 0 else f"{self.position}.{self.branch}"

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Event(models.Model):
    """An event sent to a run. Kept until a ``wait_for_event`` of that name consumes it once."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    name = models.CharField(max_length=200)
    payload = models.JSONField(null=True, blank=True)
    consumed_by = models.OneToOneField(
        Step, null=True, blank=True, on_delete=models.SET_NULL, related_name="consumed_event"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "name"], name="event_run_name")]

    def __str__(self) -> str:
        return f"{self.name} → {self.run_id}"


class Blob(models.Model):
    """A value too large to keep in its row. Referenced as ``{"$blob": id}``."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="blobs", null=True)
    data = models.TextField()
    size = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"blob {self.pk} ({self.size:,} bytes)"


class OutboxStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Outbox(models.Model):
    """A side effect that must leave the process, written in the transaction that caused it.

    Delivered by ``workflows.deliver_outbox`` with ``key`` as the idempotency key.
    """

    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox"
    )
    kind = models.CharField(max_length=64)
    key = models.CharField(max_length=255, unique=True)
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=OutboxStatus.choices, default=OutboxStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], name="outbox_due", condition=Q(status="pending")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


class Pool(models.Model):
    """A named pool of step capacity shared by all workers.

    ``max_concurrency`` caps running steps across every worker; ``rate_limit`` caps step starts
    per ``rate_period`` seconds. The window columns are the rate limiter's state.
    """

    name = models.CharField(max_length=64, primary_key=True)
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    rate_period = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(MIN_RATE_PERIOD), MaxValueValidator(MAX_RATE_PERIOD)],
        help_text="Seconds (0.001 to 366 days).",
    )
    window_start = models.DateTimeField(null=True, blank=True)
    window_count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.name

    @property
    def is_limited(self) -> bool:
        return bool(self.max_concurrency) or bool(self.rate_limit)

    def as_config(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "rate_limit": self.rate_limit,
            "rate_period": self.rate_period,
        }


class Lease(models.Model):
    """A named duty only one process may do at a time, e.g. ``prune``: held by ``owner`` until
    ``expires_at``, taken by compare-and-swap (``UPDATE … WHERE expires_at < now``), so it
    works behind PgBouncer in transaction mode (no session advisory lock) and a holder that
    died lets go by itself when its lease runs out. See ``workflows.core.sweeper.prune``."""

    name = models.CharField(max_length=64, primary_key=True)
    owner = models.CharField(max_length=200, blank=True, default="")
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.owner or 'free'} until {self.expires_at:%Y-%m-%d %H:%M:%S}"


class RunAction(models.TextChoices):
    CANCEL = "cancel"
    RESTART = "restart"
    RETRY = "retry"
    FORK = "fork"  # recorded on the original; from_step is where the new run parts from it


class RunAudit(models.Model):
    """Who canceled, restarted or retried a run, and why: one row per operator action.

    Append-only: written in the transaction of the action itself (``workflows.core.services``), so
    an action that happened always has its row, and one that was refused has none. The actor
    is kept as text too, so the trail survives the user or API key being deleted.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="audit")
    # The generation the action ended (cancel) or replaced (restart, retry).
    generation = models.PositiveIntegerField()
    action = models.CharField(max_length=16, choices=RunAction.choices)
    from_step = models.PositiveIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=200, blank=True, default="")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # A product model (workflows.models), named by label so the engine never imports it.
    api_key = models.ForeignKey(
        "workflows.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True, default="")
    # The budget (``Run.max_cost``) the ended or replaced generation ran under: the run page
    # shows each generation's spending against its own cap.
    max_cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = "run audit entry"
        verbose_name_plural = "run audit trail"

    def __str__(self) -> str:
        return f"{self.action} by {self.actor or 'the engine'}"


@lru_cache(maxsize=1)
def _step_template() -> tuple[dict[str, Any], list[Any]]:
    fields = Step._meta.concrete_fields
    made = [f for f in fields if f.has_default() and callable(f.default)]
    return {f.attname: f.get_default() for f in fields}, made


def _has_init_receivers(model: type[models.Model]) -> bool:
    return models.signals.pre_init.has_listeners(model) or models.signals.post_init.has_listeners(
        model
    )
