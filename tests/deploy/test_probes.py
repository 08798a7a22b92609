"""/healthz, /readyz and ``manage.py sluice_check``, part by part (no worker processes here:
which queues have a consumer is what the workers would answer, stood in for by
``health.consumers``; tests/deploy/test_prod_local.py asks real ones)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from django.utils import timezone

from workflows import health
from workflows.core import clock
from workflows.models import Heartbeat

pytestmark = [pytest.mark.django_db]

EVERY_QUEUE = {"default": 1, "llm": 2}


@pytest.fixture
def parts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Every part healthy: a fresh sweep, the broker up, a worker on every queue. Tests
    change ``parts`` to break one."""
    state: dict[str, Any] = {"consumers": dict(EVERY_QUEUE), "broker": (True, "")}
    monkeypatch.setattr(health, "consumers", lambda: state["consumers"])
    monkeypatch.setattr(health, "_broker_ok", lambda: state["broker"])
    Heartbeat.objects.create(name="sweep", at=timezone.now(), detail={"rung": 0})
    health.clear_cache()
    yield state
    health.clear_cache()


def readyz(client: Client) -> tuple[int, dict[str, Any]]:
    health.clear_cache()
    resp = client.get("/readyz")
    assert resp["Content-Type"] == "application/json"
    assert "no-cache" in resp["Cache-Control"]
    return resp.status_code, resp.json()


