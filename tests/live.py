"""Real Celery worker and beat processes for integration tests.

They run against the test database (the same PostgreSQL database pytest-django created) and
the Redis broker from CELERY_BROKER_URL, importing the test workflows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def database_url() -> str:
    s = connection.settings_dict
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def flush_broker() -> None:
    import redis

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@cache
def can_unshare_uts() -> bool:
    """Whether this process may start children in their own UTS namespace (own hostname)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = ["unshare", "--uts", "sh", "-c", "hostname sluice-probe"]
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


def on_host(host: str | None, cmd: list[str], env: dict[str, str]) -> list[str]:
    """``cmd`` as run on the simulated machine ``host``: in a UTS namespace with that hostname
    when allowed (root), else under SLUICE_HOST_ID=host (set in ``env``)."""
    if host is None:
        return cmd
    if can_unshare_uts():
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]
    env["SLUICE_HOST_ID"] = host
    return cmd


class LiveProcesses:
    """Start and stop worker/beat processes; each in its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "SLUICE_WORKFLOW_MODULES": "tests.sample_workflows",
            "SLUICE_SWEEP_INTERVAL": "1",
            "SLUICE_LEASE_SECONDS": "4",
            "SLUICE_DOORBELL_GRACE_SECONDS": "3",
            "SLUICE_VAR_DIR": str(tmp / "var"),
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.env.pop("SLUICE_TEST_DB_NAME", None)

    def worker(
        self,
        name: str = "w1",
        concurrency: int = 2,
        queues: str = "default,llm,limited",
        pool: str = "prefork",
        host: str | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        """A worker; with ``host`` in a process tree of its own that calls itself ``host``."""
        log = open(self.tmp / f"worker-{name}.log", "ab")
        self.files.append(log)
        penv = {**self.env, **env}
        cmd = on_host(
            host,
            [
                CELERY,
                "-A",
                "config",
                "worker",
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "-P",
                pool,
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
            ],
            penv,
        )
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=penv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def beat(self, host: str | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / "beat.log", "ab")
        self.files.append(log)
        env = dict(self.env)
        cmd = [CELERY, "-A", "config", "beat", "-s", str(self.tmp / "beat-schedule"), "-l", "info"]
        proc = subprocess.Popen(
            on_host(host, cmd, env),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for proc in self.procs:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        for fh in self.files:
            fh.close()
        self.files.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
