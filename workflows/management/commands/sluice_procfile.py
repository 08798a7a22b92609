"""``manage.py sluice_procfile``: run the production topology of the Procfile on this machine.

What ``make prod-local`` ends with, and what tests/deploy/test_prod_local.py drives. The
Procfile is the one source of truth: this command adds nothing to its commands.

1. Read the Procfile (``name: command`` lines; ``#`` comments). Each command runs through
   ``/bin/sh -c 'exec …'`` with this virtualenv's ``bin`` first on PATH, so ``python``,
   ``gunicorn`` and ``celery`` are the pinned ones and ``${VAR:-default}`` works as in any
   Procfile runner.
2. Empty ``PROMETHEUS_MULTIPROC_DIR`` (default ``$SLUICE_VAR_DIR/prometheus``; it must be set
   and empty before any process starts) so the metrics of every process add up. A lock file
   beside it (``prometheus.lock``) is held while this command runs: a second one started by
   mistake stops there, instead of emptying the first one's directory under its running
   processes and then failing to bind the port.
3. Run ``release`` (migrations, collectstatic) to completion; stop if it fails.
4. Start every other process and supervise them as ``sluice_dev`` does: output prefixed with
   the process's name; SIGINT/SIGTERM stop them all with SIGTERM (gunicorn finishes its
   requests, Celery workers their current tasks: a warm shutdown), SIGKILL after ``--grace``
   seconds; if one dies by itself the others are stopped and the command fails.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from workflows.management.commands.sluice_dev import Child
from workflows.management.commands.sluice_dev import Command as DevCommand

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
MAX_GRACE = 24 * 3600.0


def grace_seconds(raw: str) -> float:
    """``--grace``: a finite number of seconds from 0 to a day. ``nan`` compared false with
    every deadline, so the processes were never sent SIGKILL; ``inf`` means the same."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_GRACE):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds from 0 to {MAX_GRACE:g}, not {raw!r}"
        )
    return value


def lock_metrics_dir(metrics_dir: Path) -> IO[bytes]:
    """Hold ``<metrics_dir>.lock`` (an exclusive ``flock``, released when this process ends,
    however it ends); CommandError when another sluice_procfile holds it."""
    metrics_dir.parent.mkdir(parents=True, exist_ok=True)
    path = metrics_dir.with_name(metrics_dir.name + ".lock")
    handle = open(path, "ab")  # noqa: SIM115  (held open for the command's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise CommandError(
            f"another sluice_procfile is running with PROMETHEUS_MULTIPROC_DIR={metrics_dir} "
            f"(it holds {path}): stop it first, or give this one its own "
            "PROMETHEUS_MULTIPROC_DIR and PORT"
        ) from None
    return handle


def read_procfile(path: Path) -> dict[str, str]:
    """The Procfile's processes in order: {name: command}."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if match is None:
            raise CommandError(f"{path}:{number}: not a 'name: command' line: {raw!r}")
        name, command = match.groups()
        if name in processes:
            raise CommandError(f"{path}:{number}: process {name!r} is defined twice")
        processes[name] = command
    return processes


def process_env(var_dir: Path) -> dict[str, str]:
    """The environment every process gets: ours, the virtualenv first on PATH, unbuffered
    output, and the shared metrics directory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env.setdefault("SLUICE_VAR_DIR", str(var_dir))
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(var_dir / "prometheus"))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def shell(command: str, replace: bool = True) -> list[str]:
    """The command through ``sh -c``; ``exec`` it when it is one long-running process, so the
    signals this supervisor sends reach it and not a shell in between (``release`` chains
    several commands with ``&&`` and runs as it is)."""
    return ["/bin/sh", "-c", f"exec {command}" if replace else command]


class Command(DevCommand):
    help = "Run the Procfile's processes (release first) on this machine; Ctrl-C stops them all."
    label = "sluice_procfile"
    # The processes run Django's checks themselves; the supervisor loads no URLconf (nor the
    # metrics module, which would write into the metrics directory before it is emptied).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--procfile", default=None, help="the Procfile to run (default: the checkout's)"
        )
        parser.add_argument(
            "--skip", action="append", default=[], help="a process not to start (repeatable)"
        )
        parser.add_argument(
            "--create-database",
            action="store_true",
            help="create the PostgreSQL database of DATABASE_URL first if it does not exist",
        )
        parser.add_argument(
            "--grace",
            type=grace_seconds,
            default=30.0,
            help="seconds the processes get to stop after SIGTERM before SIGKILL (0 to 86400)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base_dir = Path(settings.BASE_DIR)
        procfile = Path(options["procfile"] or base_dir / "Procfile")
        if not procfile.is_file():
            raise CommandError(f"no Procfile at {procfile}")
        processes = read_procfile(procfile)
        for name in options["skip"]:
            processes.pop(name, None)
        self.grace = float(options["grace"])
        var_dir = Path(getattr(settings, "VAR_DIR", base_dir / "var"))
        env = process_env(var_dir)
        metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        # First of all, and before emptying the directory: another instance's processes may
        # be writing there.
        with lock_metrics_dir(metrics_dir):
            self.run_processes(processes, procfile, env, metrics_dir, options)

    def run_processes(
        self,
        processes: dict[str, str],
        procfile: Path,
        env: dict[str, str],
        metrics_dir: Path,
        options: dict[str, Any],
    ) -> None:
        base_dir = Path(settings.BASE_DIR)
        if options["create_database"]:
            self.create_database()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)

        release = processes.pop("release", None)
        if release:
            self.say(f"release: {release}")
            done = subprocess.run(shell(release, replace=False), cwd=base_dir, env=env, check=False)
            if done.returncode:
                raise CommandError(f"release failed (exit {done.returncode}); nothing started")
        if not processes:
            raise CommandError(f"{procfile} names no process to run")
        children = [Child(name, shell(command)) for name, command in processes.items()]
        os.environ.update(
            {k: env[k] for k in ("PROMETHEUS_MULTIPROC_DIR", "SLUICE_VAR_DIR", "PATH")}
        )
        code = self.supervise(children, cwd=base_dir)
        if code:
            raise CommandError(f"sluice_procfile stopped because a process died (exit {code})")

    def create_database(self) -> None:
        """CREATE DATABASE for DATABASE_URL's name when PostgreSQL does not have it yet
        (connecting to the server's ``postgres`` database with the same credentials)."""
        db = settings.DATABASES["default"]
        if not db["ENGINE"].endswith("postgresql"):
            return
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        params = {
            "host": db.get("HOST") or "127.0.0.1",
            "port": db.get("PORT") or 5432,
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
            "dbname": "postgres",
            "connect_timeout": 5,
        }
        conninfo = make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
        with psycopg.connect(conninfo, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
                self.say(f"created database {db['NAME']}")
