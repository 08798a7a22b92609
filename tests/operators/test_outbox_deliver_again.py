"""Admin: an operator delivers dead outbox rows again (a mail or chat message that gave up after a
day of retries, once what failed is fixed). Before, a dead row could only be looked at."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from tests.operators.conftest import People
from workflows.core import outbox
from workflows.models import Outbox

pytestmark = pytest.mark.django_db

URL = "/admin/workflows/outbox/"
SENT: list[str] = []


@pytest.fixture(autouse=True)
def _handler() -> Any:
    SENT.clear()
    outbox.register_outbox_handler("test.note", lambda row: SENT.append(row.key))
    yield
    outbox._handlers.pop("test.note", None)


def _row(key: str, status: str, **fields: Any) -> Outbox:
    row = Outbox.objects.create(kind="test.note", key=key, payload={}, status=status, **fields)
    # A day and more old: past outbox.MAX_AGE, as a dead row is.
    Outbox.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=2))
    return Outbox.objects.get(pk=row.pk)


def _act(c: Client, *rows: Outbox) -> str:
    r = c.post(
        URL,
        {"action": "deliver_again", "_selected_action": [str(r.pk) for r in rows], "index": "0"},
        follow=True,
    )
    assert r.status_code == 200
    return r.content.decode()


def test_dead_rows_are_delivered_again(people: People) -> None:
    dead = _row("n-1", "dead", attempts=12, last_error="SMTPAuthenticationError: 535")
    done = _row("n-2", "delivered", delivered_at=timezone.now())
    busy = _row("n-3", "dead", lease_expires_at=timezone.now() + timedelta(minutes=1))
    hook = _row("n-4", "dead")
    Outbox.objects.filter(pk=hook.pk).update(kind="webhook")
    page = _act(people.client(people.ops), dead, done, busy, hook)
    assert "1 row due again" in page
    assert "2 rows left as they are: delivered already, or in the middle of an attempt" in page
    assert "1 webhook row left as they are: retry them from Webhook deliveries" in page
    assert Outbox.objects.get(pk=dead.pk).status == "pending"
    assert Outbox.objects.get(pk=done.pk).status == "delivered"
    assert Outbox.objects.get(pk=busy.pk).status == "dead"
    assert Outbox.objects.get(pk=hook.pk).status == "dead"

    assert outbox.deliver_due() == 1
    assert SENT == ["n-1"]
    row = Outbox.objects.get(pk=dead.pk)
    assert row.status == "delivered" and row.attempts == 13


def test_a_row_past_its_day_gets_one_more_attempt(people: People) -> None:
    dead = _row("n-5", "dead", attempts=12)
    outbox.register_outbox_handler("test.note", lambda row: 1 / 0)
    _act(people.client(people.ops), dead)
    outbox.deliver_due()
    row = Outbox.objects.get(pk=dead.pk)
    assert row.status == "dead" and row.attempts == 13
    assert row.last_error.startswith("ZeroDivisionError")


def test_it_needs_the_change_permission(people: People) -> None:
    dead = _row("n-6", "dead")
    viewer = User.objects.create_user("vic", password="pw-vic-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_outbox"))
    c = people.client(viewer)
    assert c.get(URL).status_code == 200
    _act(c, dead)
    assert Outbox.objects.get(pk=dead.pk).status == "dead"
    viewer.user_permissions.add(Permission.objects.get(codename="change_outbox"))
    _act(people.client(User.objects.get(pk=viewer.pk)), dead)
    assert Outbox.objects.get(pk=dead.pk).status == "pending"
