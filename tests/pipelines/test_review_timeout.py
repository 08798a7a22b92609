"""A review timeout per run: ``review_timeout`` from ``start``, the start form and (in
tests/api/test_runs_review_timeout.py) the API; the built-in pipelines' gates read it."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from pipelines.forms import parse_review_timeout
from pipelines.registry import get_pipeline
from reviews.models import Gate
from tests.support import Bell
from workflows import get_run, start
from workflows.core.errors import InvalidInputError
from workflows.models import Run

pytestmark = [pytest.mark.core]

UNKNOWN_TOPIC = {
    "customer_email": "lee@example.com",
    "subject": "Parrot in the office",
    "message": "Our office parrot keeps chewing the plants. What should we feed him?",
}


def open_gate_of(bell: Bell, run: Run) -> Gate:
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    return Gate.objects.get(run=run, status="open")


def window(gate: Gate) -> timedelta:
    return gate.deadline - gate.created_at


@pytest.mark.django_db(transaction=True)
def test_it_gives_thread_analysis_gates_the_runs_review_timeout(bell: Bell, offline: Any) -> None:
    sample = get_pipeline("thread_analysis").extra["sample_input"]
    short = open_gate_of(bell, start("thread_analysis", sample, review_timeout="90m"))
    default = open_gate_of(bell, start("thread_analysis", sample))
    # The deadline is counted from when the gate opened (the journal row's start), so allow for
    # the few milliseconds between that and the gate row's created_at.
    assert abs(window(short) - timedelta(minutes=90)) < timedelta(seconds=5)
    assert abs(window(default) - timedelta(hours=24)) < timedelta(seconds=5)


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_support_reply_gate_the_runs_review_timeout(bell: Bell, offline: Any) -> None:
    gate = open_gate_of(bell, start("support_ticket", UNKNOWN_TOPIC, review_timeout=3 * 86400))
    assert abs(window(gate) - timedelta(days=3)) < timedelta(seconds=5)


@pytest.mark.django_db
def test_it_refuses_a_review_timeout_outside_one_minute_to_thirty_days() -> None:
    sample = get_pipeline("thread_analysis").extra["sample_input"]
    for bad in ("59s", 30, "31d", 30 * 86400 + 1, "soon", "-5m", True, float("nan")):
        with pytest.raises(InvalidInputError) as caught:
            start("thread_analysis", sample, review_timeout=bad)
        assert caught.value.errors[0]["field"] == "review_timeout", bad
    assert not Run.objects.exists()
    for good, expected in (("1m", timedelta(minutes=1)), ("30d", timedelta(days=30))):
        assert start("thread_analysis", sample, review_timeout=good).review_timeout == expected


def test_the_form_reads_a_number_and_a_unit() -> None:
    assert parse_review_timeout("", "hours") == (None, "")
    assert parse_review_timeout("36", "hours") == (timedelta(hours=36), "")
    assert parse_review_timeout("1.5", "days") == (timedelta(hours=36), "")
    assert parse_review_timeout("1", "minutes") == (timedelta(minutes=1), "")
    # 1E+999999999 is a finite Decimal whose product with the unit overflows (decimal.Overflow).
    out_of_range = ("1E+999999999", "1e999999", "-1E+999999999", "1E-999999999")
    for amount, unit in (
        ("0.5", "minutes"),
        ("31", "days"),
        ("721", "hours"),
        ("0", "hours"),
        *((amount, "hours") for amount in out_of_range),
    ):
        assert parse_review_timeout(amount, unit)[1] == (
            "The review timeout must be from 1 minute to 30 days."
        ), (amount, unit)
    for amount, unit in (("soon", "hours"), ("NaN", "hours"), ("Infinity", "days"), ("2", "x")):
        assert parse_review_timeout(amount, unit) == (
            None,
            "Enter a number of minutes, hours or days, like 36 hours.",
        )


@pytest.fixture
def starter(client: Client, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)
    user = User.objects.create_user("starter", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="start_run"))
    client.force_login(user)
    return client


def form_data(client: Client, **extra: str) -> dict[str, str]:
    html = client.get("/pipelines/thread_analysis/start/").content.decode()
    key = re.search(r'name="form_key" value="([0-9a-f]{32})"', html)
    assert key
    return {"form_key": key.group(1), "input.title": "T", "input.thread": "Ann: hi", **extra}


@pytest.mark.django_db
def test_the_start_form_offers_a_review_timeout_with_a_unit(starter: Client) -> None:
    html = starter.get("/pipelines/thread_analysis/start/").content.decode()
    assert 'name="review_timeout"' in html and 'type="number"' in html
    assert '<option value="hours" selected>hours</option>' in html
    assert "from 1 minute to 30 days" in html and "24 hours" in html


@pytest.mark.django_db
def test_the_start_form_starts_a_run_with_its_review_timeout(starter: Client) -> None:
    data = form_data(starter, review_timeout="2", review_timeout_unit="days")
    response = starter.post("/pipelines/thread_analysis/start/", data)
    assert response.status_code == 302
    assert Run.objects.get().review_timeout == timedelta(days=2)


@pytest.mark.django_db
def test_the_start_form_shows_an_out_of_range_timeout_as_a_form_error(starter: Client) -> None:
    data = form_data(starter, review_timeout="45", review_timeout_unit="days")
    response = starter.post("/pipelines/thread_analysis/start/", data)
    html = response.content.decode()
    assert response.status_code == 400
    assert not Run.objects.exists()
    assert "The review timeout must be from 1 minute to 30 days." in html
    assert 'value="45"' in html and '<option value="days" selected>days</option>' in html
    assert 'aria-invalid="true"' in html.split('name="review_timeout"')[1][:300]