def test_healthz_answers_without_touching_the_database(
    client: Client, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert client.post("/healthz").status_code == 405


def test_readyz_is_ready_when_every_part_is(client: Client, parts: dict[str, Any]) -> None:
    status, body = readyz(client)
    assert status == 200, body
    assert body["status"] == "ready" and body["failing"] == []
    checks = body["checks"]
    assert set(checks) == {"database", "broker", "migrations", "beat", "queues"}
    assert checks["migrations"] == {"ok": True, "pending": 0}
    assert checks["beat"]["ok"] and checks["beat"]["age_seconds"] < 5
    assert checks["queues"]["queues"]["llm"]["workers"] == 2
    assert "llm-openai" in checks["queues"]["queues"]["llm"]["pools"]


def test_probes_answer_head_and_a_trailing_slash_over_plain_http(
    client: Client, parts: dict[str, Any], settings: Any
) -> None:
    """Load balancers probe with HEAD (a 405 marked the process down), and a probe set up as
    ``/healthz/`` got a 301 to https (the redirect exemption was ``^healthz$``), which a
    probe behind the TLS proxy does not follow."""
    settings.SECURE_SSL_REDIRECT = True
    for path in ("/healthz", "/healthz/", "/readyz", "/readyz/"):
        health.clear_cache()
        got = client.get(path)  # plain http
        assert (got.status_code, got.get("Location")) == (200, None), path
        assert got.json()["status"] in ("ok", "ready")
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
    assert client.get("/runs/").status_code == 301  # every other page still goes to https
    assert client.options("/healthz").status_code == 405


def test_a_queue_without_a_worker_is_named_with_its_fix(
    client: Client, parts: dict[str, Any]
) -> None:
    parts["consumers"] = {"default": 1}
    status, body = readyz(client)
    assert status == 503
    assert body["failing"] == ["queues"]
    [problem] = body["checks"]["queues"]["problems"]
    assert "pool 'llm'" in problem and "(queue llm) has no worker" in problem
    assert "runs that need it will wait forever" in problem
    assert "start: celery -A config worker -Q llm" in problem

    parts["consumers"] = {}
    _, body = readyz(client)
    assert len(body["checks"]["queues"]["problems"]) == 2
    assert body["checks"]["queues"]["problems"][0].startswith(
        "pool 'default' and every run's doorbell, the sweep and the outbox (queue default) has no "
        "worker"
    )

    parts["consumers"] = None  # the workers could not be asked at all
    _, body = readyz(client)
    assert body["checks"]["queues"]["problems"] == [
        "could not ask the workers which queues they consume"
    ]


def test_a_stale_or_missing_sweep_fails_beat(
    client: Client, parts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    Heartbeat.objects.filter(name="sweep").update(at=timezone.now() - timedelta(minutes=5))
    with caplog.at_level("WARNING"):
        status, body = readyz(client)
    assert status == 503 and body["failing"] == ["beat"]
    # an answer, not a server error: one warning naming the part, no django.request ERROR
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("sluice.health", "WARNING", "not ready: beat")
    ]
    assert "celery -A config beat" in body["checks"]["beat"]["problems"][0]

    Heartbeat.objects.all().delete()
    status, body = readyz(client)
    assert status == 503 and body["checks"]["beat"]["last_sweep"] is None


def test_the_sweep_stamps_the_heartbeat() -> None:
    from config.celery import app

    Heartbeat.objects.all().delete()
    # The sweep stamps its pass with the engine's clock (the database's): the host's ``now``
    # may be a fraction of a millisecond ahead of it.
    before = clock.now()
    app.loader.import_default_modules()  # what a worker does at start: find the tasks
    app.tasks["workflows.sweep"]()  # the beat's own task, run here
    beat = Heartbeat.objects.get(name="sweep")
    assert beat.at >= before
    assert set(beat.detail) >= {"rung", "steps_reclaimed", "runs_reclaimed"}


def test_a_pending_migration_fails_readiness(client: Client, parts: dict[str, Any]) -> None:
    latest = MigrationRecorder.Migration.objects.filter(app="workflows").order_by("-id").first()
    assert latest is not None
    latest.delete()
    status, body = readyz(client)
    assert status == 503 and body["failing"] == ["migrations"]
    assert body["checks"]["migrations"]["pending"] == 1
    assert body["checks"]["migrations"]["names"] == [f"workflows.{latest.name}"]


def test_a_database_outage_is_named_without_its_details(
    client: Client, parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError('connection to "db.internal" failed: password=hunter2 rejected')

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    status, body = readyz(client)
    assert status == 503
    assert set(body["failing"]) == {"database", "migrations", "beat"}
    assert body["checks"]["database"]["problems"] == [
        "the database does not answer (OperationalError)"
    ]
    text = str(body)
    assert "hunter2" not in text and "db.internal" not in text


def test_a_broker_outage_fails_readiness(client: Client, parts: dict[str, Any]) -> None:
    parts["broker"] = (False, "the broker does not answer (OperationalError)")
    status, body = readyz(client)
    assert status == 503 and "broker" in body["failing"]


def test_with_the_broker_down_the_workers_are_not_asked(
    client: Client, parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking the workers goes through the broker; against a dead one it retried for ~6 s,
    so each probe held a web worker ~8 s."""
    parts["broker"] = (False, "the broker does not answer (OperationalError)")

    def ask_workers() -> dict[str, int]:
        raise AssertionError("the workers were asked through a broker that is down")

    monkeypatch.setattr(health, "consumers", ask_workers)
    status, body = readyz(client)
    assert status == 503 and {"broker", "queues"} <= set(body["failing"])
    assert body["checks"]["queues"]["problems"] == ["skipped: the broker does not answer"]


def test_readyz_shows_no_secret(client: Client, parts: dict[str, Any], settings: Any) -> None:
    _, body = readyz(client)
    text = str(body)
    assert settings.SECRET_KEY not in text
    assert settings.CELERY_BROKER_URL not in text
    assert str(settings.DATABASES["default"]["NAME"]) not in text


def test_sluice_check_passes_when_every_queue_has_a_worker(parts: dict[str, Any]) -> None:
    out = StringIO()
    call_command("sluice_check", stdout=out, stderr=StringIO())
    assert out.getvalue().split() == [
        word
        for part in ("database", "broker", "migrations", "beat", "queues")
        for word in ("ok", part)
    ]


def test_sluice_check_says_in_words_which_queue_has_no_worker(parts: dict[str, Any]) -> None:
    parts["consumers"] = {"default": 1}
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("sluice_check", "--only", "queues", stdout=out, stderr=err)
    assert failed.value.returncode == 1
    assert "FAIL  queues" in out.getvalue()
    assert (
        "queues: pool 'llm', pool 'llm-openai', pool 'llm-anthropic' and "
        "pool 'llm-openai-compatible' (queue llm) has no worker: runs that need it will wait "
        "forever; start: celery -A config worker -Q llm -n llm@%h"
    ) in err.getvalue()
