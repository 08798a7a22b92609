"""The authorization matrix: every URL pattern and every API operation, with every persona.

The routes are not listed by hand: they come from the URLconf (``get_resolver()``, includes
followed, the admin's included) and from the OpenAPI schema at ``/api/openapi.json``. Each one
must have an entry in the explicit expectation tables below, or the test fails — so a page or
an operation added later cannot skip the access model. docs/security.md states the same matrix
in words.

Every case runs with every persona of ``tests.security.scene`` (anonymous, a user in no group,
reviewers of group A and B, a reviewer of another tenant, an operator, a superuser, an API key
of each scope and a key of another tenant), on real objects: runs of two tenants with gates of
both groups, stored values of each tenant. POSTs go through ``Client(enforce_csrf_checks=True)``
with the token the persona fetched from a page, so a 403 is the access model, never CSRF (a CSRF
failure answers 419 here and matches no expectation). Each request runs in a savepoint rolled
back afterwards, so a cancel or a decision of one persona does not change what the next sees.
List pages and list operations are also checked for what they show: exactly the runs and gates
the persona may see.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.options import ActionLocation
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from ninja.operation import PathView

from pipelines.models import Ticket
from reviews import push
from tests.security.scene import KEY_PERSONAS, PERSONAS, WEB_PERSONAS, Scene
from workflows.models import Event, Outbox, Pool, Step, WebhookDelivery

pytestmark = [pytest.mark.django_db]


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Stands in for Django's CSRF failure page: 419 matches no expectation below."""
    return HttpResponse(f"CSRF failure: {reason}", status=419)


# --- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    to: str  # the Location must start with this

    def __str__(self) -> str:
        return f"redirect to {self.to}…"


LOGIN = Redirect("/accounts/login/?next=")
LOGGED_OUT = Redirect("/accounts/login/")  # LOGOUT_REDIRECT_URL
TO_GATE = Redirect("/reviews/")  # back to the gate, or on to the next one or the queue
ADMIN_LOGIN = Redirect("/admin/login/?next=")
TO_RUNS = Redirect("/runs/")
Outcome = int | Redirect


def web(
    anon: Outcome,
    nogroup: Outcome,
    rev_a: Outcome,
    rev_b: Outcome,
    rev_other: Outcome,
    operator: Outcome,
    superuser: Outcome,
    *,
    viewer: Outcome | None = None,
    staff_rev: Outcome | None = None,
) -> dict[str, Outcome]:
    """Expectations of a browser page. API keys are not web credentials: a request carrying
    only a key is anonymous to every page, so the keys' outcomes are the anonymous one.

    Two personas default to another's outcome, to keep the rows short: ``viewer`` (staff with
    every view permission) to the operator's, ``staff_rev`` (staff without permissions, a
    reviewer of alpha in acme) to rev_a's. Every case still runs as both, so a row where they
    differ fails until it says so."""
    row = dict(
        zip(
            WEB_PERSONAS,
            (
                anon,
                nogroup,
                rev_a,
                rev_b,
                rev_other,
                operator,
                superuser,
                operator if viewer is None else viewer,
                rev_a if staff_rev is None else staff_rev,
            ),
            strict=True,
        )
    )
    return row | dict.fromkeys(KEY_PERSONAS, anon)


def everyone(outcome: Outcome) -> dict[str, Outcome]:
    return dict.fromkeys(PERSONAS, outcome)


def api(
    key_read: Outcome, key_write: Outcome, key_decide: Outcome, key_other: Outcome
) -> dict[str, Outcome]:
    """Expectations of an API operation. Sessions are not API credentials: every web persona,
    logged in or not, gets 401."""
    row = dict(zip(KEY_PERSONAS, (key_read, key_write, key_decide, key_other), strict=True))
    return dict.fromkeys(WEB_PERSONAS, 401) | row


# Which of the scene's runs and gates each persona may see (the rule of workflows.access and
# reviews.services.gates_visible_to; for keys, of workflows.api.visible_runs and
# reviews.api.visible_gates). List pages and list operations must show exactly these.
ALL_RUNS = {"run_a", "run_b", "run_g", "run_p"}
ALL_GATES = {"gate_a", "gate_b", "gate_g"}
SEES_RUNS: dict[str, set[str]] = {
    "rev_a": {"run_a", "run_p"},  # alpha's gate; and run_p, which alice started
    "rev_b": {"run_b"},
    "rev_other": {"run_g"},
    "operator": ALL_RUNS,
    "superuser": ALL_RUNS,
    "viewer": ALL_RUNS,
    "staff_rev": {"run_a"},  # staff without the run view permission: the reviewer rule
    "key_read": {"run_a", "run_b", "run_p"},  # keys see their whole tenant
    "key_other": {"run_g"},
}
SEES_GATES: dict[str, set[str]] = {
    "rev_a": {"gate_a"},
    "rev_b": {"gate_b"},
    "rev_other": {"gate_g"},
    "operator": ALL_GATES,
    "superuser": ALL_GATES,
    "viewer": ALL_GATES,
    "staff_rev": {"gate_a"},
    "key_read": {"gate_a", "gate_b"},
    "key_decide": {"gate_a", "gate_b"},
    "key_other": {"gate_g"},
}


@dataclass
class Case:
    """One request, with the outcome for every persona. ``url`` and ``data`` may name scene
    objects in braces: ``/runs/{run_a}/`` (a run's or gate's pk, a blob's id)."""

    method: str
    url: str
    expect: dict[str, Outcome]
    data: dict[str, Any] | None = None
    json: Any = None
    lists: str = ""  # "runs" or "gates": check the body shows exactly what the persona sees
    headers: dict[str, str] = field(default_factory=dict)


# --- the expectation table: pages ---------------------------------------------------------------

METRICS_TOKEN = "matrix-metrics-token"

