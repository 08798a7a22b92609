"""The runs list and a run's page: who sees them, what they show, what staff can do."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.operators.conftest import People
from tests.operators.scenes import settle, showcase
from tests.support import Bell
from workflows import get_run, start
from workflows.core.definitions import get_workflow
from workflows.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scene(bell: Bell, people: People) -> dict[str, Run]:
    return showcase(bell)


def test_anonymous_visitors_are_sent_to_log_in(people: People) -> None:
    r = people.client(None).get("/runs/")
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_outsiders_get_403_everywhere(people: People, scene: dict[str, Run]) -> None:
    c = people.client(people.otto)
    run = scene["failed"]
    assert c.get("/runs/").status_code == 403
    assert c.get(f"/runs/{run.pk}/").status_code == 403
    assert c.get("/ops/").status_code == 403
    assert c.post(f"/runs/{run.pk}/actions/retry/").status_code == 403


def test_reviewers_see_runs_but_cannot_act_or_see_ops(
    people: People, scene: dict[str, Run]
) -> None:
    c = people.client(people.ana)
    run = scene["failed"]
    assert c.get("/runs/").status_code == 200
    page = c.get(f"/runs/{run.pk}/")
    assert page.status_code == 200 and b"Retry failed step" not in page.content
    assert c.post(f"/runs/{run.pk}/actions/retry/").status_code == 403
    assert c.get("/ops/").status_code == 403
    assert get_run(run.pk).status == "failed"


def test_staff_without_run_permissions_see_but_cannot_act(
    people: People, scene: dict[str, Run]
) -> None:
    c = people.client(people.watcher)
    run = scene["waiting"]
    assert b"Cancel run" not in c.get(f"/runs/{run.pk}/").content
    assert c.post(f"/runs/{run.pk}/actions/cancel/").status_code == 403
    assert c.get("/ops/").status_code == 200


def test_the_list_shows_runs_with_live_status_and_filters(
    people: People, scene: dict[str, Run]
) -> None:
    c = people.client(people.ops)
    r = c.get("/runs/")
    html = r.content.decode()
    assert r.context["nav"] == "runs"
    for run in scene.values():
        assert str(run.pk)[:8] in html
    assert 'hx-trigger="every 3s"' in html  # active runs on the page: rows refresh themselves
    failed = c.get("/runs/?status=failed").content.decode()
    assert str(scene["failed"].pk)[:8] in failed and str(scene["succeeded"].pk)[:8] not in failed
    only_review = c.get("/runs/?pipeline=contracts.review").context["runs"]
    assert [r.pk for r in only_review] == [scene["review"].pk]
    by_id = c.get(f"/runs/?q={scene['waiting'].pk}").context["runs"]
    assert [r.pk for r in by_id] == [scene["waiting"].pk]
    assert c.get("/runs/?q=x&pipeline=nope&status=bogus&page=x").status_code == 200
    # A NUL in the query is refused before any view (config.middleware): a 400, never a 500.
    assert c.get("/runs/?q=%00&pipeline=%00&status=bogus&page=x").status_code == 400


def test_the_list_refreshes_its_rows_with_htmx(people: People, scene: dict[str, Run]) -> None:
    c = people.client(people.ops)
    r = c.get("/runs/?status=active&partial=rows", headers={"HX-Request": "true"})
    html = r.content.decode()
    assert html.startswith('<tbody id="runs-rows"')
    assert "partial=rows&amp;partial" not in html and html.count("partial=rows") == 1
    r = c.get("/runs/?status=succeeded&partial=rows", headers={"HX-Request": "true"})
    assert "hx-trigger" not in r.content.decode()  # nothing moving: no polling


def test_the_run_page_shows_branches_side_by_side_retries_and_waits(
    people: People,
    scene: dict[str, Run],
) -> None:
    html = people.client(people.ops).get(f"/runs/{scene['succeeded'].pk}/").content.decode()
    group = html.split('class="tl-branches"')[1].split("tl-item")[0]
    assert group.count('class="tl-branch tl-s-succeeded"') == 5  # one card per fetched document
    assert "↻ 2/3" in html  # the flaky document needed a second attempt
    assert "succeeded on attempt 2 of 3" in html
    assert "tl-item tl-s-succeeded tl-wait" in html  # the sign-off wait
    assert re.search(r"tl-duration\">\d+ min \d+ s", html)  # durations are shown
    assert "1,850 → 240" in html  # tokens of the LLM step
    assert "Journal" in html and "compose_report" in html


def test_the_run_page_shows_a_failure_and_its_retry_action(
    people: People, scene: dict[str, Run]
) -> None:
    html = people.client(people.ops).get(f"/runs/{scene['failed'].pk}/").content.decode()
    assert "ConnectionError" in html and "upstream timed out" in html
    assert "Retry failed step #1" in html
    assert "failed on attempt 3 of 3" in html


def test_the_run_page_shows_open_gates(people: People, scene: dict[str, Run]) -> None:
    html = people.client(people.ops).get(f"/runs/{scene['review'].pk}/").content.decode()
    assert "Waiting for review: Approve the contract summary" in html
    assert "waiting for a reviewer" in html


def test_the_run_page_updates_itself_while_the_run_moves(
    people: People, scene: dict[str, Run]
) -> None:
    c = people.client(people.ops)
    run = scene["waiting"]
    assert 'hx-trigger="every 2s"' in c.get(f"/runs/{run.pk}/").content.decode()
    live = c.get(f"/runs/{run.pk}/?partial=live", headers={"HX-Request": "true"})
    html = live.content.decode()
    assert html.count('hx-swap-oob="true"') == 3
    done = c.get(
        f"/runs/{scene['succeeded'].pk}/?partial=live", headers={"HX-Request": "true"}
    ).content.decode()
    assert "hx-trigger" not in done  # the run ended: the poller removes itself


def test_the_run_page_shows_the_graph_when_the_pipeline_has_one(
    people: People,
    scene: dict[str, Run],
    monkeypatch: Any,
) -> None:
    wf = get_workflow("docs.analyze")
    seen: list[Any] = []

    def for_run(run: Run) -> str:
        seen.append(run.pk)
        return "stateDiagram-v2\n  [*] --> fetch\n  class fetch current"

    monkeypatch.setitem(wf.extra, "mermaid", "stateDiagram-v2\n  [*] --> fetch")
    monkeypatch.setitem(wf.extra, "mermaid_for_run", for_run)
    r = people.client(people.ops).get(f"/runs/{scene['waiting'].pk}/")
    assert r.context["mermaid_text"].endswith("class fetch current")
    assert seen == [scene["waiting"].pk]
    assert b"Graph" in r.content


def test_staff_cancel_retry_and_restart_through_the_services(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    failing = start("test.refuse", {})
    settle(bell)
    r = c.post(f"/runs/{waiting.pk}/actions/cancel/")
    assert r.status_code == 302 and get_run(waiting.pk).status == "canceled"
    assert "canceled by user:ops" in get_run(waiting.pk).error["message"]
    r = c.post(f"/runs/{failing.pk}/actions/retry/", follow=True)
    assert "retrying from step 1" in r.content.decode()
    assert get_run(failing.pk).generation == 2
    settle(bell)
    r = c.post(f"/runs/{waiting.pk}/actions/restart/", {"from_step": "2"}, follow=True)
    assert "restarted from step 2" in r.content.decode()
    assert Step.objects.filter(run=waiting, superseded=True).exists()
    r = c.post(f"/runs/{failing.pk}/actions/cancel/", follow=True)  # already failed again
    assert "nothing to cancel" in r.content.decode()
    assert c.post(f"/runs/{failing.pk}/actions/restart/", {"from_step": "x"}).status_code == 302
    assert c.post(f"/runs/{failing.pk}/actions/explode/").status_code == 404
    assert c.get(f"/runs/{failing.pk}/actions/cancel/").status_code == 405


def test_unknown_runs_are_404_and_large_values_open_as_json(
    people: People, bell: Bell, settings: Any
) -> None:
    c = people.client(people.ops)
    assert c.get("/runs/00000000-0000-0000-0000-000000000000/").status_code == 404
    settings.SLUICE_PAYLOAD_INLINE_LIMIT = 100
    run = start("test.big", {"n": 300})
    settle(bell)
    step = Step.objects.get(run=run)
    html = c.get(f"/runs/{run.pk}/").content.decode()
    url = f"/runs/{run.pk}/values/{step.result['$blob']}/"
    assert url in html
    assert c.get(url).json() == "x" * 300
    assert people.client(people.otto).get(url).status_code == 403


def test_a_huge_journal_is_cut_on_the_page(people: People, bell: Bell, monkeypatch: Any) -> None:
    monkeypatch.setattr("workflows.views.JOURNAL_LIMIT", 5)
    run = start("test.fanout", {"items": list(range(8))})
    settle(bell)
    r = people.client(people.ops).get(f"/runs/{run.pk}/")
    html = r.content.decode()
    assert len(r.context["journal"]) == 5 and r.context["journal_total"] == 12
    assert "Showing the first 5 of 12 entries" in html
    assert html.count('class="tl-branch ') == 10  # the timeline still shows every branch


@pytest.mark.parametrize(
    ("reason", "message"),
    [("a\x00b", "NUL character"), ("x" * 2001, "at most 2,000 are kept")],
    ids=["nul", "too-long"],
)
def test_a_reason_that_cannot_be_kept_is_a_message_not_a_500(
    people: People, bell: Bell, reason: str, message: str
) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    done = start("test.chain", {"n": 2})
    settle(bell)
    for run, action, extra in (
        (waiting, "cancel", {}),
        (done, "restart", {"from_step": "1"}),
        (done, "retry", {}),
    ):
        r = c.post(f"/runs/{run.pk}/actions/{action}/", {"reason": reason, **extra}, follow=True)
        assert r.status_code == 200, action
        assert message in r.content.decode(), action
    assert get_run(waiting.pk).status == "suspended"
    assert get_run(done.pk).status == "succeeded" and get_run(done.pk).generation == 1
    # A reason that can be kept goes through as before.
    r = c.post(f"/runs/{waiting.pk}/actions/cancel/", {"reason": "duplicate"}, follow=True)
    assert get_run(waiting.pk).status == "canceled"
    assert get_run(waiting.pk).error["message"].endswith(": duplicate")
