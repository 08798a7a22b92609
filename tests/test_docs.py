"""The README's commands and code stay true."""

from __future__ import annotations

import re
import sys
import types
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.support import Bell

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 3)
    return README[start : end if end > 0 else None]


def test_it_shows_the_two_commands_first() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    assert "make run" in first_block.group(1) and "make test" in first_block.group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_the_python_api_example_runs(bell: Bell) -> None:
    from workflows.models import Run, Step

    code = re.search(r"```python\n(.*?)```", section("Python API"), re.S)
    assert code is not None
    module = types.ModuleType("readme_example")
    sys.modules["readme_example"] = module
    try:
        exec(compile(code.group(1), "README.md", "exec"), module.__dict__)
        run = Run.objects.get(idempotency_key="req-42")
        bell.settle()
        assert Run.objects.get(pk=run.pk).status == "suspended"  # the durable timer
        Step.objects.filter(run=run, kind="sleep").update(
            wake_at=timezone.now() - timedelta(seconds=1)
        )
        bell.settle()
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
        assert run.output["event"] == {"by": "ops"}
        assert run.output["parts"][0] == {"summary": "text of a", "words": 3}
    finally:
        sys.modules.pop("readme_example", None)


def test_every_setting_read_from_the_environment_is_documented() -> None:
    settings_src = (ROOT / "config" / "settings.py").read_text()
    names = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_src))
    reference = section("Configuration reference")
    missing = sorted(n for n in names if f"`{n}`" not in reference)
    assert not missing, f"settings missing from the README's configuration reference: {missing}"