# Keyed by the URL pattern as the URLconf spells it (includes joined).
PAGES: dict[str, list[Case]] = {
    "": [Case("GET", "/", everyone(Redirect("/reviews/")))],
    # Django's own account pages: open to everyone, the password change to users only.
    "accounts/login/": [Case("GET", "/accounts/login/", everyone(200))],
    "accounts/logout/": [
        Case("GET", "/accounts/logout/", everyone(405)),
        Case("POST", "/accounts/logout/", everyone(LOGGED_OUT)),
    ],
    "accounts/password_change/": [
        Case("GET", "/accounts/password_change/", web(LOGIN, 200, 200, 200, 200, 200, 200))
    ],
    "accounts/password_change/done/": [
        Case("GET", "/accounts/password_change/done/", web(LOGIN, 200, 200, 200, 200, 200, 200))
    ],
    "accounts/password_reset/": [Case("GET", "/accounts/password_reset/", everyone(200))],
    "accounts/password_reset/done/": [Case("GET", "/accounts/password_reset/done/", everyone(200))],
    "accounts/reset/<uidb64>/<token>/": [
        Case("GET", "/accounts/reset/MQ/not-a-token/", everyone(200))  # "invalid link"
    ],
    "accounts/reset/done/": [Case("GET", "/accounts/reset/done/", everyone(200))],
    # Single sign-on (config.oidc): off here (no OIDC_RP_CLIENT_ID), so both answer 404 to
    # everyone. With SSO on they are open to everyone by design (the flow starts logged out);
    # tests/security/test_oidc.py covers that state: state, nonce, PKCE, the ID token checks.
    "oidc/authenticate/": [Case("GET", "/oidc/authenticate/?next=/reviews/", everyone(404))],
    "oidc/callback/": [Case("GET", "/oidc/callback/?code=x&state=y", everyone(404))],
    # The API's own pages: the schema and its docs are public; unknown paths are a JSON 404.
    "api/openapi.json": [Case("GET", "/api/openapi.json", everyone(200))],
    "api/docs": [Case("GET", "/api/docs", everyone(200))],
    "api/": [Case("GET", "/api/", everyone(404))],
    "api": [Case("GET", "/api", everyone(404)), Case("POST", "/api", everyone(404))],
    "api/^(?P<rest>.*)$": [Case("GET", "/api/nothing-here", everyone(404))],
    # The reviewer pages: group AND tenant scoped (another's gate is 404).
    "reviews/": [Case("GET", "/reviews/", web(LOGIN, 403, 200, 200, 200, 200, 200), lists="gates")],
    "reviews/mine/": [Case("GET", "/reviews/mine/", web(LOGIN, 403, 200, 200, 200, 200, 200))],
    # Review insights and their JSONL download: every reviewer, over the gates they may see
    # (their groups, their tenant); operators over every tenant (docs/security.md).
    "reviews/insights/": [
        Case("GET", "/reviews/insights/", web(LOGIN, 403, 200, 200, 200, 200, 200))
    ],
    "reviews/insights/export.jsonl": [
        Case("GET", "/reviews/insights/export.jsonl", web(LOGIN, 403, 200, 200, 200, 200, 200))
    ],
    # Notification preferences: every reviewer's own (the page names no user, so there is
    # nobody else's to reach); saving goes back to the page.
    "reviews/preferences/": [
        Case("GET", "/reviews/preferences/", web(LOGIN, 403, 200, 200, 200, 200, 200)),
        Case(
            "POST",
            "/reviews/preferences/",
            web(LOGIN, 403, TO_GATE, TO_GATE, TO_GATE, TO_GATE, TO_GATE),
            data={"email_enabled": "on", "mode": "digest", "digest_minutes": "30"},
        ),
    ],
    # Bulk decisions go back to the queue for every reviewer; a gate the reviewer may not see
    # is skipped there as "not found" (tests/reviews/test_bulk.py checks which were decided).
    "reviews/bulk/": [
        Case(
            "POST",
            "/reviews/bulk/",
            web(LOGIN, 403, TO_GATE, TO_GATE, TO_GATE, TO_GATE, TO_GATE),
            data={"gate": ["{gate_a}", "{gate_b}", "{gate_g}"], "outcome": "approve"},
        )
    ],
    # The live updates' event stream (reviews/push.py): the queue's, and one gate page's, which
    # is 404 exactly where the gate page is. What each stream then hears is checked by
    # test_gate_events_reach_exactly_who_sees_the_gate below.
    "reviews/events/": [
        Case("GET", "/reviews/events/", web(LOGIN, 403, 200, 200, 200, 200, 200)),
        Case("GET", "/reviews/events/?gate={gate_a}", web(LOGIN, 403, 200, 404, 404, 200, 200)),
        Case("GET", "/reviews/events/?gate={gate_g}", web(LOGIN, 403, 404, 404, 200, 200, 200)),
    ],
    "reviews/<int:pk>/": [
        Case("GET", "/reviews/{gate_a}/", web(LOGIN, 403, 200, 404, 404, 200, 200)),
        Case("GET", "/reviews/{gate_b}/", web(LOGIN, 403, 404, 200, 404, 200, 200)),
        Case("GET", "/reviews/{gate_g}/", web(LOGIN, 403, 404, 404, 200, 200, 200)),
    ],
    "reviews/<int:pk>/status/": [
        Case("GET", "/reviews/{gate_a}/status/", web(LOGIN, 403, 204, 404, 404, 204, 204)),
        Case("GET", "/reviews/{gate_g}/status/", web(LOGIN, 403, 404, 404, 204, 204, 204)),
    ],
    "reviews/<int:pk>/claim/": [
        Case(
            "POST", "/reviews/{gate_a}/claim/", web(LOGIN, 403, TO_GATE, 404, 404, TO_GATE, TO_GATE)
        ),
        Case(
            "POST", "/reviews/{gate_g}/claim/", web(LOGIN, 403, 404, 404, TO_GATE, TO_GATE, TO_GATE)
        ),
    ],
    "reviews/<int:pk>/release/": [
        Case(
            "POST",
            "/reviews/{gate_a}/release/",
            web(LOGIN, 403, TO_GATE, 404, 404, TO_GATE, TO_GATE),
        ),
        Case(
            "POST",
            "/reviews/{gate_g}/release/",
            web(LOGIN, 403, 404, 404, TO_GATE, TO_GATE, TO_GATE),
        ),
    ],
    "reviews/<int:pk>/decide/": [
        Case(
            "POST",
            "/reviews/{gate_a}/decide/",
            web(LOGIN, 403, TO_GATE, 404, 404, TO_GATE, TO_GATE),
            data={"outcome": "approve", "comment": "fine"},
        ),
        Case(
            "POST",
            "/reviews/{gate_b}/decide/",
            web(LOGIN, 403, 404, TO_GATE, 404, TO_GATE, TO_GATE),
            data={"outcome": "reject", "comment": "no"},
        ),
        Case(
            "POST",
            "/reviews/{gate_g}/decide/",
            web(LOGIN, 403, 404, 404, TO_GATE, TO_GATE, TO_GATE),
            data={"outcome": "approve"},
        ),
    ],
    # Reassigning: the claimant, the escalation group once the gate escalated, or staff who may
    # override claims (reviews.change_gate: the superuser here; the operator holds only
    # view_gate); the scene's gates are unclaimed and not escalated, so their reviewers get 403.
    "reviews/<int:pk>/reassign/": [
        Case(
            "POST",
            "/reviews/{gate_a}/reassign/",
            web(LOGIN, 403, 403, 404, 404, 403, TO_GATE),
            data={"to": "alice"},
        ),
        Case(
            "POST",
            "/reviews/{gate_g}/reassign/",
            web(LOGIN, 403, 404, 404, 403, 403, TO_GATE),
            data={"to": "gus"},
        ),
    ],
    # Pipelines: the list for anyone who may use run pages, the start form with the permission
    # (only the operator and the superuser hold it here), a run's graph by the run rule.
    "pipelines/": [Case("GET", "/pipelines/", web(LOGIN, 403, 200, 200, 200, 200, 200))],
    "pipelines/runs/<uuid:run_id>/graph/": [
        # staff_rev did not start run_p: staff without the run view permission see no more
        # than the reviewer rule gives them.
        Case(
            "GET",
            "/pipelines/runs/{run_p}/graph/",
            web(LOGIN, 404, 200, 404, 404, 200, 200, staff_rev=404),
        ),
        # test.review is not a pipeline: no graph for anyone.
        Case("GET", "/pipelines/runs/{run_a}/graph/", web(LOGIN, 404, 404, 404, 404, 404, 404)),
    ],
    "pipelines/<str:name>/start/": [
        Case(
            "GET",
            "/pipelines/thread_analysis/start/",
            web(LOGIN, 403, 403, 403, 403, 200, 200, viewer=403),
        ),
        Case(
            "POST",
            "/pipelines/thread_analysis/start/",
            web(LOGIN, 403, 403, 403, 403, Redirect("/runs/"), Redirect("/runs/"), viewer=403),
            data={"input.title": "Matrix", "input.thread": "Ann: hi\nBo: hello"},
        ),
    ],
    # Run pages: tenant AND (viewer group OR a gate of one's groups OR one's own run).
    "runs/": [Case("GET", "/runs/", web(LOGIN, 403, 200, 200, 200, 200, 200), lists="runs")],
    "runs/<uuid:run_id>/": [
        Case("GET", "/runs/{run_a}/", web(LOGIN, 403, 200, 404, 404, 200, 200)),
        Case("GET", "/runs/{run_b}/", web(LOGIN, 403, 404, 200, 404, 200, 200)),
        Case("GET", "/runs/{run_g}/", web(LOGIN, 403, 404, 404, 200, 200, 200)),
        Case("GET", "/runs/{run_p}/", web(LOGIN, 403, 200, 404, 404, 200, 200, staff_rev=404)),
    ],
    # Acting on runs is for staff with change rights on runs (every tenant): 403 for anyone
    # else, whatever the run.
    "runs/<uuid:run_id>/actions/<slug:action>/": [
        Case(
            "POST",
            "/runs/{run_a}/actions/cancel/",
            web(LOGIN, 403, 403, 403, 403, TO_RUNS, TO_RUNS, viewer=403),
        ),
        Case(
            "POST",
            "/runs/{run_g}/actions/retry/",
            web(LOGIN, 403, 403, 403, 403, TO_RUNS, TO_RUNS, viewer=403),
        ),
        Case(
            "POST",
            "/runs/{run_b}/actions/restart/",
            web(LOGIN, 403, 403, 403, 403, TO_RUNS, TO_RUNS, viewer=403),
            data={"from_step": "1"},
        ),
        Case(
            "POST",
            "/runs/{run_a}/actions/fork/",
            web(LOGIN, 403, 403, 403, 403, TO_RUNS, TO_RUNS, viewer=403),
            data={"from_step": "1"},
        ),
        Case(
            "POST",
            "/runs/{run_a}/actions/explode/",
            web(LOGIN, 403, 403, 403, 403, 404, 404, viewer=403),
        ),
    ],
    "runs/<uuid:run_id>/values/<int:blob_id>/": [
        Case("GET", "/runs/{run_a}/values/{blob_a}/", web(LOGIN, 403, 200, 404, 404, 200, 200)),
        Case("GET", "/runs/{run_g}/values/{blob_g}/", web(LOGIN, 403, 404, 404, 200, 200, 200)),
        # Another run's value under a visible run's URL: no one gets it.
        Case("GET", "/runs/{run_a}/values/{blob_g}/", web(LOGIN, 403, 404, 404, 404, 404, 404)),
    ],
    # One journal entry's arguments, result or error, whole (the run page cuts a long one):
    # the run page's rule. An entry of another run under a visible run's URL: no one gets it.
    "runs/<uuid:run_id>/steps/<int:step_id>/<slug:part>/": [
        Case("GET", "/runs/{run_a}/steps/{step_a}/args/", web(LOGIN, 403, 200, 404, 404, 200, 200)),
        Case("GET", "/runs/{run_g}/steps/{step_g}/args/", web(LOGIN, 403, 404, 404, 200, 200, 200)),
        Case("GET", "/runs/{run_a}/steps/{step_g}/args/", web(LOGIN, 403, 404, 404, 404, 404, 404)),
    ],
    # The ops overview covers every tenant: staff only.
    "ops/": [Case("GET", "/ops/", web(LOGIN, 403, 403, 403, 403, 200, 200))],
    # Probes: open to everyone (load balancers, orchestrators), they show no secret
    # (tests/deploy/test_probes.py). Here no beat has swept and no worker answers: not ready.
    "healthz": [Case("GET", "/healthz", everyone(200)), Case("POST", "/healthz", everyone(405))],
    "readyz": [Case("GET", "/readyz", everyone(503))],
    "healthz/": [Case("GET", "/healthz/", everyone(200)), Case("HEAD", "/healthz/", everyone(200))],
    "readyz/": [Case("GET", "/readyz/", everyone(503))],
    # Prometheus: the metrics token (matrix_scene sets one), never a login or an API key.
    "metrics": [
        Case("GET", "/metrics", everyone(401)),
        Case(
            "GET", "/metrics", everyone(200), headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ),
    ],
}


