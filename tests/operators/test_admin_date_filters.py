"""The gate admin's date hierarchy (``deadline``) at the edges of the calendar: a year, month
or day whose next period is past year 9999 is a bad filter, answered as the admin answers any
other (a redirect to ``?e=1``, then its "invalid setup" page), never a 500.

Found by review: ``?deadline__year=9999`` was a ValueError (year 10000), and with
``&deadline__month=12`` (and ``&deadline__day=31``) an OverflowError: a 500 each."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.test import Client, override_settings

from reviews.models import Gate
from tests.operators.conftest import People

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query",
    [
        "deadline__year=9999",
        "deadline__year=9999&deadline__month=12",
        "deadline__year=9999&deadline__month=12&deadline__day=31",
        "deadline__year=99999",
        "deadline__year=0",
        "deadline__year=2026&deadline__month=13",
        "deadline__year=2026&deadline__month=2&deadline__day=30",
    ],
)
def test_a_date_hierarchy_past_the_calendar_is_a_bad_filter(people: People, query: str) -> None:
    c = Client(raise_request_exception=False)
    c.force_login(people.ops)
    r = c.get(f"/admin/reviews/gate/?{query}")
    assert r.status_code == 302, r.status_code
    assert r["Location"].endswith("?e=1")
    r = c.get(f"/admin/reviews/gate/?{query}&e=1")
    assert r.status_code == 200  # the admin's "invalid setup" page


@pytest.mark.parametrize(
    "query",
    [
        "deadline__year=9999&deadline__month=11",
        "deadline__year=9999&deadline__month=12&deadline__day=30",
        "deadline__year=2026&deadline__month=12&deadline__day=31",
        "deadline__year=1&deadline__month=1&deadline__day=1",
    ],
)
def test_the_last_periods_that_fit_still_filter(people: People, query: str) -> None:
    c = people.client(people.ops)
    r = c.get(f"/admin/reviews/gate/?{query}")
    assert r.status_code == 200


@override_settings(TIME_ZONE="Asia/Tokyo")
@pytest.mark.parametrize(
    "query",
    [
        "deadline__year=1&deadline__month=1&deadline__day=1",
        "deadline__gte=0001-01-01",
        "deadline__lt=0001-01-01+00:00:00",
    ],
)
def test_year_one_in_a_zone_east_of_utc(people: People, query: str) -> None:
    c = Client(raise_request_exception=False)
    c.force_login(people.ops)
    r = c.get(f"/admin/reviews/gate/?{query}")
    assert r.status_code in (200, 302), r.status_code


def test_every_admin_with_a_date_hierarchy_guards_it(rf: Any) -> None:
    """A date_hierarchy added to another admin gets the same guard (workflows.admin)."""
    from workflows.admin import DateHierarchyChangeList

    with_hierarchy = [a for a in admin.site._registry.values() if a.date_hierarchy]
    assert type(admin.site._registry[Gate]) in {type(a) for a in with_hierarchy}
    request = rf.get("/")
    for model_admin in with_hierarchy:
        assert issubclass(model_admin.get_changelist(request), DateHierarchyChangeList)
