"""Behind PgBouncer in transaction pooling mode (SLUICE_PGBOUNCER=1).

`make test` step [c] runs the integration tests of tests/workflows and tests/reviews through a
real pgbouncer (tests/pgbouncer.py). These tests pin down why the setting exists and what it
turns off: PgBouncer 1.18 (Debian 12) hands each transaction whichever server connection is
free, so a statement psycopg prepared on one connection is missing on the next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests import pgbouncer

ROOT = Path(__file__).resolve().parents[2]
PG = "postgres://postgres@127.0.0.1:5432/postgres"


def database_settings(**env: str) -> dict[str, Any]:
    """settings.DATABASES["default"] as config/settings.py builds it under ``env``."""
    code = (
        "import json, config.settings as s; d = s.DATABASES['default'];"
        "out = {k: d.get(k) for k in ('OPTIONS', 'DISABLE_SERVER_SIDE_CURSORS')};"
        "out['push'] = s.SLUICE_REVIEW_PUSH; print(json.dumps(out))"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLUICE_PG", "SLUICE_PUSH", "SLUICE_REVIEW_PUSH", "DATABASE"))
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DATABASE_URL": PG, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_pgbouncer_mode_prepares_nothing_and_opens_no_server_side_cursor() -> None:
    plain = database_settings()
    assert plain["OPTIONS"]["prepare_threshold"] == 2
    assert plain["OPTIONS"]["server_side_binding"] is True
    assert not plain["DISABLE_SERVER_SIDE_CURSORS"]
    behind = database_settings(SLUICE_PGBOUNCER="1")
    assert "prepare_threshold" not in behind["OPTIONS"]
    assert "server_side_binding" not in behind["OPTIONS"]
    assert behind["DISABLE_SERVER_SIDE_CURSORS"] is True
    # The review pages' LISTEN cannot go through the pooler: push only with a direct URL.
    assert plain["push"] is True and behind["push"] is False
    direct = database_settings(SLUICE_PGBOUNCER="1", SLUICE_PUSH_DATABASE_URL=PG)
    assert direct["push"] is True


def swap_servers(url: str, prepare_threshold: int | None) -> None:
    """Run one statement twice on a client whose server connection changed in between."""
    with (
        psycopg.connect(url, autocommit=True, prepare_threshold=prepare_threshold) as mine,
        psycopg.connect(url, autocommit=True) as other,
    ):
        mine.execute("SELECT %s::int", [1]).fetchone()  # prepared on server S1 (threshold 0)
        with other.transaction():  # another client holds S1 for a whole transaction...
            other.execute("SELECT 1")
            mine.execute("SELECT %s::int", [2]).fetchone()  # ...so this runs on S2


@pytest.fixture
def bouncer(tmp_path: Path) -> Any:
    if not shutil.which("pgbouncer") and not Path("/usr/sbin/pgbouncer").exists():
        if os.environ.get("SLUICE_REQUIRE_SERVICES") == "1":
            pytest.fail("pgbouncer is not installed (make test installs it as root)")
        pytest.skip("pgbouncer is not installed")
    proc, port = pgbouncer.start(tmp_path, PG)
    try:
        yield pgbouncer.through(PG, port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
def test_a_prepared_statement_is_lost_behind_pgbouncer_unless_nothing_is_prepared(
    bouncer: str,
) -> None:
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        swap_servers(bouncer, prepare_threshold=0)
    swap_servers(bouncer, prepare_threshold=None)  # SLUICE_PGBOUNCER=1: nothing prepared


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_step_c_really_runs_through_pgbouncer_in_transaction_mode() -> None:
    port = os.environ.get("SLUICE_PGBOUNCER_PORT")
    if not port:
        pytest.skip("runs in `make test` step [c], through tests/pgbouncer.py")
    assert settings.SLUICE_PGBOUNCER
    assert str(connection.settings_dict["PORT"]) == port
    assert "prepare_threshold" not in connection.settings_dict["OPTIONS"]
    with connection.cursor() as cur:  # the engine's fast path, many times: never prepared
        for _ in range(5):
            cur.execute("SELECT %s::int", [1])
    admin = f"postgres://postgres@127.0.0.1:{port}/pgbouncer"
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.cursor()
        cur.execute("SHOW POOLS")
        cols = [c.name for c in cur.description or []]
        pools = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    mine = [p for p in pools if p["database"] == connection.settings_dict["NAME"]]
    assert mine and mine[0]["pool_mode"] == "transaction"