# --- the expectation table: API operations ------------------------------------------------------

NEW_RUN = {"pipeline": "test.review", "input": {"group": "alpha"}}

# Keyed by "METHOD /path" as the OpenAPI schema spells it.
OPERATIONS: dict[str, list[Case]] = {
    "POST /api/runs": [Case("POST", "/api/runs", api(403, 201, 403, 201), json=NEW_RUN)],
    "GET /api/runs": [Case("GET", "/api/runs", api(200, 403, 403, 200), lists="runs")],
    "GET /api/runs/{run_id}": [
        Case("GET", "/api/runs/{run_a}", api(200, 403, 403, 404)),
        Case("GET", "/api/runs/{run_g}", api(404, 403, 403, 200)),
    ],
    "GET /api/runs/{run_id}/steps": [
        Case("GET", "/api/runs/{run_a}/steps", api(200, 403, 403, 404)),
        Case("GET", "/api/runs/{run_g}/steps", api(404, 403, 403, 200)),
    ],
    "GET /api/runs/{run_id}/values/{value_id}": [
        Case("GET", "/api/runs/{run_a}/values/{blob_a}", api(200, 403, 403, 404)),
        Case("GET", "/api/runs/{run_g}/values/{blob_g}", api(404, 403, 403, 200)),
        Case("GET", "/api/runs/{run_a}/values/{blob_g}", api(404, 403, 403, 404)),
    ],
    "POST /api/runs/{run_id}/events": [
        Case(
            "POST",
            "/api/runs/{run_a}/events",
            api(403, 202, 403, 404),
            json={"name": "go", "payload": {}},
        ),
        Case(
            "POST",
            "/api/runs/{run_g}/events",
            api(403, 404, 403, 202),
            json={"name": "go", "payload": {}},
        ),
    ],
    "POST /api/runs/{run_id}/cancel": [
        Case("POST", "/api/runs/{run_a}/cancel", api(403, 200, 403, 404)),
        Case("POST", "/api/runs/{run_g}/cancel", api(403, 404, 403, 200)),
    ],
    # A suspended run cannot be restarted (409): past the access check, refused by state.
    "POST /api/runs/{run_id}/restart": [
        Case("POST", "/api/runs/{run_a}/restart", api(403, 409, 403, 404), json={}),
        Case("POST", "/api/runs/{run_g}/restart", api(403, 404, 403, 409), json={}),
    ],
    # A fork starts a new run of the tenant's own run: write keys of that tenant only.
    "POST /api/runs/{run_id}/fork": [
        Case("POST", "/api/runs/{run_a}/fork", api(403, 201, 403, 404), json={"from_step": 1}),
        Case("POST", "/api/runs/{run_g}/fork", api(403, 404, 403, 201), json={"from_step": 1}),
    ],
    "GET /api/pipelines": [Case("GET", "/api/pipelines", api(200, 200, 200, 200))],
    "GET /api/gates": [Case("GET", "/api/gates", api(200, 403, 200, 200), lists="gates")],
    # The evaluation dataset carries run inputs: runs:read, the key's own tenant.
    "GET /api/gates/dataset": [Case("GET", "/api/gates/dataset", api(200, 403, 403, 200))],
    "POST /api/gates/{gate_id}/decision": [
        Case(
            "POST",
            "/api/gates/{gate_a}/decision",
            api(403, 403, 200, 404),
            json={"outcome": "approve"},
        ),
        Case(
            "POST",
            "/api/gates/{gate_g}/decision",
            api(403, 403, 404, 200),
            json={"outcome": "approve"},
        ),
    ],
}


