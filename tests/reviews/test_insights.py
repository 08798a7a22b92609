"""The review insights page and the JSONL evaluation dataset (page download and API).

Numbers on a known history (tests/reviews/insights_fixture.py), corrections recorded by real
decisions, tenant isolation, permission denials, bad filters as 4xx, bounded query counts.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviews import insights
from reviews.models import Gate, GateCorrection
from reviews.services import decide_gate
from tests.reviews.conftest import People, open_gate
from tests.reviews.insights_fixture import closed_gate, known_history
from tests.reviews.workflows import SENTIMENT_FIELDS
from tests.support import Bell
from workflows.keys import create_api_key

pytestmark = [pytest.mark.django_db]

PAGE = "/reviews/insights/"
EXPORT = "/reviews/insights/export.jsonl"
API = "/api/gates/dataset"


def client_for(user: Any) -> Client:
    c = Client()
    if user is not None:
        c.force_login(user)
    return c


def lines(response: Any) -> list[dict[str, Any]]:
    assert response.streaming, "the dataset is streamed"
    body = b"".join(response.streaming_content).decode()
    return [json.loads(line) for line in body.splitlines() if line]


# --- the numbers --------------------------------------------------------------------------------


def test_rates_medians_and_corrected_fields_on_a_known_history(db: None) -> None:
    known_history(tenant="")
    data = insights.summary(Gate.objects.all(), insights.Filters())
    by_kind = {(g.pipeline, g.kind): g for g in data["groups"]}
    support = by_kind[("support", "Check the reply")]
    assert support.counts == {
        "total": 10,
        "approved": 4,
        "edited": 3,
        "rejected": 1,
        "other": 0,
        "expired": 2,
    }
    assert support.rates["approved"] == pytest.approx(40.0)
    assert support.rates["edited"] == pytest.approx(30.0)
    assert support.rates["rejected"] == pytest.approx(10.0)
    assert support.rates["expired"] == pytest.approx(20.0)
    assert support.median_seconds == pytest.approx(270.0)
    news = by_kind[("news", "Verify")]
    assert (news.total, news.counts["approved"], news.counts["expired"]) == (2, 1, 1)
    assert news.median_seconds == pytest.approx(30.0)
    assert data["overall"].counts["total"] == 12
    assert data["overall"].median_seconds is None  # medians of several groups do not add up

    fields = {(f.kind, f.name): f for f in data["fields"]}
    assert set(fields) == {("Check the reply", "sentiment"), ("Check the reply", "reply")}
    sentiment = fields[("Check the reply", "sentiment")]
    assert sentiment.count == 3
    assert sentiment.share == pytest.approx(100 * 3 / 8)  # of the 8 decided gates
    assert [(e.before, e.after) for e in sentiment.examples] == [
        ("positive", "negative"),  # the latest first (decided after 420 s)
        ("positive", "neutral"),
        ("positive", "negative"),
    ]
    assert fields[("Check the reply", "reply")].count == 1
    assert data["fields"][0].name == "sentiment"  # most corrected first

    week = data["weekly"]
    assert sum(week["totals"]) == 12
    assert sum(week["series"]["edited"]) == 3
    # 90 days: from the week (Monday first) the period starts in to this one, 13 or 14.
    first = insights.monday(timezone.now() - timedelta(days=90))
    assert len(week["labels"]) == (insights.monday(timezone.now()) - first).days // 7 + 1
    assert week["labels"][0] == f"{first:%b %d}"


def test_filters_narrow_by_pipeline_gate_kind_and_period(db: None) -> None:
    known_history(tenant="")
    closed_gate(tenant="", pipeline="news", title="Verify", opened=timezone.now() - timedelta(20))
    visible = Gate.objects.all()
    news = insights.summary(visible, insights.Filters(pipeline="news"))
    assert [(g.pipeline, g.kind, g.total) for g in news["groups"]] == [("news", "Verify", 3)]
    assert news["fields"] == []
    kind = insights.summary(visible, insights.Filters(kind="Check the reply"))
    assert [g.total for g in kind["groups"]] == [10]
    week = insights.summary(visible, insights.Filters(pipeline="news", period="7"))
    assert [g.total for g in week["groups"]] == [2]  # the one from 20 days ago is out
    assert week["pipelines"] == ["news", "support"]  # the menus list everything in scope


@pytest.mark.django_db(transaction=True)
def test_a_decision_records_only_the_fields_it_changed(bell: Bell, people: People) -> None:
    payload = {"sentiment": "positive", "score": 0.5, "notes": "fine"}
    first = open_gate(bell, payload=payload, fields=SENTIMENT_FIELDS)
    second = open_gate(bell, payload=payload, fields=SENTIMENT_FIELDS)
    # The browser sends every field: unchanged values are not corrections.
    decide_gate(
        first.pk,
        outcome="approve",
        edits={"sentiment": "positive", "score": 0.5, "notes": "fine"},
        actor="ana",
        user=people.ana,
    )
    decide_gate(
        second.pk,
        outcome="approve",
        edits={"sentiment": "negative", "score": 0.5, "notes": "sarcasm"},
        actor="ana",
        user=people.ana,
    )
    assert not GateCorrection.objects.filter(gate=first).exists()
    corrected = GateCorrection.objects.filter(gate=second)
    rows = sorted(corrected.values_list("field", "before", "after"))
    assert rows == [("notes", "fine", "sarcasm"), ("sentiment", "positive", "negative")]
    data = insights.summary(Gate.objects.all(), insights.Filters())
    (group,) = data["groups"]
    assert (group.counts["approved"], group.counts["edited"]) == (1, 1)


# --- the page -----------------------------------------------------------------------------------


def test_a_reviewer_sees_their_tenant_and_groups_only(people: People) -> None:
    known_history(tenant="")
    closed_gate(tenant="globex", pipeline="globex-secret", edits={"sentiment": "negative"})
    closed_gate(tenant="", pipeline="legal-only", group="legal")
    html = client_for(people.ana).get(PAGE).content.decode()
    assert "support" in html and "Check the reply" in html
    assert "globex-secret" not in html
    assert "legal-only" not in html
    assert 'data-testid="rate-approved">41.7%' in html
    # An operator (staff with reviews.view_gate) sees every tenant and group.
    html = client_for(people.sam).get(PAGE).content.decode()
    assert "globex-secret" in html and "legal-only" in html


def test_who_may_open_the_page(people: People) -> None:
    assert client_for(None).get(PAGE).status_code == 302
    assert client_for(people.otto).get(PAGE).status_code == 403  # in no group
    assert client_for(people.otto).get(EXPORT).status_code == 403
    assert client_for(people.ana).get(PAGE).status_code == 200
    assert client_for(people.lea).get(PAGE).status_code == 200  # leads: their own gates only
    # The nav shows the link to those who may open it.
    assert 'href="/reviews/insights/"' in client_for(people.ana).get("/reviews/").content.decode()
    assert 'href="/reviews/insights/"' not in client_for(people.otto).get("/runs/").content.decode()


@pytest.mark.parametrize(
    "query",
    ["period=3", "period=abc", "pipeline=%00", "kind=" + "k" * 201, "period=7%00"],
)
def test_bad_filters_are_a_400(people: People, query: str) -> None:
    for url in (PAGE, EXPORT):
        response = client_for(people.ana).get(f"{url}?{query}")
        assert response.status_code == 400, (url, query)


def test_llm_values_are_escaped_and_long_ones_clipped_with_the_full_text(people: People) -> None:
    long_reply = "A long reply. " * 40 + "THE END"
    closed_gate(tenant="", edits={"reply": "<script>alert(1)</script>"})
    closed_gate(tenant="", payload={"sentiment": "positive", "reply": long_reply})
    closed_gate(
        tenant="",
        payload={"sentiment": "positive", "reply": "short"},
        edits={"reply": long_reply},
    )
    html = client_for(people.ana).get(PAGE).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "THE END" in html  # the full text, inside <details>
    assert "<details><summary>A long reply." in html
    assert "…</summary>" in html


def test_the_page_makes_as_many_queries_for_200_gates_as_for_10(people: People) -> None:
    def count() -> int:
        c = client_for(people.ana)
        c.get(PAGE)  # warm: session, user
        with CaptureQueriesContext(connection) as ctx:
            assert c.get(PAGE).status_code == 200
        return len(ctx.captured_queries)

    for i in range(10):
        closed_gate(tenant="", seconds=60 + i, edits={"sentiment": "negative"} if i % 3 else None)
    few = count()
    for i in range(190):
        closed_gate(
            tenant="",
            pipeline=f"p{i % 7}",
            title=f"Gate {i % 5}",
            seconds=60 + i,
            edits={"sentiment": "neutral", "reply": f"r{i}"} if i % 2 else None,
        )
    many = count()
    assert Gate.objects.count() == 200
    assert many == few, (few, many)
    assert many <= 12


# --- the dataset: the page's download ------------------------------------------------------------


def test_the_download_holds_one_line_per_closed_gate_of_the_viewer(people: People) -> None:
    groups = known_history(tenant="")
    closed_gate(tenant="globex", pipeline="globex-secret")
    response = client_for(people.ana).get(EXPORT)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jsonl"
    assert "attachment" in response["Content-Disposition"]
    rows = lines(response)
    assert len(rows) == 12
    assert "globex-secret" not in {r["pipeline"] for r in rows}
    edited = next(r for r in rows if r["gate_id"] == groups["support"][6].pk)
    assert edited["ai_output"] == {"sentiment": "positive", "reply": "Thanks!"}
    assert edited["human_output"] == {
        "sentiment": "negative",
        "reply": "Sorry about the delay <b>really</b>.",
    }
    assert edited["outcome"] == "approve"
    assert edited["reviewer"] == "ana"
    assert edited["seconds_to_decision"] == pytest.approx(420.0)
    assert edited["input"] == {"title": "Ticket"}
    assert edited["generation"] == 1
    expired = next(r for r in rows if r["gate_id"] == groups["support"][8].pk)
    assert (expired["outcome"], expired["decision"], expired["reviewer"]) == (
        "expired",
        "approve",
        None,
    )
    assert expired["human_output"] == expired["ai_output"]
    only_news = lines(client_for(people.ana).get(f"{EXPORT}?pipeline=news"))
    assert {r["pipeline"] for r in only_news} == {"news"} and len(only_news) == 2


# --- the dataset: the API -----------------------------------------------------------------------


def bearer(
    tenant: str = "acme", scopes: tuple[str, ...] = ("runs:read",), **kw: Any
) -> dict[str, str]:
    _, raw = create_api_key(f"key-{tenant}-{len(scopes)}", scopes=scopes, tenant=tenant, **kw)
    return {"Authorization": f"Bearer {raw}"}


def test_a_key_exports_its_own_tenant_only(db: None) -> None:
    known_history(tenant="acme")
    closed_gate(tenant="globex", pipeline="globex-secret")
    rows = lines(Client().get(API, headers=bearer("acme")))
    assert len(rows) == 12
    assert all(r["pipeline"] != "globex-secret" for r in rows)
    other = lines(Client().get(API, headers=bearer("globex")))
    assert [r["pipeline"] for r in other] == ["globex-secret"]
    # A key limited to some pipelines sees only those.
    limited = lines(Client().get(API, headers=bearer("acme", pipelines=["news"])))
    assert {r["pipeline"] for r in limited} == {"news"}


def test_the_api_needs_a_key_with_runs_read(db: None) -> None:
    known_history(tenant="acme")
    assert Client().get(API).status_code == 401
    response = Client().get(API, headers=bearer("acme", ("gates:decide",)))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_the_api_filters_and_names_the_deciding_key(db: None) -> None:
    key, raw = create_api_key("triage-bot", scopes=("runs:read",), tenant="acme")
    now = timezone.now()
    old = closed_gate(tenant="acme", opened=now - timedelta(days=10), decided_by=key.actor)
    new = closed_gate(tenant="acme", opened=now - timedelta(hours=2), decided_by="ana, bob")
    auth = {"Authorization": f"Bearer {raw}"}
    rows = lines(Client().get(API, auth_params(since=now - timedelta(days=1)), headers=auth))
    assert [r["gate_id"] for r in rows] == [new.pk]
    assert rows[0]["reviewer"] == "ana, bob"
    rows = lines(Client().get(API, auth_params(until=now - timedelta(days=1)), headers=auth))
    assert [r["gate_id"] for r in rows] == [old.pk]
    assert rows[0]["reviewer"] == "triage-bot" and rows[0]["decided_by"] == key.actor
    assert len(lines(Client().get(API, {"limit": 1}, headers=auth))) == 1
    assert len(lines(Client().get(API, {"gate": "nope"}, headers=auth))) == 0


def auth_params(**dates: Any) -> dict[str, str]:
    return {k: v.isoformat() for k, v in dates.items()}


@pytest.mark.parametrize(
    "query",
    [
        {"since": "yesterday"},
        {"until": "1700000000"},
        {"since": "9999-12-31T23:59:59-14:00"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"limit": "0"},
        {"limit": "many"},
        {"pipeline": "a\x00b"},
    ],
)
def test_bad_api_parameters_are_a_422(db: None, query: dict[str, str]) -> None:
    response = Client().get(API, query, headers=bearer())
    assert response.status_code == 422, response.content
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_the_export_reads_in_chunks(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyset chunks: a 12-gate export with chunks of 5 reads 3 chunks, never all at once."""
    monkeypatch.setattr(insights, "CHUNK", 5)
    known_history(tenant="acme")
    qs = insights.dataset_gates(Gate.objects.filter(run__tenant="acme"))
    with CaptureQueriesContext(connection) as ctx:
        stream = insights.dataset_rows(qs)
        first = next(stream)
        after_first = len(ctx.captured_queries)
        rest = list(stream)
    assert after_first == 1  # one chunk read, not the whole set
    assert len(rest) + 1 == 12
    assert first["gate_id"] < rest[0]["gate_id"]
    chunk_reads = [q for q in ctx.captured_queries if '"reviews_gate"' in q["sql"]]
    assert len(chunk_reads) == 3
