"""Run web + worker + beat together for local development (what ``make run`` ends with).

1. Start three child processes from this checkout, each in its own session so a Ctrl-C in the
   terminal reaches only this supervisor (a Celery worker that got SIGINT twice would do a cold
   shutdown instead of a warm one):
   - web: ``manage.py runserver HOST:PORT --noreload``
   - worker: ``celery -A config worker -Q <queues> -c N -l warning``
   - beat: ``celery -A config beat -s var/celerybeat-schedule``
2. Prefix every line they print with the process's name.
3. On SIGINT/SIGTERM/SIGHUP, send SIGTERM to all three, wait for them (a worker finishes its
   current step), and SIGKILL whatever is left after a grace period or a second Ctrl-C.
4. When any child dies by itself, say which and how, stop the other two and exit non-zero.

On Linux each child also asks the kernel for SIGTERM if this supervisor dies (even by SIGKILL),
so no orphan keeps consuming the queue.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

SHUTDOWN_GRACE_SECONDS = 15.0
POLL_SECONDS = 0.2
COLOURS = {"web": "\033[36m", "worker": "\033[33m", "beat": "\033[35m"}
RESET = "\033[0m"


def _default_queues() -> str:
    """The default queue plus the queue of each configured pool (``default,llm`` out of the
    box: the provider pools, ``llm-openai`` and the like, send their steps to ``llm``)."""
    from workflows.core.pools import queue_for

    names = [getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default")]
    names += [queue_for(name) for name in getattr(settings, "SLUICE_POOLS", {})]
    return ",".join(dict.fromkeys(names))


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


@dataclass
class Child:
    """One supervised process and the thread copying its output."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child itself (SIGKILL goes to its whole process group)."""
        if self.proc is None:
            return
        try:
            if sig == signal.SIGKILL:
                # The worker's pool processes share its group; leave none behind.
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


def describe_exit(code: int) -> str:
    """Turn a Popen return code into words ("exit code 1", "killed by SIGKILL")."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together; Ctrl-C stops all three."
    # Seconds the children get to stop after SIGTERM before SIGKILL.
    grace = SHUTDOWN_GRACE_SECONDS
    label = "sluice_dev"  # prefixes the supervisor's own lines

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="web bind address")
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="web port"
        )
        parser.add_argument(
            "--queues", default=None, help="worker queues (default: the default queue + pools)"
        )
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
        # Beat sends the sweep every two seconds; at "info" every tick fills the terminal.
        # Sluice's own loggers (workflows, reviews, pipelines) still log at SLUICE_LOG_LEVEL.
        parser.add_argument(
            "--loglevel",
            default=os.environ.get("CELERY_LOG_LEVEL", "warning"),
            help="Celery log level (CELERY_LOG_LEVEL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base_dir = Path(settings.BASE_DIR)
        var_dir = Path(getattr(settings, "VAR_DIR", base_dir / "var"))
        var_dir.mkdir(parents=True, exist_ok=True)
        queues = options["queues"] or _default_queues()
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "config"]
        children = [
            Child(
                "web",
                [
                    py,
                    str(base_dir / "manage.py"),
                    "runserver",
                    f"{options['host']}:{options['port']}",
                    "--noreload",
                ],
            ),
            Child(
                "worker",
                [
                    *celery,
                    "worker",
                    "-Q",
                    queues,
                    "-c",
                    str(options["concurrency"]),
                    "-l",
                    options["loglevel"],
                    "-n",
                    "sluice-dev@%h",
                ],
            ),
            Child(
                "beat",
                [
                    *celery,
                    "beat",
                    "-l",
                    options["loglevel"],
                    "-s",
                    str(var_dir / "celerybeat-schedule"),
                ],
            ),
        ]
        code = self.supervise(children, cwd=base_dir)
        if code:
            raise CommandError(f"sluice_dev stopped because a process died (exit {code})")

    def supervise(self, children: list[Child], cwd: Path) -> int:
        """Start ``children``, wait for a signal or a death, stop them all; return the exit code."""
        stop_requested: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            stop_requested.append(signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # Under nohup, SIGHUP is ignored on purpose: closing the terminal must not stop us.
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            signal.signal(sig, on_signal)

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        preexec = _die_with_parent()
        colour = sys.stdout.isatty()
        # Start every process before any output thread: preexec_fn is not safe to run while
        # other threads exist.
        for child in children:
            self.say(f"starting {child.name}: {' '.join(child.argv)}")
            child.proc = subprocess.Popen(
                child.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        for child in children:
            assert child.proc is not None and child.proc.stdout is not None
            child.pump = threading.Thread(
                target=self.pump, args=(child.name, child.proc.stdout, colour), daemon=True
            )
            child.pump.start()
        self.say(
            f"{' + '.join(c.name for c in children)} running; Ctrl-C stops them all "
            f"(pids {', '.join(f'{c.name}={c.proc.pid}' for c in children if c.proc)})"
        )

        exit_code = 0
        try:
            while not stop_requested:
                dead = [c for c in children if not c.alive]
                if dead:
                    for c in dead:
                        assert c.proc is not None
                        how = describe_exit(c.proc.returncode)
                        self.say(f"{c.name} (pid {c.proc.pid}) died: {how}")
                    self.say("stopping the others")
                    exit_code = 1
                    break
                time.sleep(POLL_SECONDS)
            else:
                name = signal.Signals(stop_requested[0]).name
                self.say(f"got {name}; stopping {', '.join(c.name for c in children)}")
        finally:
            # Whatever happened here (our output gone with a `| tee` killed by the same
            # Ctrl-C), the children are stopped.
            self.stop_all(children, stop_requested)
        for child in children:
            if child.pump is not None:
                child.pump.join(timeout=2)
        return exit_code

    def stop_all(self, children: list[Child], stop_requested: list[int]) -> None:
        """SIGTERM every live child; SIGKILL the rest after the grace period or a 2nd signal."""
        already = len(stop_requested)
        for child in children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(c.alive for c in children):
            if time.monotonic() > deadline or len(stop_requested) > already:
                left = ", ".join(c.name for c in children if c.alive)
                self.say(f"killing {left}")
                break
            time.sleep(POLL_SECONDS)
        for child in children:
            # Also sweeps up pool processes a worker may have left in its group.
            child.signal(signal.SIGKILL)
            if child.proc is not None:
                child.proc.wait()
                self.say(f"{child.name} stopped ({describe_exit(child.proc.returncode)})")

    def pump(self, name: str, stream: IO[bytes], colour: bool) -> None:
        """Copy a child's output to ours, each line prefixed with the child's name."""
        prefix = f"{COLOURS.get(name, '')}{name:>6} |{RESET} " if colour else f"{name:>6} | "
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                sys.stdout.write(f"{prefix}{line}\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # our output is gone (a pipe's reader died): keep draining the child's
        stream.close()

    def say(self, message: str) -> None:
        """Print a supervisor message, if there is still somewhere to print it."""
        try:
            self.stdout.write(f"{self.label}: {message}")
            self.stdout.flush()
        except (OSError, ValueError):
            pass