# --- the expectation table: the admin -----------------------------------------------------------

# Site-wide admin pages. Non-staff (logged in or not) are sent to the admin's login page.
STAFF_ONLY = web(*(5 * [ADMIN_LOGIN]), 200, 200, staff_rev=200)
ADMIN_HOME = Redirect("/admin/")
ADMIN_SITE: dict[str, list[Case]] = {
    "admin/": [Case("GET", "/admin/", STAFF_ONLY)],
    "admin/login/": [
        Case(
            "GET",
            "/admin/login/",
            web(200, 200, 200, 200, 200, ADMIN_HOME, ADMIN_HOME, staff_rev=ADMIN_HOME),
        )
    ],
    # The admin sends non-staff from its logout to its index (and so to its login).
    "admin/logout/": [
        Case("GET", "/admin/logout/", web(*(5 * [ADMIN_HOME]), 405, 405, staff_rev=405)),
        Case(
            "POST",
            "/admin/logout/",
            web(*(5 * [ADMIN_HOME]), LOGGED_OUT, LOGGED_OUT, staff_rev=LOGGED_OUT),
        ),
    ],
    "admin/password_change/": [Case("GET", "/admin/password_change/", STAFF_ONLY)],
    "admin/password_change/done/": [Case("GET", "/admin/password_change/done/", STAFF_ONLY)],
    "admin/autocomplete/": [
        Case(
            "GET",
            "/admin/autocomplete/?app_label=auth&model_name=user&field_name=groups",
            # Answers whoever may view the related model (groups): not the operator.
            web(*(5 * [ADMIN_LOGIN]), 403, 200, viewer=200, staff_rev=403),
        )
    ],
    "admin/jsi18n/": [Case("GET", "/admin/jsi18n/", STAFF_ONLY)],
    # Runs have no "view on site" URL: 404 even for staff.
    "admin/r/<path:content_type_id>/<path:object_id>/": [
        Case(
            "GET", "/admin/r/{run_ct}/{run_a}/", web(*(5 * [ADMIN_LOGIN]), 404, 404, staff_rev=404)
        )
    ],
    "admin/^(?P<app_label>auth|workflows|pipelines|reviews)/$": [
        # Staff without a permission in an app: as if the app did not exist.
        Case("GET", "/admin/workflows/", web(*(5 * [ADMIN_LOGIN]), 200, 200, staff_rev=404)),
        Case("GET", "/admin/auth/", web(*(5 * [ADMIN_LOGIN]), 404, 200, viewer=200, staff_rev=404)),
    ],
    "admin/(?P<url>.*)$": [
        Case("GET", "/admin/nothing/here/", web(*(5 * [ADMIN_LOGIN]), 404, 404, staff_rev=404))
    ],
}

