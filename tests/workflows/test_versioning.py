"""Versioning across a deploy: the recipes of docs/engine.md ("Versions and in-flight runs"),
executed as written, against runs that were suspended at a wait when the code changed.

A "deploy" here is what a worker restart does: the module's workflows are forgotten and the
module is executed again from the documentation's code blocks, so nothing registered by the old
code survives unless the new code registers it (an old handler kept as ``name@N``).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support import Bell
from workflows import get_run, send_event, start, workflow
from workflows.core import definitions
from workflows.core.context import Context
from workflows.models import Run, Step, StepKind

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

ENGINE_MD = (Path(__file__).resolve().parents[2] / "docs" / "engine.md").read_text()
MODULE = "docs_versioning_example"
NAME = "docs.letter"


def blocks() -> dict[str, str]:
    """The python blocks of the section, by their first line (``# version 1`` …)."""
    start_at = ENGINE_MD.index("## Versions and in-flight runs")
    end_at = ENGINE_MD.index("\n## ", start_at + 3)
    found = {}
    for code in re.findall(r"```python\n(.*?)```", ENGINE_MD[start_at:end_at], re.S):
        first = code.splitlines()[0]
        assert first.startswith("# "), first
        found[first[2:].strip()] = code
    return found


def forget() -> None:
    definitions._workflows.pop(NAME, None)
    versions = getattr(definitions, "_versions", {})
    for key in [k for k in versions if k[0] == NAME]:
        del versions[key]


def deploy_source(code: str) -> None:
    """A new worker process: forget every handler of the example workflow, then execute the
    shared steps and ``code`` as one module."""
    forget()
    module = types.ModuleType(MODULE)
    sys.modules[MODULE] = module
    source = blocks()["steps"] + "\n" + code
    exec(compile(source, "docs/engine.md", "exec"), module.__dict__)


def deploy(name: str) -> None:
    """A new worker process with the documented code block ``name``."""
    deploy_source(blocks()[name])


@pytest.fixture(autouse=True)
def _forget() -> Any:
    yield
    forget()
    sys.modules.pop(MODULE, None)


def journal(run: Run) -> list[tuple[str, str]]:
    return [
        (s.kind, s.name)
        for s in Step.objects.filter(run=run, superseded=False, branch=-1).order_by("position")
    ]


def suspended_at_wait(bell: Bell) -> Run:
    run = start(NAME, {"text": "hello world"})
    bell.settle()
    run.refresh_from_db()
    assert run.status == "suspended", run.error
    return run


def approve(bell: Bell, run: Run) -> Run:
    send_event(run.pk, "approved", True)
    bell.settle()
    return get_run(run.pk)


def test_the_documented_blocks_are_there() -> None:
    assert set(blocks()) == {
        "steps",
        "version 1",
        "version 2, pinned",
        "version 1, patched",
        "version 1, patch deprecated",
    }


def test_pin_by_version_keeps_in_flight_runs_on_their_handler(bell: Bell) -> None:
    deploy("version 1")
    old = suspended_at_wait(bell)
    assert old.version == 1

    deploy("version 2, pinned")  # the deploy, while ``old`` waits
    new = suspended_at_wait(bell)
    assert new.version == 2

    old = approve(bell, old)
    assert old.status == "succeeded", old.error
    assert old.output == {"letter": "DRAFT OF HELLO WORLD", "approved": True}
    new = approve(bell, new)
    assert new.status == "succeeded", new.error
    assert new.output == {"letter": "DRAFT OF HELLO / WORLD", "approved": True, "points": 2}
    # The kept handler is not a workflow of its own: it cannot be started or listed.
    assert "docs.letter@1" not in definitions.registered_workflows()


def test_without_the_kept_handler_the_old_run_fails_loudly(bell: Bell) -> None:
    deploy("version 1")
    old = suspended_at_wait(bell)
    code = blocks()["version 2, pinned"]
    deploy_source(code[: code.index('@workflow(name="docs.letter@1")')])  # not kept
    old = approve(bell, old)
    assert old.status == "failed"
    assert old.error["type"] == "DeterminismError"
    assert "position 1" in old.error["message"]


def test_patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new(bell: Bell) -> None:
    deploy("version 1")
    old = suspended_at_wait(bell)

    deploy("version 1, patched")
    new = suspended_at_wait(bell)
    assert journal(new)[0] == (StepKind.PATCH, "outline-first")

    old = approve(bell, old)
    assert old.status == "succeeded", old.error
    assert old.output == {"letter": "DRAFT OF HELLO WORLD", "approved": True}
    assert [k for k, _ in journal(old)] == ["step", "event", "step"]  # no marker: old path
    new = approve(bell, new)
    assert new.status == "succeeded", new.error
    assert new.output == {"letter": "DRAFT OF HELLO / WORLD", "approved": True}
    assert journal(new) == [
        ("patch", "outline-first"),
        ("step", "outline"),
        ("step", "draft"),
        ("event", "approved"),
        ("step", "polish"),
    ]


def test_deprecate_patch_replays_patched_runs_and_refuses_pre_patch_ones(bell: Bell) -> None:
    deploy("version 1")
    pre_patch = suspended_at_wait(bell)
    deploy("version 1, patched")
    patched = suspended_at_wait(bell)

    deploy("version 1, patch deprecated")
    fresh = suspended_at_wait(bell)
    assert journal(fresh)[0] == (StepKind.PATCH, "outline-first")

    patched = approve(bell, patched)
    assert patched.status == "succeeded", patched.error
    assert patched.output["letter"] == "DRAFT OF HELLO / WORLD"
    fresh = approve(bell, fresh)
    assert fresh.status == "succeeded", fresh.error
    pre_patch = approve(bell, pre_patch)
    assert pre_patch.status == "failed"
    assert pre_patch.error["type"] == "DeterminismError"
    assert "patch 'outline-first' is deprecated" in pre_patch.error["message"]


def test_markers_nobody_asks_for_are_skipped(bell: Bell) -> None:
    """After the deprecate_patch line is removed too, runs that journaled a marker replay."""
    deploy("version 1, patched")
    run = suspended_at_wait(bell)
    code = blocks()["version 1, patch deprecated"].replace(
        '    ctx.deprecate_patch("outline-first")\n', ""
    )
    deploy_source(code)
    run = approve(bell, run)
    assert run.status == "succeeded", run.error
    assert run.output["letter"] == "DRAFT OF HELLO / WORLD"


@workflow(name="test.versioning.twice")
def asks_twice(ctx: Any) -> list[bool]:
    a = ctx.patched("p")
    b = ctx.patched("p")
    ctx.sleep(0)
    return [a, b]


def test_asking_twice_gives_one_answer_and_one_marker(bell: Bell) -> None:
    run = start("test.versioning.twice")
    bell.settle()
    run.refresh_from_db()
    assert run.output == [True, True]
    assert journal(run) == [("patch", "p"), ("sleep", "sleep")]


def test_a_bad_patch_id_is_refused() -> None:
    with pytest.raises(ValueError):
        Context._check_patch_id("")
    with pytest.raises(ValueError):
        Context._check_patch_id("x" * 201)
