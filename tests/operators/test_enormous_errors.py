"""An enormous error message (found by review): a step raising with a 20 MB message stored it on
the step and on the run, and the run page, its live partial, the API and the webhook body were
each 20 MB; the ops overview read the whole error column of recent failures to show 140
characters, and a compensation with 2,000 failing undos listed every one.

Now the message is cut where it is recorded (``calls.error_dict``), the list of failed undos is
capped with a count, the run page cuts what it shows (for errors recorded before), and the ops
overview reads only the start of each message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from workflows import NonRetryableError, RetryPolicy, get_run, ops, start, step, workflow
from workflows.core.calls import MESSAGE_LIMIT, MESSAGE_SLACK, error_dict
from workflows.keys import SCOPES, create_api_key
from workflows.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = 1_000_000  # characters: enough to see, small enough for a quick test
ONCE = RetryPolicy(max_attempts=1)


@step(retry=ONCE)
def shout(size: int) -> None:
    raise NonRetryableError("A" * size)


@workflow(name="test.enormous.shout")
def shouting(ctx: Any, size: int) -> None:
    ctx.run(shout, size)


@step(retry=ONCE)
def refuse_undo(name: str, result: str) -> None:
    raise NonRetryableError(f"cannot undo {name}")


@step(retry=ONCE, compensate=refuse_undo)
def take(name: str) -> str:
    return f"took {name}"


@step(retry=ONCE)
def give_up() -> None:
    raise NonRetryableError("sold out")


@workflow(name="test.enormous.undos")
def many_undos(ctx: Any, n: int) -> None:
    for i in range(n):
        ctx.run(take, f"n{i}")
    ctx.run(give_up)


def test_error_dict_cuts_the_message_and_says_how_long_it_was() -> None:
    err = error_dict(ValueError("x" * 123_456))
    assert len(err["message"]) < MESSAGE_LIMIT + 100
    assert err["message"].startswith("x" * MESSAGE_LIMIT)
    assert "x" * (MESSAGE_LIMIT + 1) not in err["message"]
    assert err["message"].endswith("[message cut: 123,456 characters in all]")
    short = error_dict(ValueError("short"))
    assert short["message"] == "short"
    # Up to the slack a message is whole: one that wraps a cut message keeps its note.
    edge = "y" * (MESSAGE_LIMIT + MESSAGE_SLACK)
    assert error_dict(ValueError(edge))["message"] == edge
    wrapped = error_dict(RuntimeError(f"step 'x' failed: ValueError: {err['message']}"))
    assert wrapped["message"].endswith("[message cut: 123,456 characters in all]")


def test_a_huge_message_is_cut_on_the_step_the_run_the_pages_and_the_api(
    people: People, bell: Bell
) -> None:
    run = start(shouting, {"size": HUGE}, tenant="acme")
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed"
    # The run's StepFailed wraps the step's cut message, whose note it keeps.
    assert len(run.error["message"]) < MESSAGE_LIMIT + MESSAGE_SLACK
    assert run.error["message"].endswith("[message cut: 1,000,000 characters in all]")
    row = Step.objects.get(run=run, name="shout")
    assert len(row.error["message"]) < MESSAGE_LIMIT + 100
    assert len(json.dumps(run.error)) < 20_000 and len(json.dumps(row.error)) < 20_000

    c = people.client(people.ops)
    page = c.get(f"/runs/{run.pk}/")
    assert page.status_code == 200
    assert len(page.content) < 300_000
    assert "1,000,000 characters" in page.content.decode()

    _, raw = create_api_key("svc", scopes=SCOPES, tenant="acme")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    got = c.get(f"/api/runs/{run.pk}", **auth)
    assert got.status_code == 200 and len(got.content) < 30_000
    steps = c.get(f"/api/runs/{run.pk}/steps", **auth)
    assert steps.status_code == 200 and len(steps.content) < 30_000


def test_the_run_page_cuts_an_error_recorded_before_the_cut(people: People) -> None:
    """A run's error written before (or by something else than) ``error_dict``: the page shows
    the start of its message and of at most 20 failed undos, and says how many there were."""
    run = Run.objects.create(
        workflow="wf",
        status="failed",
        input={},
        finished_at=timezone.now(),
        error={
            "type": "CompensationFailed",
            "message": "M" * 200_000,
            "undos_failed": [f"undo u{i} of step {i} failed: " + "U" * 2000 for i in range(30)],
        },
    )
    page = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    assert "M" * 5000 in page and "M" * 5100 not in page
    assert "undo u19 of" in page and "undo u20 of" not in page
    assert "U" * 600 not in page
    assert "The first 20 of 30 failed undos" in page
    assert len(page) < 100_000


def test_a_compensation_lists_the_first_failed_undos_and_counts_them_all(
    people: People, bell: Bell
) -> None:
    run = start(many_undos, {"n": 25})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["type"] == "CompensationFailed"
    assert len(run.error["undos_failed"]) == 20
    assert run.error["undos_failed_count"] == 25
    assert run.error["message"].startswith("compensation failed: 25 undo(s) did not succeed")
    # The last completed is undone first.
    assert "n24" in run.error["undos_failed"][0]
    page = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    assert "The first 20 of 25 failed undos" in page


def test_the_ops_overview_reads_only_the_start_of_each_failure(people: People) -> None:
    now = timezone.now()
    big = Run.objects.create(
        workflow="wf",
        status="failed",
        input={},
        finished_at=now,
        error={"type": "Boom", "message": "B" * 100_000, "traceback": "T" * 8000},
    )
    odd = Run.objects.create(workflow="wf", status="failed", input={}, finished_at=now, error=None)
    with CaptureQueriesContext(connection) as ctx:
        failures = ops.attention(now)["failures"]
    assert {r.pk for r in failures} == {big.pk, odd.pk}
    shown = next(r for r in failures if r.pk == big.pk)
    assert shown.error["type"] == "Boom"
    assert shown.error["message"] == "B" * ops.FAILURE_TEXT
    assert next(r for r in failures if r.pk == odd.pk).error == {"type": "", "message": ""}
    # The error column itself is never selected, only the start of its texts.
    listing = [q["sql"] for q in ctx.captured_queries if "workflows_run" in q["sql"]][0]
    assert not re.search(r'(SELECT |, )"workflows_run"\."error"(,| FROM)', listing), listing
    assert "SUBSTR" in listing.upper(), listing

    page = people.client(people.ops).get("/ops/").content.decode()
    part = page[page.index("Recent failures") :]
    assert "Boom: " + "B" * 139 + "…" in part
    assert "B" * 141 not in part


def loud_hook(run: Any) -> None:
    raise RuntimeError("B" * HUGE)


@workflow(name="test.enormous.quiet")
def quiet(ctx: Any) -> int:
    return 1


def test_an_on_complete_hooks_error_is_cut_too(bell: Bell) -> None:
    """Found by the final read: a hook's error was recorded on the run whole."""
    run = start(quiet, {}, on_complete="tests.operators.test_enormous_errors.loud_hook")
    bell.settle()
    recorded = get_run(run.pk).error["on_complete"]
    assert len(recorded) < MESSAGE_LIMIT + MESSAGE_SLACK + 100
    assert "message cut" in recorded
