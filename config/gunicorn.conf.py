"""Gunicorn settings for Sluice's web processes (the Procfile's ``web``; docs/deploy.md).

Every value can be changed from the environment, so one file serves every host:

- ``SLUICE_BIND`` (default ``127.0.0.1:$PORT``, ``PORT`` defaulting to 8000): where to listen.
  Behind a load balancer on another host use ``0.0.0.0:8000``.
- ``WEB_CONCURRENCY`` (default 2): worker processes; each holds at most one database
  connection (sync workers: one request at a time per process). Run with ``--threads N``
  (gunicorn then uses its gthread workers) and each thread holds one: WEB_CONCURRENCY × N.
- ``GUNICORN_TIMEOUT`` (default 30): seconds a request may take before its worker is replaced.
- ``GUNICORN_GRACEFUL_TIMEOUT`` (default 20), ``GUNICORN_MAX_REQUESTS`` (default 5000, 0: never
  recycle a worker).
- ``FORWARDED_ALLOW_IPS`` (default 127.0.0.1): proxies trusted to set X-Forwarded-* headers.

Each number is a whole number (empty: its default); anything else stops gunicorn at start
naming the variable.

Metrics: with ``PROMETHEUS_MULTIPROC_DIR`` set, each worker writes its counters to files there;
``child_exit`` tells prometheus-client a worker is gone (its counters stay counted).
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("SLUICE_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"


def _count(name: str, default: str, *, low: int = 1) -> int:
    """A whole number from the environment, ``low`` or more; anything else (``30s``) stops
    gunicorn at start naming the variable, not with a bare ValueError."""
    raw = os.environ.get(name, "").strip() or default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw[:40]!r} is not a whole number") from None
    if value < low:  # 0 workers listen and never answer, not even /healthz
        raise SystemExit(f"{name} must be {low} or more, not {raw!r}")
    return value


workers = _count("WEB_CONCURRENCY", "2")
worker_class = "sync"
# Seconds (0: gunicorn's "no timeout").
timeout = _count("GUNICORN_TIMEOUT", "30", low=0)
# On SIGTERM, requests in flight get this long to finish before their worker is killed.
graceful_timeout = _count("GUNICORN_GRACEFUL_TIMEOUT", "20", low=0)
keepalive = 5
# Recycle workers now and then (bounded memory growth), not all at once (0: never).
max_requests = _count("GUNICORN_MAX_REQUESTS", "5000", low=0)
max_requests_jitter = max_requests // 10
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"
# The app is loaded in each worker after the fork: no database connection or broker pool is
# ever shared between processes.
preload_app = False
proc_name = "sluice-web"
# Gunicorn's control socket has one path per user (~/.gunicorn/gunicorn.ctl), shared by every
# instance on the host: stopping one removed another's. Sluice does not use it.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
