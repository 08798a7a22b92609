"""Two worker "hosts" on one PostgreSQL and one Redis; one of them dies whole.

Each host is a process tree of its own (its own session and process group) that calls itself
``host-a`` or ``host-b``: a UTS namespace with that hostname when the tests run as root
(``unshare --uts``), else SLUICE_HOST_ID. Lease owner ids start with the host, so the database
says which machine holds which run. The beat runs on host B. Every process of host A (the
worker and its pool children) is SIGKILLed while it advances runs: host B must finish them
within the lease plus one sweep (plus slack for a loaded 2-core machine and B's own steps).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.live import can_unshare_uts, wait_until
from workflows import get_run, start
from workflows.models import Run, Step

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEASE = 4.0  # SLUICE_LEASE_SECONDS of tests.live.LiveProcesses
SWEEP = 1.0  # SLUICE_SWEEP_INTERVAL of tests.live.LiveProcesses
SLACK = 30.0
# What the test measured, for the terminal summary (tests/conftest.py).
FIGURES: dict[str, Any] = {}


def ready(log: Path) -> bool:
    return log.exists() and " ready." in log.read_text(errors="replace")


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def holders(run_ids: list[Any]) -> dict[Any, str]:
    """run id -> the host holding its lease ("" when none)."""
    rows = Run.objects.filter(pk__in=run_ids).values_list("pk", "status", "lease_owner")
    return {pk: (owner.split(":")[0] if status == "running" else "") for pk, status, owner in rows}


def test_a_host_killed_whole_has_its_runs_finished_by_the_other(live: Any, tmp_path: Path) -> None:
    # Each host has settings of its own: its var dir (files, filesystem fallbacks).
    a = live.worker("a", host="host-a", SLUICE_VAR_DIR=str(tmp_path / "host-a"))
    b = live.worker("b", host="host-b", concurrency=4, SLUICE_VAR_DIR=str(tmp_path / "host-b"))
    live.beat(host="host-b")
    wait_until(lambda: ready(tmp_path / "worker-a.log"), 60, 0.2, "host A's worker ready")
    wait_until(lambda: ready(tmp_path / "worker-b.log"), 60, 0.2, "host B's worker ready")
    if can_unshare_uts():  # the node names carry each namespace's own hostname
        assert "a@host-a" in (tmp_path / "worker-a.log").read_text()
        assert "b@host-b" in (tmp_path / "worker-b.log").read_text()
        assert socket.gethostname() not in ("host-a", "host-b")

    # The test process itself is neither host.
    assert not Run.objects.filter(lease_owner__startswith=f"{socket.gethostname()}:").exists()
    # Runs of ~6 s started one by one until each host holds one; host B (4 slots to A's 2)
    # keeps a slot free for A's work, so the takeover measures the lease and the sweep, not
    # a queue.
    ids: list[Any] = []
    while not {"host-a", "host-b"} <= set(holders(ids).values()):
        assert len(ids) < 5, f"a host took none of {len(ids)} runs: {holders(ids)}"
        ids.append(start("test.nap_chain", {"n": 6, "seconds": 1}).pk)
        wait_until(lambda: holders(ids[-1:])[ids[-1]], 30, 0.05, "the new run to be taken")
    held_by_a = [pk for pk, host in holders(ids).items() if host == "host-a"]

    os.killpg(a.pid, signal.SIGKILL)  # the worker and its pool children: the whole host
    killed_at, killed_wall = time.monotonic(), timezone.now()
    a.wait(timeout=10)
    wait_until(lambda: not group_alive(a.pid), 10, 0.1, "every process of host A to be gone")

    taken: dict[Any, float] = {}

    def all_taken_over() -> bool:
        now = time.monotonic() - killed_at
        for pk, host in holders(held_by_a).items():
            if pk not in taken and (host == "host-b" or get_run(pk).is_terminal):
                taken[pk] = now
        return len(taken) == len(held_by_a)

    assert held_by_a and b.poll() is None
    wait_until(all_taken_over, LEASE + SWEEP + SLACK, 0.1, "host B to take host A's runs over")
    takeover = max(taken.values())
    wait_until(
        lambda: Run.objects.filter(pk__in=ids, status="succeeded").count() == len(ids),
        LEASE + SWEEP + SLACK + 30,
        0.2,
        "every run to succeed",
    )
    finished = time.monotonic() - killed_at
    summary = (
        f"host A held {len(held_by_a)} of {len(ids)} runs; host B took them over "
        f"{takeover:.1f} s after the SIGKILL (lease {LEASE:g} s + sweep {SWEEP:g} s), every run "
        f"had succeeded {finished:.1f} s after it"
    )
    print(f"\nmulti-host failover: {summary}")
    FIGURES["summary"] = summary
    FIGURES["takeover_s"] = round(takeover, 1)
    FIGURES["finished_s"] = round(finished, 1)

    for pk in ids:
        assert get_run(pk).output == 6
        # Host A's unfinished step was redone once at most, nothing finished was redone.
        steps = Step.objects.filter(run_id=pk)
        assert steps.count() == 6
        assert all(s.attempt <= 2 for s in steps)
        assert steps.filter(attempt=2).count() <= 1
    # Host A's runs were unfinished when it died: host B, the only host left, finished them.
    for pk in held_by_a:
        assert Run.objects.get(pk=pk).finished_at > killed_wall
        assert Step.objects.filter(run_id=pk, finished_at__gt=killed_wall).exists()
