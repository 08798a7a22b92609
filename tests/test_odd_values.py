"""Odd values that reached a page or a claim from data (found by the eleventh session's
review): each is shown or refused plainly, never a 500 and never a failed run."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run, record_usage, start, step, workflow
from workflows.core import pools
from workflows.core.jsonvalues import encode
from workflows.models import Pool

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_confidence_past_a_floats_range_is_not_shown_and_the_gate_opens(bell: Bell) -> None:
    people = People()
    gate = open_gate(bell, payload={"analyses": [{"title": "t", "confidence": 10**400}]})
    c = Client()
    c.force_login(people.ana)
    assert c.get(f"/reviews/{gate.pk}/").status_code == 200
    assert c.get(f"/reviews/{gate.pk}/status/?claim=5").status_code == 200


@step
def odd_usage(tokens: Any) -> int:
    record_usage(cost=0.01, input_tokens=tokens, output_tokens=5, model="m")
    return 1


@workflow(name="test.odd_usage")
def odd_usage_wf(ctx: Any, tokens: Any) -> int:
    return ctx.run(odd_usage, tokens)


@pytest.mark.parametrize("tokens", ["12", [1], {"a": 1}, 10**30])
def test_a_token_count_that_is_not_a_number_shows_as_it_is(bell: Bell, tokens: Any) -> None:
    run = start("test.odd_usage", {"tokens": tokens})
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    c = Client()
    c.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    assert c.get(f"/runs/{run.pk}/").status_code == 200


@pytest.mark.parametrize("period", ["1e308", "1e12", "-1", "0", "nan"])
def test_a_pool_window_out_of_range_is_refused_by_admin(period: str) -> None:
    c = Client()
    c.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    r = c.post(
        "/admin/workflows/pool/add/",
        {"name": "odd", "max_concurrency": "", "rate_limit": "1", "rate_period": period},
    )
    assert r.status_code == 200 and not Pool.objects.filter(name="odd").exists()


@pytest.mark.parametrize("period", [1e308, 1e12, -1.0, 0.0, float("nan")])
def test_a_pool_row_with_an_odd_window_still_runs_its_steps(bell: Bell, period: float) -> None:
    """A row written before the bounds (or by SQL) is read as a sane window."""
    if period != period and connection.vendor == "sqlite":
        pytest.skip("SQLite stores NaN as NULL")
    Pool.objects.create(name="default", rate_limit=100, rate_period=period)
    pools.clear_cache()
    run = start("test.chain", {"n": 3})
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    assert 0.001 <= pools.get_pool("default").rate_period <= 366 * 86400


def test_an_integer_too_long_for_json_text_is_named_as_such() -> None:
    with pytest.raises(TypeError, match="integer too long"):
        encode({"n": 10**5000}, "input")
    with pytest.raises(TypeError, match="NaN or Infinity"):
        encode({"n": float("nan")}, "input")
