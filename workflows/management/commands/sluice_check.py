"""``manage.py sluice_check``: is this deployment able to make progress? Says what is not, in words.

Checks what ``/readyz`` checks (the database, the broker, pending migrations, the beat's last
sweep, a worker on every pool's queue) and prints one line per part. The queue check is the one
Celery never reports by itself: a queue no worker consumes just fills up while every run that
needs it waits forever, so each such queue gets a sentence with the command that fixes it.

Exit status 0 when everything is fine, 1 otherwise (for deploy scripts and cron).
``--only queues`` (repeatable) checks some parts alone; ``--wait SECONDS`` retries until they
pass or the time is up (a deploy waiting for its workers to come up).
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import health


class Command(BaseCommand):
    help = (
        "Check the database, broker, migrations, beat and that every pool queue has a worker; "
        "exit non-zero, with the fix in words, when something is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            action="append",
            choices=sorted(health.CHECKS),
            help="check only this part (repeatable)",
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            help="retry for up to this many seconds until every checked part passes",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = options["only"] or list(health.CHECKS)
        deadline = time.monotonic() + max(0.0, options["wait"])
        while True:
            health.clear_cache()
            results = self.run_checks(names)
            failing = [n for n, c in results.items() if not c.ok]
            if not failing or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        for name, check in results.items():
            if check.ok:
                self.stdout.write(f"ok    {name}")
            else:
                self.stdout.write(f"FAIL  {name}")
        for name in failing:
            for sentence in results[name].problems:
                self.stderr.write(f"{name}: {sentence}")
        if failing:
            raise CommandError(f"not ready: {', '.join(failing)} (see above)", returncode=1)

    def run_checks(self, names: list[str]) -> dict[str, health.Check]:
        results: dict[str, health.Check] = {}
        for name in names:
            if (
                name in ("migrations", "beat")
                and "database" in results
                and not results["database"].ok
            ):
                results[name] = health.Check(False, problem="skipped: the database does not answer")
                continue
            results[name] = health.CHECKS[name]()
        return results