# Every registered model admin, by what the superuser and the operator may do there:
# v = view (changelist, change page, history, the object's redirect), a = add, d = delete,
# p = set a password (users). The viewer (every view permission) may view every table and do
# nothing else; staff without permissions (staff_rev) get 403 on every table. Everyone else is
# sent to the admin's login page. (s, in the families below: any staff, as the object's bare
# URL only redirects to its change page.)
ADMIN_MODELS: dict[str, tuple[str, str]] = {
    "auth.group": ("vad", ""),
    "auth.user": ("vadp", ""),
    "workflows.run": ("v", "v"),  # read-only: runs change through the engine's actions
    "workflows.step": ("v", ""),
    "workflows.event": ("v", ""),
    "workflows.outbox": ("v", ""),
    "workflows.webhookdelivery": ("v", ""),
    "workflows.apikey": ("vad", ""),
    "workflows.pool": ("va", ""),  # pools are never deleted
    "pipelines.ticket": ("v", ""),
    "reviews.gate": ("v", "v"),
}
VIEWER_CAPS = "v"

# Families of a model admin's URL patterns: the pattern's tail, how to fill it, which
# capability letter it needs, and the status when allowed.
ADMIN_FAMILIES: dict[str, tuple[str, str, str, Outcome]] = {
    "": ("GET", "", "v", 200),
    "add/": ("GET", "add/", "a", 200),
    "<path:object_id>/history/": ("GET", "{pk}/history/", "v", 200),
    "<path:object_id>/delete/": ("GET", "{pk}/delete/", "d", 200),
    "<path:object_id>/change/": ("GET", "{pk}/change/", "v", 200),
    "<path:object_id>/": ("GET", "{pk}/", "s", Redirect("/admin/")),
    "<id>/password/": ("GET", "{pk}/password/", "p", 200),
}


def admin_object(model: Any, scene: Scene) -> Any:
    """The object whose admin pages are opened: one the scene made, never the acting user."""
    label = model._meta.label_lower
    if label == "auth.user":
        return scene.users["rev_b"]
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"the scene has no {label}: add one so its admin pages are tested"
    return obj


def admin_cases(pattern: str, scene: Scene) -> list[Case] | None:
    """Cases for a model admin pattern, from ADMIN_MODELS and ADMIN_FAMILIES."""
    m = re.fullmatch(r"admin/(\w+)/(\w+)/(.*)", pattern)
    if m is None or f"{m[1]}.{m[2]}" not in ADMIN_MODELS or m[3] not in ADMIN_FAMILIES:
        return None
    label, tail = f"{m[1]}.{m[2]}", m[3]
    method, fill, needs, allowed = ADMIN_FAMILIES[tail]
    caps_super, caps_operator = ADMIN_MODELS[label]
    model = next(mo for mo in admin.site._registry if mo._meta.label_lower == label)
    obj = admin_object(model, scene)
    url = f"/admin/{m[1]}/{m[2]}/" + fill.replace("{pk}", str(obj.pk))
    non_staff = 5 * [ADMIN_LOGIN]
    expect = web(
        *non_staff,
        allowed if needs in caps_operator + "s" else 403,
        allowed if needs in caps_super + "s" else 403,
        viewer=allowed if needs in VIEWER_CAPS + "s" else 403,
        staff_rev=allowed if needs == "s" else 403,
    )
    cases = [Case(method, url, expect)]
    if tail == "<path:object_id>/delete/":
        # Confirming the delete: a POST with the CSRF token.
        done = Redirect(f"/admin/{m[1]}/{m[2]}/")
        cases.append(
            Case(
                "POST",
                url,
                web(
                    *non_staff,
                    done if "d" in caps_operator else 403,
                    done if "d" in caps_super else 403,
                    viewer=done if "d" in VIEWER_CAPS else 403,
                    staff_rev=403,
                ),
                data={"post": "yes"},
            )
        )
    return cases


# --- the expectation table: admin actions -------------------------------------------------------

