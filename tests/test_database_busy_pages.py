"""A page whose database was busy or away answered the 500 page, which says "a run you started
is not lost" when the run was never written (the embedded default's SQLite past its 30 s lock
wait, a full disk, a deadlock on PostgreSQL). It is a 503 saying nothing was saved, as the API
answers (``config.middleware.DatabaseBusyMiddleware``)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import OperationalError, ProgrammingError
from django.test import Client

from workflows.models import Run

pytestmark = [pytest.mark.django_db]

START = "/pipelines/thread_analysis/start/"


@pytest.fixture
def starter(db: None) -> Client:
    user = User.objects.create_user("busy", password="pw-busy-123")
    user.user_permissions.add(Permission.objects.get(codename="start_run"))
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def _locked(*args: Any, **kwargs: Any) -> None:
    raise OperationalError("database is locked")


def test_a_start_form_meeting_a_locked_database_says_nothing_was_saved(
    starter: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = starter.get(START).content.decode()
    form_key = re.search(r'name="form_key" value="([0-9a-f]{32})"', page)
    assert form_key
    monkeypatch.setattr("workflows.core.services.create_run", _locked)
    response = starter.post(
        START,
        {"form_key": form_key.group(1), "input.title": "Hi", "input.thread": "Ann: hello"},
    )
    assert response.status_code == 503, response.status_code
    assert response["Retry-After"] == "5"
    body = response.content.decode()
    # Not "nothing was saved": a POST may have committed before the error (a decision, then
    # the next gate's look-up), so it says to look first (found by the diff review).
    assert "may not have been saved" in body and "is not lost" not in body
    assert not Run.objects.exists()


def test_a_page_meeting_a_lost_connection_is_a_503_to_reload(
    starter: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db.utils import InterfaceError

    def gone(*args: Any, **kwargs: Any) -> None:
        raise InterfaceError("connection already closed")

    monkeypatch.setattr("workflows.access.visible_runs", gone)
    response = starter.get("/runs/")
    assert response.status_code == 503
    assert "Reload the page in a few seconds" in response.content.decode()


def test_a_database_bug_is_still_the_500_page(
    starter: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise ProgrammingError("relation does not exist")

    monkeypatch.setattr("workflows.access.visible_runs", bug)
    assert starter.get("/runs/").status_code == 500
