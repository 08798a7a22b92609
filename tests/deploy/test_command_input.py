"""Management commands of a deployment given what an operator's shell can give them: bytes
that are not UTF-8, a grace that is not a number of seconds, a second instance started by
mistake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.test_security_settings import ROOT
from workflows.models import ApiKey


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["svc\udcff", "--scopes", "runs:read"], "the key's name"),
        (["svc", "--scopes", "runs:read", "--tenant", "acme\udcfe"], "--tenant"),
        (["svc", "--scopes", "runs:read", "--pipelines", "x\udce9"], "--pipelines"),
    ],
)
def test_create_api_key_names_an_argument_that_is_not_utf8(args: list[str], named: str) -> None:
    """Bytes of argv that are not UTF-8 arrive as lone surrogates (``\\udcff``): PostgreSQL's
    driver failed on them with a UnicodeEncodeError traceback halfway through the insert."""
    with pytest.raises(CommandError, match=f"^{named} is not valid UTF-8: "):
        call_command("create_api_key", *args, stdout=StringIO())
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("grace", ["nan", "inf", "-1", "soon"])
def test_sluice_procfile_refuses_a_grace_that_is_not_seconds(grace: str) -> None:
    """``--grace nan`` compared false with every deadline: SIGKILL never came."""
    with pytest.raises(CommandError, match="--grace: must be a number of seconds from 0"):
        call_command("sluice_procfile", "--procfile", "/nonexistent/Procfile", "--grace", grace)


def _procfile(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "SLUICE_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "sluice_procfile", "--procfile", str(tmp_path / "Procfile")]
        + list(args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_running(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # the supervisor's "<names> running; Ctrl-C stops them all"
        if "running; Ctrl-C" in line:
            return
        assert time.monotonic() < deadline, "sluice_procfile did not start"
    raise AssertionError(f"sluice_procfile ended (exit {proc.wait()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_second_sluice_procfile_leaves_the_first_ones_metrics_alone(tmp_path: Path) -> None:
    """The second instance emptied the first one's PROMETHEUS_MULTIPROC_DIR under its running
    processes (their counters gone), then failed to bind the port: now it stops first."""
    (tmp_path / "Procfile").write_text("sleeper: sleep 120\n")
    first = _procfile(tmp_path, "--grace", "5")
    try:
        _wait_running(first)
        written = tmp_path / "prometheus" / "counter_4242.db"  # what a process writes there
        written.write_bytes(b"samples")
        second = _procfile(tmp_path, "--grace", "5")
        try:
            out, _ = second.communicate(timeout=60)
        finally:
            _stop(second)
        assert second.returncode != 0
        assert "another sluice_procfile is running" in out, out
        assert written.read_bytes() == b"samples"
        assert first.poll() is None  # the first one is untouched
    finally:
        _stop(first)
    # Its lock goes with it: the next start empties the directory and runs.
    third = _procfile(tmp_path, "--grace", "5")
    try:
        _wait_running(third)
        assert not written.exists()
    finally:
        _stop(third)
