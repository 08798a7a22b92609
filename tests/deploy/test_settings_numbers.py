"""Numbers and networks read from the environment: read as Python reads them, bounded, and
refused at start-up naming the variable.

django-environ's ``env.float`` drops every character but digits, ``,``, ``.`` and ``-`` before
parsing: ``SLUICE_RETENTION_DAYS=1e6`` (meant: keep for ever) became 16 days and pruned
history, and ``inf``, ``NaN`` or ``1e-3`` stopped the start with a ValueError naming nothing.
Each case runs ``manage.py`` in a subprocess (settings are read once, at import), as
tests/test_security_settings.py does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_security_settings import ROOT, manage

NAMES = (
    "SLUICE_RETENTION_DAYS",
    "SLUICE_OUTBOX_RETENTION_DAYS",
    "SLUICE_PRUNE_BATCH",
    "SLUICE_API_RATE_LIMIT",
    "SLUICE_SSE_HEARTBEAT_SECONDS",
    "SLUICE_WEBHOOK_TIMEOUT",
    "SLUICE_METRICS_ALLOW",
    "SLUICE_METRICS_COUNT_CAP",
)
SHOW = (
    "from django.conf import settings as s; import json; "
    f"print(json.dumps({{k: getattr(s, k) for k in {NAMES!r}}}))"
)


def settings_with(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    done = manage(tmp_path, env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def refusal(tmp_path: Path, env: dict[str, str]) -> str:
    """The last line of what ``manage.py check`` says when it refuses to start."""
    done = manage(tmp_path, env, "check")
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().splitlines()[-1]


def test_numbers_are_read_as_python_reads_them(tmp_path: Path) -> None:
    values = settings_with(
        tmp_path,
        {
            "SLUICE_RETENTION_DAYS": "1e6",  # env.float: 16
            "SLUICE_OUTBOX_RETENTION_DAYS": "1e-3",  # env.float: a ValueError on "1-3"
            "SLUICE_PRUNE_BATCH": "1e3",  # env.int: a ValueError
            "SLUICE_API_RATE_LIMIT": "+5",
            "SLUICE_SSE_HEARTBEAT_SECONDS": " 1e1 ",  # env.float: 11
            "SLUICE_WEBHOOK_TIMEOUT": "2.5",
        },
    )
    assert values["SLUICE_RETENTION_DAYS"] == 1e6
    assert values["SLUICE_OUTBOX_RETENTION_DAYS"] == 0.001
    assert values["SLUICE_PRUNE_BATCH"] == 1000 and values["SLUICE_API_RATE_LIMIT"] == 5
    assert values["SLUICE_SSE_HEARTBEAT_SECONDS"] == 10.0
    assert values["SLUICE_WEBHOOK_TIMEOUT"] == 2.5


def test_a_retention_of_inf_keeps_runs_for_ever(tmp_path: Path) -> None:
    """The README promises it; env.float refused ``inf`` with a bare ValueError."""
    show = (
        "from datetime import timedelta; from django.conf import settings as s; "
        "from django.utils import timezone; from workflows.core.sweeper import retention_cutoff; "
        "print(s.SLUICE_RETENTION_DAYS, retention_cutoff(timezone.now(), 'SLUICE_RETENTION_DAYS'))"
    )
    done = manage(tmp_path, {"SLUICE_RETENTION_DAYS": "inf"}, "shell", "-c", show)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["inf", "None"]  # None: no cutoff, nothing pruned


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SLUICE_RETENTION_DAYS", "NaN", "SLUICE_RETENTION_DAYS must be a number 0 or more"),
        ("SLUICE_RETENTION_DAYS", "-1", "SLUICE_RETENTION_DAYS must be a number 0 or more"),
        ("SLUICE_RETENTION_DAYS", "30 days", "SLUICE_RETENTION_DAYS='30 days' is not a number"),
        ("SLUICE_PRUNE_DUTY", "inf", "SLUICE_PRUNE_DUTY must be a number from 0.05 to 1"),
        ("EMAIL_TIMEOUT", "nan", "EMAIL_TIMEOUT must be a number from 0.1 to 3600"),
        ("SLUICE_PRUNE_BATCH", "1.5", "SLUICE_PRUNE_BATCH must be a whole number, not '1.5'"),
        ("SLUICE_API_RATE_PERIOD", "0", "SLUICE_API_RATE_PERIOD must be a number from 0.001"),
        ("SLUICE_LLM_OPENAI_RATE_PERIOD", "-5", "SLUICE_LLM_OPENAI_RATE_PERIOD must be"),
        ("SLUICE_METRICS_COUNT_CAP", "-1", "SLUICE_METRICS_COUNT_CAP must be a number from 1"),
        # 0 counted nothing: every gauge said 0, a calm dashboard in an outage.
        ("SLUICE_METRICS_COUNT_CAP", "0", "SLUICE_METRICS_COUNT_CAP must be a number from 1"),
        ("SLUICE_METRICS_ALLOW", "10.0.0.0/8,junk", "SLUICE_METRICS_ALLOW: 'junk' is not a"),
        ("SLUICE_METRICS_ALLOW", "10.0.0.0/33", "SLUICE_METRICS_ALLOW: '10.0.0.0/33' is not"),
    ],
)
def test_a_number_or_network_out_of_bounds_stops_the_start_naming_it(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    env = {name: value}
    if name == "EMAIL_TIMEOUT":  # read for an SMTP server only
        env["EMAIL_URL"] = "smtp://127.0.0.1:25"
    last = refusal(tmp_path, env)
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), last
    assert message in last


def test_metrics_networks_are_parsed_once_with_spaces_and_host_bits(tmp_path: Path) -> None:
    """A space after a comma (or host bits in the network) made every scrape a 500."""
    values = settings_with(tmp_path, {"SLUICE_METRICS_ALLOW": " 10.1.2.3/8, 127.0.0.1/32 ,"})
    assert values["SLUICE_METRICS_ALLOW"] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert values["SLUICE_METRICS_COUNT_CAP"] == 100_000


def test_settings_read_no_number_through_django_environ() -> None:
    """Every number goes through ``_env_number``/``_env_int`` (bounded, Python's parsing)."""
    source = (ROOT / "config" / "settings.py").read_text()
    assert not re.findall(r"\benv\.(?:float|int)\(", source)
