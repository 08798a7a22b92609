"""``manage.py sluice_dev`` (what ``make run`` starts): the supervisor of web, worker and beat.
Found by review: ``nohup make run &`` stopped when its terminal closed, Ctrl-C on
``make run | tee run.log`` crashed the supervisor before it stopped anything, and the worker
listened on queues no message is ever sent to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflows.management.commands.sluice_dev import _default_queues

ROOT = Path(__file__).resolve().parents[2]

# A supervisor of two children that only sleep; it prints their pids and waits for a signal.
SUPERVISOR = """
import os, signal, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from workflows.management.commands.sluice_dev import Child, Command
if sys.argv[1] == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
command = Command()
command.grace = 2.0
children = [Child("web", ["sleep", "60"]), Child("worker", ["sleep", "60"])]
sys.exit(command.supervise(children, cwd=os.getcwd()))
"""


def _start(tmp_path: Path, mode: str, stdout: int | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SLUICE_VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, mode],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_for_children(proc: subprocess.Popen[bytes], n: int = 2) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = _children_of(proc.pid)
        if len(kids) >= n:
            return kids
        time.sleep(0.1)
    raise AssertionError("the supervisor did not start its children")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_the_worker_listens_on_the_queues_pools_send_to() -> None:
    assert _default_queues() == "default,llm"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pgrep and /proc")
def test_under_nohup_closing_the_terminal_does_not_stop_it(tmp_path: Path) -> None:
    proc = _start(tmp_path, "nohup", subprocess.DEVNULL)
    try:
        kids = _wait_for_children(proc)
        proc.send_signal(signal.SIGHUP)  # the terminal closed
        time.sleep(1.0)
        assert proc.poll() is None and all(_alive(k) for k in kids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(_alive(k) for k in kids)
    finally:
        _reap(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pgrep and /proc")
def test_ctrl_c_with_its_output_gone_still_stops_every_child(tmp_path: Path) -> None:
    """``make run | tee run.log``: the same Ctrl-C kills tee, so the supervisor's next line
    hits a closed pipe. It must still stop the children, without a traceback."""
    read, write = os.pipe()
    proc = _start(tmp_path, "tee", write)
    os.close(write)
    try:
        kids = _wait_for_children(proc)
        os.close(read)  # tee is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert not any(_alive(k) for k in kids)
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        _reap(proc)
