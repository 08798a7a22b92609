"""``manage.py create_api_key NAME --scopes runs:read,runs:write [--tenant T] [--pipelines a,b]``

Prints what the key may do, then the new key alone on the last line (so scripts can take it
with ``tail -n1``). The key is shown only now: Sluice stores a hash of it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.core.definitions import registered_workflows
from workflows.keys import SCOPES, ScopeError, create_api_key


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


def _text(value: str, what: str) -> str:
    """``value`` when it is text the database can store. Bytes of argv that are not UTF-8
    reach Python as lone surrogates (``\udcff``), which PostgreSQL's driver cannot encode: a
    UnicodeEncodeError traceback halfway through the insert, instead of a message."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CommandError(f"{what} is not valid UTF-8: {value[:100]!r}") from None
    return value


class Command(BaseCommand):
    help = "Create an API key for the JSON API and print it (once) on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="What the key is for (a service's name).")
        parser.add_argument(
            "--scopes",
            action="append",
            required=True,
            help=f"Comma-separated scopes (repeatable): {', '.join(SCOPES)}.",
        )
        parser.add_argument("--tenant", default="", help="The tenant the key acts for.")
        parser.add_argument(
            "--pipelines",
            action="append",
            help="Comma-separated pipeline names the key may use (default: all).",
        )
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="Requests per rate period (default: SLUICE_API_RATE_LIMIT; 0: unlimited).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        _text(options["name"], "the key's name")
        _text(options["tenant"], "--tenant")
        for value in options["scopes"] or []:
            _text(value, "--scopes")
        for value in options["pipelines"] or []:
            _text(value, "--pipelines")
        pipelines = _split(options["pipelines"])
        unknown = sorted(set(pipelines) - set(registered_workflows()))
        if unknown:
            raise CommandError(f"unknown pipeline(s): {', '.join(unknown)}")
        if options["rate_limit"] is not None and not 0 <= options["rate_limit"] <= 2**31 - 1:
            raise CommandError("--rate-limit must be 0 (unlimited) up to 2147483647")
        name, tenant = options["name"].strip(), options["tenant"].strip()
        if not name or len(name) > 100:
            raise CommandError("the key's name must be 1 to 100 characters")
        if len(tenant) > 100:
            raise CommandError("--tenant must be at most 100 characters")
        if not _split(options["scopes"]):
            raise CommandError(f"--scopes needs at least one of: {', '.join(SCOPES)}")
        try:
            key, raw = create_api_key(
                name,
                scopes=_split(options["scopes"]),
                tenant=tenant,
                pipelines=pipelines,
                rate_limit=options["rate_limit"],
                created_by="manage.py create_api_key",
            )
        except ScopeError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"API key {key.name!r} ({key.prefix}): scopes {', '.join(key.scopes) or 'none'}; "
            f"tenant {key.tenant or '(default)'}; pipelines {', '.join(key.pipelines) or 'all'}"
        )
        self.stdout.write(f"webhook signing secret: {key.webhook_secret}")
        self.stdout.write("Store the key now; it is not shown again:")
        self.stdout.write(raw)
