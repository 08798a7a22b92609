"""Celery worker and beat processes for the benchmarks, each in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


class CeleryProcesses:
    """Start workers and a beat with ``env`` (plus per-worker extras); ``stop()`` ends them."""

    def __init__(self, logs: Path, env: dict[str, str] | None = None) -> None:
        self.logs = logs
        self.env = dict(env if env is not None else os.environ)
        self.procs: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [CELERY, "-A", "config", *args],
                cwd=ROOT,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(
        self, name: str, pool: str = "solo", concurrency: int = 1, **env: str
    ) -> subprocess.Popen[bytes]:
        """A worker on the ``default`` and ``llm`` queues."""
        return self._spawn(
            name,
            [
                "worker",
                "-Q",
                "default,llm",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ],
            env,
        )

    def beat(self) -> subprocess.Popen[bytes]:
        return self._spawn(
            "beat", ["beat", "-s", str(self.logs / "beat-schedule"), "-l", "warning"], {}
        )

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
