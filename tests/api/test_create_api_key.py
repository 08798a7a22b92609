"""``manage.py create_api_key``: mints a key and prints it alone on the last line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from workflows.keys import find_key
from workflows.models import ApiKey

pytestmark = pytest.mark.django_db


def test_it_prints_the_new_key_alone_on_its_last_line() -> None:
    out = StringIO()
    call_command(
        "create_api_key",
        "billing",
        "--scopes",
        "runs:read,runs:write",
        "--tenant",
        "acme",
        "--pipelines",
        "test.chain",
        stdout=out,
    )
    last = out.getvalue().strip().splitlines()[-1]
    key = find_key(last)
    assert key is not None
    assert key.name == "billing" and key.tenant == "acme"
    assert key.scopes == ["runs:read", "runs:write"] and key.pipelines == ["test.chain"]


def test_it_refuses_unknown_scopes_and_pipelines() -> None:
    with pytest.raises(CommandError, match="unknown scope"):
        call_command("create_api_key", "x", "--scopes", "runs:everything", stdout=StringIO())
    with pytest.raises(CommandError, match="unknown pipeline"):
        call_command(
            "create_api_key", "x", "--scopes", "runs:read", "--pipelines", "nope", stdout=StringIO()
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "--scopes", "runs:read"], "name must be 1 to 100"),
        (["x" * 101, "--scopes", "runs:read"], "name must be 1 to 100"),
        (["x", "--scopes", "runs:read", "--tenant", "t" * 101], "--tenant must be at most"),
        (["x", "--scopes", ""], "--scopes needs at least one"),
        (["x", "--scopes", "runs:read", "--rate-limit", "99999999999999999999"], "--rate-limit"),
        (["x", "--scopes", "runs:read", "--rate-limit", "-1"], "--rate-limit"),
    ],
)
def test_it_refuses_what_it_cannot_store_with_a_clear_message(
    args: list[str], message: str
) -> None:
    """Found by review: a raw DataError on PostgreSQL (silently stored on SQLite), an
    OverflowError traceback, keys with no name or no scope."""
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args, stdout=StringIO())
    assert not ApiKey.objects.exists()
