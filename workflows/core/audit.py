"""The run audit trail: who canceled, restarted or retried a run, and why.

The engine's services (``cancel``, ``restart``) take an ``actor`` and a ``reason`` and write the
``RunAudit`` row in the transaction of the action. The admin, the run pages and the API build
the actor from the request: a user, or an API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workflows.core.errors import InvalidInputError
from workflows.core.models import Run, RunAudit

if TYPE_CHECKING:  # a product model; the engine only passes the row through
    from workflows.models import ApiKey

MAX_REASON = 2000


def reason_problem(reason: str) -> str:
    """Why ``reason`` cannot be kept in the audit trail, or ''. PostgreSQL's text and jsonb
    columns (the audit row, the canceled run's error) refuse NUL and lone surrogates."""
    if len(reason) > MAX_REASON:
        return f"The reason is {len(reason):,} characters long; at most {MAX_REASON:,} are kept."
    if "\x00" in reason:
        return "The reason contains a NUL character (\\u0000), which cannot be stored."
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        return "The reason is not valid Unicode (it holds a lone surrogate)."
    return ""


def check_reason(reason: str | None) -> str:
    """The reason, stripped, or ``InvalidInputError`` (field ``reason``) saying what is wrong.
    The services call this before they change anything."""
    text = str(reason or "").strip()
    problem = reason_problem(text)
    if problem:
        raise InvalidInputError(problem, [{"field": "reason", "message": problem}])
    return text


@dataclass(frozen=True)
class Actor:
    """Who acts on a run: a description for people (``user:alice``, ``api:sk_abc``), and the
    user or API key row when there is one."""

    description: str
    user: Any = None
    api_key: ApiKey | None = None

    @classmethod
    def of_user(cls, user: Any, via: str = "user") -> Actor:
        """A logged-in user; ``via`` says where (``user`` for the run pages, ``admin``)."""
        return cls(f"{via}:{user.get_username()}", user=user)

    @classmethod
    def of_key(cls, key: ApiKey) -> Actor:
        return cls(key.actor, api_key=key)


def record(
    run: Run,
    action: str,
    *,
    generation: int,
    actor: Actor | None,
    reason: str = "",
    from_step: int | None = None,
) -> RunAudit:
    """Append one entry. Call inside the transaction of the action."""
    return RunAudit.objects.create(
        run=run,
        generation=generation,
        action=action,
        from_step=from_step,
        actor=(actor.description if actor else "")[:200],
        actor_user=actor.user if actor else None,
        api_key=actor.api_key if actor else None,
        reason=(reason or "").strip()[:MAX_REASON],
        max_cost=run.max_cost,
    )
