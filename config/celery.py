"""The Celery application, configured the documented Django way.

Messages are doorbells ("look at run X"); every fact lives in the database, and the sweep
rings again for work whose doorbell went unanswered. The broker settings (config/settings.py)
ack late, put a message back when a worker stops or loses a child, and prefetch one; kombu's
ack emulation on Redis is off (SLUICE_BROKER_ACK_EMULATION), since the sweep, not a Redis copy
of the message, is what recovers a doorbell a killed worker had taken.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, platforms
from celery.beat import PersistentScheduler
from celery.signals import (
    beat_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_shutting_down,
)
from celery.utils.time import maybe_make_aware
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Celery's Django fixup runs every Django system check when a worker starts, and drops what
# they report. The URL checks among them import the web side (every view, API schema and the
# OIDC client), which a worker never serves: a third of a worker's start-up, paid again by
# each worker started to replace a lost one. The fixup is told to skip the checks;
# ``_run_checks`` runs the others and logs what they find.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

log = logging.getLogger("sluice.worker")

# filesystem:// (the embedded broker) is kombu's transport with whole-file writes (config.fsbroker).
TRANSPORT_ALIASES["filesystem"] = "config.fsbroker:Transport"

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes every database connection before and after each task unless
# told otherwise; reconnecting (and re-preparing the engine's statements) costs more than the
# task itself. Keep connections and let Django's own CONN_MAX_AGE / health checks decide
# (the handlers below), the way a request does.
app.conf.CELERY_DB_REUSE_MAX = 1_000_000
app.autodiscover_tasks()


class Scheduler(PersistentScheduler):
    """Celery's beat scheduler, kept in its file (so the hourly prune still runs when beat is
    restarted more often than hourly), with one change: a last run saved in the future is
    taken as now. Celery keeps it, and takes an entry whose last run is ahead of the clock
    as not due, so after the clock was set back, or with a var/ copied from a machine whose
    clock ran ahead, beat sent nothing (no sweep, no gate expiry, no outbox) until real time
    caught up, without a word. Set as ``CELERY_BEAT_SCHEDULER``."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        now = self.app.now()
        for name, entry in self.schedule.items():
            last = entry.last_run_at
            if last is not None and maybe_make_aware(last) > now:
                log.warning("beat: %s last ran at %s, after now; taking it as now", name, last)
                entry.last_run_at = now
        self.sync()


@worker_init.connect
def _run_checks(**kwargs: Any) -> None:
    from django.core import checks

    tags = sorted(checks.registry.registry.tags_available() - {checks.Tags.urls})
    for message in checks.run_checks(tags=tags):
        (log.error if message.is_serious() else log.warning)("%s", message)


@task_prerun.connect
def _recycle_connections(**kwargs: Any) -> None:
    from workflows.core import dbconn

    dbconn.recycle()


@task_postrun.connect
def _connections_used(**kwargs: Any) -> None:
    from workflows.core import dbconn

    dbconn.used()


# Created here, in the worker's main process before it forks its pool: the children share it.
from workflows.core import draining  # noqa: E402


@worker_shutting_down.connect
def _drain(**kwargs: Any) -> None:
    """A warm shutdown began: the engine finishes the step in hand and hands no more on
    (``workflows.core.draining``), so the shutdown ends within the longest step."""
    draining.begin()


@beat_init.connect
def _stop_beat_between_ticks(sender: Any, **kwargs: Any) -> None:
    """On SIGTERM/SIGINT, let beat finish the tick it is in and stop before the next one.

    Celery's own handler raises SystemExit wherever the signal lands; landing in the middle of
    publishing a message (the sweep is sent every SLUICE_SWEEP_INTERVAL seconds) it leaves the
    Redis connection half-read and beat exits with tracebacks and status 1. Setting the
    service's shutdown flag instead ends the loop after at most one interval (its schedule is
    saved on the way out, as before)."""

    def stop(signum: Any, frame: Any) -> None:
        sender.stop()

    platforms.signals.update(SIGTERM=stop, SIGINT=stop)


def _metrics_observer(name: str, **fields: Any) -> None:
    """Feeds config.metrics from the engine's instrumentation events, in every process that
    loads this app (web, workers, beat, manage.py). Imported on the first event, so a process
    that never runs a step never loads prometheus-client."""
    global _metrics
    if _metrics is None:
        from config import metrics

        _metrics = metrics
    _metrics.observe(name, **fields)


_metrics: Any = None


def _install_instrumentation() -> None:
    from workflows.core import instrument

    instrument.observe(_metrics_observer)


_install_instrumentation()
