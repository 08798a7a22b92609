"""API keys: minting, checking and rate limiting the credentials services use on the JSON API.

A key looks like ``sk_3f9a1c2b.Xy…`` (the part before the dot is its visible ``prefix``). Only
a SHA-256 of the whole key is stored. A slow password hash is not needed here: the secret part
carries 256 random bits, so the hash cannot be brute-forced, and a fast hash keeps every request
cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from workflows.models import ApiKey, ApiScope

SCOPES: tuple[str, ...] = tuple(ApiScope.values)
PREFIX_LEN = 8


class ScopeError(ValueError):
    """A scope name that does not exist."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Return the scopes in canonical order, or raise ``ScopeError`` naming unknown ones."""
    wanted = {s.strip() for s in scopes if s and s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ScopeError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in wanted]


def create_api_key(
    name: str,
    *,
    scopes: Iterable[str],
    tenant: str = "",
    pipelines: Iterable[str] = (),
    rate_limit: int | None = None,
    created_by: str = "",
) -> tuple[ApiKey, str]:
    """Mint a key. Returns the row and the raw key, which is shown once and never stored."""
    key = ApiKey(
        name=name,
        tenant=tenant,
        scopes=check_scopes(scopes),
        pipelines=sorted({p.strip() for p in pipelines if p.strip()}),
        rate_limit=rate_limit,
        created_by=created_by,
    )
    return key, assign_new_secret(key)


def assign_new_secret(key: ApiKey) -> str:
    """Give ``key`` a fresh secret (a new key), save it, and return the raw key.

    A rotated key keeps its prefix: runs, events and decisions name their actor as
    ``api:<prefix>``, and completion webhooks find their signing secret through it.
    """
    while not key.prefix:
        prefix = f"sk_{secrets.token_hex(PREFIX_LEN // 2)}"
        if not ApiKey.objects.filter(prefix=prefix).exists():
            key.prefix = prefix
    raw = f"{key.prefix}.{secrets.token_urlsafe(32)}"
    key.key_hash = hash_key(raw)
    if not key.webhook_secret:
        key.webhook_secret = f"whsec_{secrets.token_urlsafe(32)}"
    key.save()
    return raw


def find_key(raw: str | None) -> ApiKey | None:
    """The active key ``raw`` stands for, or None. Compares hashes in constant time."""
    # A NUL cannot be in a key we minted, and PostgreSQL refuses it in a query (a 500).
    if not raw or "." not in raw or len(raw) > 200 or "\x00" in raw:
        return None
    prefix = raw.split(".", 1)[0]
    key = ApiKey.objects.filter(prefix=prefix, is_active=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, hash_key(raw)):
        return None
    return key


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds until the window resets (0 when allowed)


def limit_for(key: ApiKey) -> int:
    return key.rate_limit if key.rate_limit is not None else int(settings.SLUICE_API_RATE_LIMIT)


def take_request(key: ApiKey, now: datetime | None = None) -> RateDecision:
    """Count one request against the key's fixed window; refuse it when the window is spent.

    Every change is a compare-and-swap on the key row (no lock, works on SQLite too):

    1. If the row's window is over, start a new one counting this request, provided nobody
       else started it first (``window_start`` still what we read).
    2. Otherwise add one to the count, provided the window is unchanged and below the limit.
    3. If neither update touched the row, re-read it: another request changed the window
       (try again) or the limit is reached (refuse, saying when the window resets).
    """
    now = now or timezone.now()
    limit = limit_for(key)
    if limit <= 0:  # 0 means unlimited; still note when the key was used.
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return RateDecision(True, 0, 0, 0)
    period = timedelta(seconds=float(settings.SLUICE_API_RATE_PERIOD))
    start, count = key.window_start, key.window_count
    for _ in range(5):
        if start is None or now >= start + period:
            if ApiKey.objects.filter(pk=key.pk, window_start=start).update(
                window_start=now, window_count=1, last_used_at=now
            ):
                return RateDecision(True, limit, limit - 1, 0)
        elif count < limit and ApiKey.objects.filter(
            pk=key.pk, window_start=start, window_count__lt=limit
        ).update(window_count=F("window_count") + 1, last_used_at=now):
            return RateDecision(True, limit, max(0, limit - count - 1), 0)
        row = ApiKey.objects.filter(pk=key.pk).values("window_start", "window_count").first()
        if row is None:
            break
        if row["window_start"] == start and row["window_count"] >= limit:
            wait = (start + period - now).total_seconds() if start else 1.0
            return RateDecision(False, limit, 0, max(1, math.ceil(wait)))
        start, count = row["window_start"], row["window_count"]
    # Heavy contention on one key: refuse briefly rather than spin.
    return RateDecision(False, limit, 0, 1)
