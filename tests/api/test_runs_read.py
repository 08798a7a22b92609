"""GET /api/runs, /api/runs/{id}, /api/runs/{id}/steps and large values."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import start
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


def _run(pipeline: str = "test.chain", tenant: str = "acme", **input: Any) -> Run:
    return start(pipeline, input, tenant=tenant)


def test_it_lists_only_the_keys_tenants_runs_newest_first(
    api: Api, service: Persona, bell: Bell
) -> None:
    mine = [_run(n=1), _run(n=2)]
    _run(tenant="globex")
    r = api.get("/runs", as_=service)
    assert r.status_code == 200
    ids = [item["id"] for item in r.json()["items"]]
    assert ids == [str(mine[1].pk), str(mine[0].pk)]
    assert r.json()["next_cursor"] is None


def test_it_pages_with_a_cursor(api: Api, service: Persona, bell: Bell) -> None:
    runs = [_run(n=i) for i in range(5)]
    # Two runs share a timestamp: the cursor must still neither skip nor repeat one.
    Run.objects.filter(pk=runs[2].pk).update(created_at=runs[3].created_at)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        r = api.get(f"/runs?limit=2{'&cursor=' + cursor if cursor else ''}", as_=service)
        assert r.status_code == 200
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(r.pk) for r in runs) and len(seen) == 5


def test_a_bad_cursor_is_a_422(api: Api, service: Persona) -> None:
    for cursor in ("garbage", "W10", "WyJ4IiwgInkiXQ"):
        r = api.get(f"/runs?cursor={cursor}", as_=service)
        assert r.status_code == 422
        assert error_code(r) == "invalid_cursor"


def test_it_filters_by_status_pipeline_and_created_range(
    api: Api, service: Persona, bell: Bell
) -> None:
    done = _run(n=1)
    bell.drain()
    waiting = _run("test.event")
    bell.drain()
    old = _run(n=3)
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    def ids(query: str) -> set[str]:
        r = api.get(f"/runs?{query}", as_=service)
        assert r.status_code == 200, r.content
        return {i["id"] for i in r.json()["items"]}

    assert ids("status=succeeded") == {str(done.pk)}
    assert ids("status=suspended,succeeded") == {str(done.pk), str(waiting.pk)}
    assert ids("pipeline=test.event") == {str(waiting.pk)}
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_after={since}") == {str(done.pk), str(waiting.pk)}
    assert ids(f"created_before={since}") == {str(old.pk)}
    assert ids("created_before=2020-01-01T00:00:00") == set()  # naive: read as UTC
    r = api.get("/runs?status=exploded", as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert r.json()["error"]["details"][0]["field"] == "status"


def test_it_shows_a_run_with_its_result_and_cost(api: Api, service: Persona, bell: Bell) -> None:
    run = _run("test.budget", n=2)
    bell.drain()
    body = api.get(f"/runs/{run.pk}", as_=service).json()
    assert body["status"] == "succeeded" and body["output"] == 2
    assert body["cost"] == pytest.approx(0.8)
    assert body["current_step"] == "costly"
    assert body["open_gates"] == [] and body["error"] is None


def test_it_shows_a_failed_runs_error(api: Api, service: Persona, bell: Bell) -> None:
    run = _run("test.refuse", reason="bad data")
    bell.drain()
    body = api.get(f"/runs/{run.pk}", as_=service).json()
    assert body["status"] == "failed" and "bad data" in body["error"]["message"]


def test_unknown_malformed_and_other_tenants_runs_are_404(
    api: Api, service: Persona, bell: Bell
) -> None:
    theirs = _run(tenant="globex")
    for path in (
        f"/runs/{theirs.pk}",
        "/runs/00000000-0000-0000-0000-000000000000",
        "/runs/not-a-uuid",
        f"/runs/{theirs.pk}/steps",
        "/runs/%20/steps",
    ):
        r = api.get(path, as_=service)
        assert r.status_code == 404, path
        assert error_code(r) == "not_found"


def test_it_lists_the_journal_with_attempts_timings_tokens_and_cost(
    api: Api,
    service: Persona,
    bell: Bell,
) -> None:
    run = _run("test.fanout", items=[1, 2])
    bell.settle()
    steps = api.get(f"/runs/{run.pk}/steps", as_=service).json()
    assert [(s["label"], s["kind"], s["status"]) for s in steps] == [
        ("1", "parallel", "succeeded"),
        ("1.0", "branch", "succeeded"),
        ("1.1", "branch", "succeeded"),
        ("2", "parallel", "succeeded"),
        ("2.0", "branch", "succeeded"),
        ("2.1", "branch", "succeeded"),
    ]
    branch = steps[1]
    assert branch["attempt"] == 1 and branch["result"] == 2 and branch["branch"] == 0
    assert branch["duration_ms"] is not None and branch["started_at"] and branch["finished_at"]

    costly = _run("test.budget", n=1)
    bell.drain()
    (step,) = api.get(f"/runs/{costly.pk}/steps", as_=service).json()
    assert (step["input_tokens"], step["output_tokens"], step["cost"]) == (100, 20, 0.4)


def test_it_links_large_values_instead_of_inlining_them(
    api: Api, service: Persona, bell: Bell, settings: Any
) -> None:
    settings.SLUICE_PAYLOAD_INLINE_LIMIT = 100
    run = _run("test.big", n=500)
    bell.drain()
    (step,) = api.get(f"/runs/{run.pk}/steps", as_=service).json()
    assert step["result"] is None and step["result_url"].startswith(f"/api/runs/{run.pk}/values/")
    value = api.get(step["result_url"].removeprefix("/api"), as_=service)
    assert value.status_code == 200 and value.json() == "x" * 500
    assert api.get(f"/runs/{run.pk}/values/999999", as_=service).status_code == 404
    assert api.get(f"/runs/{run.pk}/values/abc", as_=service).status_code == 404


def test_it_can_include_superseded_journal_entries(api: Api, service: Persona, bell: Bell) -> None:
    run = _run(n=2)
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 2}, as_=service)
    assert r.status_code == 200
    bell.drain()
    live = api.get(f"/runs/{run.pk}/steps", as_=service).json()
    everything = api.get(f"/runs/{run.pk}/steps?include_superseded=true", as_=service).json()
    assert len(live) == 2 and len(everything) == 3
    assert [s["generation"] for s in everything if s["superseded"]] == [1]


def test_nul_characters_in_filters_are_a_422_not_a_database_error(
    api: Api, service: Persona
) -> None:
    for path in ("/runs?pipeline=a%00b", "/gates?pipeline=%00"):
        r = api.get(path, as_=service)
        assert r.status_code == 422, path
    r = api.post(
        "/runs",
        {"pipeline": "test.chain", "input": {}},
        as_=service,
        headers={"Idempotency-Key": "a\x00b"},
    )
    assert r.status_code == 422


@pytest.mark.parametrize("param", ["offset=50", "page=2", "per_page=10"])
def test_another_paging_scheme_is_refused_by_name(api: Api, service: Persona, param: str) -> None:
    """Found by review: ``?offset=`` and ``?page=`` were ignored, so a client paging that way
    read the first page again and again."""
    r = api.get(f"/runs?{param}", as_=service)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and "cursor=" in error["message"]
    assert error["details"][0]["field"] == param.split("=")[0]
