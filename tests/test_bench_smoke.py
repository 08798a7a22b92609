"""The benchmark's entry points still import, parse their flags and load a toy history.

Benchmarks are not timed tests: nothing here asserts a figure (see docs/performance.md)."""

from __future__ import annotations

import pytest

from bench import api_bench, history_bench
from bench import run as bench_run


def test_the_driver_knows_every_workload() -> None:
    assert callable(bench_run.w1_scaling) and callable(api_bench.run_w7)
    help_text = bench_run.__doc__ or ""
    for name in ("W1", "W2", "W3", "W6", "W7", "W8", "SCALE", "--w8-scale"):
        assert name in help_text


def test_the_copy_text_has_one_field_per_column() -> None:
    from datetime import UTC, datetime

    text, ids = history_bench._run_lines(0, 3, datetime.now(UTC), 3)
    rows = text.splitlines()
    assert len(rows) == len(ids) == 3
    run_cols = len(history_bench.RUN_COLUMNS.split(","))
    assert all(len(r.split("\t")) == run_cols for r in rows)
    steps = history_bench._step_lines(1, ids, 4).splitlines()
    step_cols = len(history_bench.STEP_COLUMNS.split(","))
    assert len(steps) == 12 and all(len(s.split("\t")) == step_cols for s in steps)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_toy_history_loads_and_its_pages_answer() -> None:
    from django.db import connection

    from workflows.models import Run, Step

    settings = connection.settings_dict
    dsn = (
        f"postgresql://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    )
    history_bench.load_history(dsn, 60, steps=3, batch=25)
    assert Run.objects.count() == 60 and Step.objects.count() == 180
    assert set(Run.objects.values_list("status", flat=True)) == {"succeeded", "failed", "canceled"}
    # The indexes dropped for the load are back.
    with connection.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'workflows_step'")
        names = {row[0] for row in cur.fetchall()}
    assert {"step_run_position", "step_finished", "step_unique_live_position"} <= names
    pages = history_bench.measure_pages(requests=2)
    assert all(pages[k]["queries"] > 0 for k in ("runs_page", "api_list", "ops"))
