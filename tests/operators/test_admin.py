"""Django admin: machine-written rows read-only, repairs only through the services."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from workflows import get_run, start
from workflows.keys import find_key
from workflows.models import ApiKey, Outbox, Pool, Run, Step, WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = ["run", "step", "event", "outbox", "webhookdelivery", "apikey", "pool"]


@pytest.fixture
def runs(bell: Bell) -> dict[str, Run]:
    made = {
        "waiting": start(
            "test.event", {}, idempotency_key="req-77", callback_url="https://hooks.example.com/x"
        ),
        "failed": start("test.chain", {"n": 1}),
        "done": start("test.chain", {"n": 2}),
        "big": start("test.fanout", {"items": [1, 2]}),
    }
    settle(bell)
    # Make "failed" a run whose second step failed for good.
    Step.objects.filter(run=made["failed"]).update(
        status="failed", error={"type": "X", "message": "boom"}
    )
    Run.objects.filter(pk=made["failed"].pk).update(status="failed")
    return {k: Run.objects.get(pk=v.pk) for k, v in made.items()}


def test_every_admin_page_loads(people: People, runs: dict[str, Run]) -> None:
    c = people.client(people.ops)
    ApiKey.objects.create(name="k", prefix="sk_x", key_hash="x", webhook_secret="s")
    for model in PAGES:
        listing = c.get(f"/admin/workflows/{model}/")
        assert listing.status_code == 200, model
        html = listing.content.decode()
        match = re.search(rf'href="/admin/workflows/{model}/([^/"]+)/change/', html)
        if match:
            assert c.get(f"/admin/workflows/{model}/{match.group(1)}/change/").status_code == 200
    page = c.get(f"/admin/workflows/run/{runs['big'].pk}/change/").content.decode()
    assert "journal" in page.lower() and "1.0" in page  # the read-only journal inline
    assert "&quot;doubled&quot;" in page  # pretty JSON of the output


def test_machine_written_rows_are_read_only(people: People, runs: dict[str, Run]) -> None:
    c = people.client(people.ops)
    assert c.get("/admin/workflows/run/add/").status_code == 403
    run = runs["done"]
    page = c.get(f"/admin/workflows/run/{run.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    r = c.post(f"/admin/workflows/run/{run.pk}/change/", {"status": "failed"})
    assert r.status_code == 403 and get_run(run.pk).status == "succeeded"
    assert c.get(f"/admin/workflows/step/{Step.objects.first().pk}/delete/").status_code == 403


def test_it_filters_and_searches_runs(people: People, runs: dict[str, Run]) -> None:
    c = people.client(people.ops)
    found = c.get(f"/admin/workflows/run/?q={runs['waiting'].pk}").context["cl"].result_list
    assert [r.pk for r in found] == [runs["waiting"].pk]
    found = c.get("/admin/workflows/run/?q=req-77").context["cl"].result_list
    assert [r.pk for r in found] == [runs["waiting"].pk]
    # A NUL in the query is refused before any view (config.middleware): a 400, never a 500.
    assert c.get("/admin/workflows/run/?q=not-a-uuid%00").status_code == 400
    only = c.get("/admin/workflows/run/?status__exact=failed").context["cl"].result_list
    assert [r.pk for r in only] == [runs["failed"].pk]
    by_pipeline = c.get("/admin/workflows/run/?workflow=test.fanout").context["cl"].result_list
    assert [r.pk for r in by_pipeline] == [runs["big"].pk]


def _act(c: Any, action: str, *runs: Run, **extra: str) -> Any:
    return c.post(
        "/admin/workflows/run/",
        {"action": action, "_selected_action": [str(r.pk) for r in runs], **extra},
        follow=True,
    )


def test_the_cancel_action_goes_through_the_service(people: People, runs: dict[str, Run]) -> None:
    r = _act(people.client(people.ops), "cancel_runs", runs["waiting"], runs["done"])
    html = r.content.decode()
    assert "Canceled 1 run(s)." in html and "nothing to cancel" in html
    waiting = get_run(runs["waiting"].pk)
    assert waiting.status == "canceled" and "admin:ops" in waiting.error["message"]
    assert WebhookDelivery.objects.filter(run=waiting).exists()  # terminal hooks ran
    assert Outbox.objects.filter(kind="webhook").count() == 1


def test_retry_failed_step_restarts_from_the_failed_position(
    people: People, bell: Bell, runs: dict[str, Run]
) -> None:
    r = _act(people.client(people.ops), "retry_failed_step", runs["failed"], runs["done"])
    html = r.content.decode()
    assert "Restarted 1 run(s)." in html and "only a failed run has a step to retry" in html
    assert f"Run {str(runs['failed'].pk)[:8]}: retrying from step " in html  # where, per run
    settle(bell)
    run = get_run(runs["failed"].pk)
    assert run.status == "succeeded" and run.generation == 2
    assert Step.objects.filter(run=run, superseded=True, status="failed").exists()


def test_restart_from_step_asks_for_the_position(
    people: People, bell: Bell, runs: dict[str, Run]
) -> None:
    c = people.client(people.ops)
    form = _act(c, "restart_from_step", runs["done"])
    assert b"Restart from journal position" in form.content
    r = _act(c, "restart_from_step", runs["done"], apply="1", from_step="2")
    assert "Restarted 1 run(s) from step 2." in r.content.decode()
    settle(bell)
    run = get_run(runs["done"].pk)
    assert run.status == "succeeded" and run.generation == 2
    assert Step.objects.filter(run=run, superseded=True).count() == 1


def test_staff_without_run_permissions_cannot_act(people: People, runs: dict[str, Run]) -> None:
    people.watcher.user_permissions.add(Permission.objects.get(codename="view_run"))
    c = people.client(people.watcher)
    listing = c.get("/admin/workflows/run/")
    assert listing.status_code == 200 and b"cancel_runs" not in listing.content
    _act(c, "cancel_runs", runs["waiting"])
    assert get_run(runs["waiting"].pk).status == "suspended"


def test_an_api_key_made_in_admin_is_shown_once_and_stored_hashed(people: People) -> None:
    c = people.client(people.ops)
    r = c.post(
        "/admin/workflows/apikey/add/",
        {
            "name": "billing",
            "tenant": "acme",
            "scopes": ["runs:read", "runs:write"],
            "pipelines": ["test.chain"],
            "rate_limit": "100",
            "is_active": "on",
        },
    )
    assert r.status_code == 302
    # The flash message that shows it lives in the session, never in a cookie (found by
    # review: Django's default message storage is a signed, unencrypted cookie).
    assert "messages" not in r.cookies
    r = c.get(r["Location"])
    raw = re.search(r"<code>(sk_[^<]+)</code>", r.content.decode()).group(1)
    key = find_key(raw)
    assert key is not None and key.scopes == ["runs:read", "runs:write"]
    assert key.pipelines == ["test.chain"] and key.created_by == "admin:ops"
    assert raw not in str(ApiKey.objects.values_list().get(pk=key.pk))
    page = c.get(f"/admin/workflows/apikey/{key.pk}/change/").content.decode()
    assert raw not in page and key.prefix in page


def test_pool_limits_are_editable(people: People) -> None:
    Pool.objects.create(name="llm", max_concurrency=8)
    c = people.client(people.ops)
    r = c.post(
        "/admin/workflows/pool/llm/change/",
        {"max_concurrency": "3", "rate_limit": "", "rate_period": "1.0"},
    )
    assert r.status_code == 302 and Pool.objects.get(name="llm").max_concurrency == 3


def test_webhook_deliveries_show_their_attempts_and_can_be_retried(
    people: People,
    runs: dict[str, Run],
) -> None:
    from workflows import cancel

    cancel(runs["waiting"].pk)
    delivery = WebhookDelivery.objects.get()
    Outbox.objects.update(status="dead")
    c = people.client(people.ops)
    assert c.get(f"/admin/workflows/webhookdelivery/{delivery.pk}/change/").status_code == 200
    c.post(
        "/admin/workflows/webhookdelivery/",
        {"action": "retry_deliveries", "_selected_action": [str(delivery.pk)]},
    )
    assert Outbox.objects.get().status == "pending"


@pytest.mark.parametrize(
    ("reason", "message"),
    [("a\x00b", "NUL character"), ("x" * 2001, "at most 2,000 are kept")],
    ids=["nul", "too-long"],
)
def test_an_action_reason_that_cannot_be_kept_says_why(
    people: People, runs: dict[str, Run], reason: str, message: str
) -> None:
    # Django answers an invalid action bar with "No action selected.", which it was not.
    r = _act(people.client(people.ops), "cancel_runs", runs["waiting"], reason=reason)
    html = r.content.decode()
    assert "Nothing was done" in html and message in html
    assert "No action selected" not in html
    assert get_run(runs["waiting"].pk).status == "suspended"
