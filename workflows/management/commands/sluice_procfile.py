"""``manage.py sluice_procfile``: run the production topology of the Procfile on this machine.

What ``make prod-local`` ends with, and what tests/deploy/test_prod_local.py drives. The
Procfile is the one source of truth: this command adds nothing to its commands.

1. Read the Procfile (``name: command`` lines; ``#`` comments). Each command runs through
   ``/bin/sh -c 'exec …'`` with this virtualenv's ``bin`` first on PATH, so ``python``,
   ``gunicorn`` and ``celery`` are the pinned ones and ``${VAR:-default}`` works as in any
   Procfile runner.
2. Empty ``PROMETHEUS_MULTIPROC_DIR`` (default ``$SLUICE_VAR_DIR/prometheus``; it must be set
   and empty before any process starts) so the metrics of every process add up.
3. Run ``release`` (migrations, collectstatic) to completion; stop if it fails.
4. Start every other process and supervise them as ``sluice_dev`` does: output prefixed with
   the process's name; SIGINT/SIGTERM stop them all with SIGTERM (gunicorn finishes its
   requests, Celery workers their current tasks: a warm shutdown), SIGKILL after ``--grace``
   seconds; if one dies by itself the others are stopped and the command fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from workflows.management.commands.sluice_dev import Child
from workflows.management.commands.sluice_dev import Command as DevCommand

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


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
            type=float,
            default=30.0,
            help="seconds the processes get to stop after SIGTERM before SIGKILL",
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
        if options["create_database"]:
            self.create_database()
        var_dir = Path(getattr(settings, "VAR_DIR", base_dir / "var"))
        env = process_env(var_dir)
        metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
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