# Every action of every registered model admin (its own and the site's, such as
# delete_selected), keyed "app.model:action", with the personas who may run it. The others get
# what the changelist gives them: non-staff the admin's login page, staff who may not view the
# table 403, staff who may view it but not run the action the list again, the action not run
# (Django offers and accepts only the actions one may run: it shows the list, or redirects back
# to it saying no action was selected, when the persona may run other actions there).
ADMIN_ACTIONS: dict[str, set[str]] = {
    "auth.group:delete_selected": {"superuser"},
    "auth.user:delete_selected": {"superuser"},
    "workflows.run:delete_selected": set(),  # runs are never deleted by hand
    "workflows.run:cancel_runs": {"operator", "superuser"},
    "workflows.run:retry_failed_step": {"operator", "superuser"},
    "workflows.run:restart_from_step": {"operator", "superuser"},
    "workflows.step:delete_selected": set(),
    "workflows.event:delete_selected": set(),
    "workflows.outbox:delete_selected": set(),
    "workflows.outbox:deliver_again": {"superuser"},  # the change permission: a superuser here
    "workflows.webhookdelivery:delete_selected": set(),
    "workflows.webhookdelivery:retry_deliveries": {"superuser"},
    "workflows.apikey:delete_selected": {"superuser"},
    "workflows.apikey:rotate_keys": {"superuser"},
    "workflows.apikey:deactivate_keys": {"superuser"},
    "workflows.pool:delete_selected": set(),
    "pipelines.ticket:delete_selected": set(),
    "reviews.gate:delete_selected": set(),
    "reviews.gate:release_claims": {"superuser"},
}
RAN = "the action ran"
REFUSED = "the list again, the action not run"


def admin_actions() -> Iterator[tuple[str, Any, Any]]:
    """Every registered model admin's actions, unfiltered: (key, model admin, action)."""
    for model, model_admin in admin.site._registry.items():
        for action in model_admin._get_base_actions():
            yield f"{model._meta.label_lower}:{action.name}", model_admin, action


def action_expectations(key: str) -> dict[str, Outcome | str]:
    label = key.split(":")[0]
    caps_super, caps_operator = ADMIN_MODELS[label]
    views = {
        "operator": "v" in caps_operator,
        "superuser": "v" in caps_super,
        "viewer": "v" in VIEWER_CAPS,
        "staff_rev": False,
    }
    expect: dict[str, Outcome | str] = {}
    for persona in PERSONAS:
        if persona in ADMIN_ACTIONS[key]:
            expect[persona] = RAN
        elif persona not in views:
            expect[persona] = ADMIN_LOGIN  # not staff (keys are anonymous to the admin)
        else:
            expect[persona] = REFUSED if views[persona] else 403
    return expect


# --- walking the URLconf and the schema ---------------------------------------------------------


