"""The "they started it" rule of run visibility knows the starter by user id.

Found by review: the rule compared ``Run.created_by`` (a username copied at start) with the
user's current name. Once ``alice`` was renamed or deleted, a new account given the name (an
admin's choice, or an SSO account whose ``preferred_username`` claim is ``alice``) saw the runs
she started, with their input, output and journal; and the renamed alice lost sight of them. A
run records its starter's id (``Run.created_by_user_id``); runs without one still match by name.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from pipelines.builtin import document_batch
from tests.security.scene import Scene, grant, user
from workflows import start
from workflows.access import can_view_run, visible_runs
from workflows.core import forking
from workflows.core.audit import Actor
from workflows.models import Run

pytestmark = [pytest.mark.django_db]


def login(u: Any) -> Client:
    c = Client()
    c.force_login(u)
    return c


def started_by(u: User) -> Run:
    """A run of ``u``'s tenant started as the start form records it: name and id."""
    return start(
        "document_batch",
        document_batch.SAMPLE,
        tenant="acme",
        created_by=u.get_username(),
        created_by_user_id=u.pk,
    )


def listed(c: Client, run: Run) -> bool:
    return run.pk in [r.pk for r in c.get("/runs/").context["runs"]]


def test_a_new_account_with_a_departed_users_name_does_not_see_her_runs(scene: Scene) -> None:
    alice = scene.users["rev_a"]
    run = started_by(alice)
    User.objects.filter(pk=alice.pk).update(username="alice.old")
    newbie = grant(user("alice", tenant="acme"), "workflows.start_run")
    c = login(newbie)
    assert c.get(f"/runs/{run.pk}/").status_code == 404
    assert not listed(c, run)
    assert not can_view_run(newbie, run)
    assert not visible_runs(newbie).filter(pk=run.pk).exists()


def test_after_the_starter_is_deleted_her_name_gives_nobody_her_runs(scene: Scene) -> None:
    alice = scene.users["rev_a"]
    run = started_by(alice)
    alice.delete()  # the run keeps her id: no new account has it
    newbie = grant(user("alice", tenant="acme"), "workflows.start_run")
    assert Run.objects.get(pk=run.pk).created_by_user_id is not None
    assert login(newbie).get(f"/runs/{run.pk}/").status_code == 404


def test_a_renamed_starter_still_sees_her_runs(scene: Scene) -> None:
    alice = scene.users["rev_a"]
    run = started_by(alice)
    User.objects.filter(pk=alice.pk).update(username="alice.smith")
    alice.refresh_from_db()
    c = login(alice)
    assert c.get(f"/runs/{run.pk}/").status_code == 200
    assert listed(c, run)


def test_a_run_without_the_starters_id_is_matched_by_name(scene: Scene) -> None:
    """Runs older than the column (here run_p, started from Python by name only)."""
    run_p = scene.runs["run_p"]
    assert run_p.created_by == "alice" and run_p.created_by_user_id is None
    c = login(scene.users["rev_a"])
    assert c.get(f"/runs/{run_p.pk}/").status_code == 200
    assert listed(c, run_p)


def test_a_fork_by_a_user_records_their_id(scene: Scene) -> None:
    alice = scene.users["rev_a"]
    run = scene.runs["run_a"]
    new = forking.fork(run.pk, from_step=1, actor=Actor.of_user(alice), reason="again")
    new.refresh_from_db()
    assert (new.created_by, new.created_by_user_id) == ("alice", alice.pk)
    User.objects.filter(pk=alice.pk).update(username="alice.old")
    newbie = grant(user("alice", tenant="acme"), "workflows.start_run")
    assert login(newbie).get(f"/runs/{new.pk}/").status_code == 404


def test_a_fork_by_a_key_records_no_user_id(scene: Scene) -> None:
    key, _ = scene.keys["key_write"]
    new = forking.fork(scene.runs["run_a"].pk, from_step=1, actor=Actor.of_key(key))
    new.refresh_from_db()
    assert new.created_by == key.actor and new.created_by_user_id is None
