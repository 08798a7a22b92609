"""GET /api/runs/{id}/steps pages the journal: ``limit`` rows at a time (default 100, at most
500), the next page named by the ``Link`` header.

Found by review: every journal row came at once, so a run of 1,500 steps with 60 KB results
answered one 88 MB response and grew the web process by 170 MB."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import start
from workflows.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


def _journal(rows: int, **fields: Any) -> Run:
    run = Run.objects.create(workflow="test.chain", tenant="acme", status="succeeded")
    Step.objects.bulk_create(
        Step(run=run, position=i, name=f"s{i}", status="succeeded", **fields)
        for i in range(1, rows + 1)
    )
    return run


def _next(r: Any) -> str | None:
    """The path of the Link header's next page (an absolute URL), without /api."""
    link = r.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<http://testserver(/api/[^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1).removeprefix("/api")


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_a_long_journal_comes_a_page_at_a_time_with_a_link_to_the_next(
    api: Api, service: Persona
) -> None:
    run = _journal(230, result="x" * 1000)
    r = api.get(f"/runs/{run.pk}/steps", as_=service)
    assert r.status_code == 200
    first = r.json()
    assert [s["position"] for s in first] == list(range(1, 101))  # the default limit
    seen = [s["id"] for s in first]
    path = _next(r)
    assert path is not None and "limit=100" in path
    pages = 1
    while path is not None:
        r = api.get(path, as_=service)
        assert r.status_code == 200
        seen += [s["id"] for s in r.json()]
        path = _next(r)
        pages += 1
    assert pages == 3
    journal = list(Step.objects.filter(run=run).order_by("position").values_list("id", flat=True))
    assert seen == journal  # every row once, in journal order

    r = api.get(f"/runs/{run.pk}/steps?limit=500", as_=service)
    assert len(r.json()) == 230 and "Link" not in r.headers


def test_pages_neither_skip_nor_repeat_rows_of_groups_superseded_rows_or_new_ones(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.fanout", {"items": [1, 2, 3]}, tenant="acme")
    bell.settle()
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 2}, as_=service)
    assert r.status_code == 200
    bell.settle()
    everything = Step.objects.filter(run=run).order_by("position", "branch", "id")
    expected = list(everything.values_list("id", flat=True))
    assert len(expected) == 10  # a map of three and a pair, each with its group row; the pair twice

    seen: list[int] = []
    path: str | None = f"/runs/{run.pk}/steps?include_superseded=true&limit=5"
    while path is not None:
        r = api.get(path, as_=service)
        assert r.status_code == 200 and len(r.json()) <= 5
        seen += [s["id"] for s in r.json()]
        if len(seen) == 5:
            # A row journaled while the client pages: it comes on a later page, once.
            late = Step.objects.create(run=run, position=9, name="late", status="succeeded")
            expected.append(late.pk)
        path = _next(r)
        assert path is None or "include_superseded=true" in path
    assert seen == expected


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "W10",  # []
        _cursor(["2026-11-21T09:00:00+00:00", "5b0c9c4e-0000-0000-0000-000000000000"]),  # a run's
        _cursor([1, -1]),
        _cursor([1, -1, True]),
        _cursor([1, -1, 1.5]),
        _cursor([1, -2, 1]),
        _cursor([2**31, -1, 1]),
        _cursor([1, -1, 2**63]),
        _cursor({"position": 1}),
    ],
)
def test_a_bad_journal_cursor_is_a_422(api: Api, service: Persona, cursor: str) -> None:
    run = _journal(3)
    r = api.get(f"/runs/{run.pk}/steps?cursor={cursor}", as_=service)
    assert r.status_code == 422, r.content
    assert error_code(r) == "invalid_cursor"
    assert r.json()["error"]["details"][0]["field"] == "cursor"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=100", "page=2"])
def test_a_limit_out_of_range_or_another_paging_scheme_is_a_422(
    api: Api, service: Persona, query: str
) -> None:
    run = _journal(3)
    r = api.get(f"/runs/{run.pk}/steps?{query}", as_=service)
    assert r.status_code == 422, r.content
    assert error_code(r) == "invalid_request"
    assert r.json()["error"]["details"][0]["field"] == query.split("=")[0]