def url_patterns() -> Iterator[tuple[str, Any]]:
    """Every pattern of the URLconf, includes followed, as (joined pattern, callback)."""

    def walk(resolver: URLResolver, prefix: str) -> Iterator[tuple[str, Any]]:
        for p in resolver.url_patterns:
            if isinstance(p, URLResolver):
                yield from walk(p, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                yield prefix + str(p.pattern), p.callback

    yield from walk(get_resolver(), "")


def path_view_of(callback: Any) -> PathView | None:
    """The ninja ``PathView`` behind a URL pattern's view, if it is one of ninja's operation
    views (ninja's view closes over its PathView; config.api wraps it with functools.wraps)."""
    view = inspect.unwrap(callback)
    if getattr(view, "__closure__", None) is None:
        return None
    candidate = inspect.getclosurevars(view).nonlocals.get("self")
    return candidate if isinstance(candidate, PathView) else None


def is_api_operation(callback: Any) -> bool:
    return path_view_of(callback) is not None or (
        getattr(callback, "__module__", "") == "ninja.operation"
    )


def api_operations() -> list[str]:
    """Every ninja operation the URLconf routes to, as "METHOD /path" with {param} names: taken
    from the PathViews themselves, so an operation left out of the schema
    (include_in_schema=False) or of a second NinjaAPI is listed all the same."""
    found: set[str] = set()
    for pattern, callback in url_patterns():
        if not is_api_operation(callback):
            continue
        path_view = path_view_of(callback)
        assert path_view is not None, f"cannot see the operations behind {pattern!r}"
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", pattern)
        for operation in path_view.operations:
            for method in operation.methods:
                found.add(f"{method.upper()} {path}")
    return sorted(found)


def schema_operations(client: Client) -> list[str]:
    schema = client.get("/api/openapi.json").json()
    return [
        f"{method.upper()} /api{path.removeprefix('/api')}"
        for path, ops in schema["paths"].items()
        for method in ops
        if method in {"get", "post", "put", "patch", "delete"}
    ]


# --- running ------------------------------------------------------------------------------------


def persona_clients(scene: Scene) -> dict[str, tuple[Client, str]]:
    """A client per persona with its CSRF token, fetched from a page as a browser would."""
    clients = {}
    for persona in PERSONAS:
        headers = {}
        if persona in scene.keys:
            headers["Authorization"] = f"Bearer {scene.keys[persona][1]}"
        c = Client(enforce_csrf_checks=True, headers=headers)
        if persona in scene.users:
            c.force_login(scene.users[persona])
        c.get("/accounts/login/")
        clients[persona] = (c, c.cookies["csrftoken"].value)
    return clients


def fill(text: str, scene: Scene) -> str:
    names: dict[str, Any] = {
        **{k: r.pk for k, r in scene.runs.items()},
        **{k: g.pk for k, g in scene.gates.items()},
        **{k: b.pk for k, b in scene.blobs.items()},
        "run_ct": ContentType.objects.get_for_model(scene.runs["run_a"]).pk,
    }

    def value(name: str) -> Any:
        if name.startswith("step_"):  # the first journal entry of run_<x>
            run = scene.runs["run_" + name.removeprefix("step_")]
            return Step.objects.filter(run=run).order_by("id").values_list("pk", flat=True)[0]
        return names[name]

    return re.sub(r"\{(\w+)\}", lambda m: str(value(m[1])), text)


def fill_data(value: Any, scene: Scene) -> Any:
    """``fill`` for a form value, or each of a list of them."""
    if isinstance(value, list):
        return [fill_data(v, scene) for v in value]
    return fill(value, scene) if isinstance(value, str) else value


def outcome_of(response: Any) -> Outcome:
    if response.status_code in (301, 302):
        target = response["Location"]
        return Redirect(target)
    return int(response.status_code)


def matches(got: Outcome, want: Outcome) -> bool:
    if isinstance(want, Redirect):
        return isinstance(got, Redirect) and got.to.startswith(want.to)
    return got == want


def shown(kind: str, body: str, scene: Scene, api_call: bool) -> set[str]:
    """Which of the scene's runs or gates a list response shows."""
    if kind == "runs":
        return {name for name, run in scene.runs.items() if str(run.pk) in body}
    marker = "/api/gates/{}/decision" if api_call else "/reviews/{}/"
    return {name for name, gate in scene.gates.items() if marker.format(gate.pk) in body}


def run_case(case: Case, persona: str, client: Client, token: str, scene: Scene) -> str | None:
    """Run one request in a rolled-back savepoint; a description of what went wrong, if so."""
    url = fill(case.url, scene)
    cookies = copy.deepcopy(client.cookies)
    try:
        with transaction.atomic():
            kwargs: dict[str, Any] = {"headers": {"X-CSRFToken": token, **case.headers}}
            if case.json is not None:
                kwargs.update(data=json.dumps(case.json), content_type="application/json")
            elif case.method == "POST" and case.url.startswith("/api/"):
                # The API takes JSON bodies only (a form body is a 415): an action with no
                # options is sent as an empty body, as a service would.
                kwargs.update(data=b"", content_type="application/json")
            elif case.method == "POST":
                data = {k: fill_data(v, scene) for k, v in (case.data or {}).items()}
                kwargs.update(data={**data, "csrfmiddlewaretoken": token})
            response = getattr(client, case.method.lower())(url, **kwargs)
            # An event stream (it ends at once here: matrix_scene) or the JSONL dataset.
            if response.streaming:
                # Reading it to its end is enough: the test client closes it then. (Not
                # response.close(): that sends request_finished once more, and Django's
                # close_old_connections would close the test's own database connection.)
                body = b"".join(response.streaming_content).decode(errors="replace")
            else:
                body = response.content.decode(errors="replace")
            transaction.set_rollback(True)
    finally:
        client.cookies = cookies  # a logout must not log the persona out of the next case
    got, want = outcome_of(response), case.expect[persona]
    if not matches(got, want):
        return f"{case.method} {url} as {persona}: got {got}, expected {want}"
    if case.lists and response.status_code == 200:
        sees = SEES_RUNS if case.lists == "runs" else SEES_GATES
        seen = shown(case.lists, body, scene, url.startswith("/api/"))
        if seen != sees.get(persona, set()):
            return (
                f"{case.method} {url} as {persona}: shows {sorted(seen)}, "
                f"expected {sorted(sees.get(persona, set()))}"
            )
    return None


def table_cases(scene: Scene) -> tuple[dict[str, list[Case]], list[str]]:
    """The cases of every URL pattern and API operation, and what the tables lack."""
    cases: dict[str, list[Case]] = {}
    missing: list[str] = []
    operations = api_operations()
    for pattern, callback in url_patterns():
        if is_api_operation(callback):
            continue  # each of its operations and methods is checked below
        listed = PAGES.get(pattern) or ADMIN_SITE.get(pattern) or admin_cases(pattern, scene)
        if listed is None:
            missing.append(f"URL pattern {pattern!r}")
        else:
            cases[pattern] = listed
    for op in operations:
        if op not in OPERATIONS:
            missing.append(f"API operation {op!r}")
        else:
            cases[op] = OPERATIONS[op]
    return cases, missing


@pytest.fixture
def matrix_scene(scene: Scene, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Scene:
    """The scene plus one row of each admin-managed table the engine would have written.

    The gate event stream is served as on PostgreSQL, on any database: it ends right after its
    opening frames, and no listener thread starts (this test is about who gets a stream;
    tests/reviews/test_push.py runs the real thing)."""
    settings.CSRF_FAILURE_VIEW = "tests.security.test_authorization_matrix.csrf_failure"
    monkeypatch.setattr(push, "push_available", lambda: True)
    monkeypatch.setattr(push.hub, "_ensure_listener", lambda: None)
    settings.SLUICE_SSE_MAX_SECONDS = 0
    # Count 127.0.0.1 webhooks as fine: a globex run here has none, but a started one may.
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True
    settings.SLUICE_METRICS_TOKEN = METRICS_TOKEN
    settings.SLUICE_METRICS_ALLOW = []
    run_a = scene.runs["run_a"]
    Event.objects.create(run=run_a, name="note", payload={"x": 1})
    Outbox.objects.create(run=run_a, kind="webhook", key=f"matrix:{run_a.pk}", payload={})
    WebhookDelivery.objects.create(run=run_a, url="https://hooks.example.com/x", payload={})
    Pool.objects.get_or_create(name="matrix", defaults={"max_concurrency": 2})
    Ticket.objects.create(customer_email="lee@example.com", subject="Hi", message="Hello")
    assert Step.objects.filter(run=run_a).exists()
    return scene


def test_every_route_and_operation_is_in_the_table_and_holds(matrix_scene: Scene) -> None:
    scene = matrix_scene
    clients = persona_clients(scene)
    operations = api_operations()
    # The walk finds at least what the schema documents (and also what it does not).
    assert set(schema_operations(clients["anon"][0])) <= set(operations)
    cases, missing = table_cases(scene)
    assert not missing, "add these to the expectation tables:\n" + "\n".join(missing)
    stale = (set(PAGES) | set(ADMIN_SITE)) - {p for p, _ in url_patterns()}
    stale |= set(OPERATIONS) - set(operations)
    assert not stale, f"entries for routes that no longer exist: {sorted(stale)}"

    # The CSRF check is on, and its failure is told apart from the access model's 403.
    unsigned = Client(enforce_csrf_checks=True)
    unsigned.force_login(scene.users["rev_a"])
    assert unsigned.post(fill("/reviews/{gate_a}/claim/", scene)).status_code == 419

    failures: list[str] = []
    started, runs = time.monotonic(), 0
    for route_cases in cases.values():
        for case in route_cases:
            assert set(case.expect) == set(PERSONAS), case.url
            for persona in PERSONAS:
                client, token = clients[persona]
                problem = run_case(case, persona, client, token, scene)
                runs += 1
                if problem:
                    failures.append(problem)
    took = time.monotonic() - started
    print(
        f"\nauthorization matrix: {len(cases)} routes and operations × {len(PERSONAS)} personas;"
        f" {runs} requests in {took:.1f} s"
    )
    assert not failures, f"{len(failures)} of {runs} cases failed:\n" + "\n".join(failures)


def test_a_route_missing_from_the_table_fails_the_matrix(
    matrix_scene: Scene, settings: Any
) -> None:
    """A page or an operation added without an expectation is reported, never skipped: also
    an operation hidden from the OpenAPI schema, and the operations of a second NinjaAPI."""
    settings.ROOT_URLCONF = "tests.security.extra_urls"
    _, missing = table_cases(matrix_scene)
    assert missing == [
        "URL pattern 'secrets/'",
        "URL pattern 'internal/'",  # ninja's own root view of the second API
        "API operation 'GET /internal/hidden'",
        "API operation 'POST /internal/hidden'",
        "API operation 'PUT /internal/visible'",
    ]


def test_every_admin_action_declares_the_permission_it_needs() -> None:
    """An action without ``permissions`` is offered to anyone who may view the list."""
    undeclared = [
        key
        for key, _, action in admin_actions()
        if not getattr(action.func, "allowed_permissions", ())
    ]
    assert not undeclared, f"declare @admin.action(permissions=[...]) on {undeclared}"


def test_every_admin_action_is_in_the_table_and_holds(
    matrix_scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each action posted by each persona with a valid CSRF token, as the changelist's action
    bar posts it, on a real object: it runs for exactly the personas the table names."""
    scene = matrix_scene
    actions = list(admin_actions())
    keys = [key for key, _, _ in actions]
    missing = sorted(set(keys) - set(ADMIN_ACTIONS))
    assert not missing, f"add these admin actions to ADMIN_ACTIONS: {missing}"
    stale = sorted(set(ADMIN_ACTIONS) - set(keys))
    assert not stale, f"entries for admin actions that no longer exist: {stale}"

    ran: list[str] = []

    def recording(key: str, func: Any) -> Any:
        @functools.wraps(func)  # keeps allowed_permissions and the description
        def action(*args: Any, **kwargs: Any) -> Any:
            ran.append(func.__name__)
            return func(*args, **kwargs)

        return action

    for key, model_admin, action in actions:
        assert action.locations == [ActionLocation.CHANGE_LIST], (
            f"{key} is offered on the change form too: post it there in this test as well"
        )
        if hasattr(type(model_admin), action.name):
            monkeypatch.setattr(type(model_admin), action.name, recording(key, action.func))
        else:  # a site-wide action such as delete_selected
            monkeypatch.setitem(admin.site._actions, action.name, recording(key, action.func))

    clients = persona_clients(scene)
    failures: list[str] = []
    for key, model_admin, action in actions:
        label = key.split(":")[0]
        obj = admin_object(model_admin.model, scene)
        url = "/admin/{}/{}/".format(*label.split("."))
        expect = action_expectations(key)
        for persona in PERSONAS:
            client, token = clients[persona]
            cookies = copy.deepcopy(client.cookies)
            ran.clear()
            try:
                with transaction.atomic():
                    response = client.post(
                        url,
                        {
                            "action": action.name,
                            "_selected_action": [str(obj.pk)],
                            "index": "0",
                            "csrfmiddlewaretoken": token,
                        },
                    )
                    transaction.set_rollback(True)
            finally:
                client.cookies = cookies
            got: Outcome | str = RAN if ran == [action.func.__name__] else outcome_of(response)
            want = expect[persona]
            if want == REFUSED:
                ok = got == 200 or (isinstance(got, Redirect) and got.to == url)
            elif isinstance(want, str) or isinstance(got, str):
                ok = got == want
            else:
                ok = matches(got, want)
            if not ok:
                failures.append(f"{key} as {persona}: got {got}, expected {want}")
    assert not failures, f"{len(failures)} admin action cases failed:\n" + "\n".join(failures)


def test_gate_events_reach_exactly_who_sees_the_gate(scene: Scene) -> None:
    """A stream's audience (reviews.push.audience_for, read when it opens) hears of a change
    to exactly the gates the persona may see (SEES_GATES)."""
    for persona, user in scene.users.items():
        audience = push.audience_for(user)
        heard = {
            name
            for name, gate in scene.gates.items()
            if audience.hears(
                push.Notice(kind="claimed", id=gate.pk, group=gate.group, tenant=gate.run.tenant)
            )
        }
        assert heard == SEES_GATES.get(persona, set()), persona
        # A stream of one gate's page hears only that gate.
        for name, gate in scene.gates.items():
            one = push.audience_for(user, gate.pk)
            note = push.Notice(kind="decided", id=gate.pk, group=gate.group, tenant=gate.run.tenant)
            other = push.Notice(kind="decided", id=gate.pk + 1000, group=gate.group)
            assert one.hears(note) == (name in SEES_GATES.get(persona, set())), (persona, name)
            assert not one.hears(other)
        # "sync" and "many" name no gate: every stream hears them.
        assert audience.hears(push.Notice(kind="sync")) and audience.hears(push.Notice("many"))
