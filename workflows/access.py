"""Who may see which runs in the browser: one rule, used by every page that shows a run.

A web user works for one tenant (``TenantMembership``; no row is the default tenant ``""``), as
an API key does (``ApiKey.tenant``). Operators (staff who hold ``workflows.view_run``, and
superusers) see every run of every tenant. Anyone else, staff without that permission included,
sees a run only when it is of their tenant AND one of these holds:

1. they are in one of ``settings.SLUICE_RUN_VIEWER_GROUPS`` (every run of the tenant);
2. the run has a gate of one of their groups (open or closed: the run is the gate's context);
3. they started it from the web: ``run.created_by_user_id`` is their user id (``started_by``;
   a run without one, older than the column or started from Python by name only, matches by
   name, ``run.created_by``). By id, so a renamed user keeps their runs and a new account
   given a departed user's name gets none of them.

Pages that show one run answer 404 for a run outside this rule, as the reviews app does for
another group's gate; pages a user may not use at all (``can_use_run_pages``) answer 403.
docs/security.md describes the whole access model.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from workflows.core.payloads import stored
from workflows.gateinfo import gate_model
from workflows.models import Blob, Run, Step, TenantMembership

START_RUN_PERMISSION = "workflows.start_run"
VIEW_RUN_PERMISSION = "workflows.view_run"


def user_tenant(user: Any) -> str:
    """The tenant ``user`` works for ("" without a membership), cached for the request."""
    cached = getattr(user, "_sluice_tenant", None)
    if cached is None:
        cached = ""
        if user.is_authenticated:
            row = TenantMembership.objects.filter(user_id=user.pk).values("tenant").first()
            cached = row["tenant"] if row else ""
        user._sluice_tenant = cached
    return cached


def user_groups(user: Any) -> list[str]:
    """The user's auth group names, cached on the user object for the request."""
    cached = getattr(user, "_sluice_review_groups", None)
    if cached is None:
        cached = list(user.groups.values_list("name", flat=True)) if user.is_authenticated else []
        user._sluice_review_groups = cached
    return cached


def _active(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active)


def staff_with(user: Any, permission: str) -> bool:
    """An active staff user holding ``permission`` (superusers hold every one): the shape of
    every operator right. The staff flag alone only opens the admin's door."""
    return _active(user) and bool(user.is_staff and user.has_perm(permission))


def sees_every_run(user: Any) -> bool:
    """An operator: staff holding the run view permission; it must not take less than that to
    see every tenant's runs."""
    return staff_with(user, VIEW_RUN_PERMISSION)


def can_start_runs(user: Any) -> bool:
    """Holds the ``workflows.start_run`` permission (superusers hold every permission)."""
    return _active(user) and user.has_perm(START_RUN_PERMISSION)


def can_use_run_pages(user: Any) -> bool:
    """May open the runs list and the pipelines pages at all: an operator, a member of any
    group, or someone who may start runs (and so see their own). Everyone else gets 403."""
    return _active(user) and bool(sees_every_run(user) or user_groups(user) or can_start_runs(user))


def is_run_viewer(user: Any) -> bool:
    viewers = set(getattr(settings, "SLUICE_RUN_VIEWER_GROUPS", ()) or ())
    return bool(viewers & set(user_groups(user)))


def visible_runs(user: Any) -> QuerySet[Run]:
    """The runs ``user`` may see (the rule in the module docstring), as a queryset."""
    if not _active(user):
        return Run.objects.none()
    if sees_every_run(user):
        return Run.objects.all()
    qs = Run.objects.filter(tenant=user_tenant(user))
    if is_run_viewer(user):
        return qs
    mine = Q(created_by_user_id=user.pk) | Q(
        created_by_user_id__isnull=True, created_by=user.get_username()
    )
    groups = user_groups(user)
    Gate = gate_model()
    if groups and Gate is not None:
        # Gate.of_groups: their groups' gates and gates escalated to them, as in the queue.
        of_groups = Gate.of_groups(groups)  # type: ignore[attr-defined]
        mine |= Q(pk__in=Gate._default_manager.filter(of_groups).values("run_id"))
    return qs.filter(mine)


def started_by(run: Run, user: Any) -> bool:
    """Whether signed-in ``user`` started ``run``: by the user id it recorded, or by name for a
    run without one (rule 3 above)."""
    if run.created_by_user_id is not None:
        return bool(run.created_by_user_id == user.pk)
    return bool(run.created_by) and run.created_by == user.get_username()


def can_view_run(user: Any, run: Run) -> bool:
    """Whether ``user`` may see ``run``; the same rule as ``visible_runs``, for one run."""
    if not _active(user):
        return False
    if sees_every_run(user):
        return True
    if run.tenant != user_tenant(user):
        return False
    if is_run_viewer(user) or started_by(run, user):
        return True
    groups = user_groups(user)
    Gate = gate_model()
    if not groups or Gate is None:
        return False
    of_groups = Gate.of_groups(groups)  # type: ignore[attr-defined]
    return Gate._default_manager.filter(of_groups, run_id=run.pk).exists()


def value_of(run: Run, blob_id: int) -> Blob | None:
    """A value stored out of row that ``run``'s page and API show: one of its own, or the
    output a child handed to its ``run_workflow`` step (stored among the child's values, read
    through the parent as the workflow read it; not the child's other values)."""
    blob = Blob.objects.filter(pk=blob_id, run=run).first()
    if blob is not None:
        return blob
    blob = Blob.objects.filter(pk=blob_id, run__parent=run).first()
    if blob is None:
        return None
    handed = Step.objects.filter(run=run, kind="child").values_list("result", flat=True)
    return blob if any(stored(result)[1] == blob.pk for result in handed) else None
