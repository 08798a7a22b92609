"""One small world for the access tests: two tenants, two review groups, every persona.

Tenants ``acme`` and ``globex``; groups ``alpha`` and ``beta`` (neither is a run viewer group,
so the run rule is tested through gates and starters; tests that need a viewer group add one).

Personas (docs/security.md):

- ``anon``: not logged in;
- ``nogroup``: logged in, tenant acme, in no group, may not start runs;
- ``rev_a`` / ``rev_b``: reviewers of alpha / beta in tenant acme;
- ``rev_other``: reviewer of alpha in tenant globex;
- ``operator``: staff, may view and change runs, start runs and view gates (no other model
  permission);
- ``superuser``;
- ``viewer``: staff holding every view permission and nothing else (reads the admin's tables
  and every tenant's runs and gates; may run no admin action, decide nothing claimed, start
  and change nothing);
- ``staff_rev``: staff with no permission at all, a reviewer of alpha in tenant acme: the staff
  flag alone opens the admin's door, never every tenant (they see what rev_a sees);
- ``key_read`` / ``key_write`` / ``key_decide``: acme API keys with one scope each;
- ``key_other``: a globex API key with every scope.

Objects: ``run_a`` (acme, an open gate of alpha), ``run_b`` (acme, an open gate of beta),
``run_g`` (globex, an open gate of alpha), ``run_p`` (acme, the ``document_batch`` pipeline,
started by rev_a, not executed) and a stored value (blob) on run_a and on run_g.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.test import TestCase

import tests.reviews.workflows  # noqa: F401  (registers test.review)
from reviews.models import Gate
from tests.support import Bell
from workflows import start
from workflows.keys import SCOPES, create_api_key
from workflows.models import ApiKey, Blob, Run, TenantMembership

WEB_PERSONAS = (
    "anon",
    "nogroup",
    "rev_a",
    "rev_b",
    "rev_other",
    "operator",
    "superuser",
    "viewer",
    "staff_rev",
)
KEY_PERSONAS = ("key_read", "key_write", "key_decide", "key_other")
PERSONAS = WEB_PERSONAS + KEY_PERSONAS


def user(name: str, *, tenant: str = "", groups: tuple[str, ...] = (), **kw: Any) -> User:
    u = User.objects.create_user(name, password=f"pw-{name}-123", **kw)
    for g in groups:
        u.groups.add(Group.objects.get_or_create(name=g)[0])
    if tenant:
        TenantMembership.objects.create(user=u, tenant=tenant)
    return u


def grant(u: User, *codenames: str) -> User:
    for codename in codenames:
        app, code = codename.split(".")
        u.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=code))
    return u


def gated_run(bell: Bell, tenant: str, group: str, title: str) -> tuple[Run, Gate]:
    # The tests run inside one transaction (fast): run the doorbell's on-commit callbacks
    # where a commit would have, so the engine reaches the gate.
    with TestCase.captureOnCommitCallbacks(execute=True):
        run = start("test.review", {"group": group, "title": title}, tenant=tenant)
    with TestCase.captureOnCommitCallbacks(execute=True):
        bell.drain()
    return Run.objects.get(pk=run.pk), Gate.objects.get(run=run, status="open")


def blob(run: Run, value: Any) -> Blob:
    data = json.dumps(value)
    return Blob.objects.create(run=run, data=data, size=len(data))


@dataclass
class Scene:
    users: dict[str, User] = field(default_factory=dict)
    keys: dict[str, tuple[ApiKey, str]] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    gates: dict[str, Gate] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)


def build(bell: Bell) -> Scene:
    s = Scene()
    s.users["nogroup"] = user("nora", tenant="acme")
    s.users["rev_a"] = user("alice", tenant="acme", groups=("alpha",))
    s.users["rev_b"] = user("bob", tenant="acme", groups=("beta",))
    s.users["rev_other"] = user("gus", tenant="globex", groups=("alpha",))
    s.users["operator"] = grant(
        user("oscar", is_staff=True),
        "workflows.view_run",
        "workflows.change_run",
        "workflows.start_run",
        "reviews.view_gate",
    )
    s.users["superuser"] = User.objects.create_superuser("root", "root@example.com", "pw-root")
    s.users["viewer"] = user("viola", is_staff=True)
    s.users["viewer"].user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    s.users["staff_rev"] = user("stan", tenant="acme", groups=("alpha",), is_staff=True)
    s.keys["key_read"] = create_api_key("acme-read", scopes=("runs:read",), tenant="acme")
    s.keys["key_write"] = create_api_key("acme-write", scopes=("runs:write",), tenant="acme")
    s.keys["key_decide"] = create_api_key("acme-decide", scopes=("gates:decide",), tenant="acme")
    s.keys["key_other"] = create_api_key("globex-all", scopes=SCOPES, tenant="globex")
    s.runs["run_a"], s.gates["gate_a"] = gated_run(bell, "acme", "alpha", "Alpha check")
    s.runs["run_b"], s.gates["gate_b"] = gated_run(bell, "acme", "beta", "Beta check")
    s.runs["run_g"], s.gates["gate_g"] = gated_run(bell, "globex", "alpha", "Globex check")
    from pipelines.builtin import document_batch

    s.runs["run_p"] = start(
        "document_batch", document_batch.SAMPLE, tenant="acme", created_by="alice"
    )
    s.blobs["blob_a"] = blob(s.runs["run_a"], {"secret": "acme document"})
    s.blobs["blob_g"] = blob(s.runs["run_g"], {"secret": "globex document"})
    return s
