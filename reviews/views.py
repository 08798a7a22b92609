"""Reviewer pages: the live queue, the gate page, "My decisions". Thin adapters over
``reviews.services``: parse the request, call one service, render or redirect.

Access: anonymous users go to the login page (an htmx poll gets an ``HX-Redirect`` there instead
of a login form swapped into the page, and comes back to the page it was on: ``config.login``);
logged-in users who review nothing get 403; a gate of another group or of another tenant's run
is 404, as if it did not exist (docs/security.md).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, overload

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import IntegrityError, connection, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.csp import csp_override
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.login import PageOf, login_required
from reviews import bulk, push, services
from reviews.forms import DecisionForm, EditsForm, PreferencesForm
from reviews.models import Gate, GateStatus, NotificationPreference
from reviews.presenters import present
from reviews.templatetags.reviews_tags import countdown, short_time, urgency
from reviews.templatetags.sluice_text import show_bidi
from workflows.core import clock
from workflows.views import CappedPaginator

View = Callable[..., HttpResponseBase]

# A comment handed back after a late decision is cut at the form's own limit (DecisionForm).
UNSENT_COMMENT_LIMIT = 5000
# ... and at most this many changed fields are handed back (each cut at the same length).
UNSENT_FIELDS_LIMIT = 100

# The reviewer pages allow no inline style at all (config/settings.py, SLUICE_CSP_REVIEW_PAGES).
strict_styles = csp_override(settings.SLUICE_CSP_REVIEW_PAGES)


@overload
def reviewer_required[V: View](view: V, *, page: PageOf | None = None) -> V: ...


@overload
def reviewer_required[V: View](
    view: None = None, *, page: PageOf | None = None
) -> Callable[[V], V]: ...


def reviewer_required(view: View | None = None, *, page: PageOf | None = None) -> Any:
    """Signed in (``config.login``: an htmx request of an anonymous user gets ``HX-Redirect`` to
    the login page, with ``next`` the page it came from, else ``page``) and in a reviewer
    group (else 403)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not services.is_reviewer(request.user):
                raise PermissionDenied("You are not in a reviewer group.")
            return view(request, *args, **kwargs)

        return login_required(wrapper, page=page)

    return decorate if view is None else decorate(view)


def _gate_page(request: HttpRequest, pk: int) -> str:
    """The page of a gate's fragment and actions (status, claim, release, decide, reassign)."""
    return reverse("reviews:gate", args=[pk])


def _queue_page(request: HttpRequest) -> str:
    return reverse("reviews:queue")


def _gate_or_404(request: HttpRequest, pk: int) -> Gate:
    try:
        return services.get_gate(pk, request.user)
    except services.GateNotFoundError:
        raise Http404("No such gate.") from None


# --- queue --------------------------------------------------------------------------------------

FILTERS = {"mine": "Claimed by me", "unclaimed": "Unclaimed"}


class QueuePaginator(CappedPaginator):
    """Counts at most ``PAGE_CAP`` pages of open gates ("1000+"): the count reads and joins
    every gate it counts, so an exact one grows with the backlog on every view and every live
    refresh, and nobody pages past the first twenty (the filters narrow the queue instead)."""

    PAGE_CAP = 20


@require_GET
@strict_styles
@reviewer_required
def queue(request: HttpRequest) -> HttpResponse:
    """Open gates by deadline. An htmx poll gets only the list, or 204 when nothing changed."""
    claim = request.GET.get("claim", "")
    pipeline = request.GET.get("pipeline", "")[:200]
    due = request.GET.get("due", "")
    qs = services.open_queue(
        request.user,
        mine=claim == "mine",
        unclaimed=claim == "unclaimed",
        pipeline=pipeline,
        due_within=timedelta(hours=1) if due == "1h" else None,
    )
    paginator = QueuePaginator(qs, settings.SLUICE_REVIEW_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    gates = list(page.object_list)
    fingerprint = _fingerprint(paginator.count, gates)
    is_poll = bool(getattr(request, "htmx", False)) and request.GET.get("poll") == "1"
    if is_poll and request.GET.get("fp") == fingerprint:
        return HttpResponse(status=204)  # Nothing changed: htmx keeps the list as it is.
    context = {
        "nav": "reviews",
        "page": page,
        "gates": gates,
        "fingerprint": fingerprint,
        # Deadlines are on the engine's (the database's) clock, and so is the countdown.
        "rows": queue_rows(gates, request.user, clock.now()),
        "claim": claim,
        "pipeline": pipeline,
        "due": due,
        "filters": FILTERS,
        "poll_seconds": settings.SLUICE_REVIEW_POLL_SECONDS,
        "push_url": reverse("reviews:events") if push.push_available() else "",
        "now": clock.now(),
    }
    if is_poll:
        return render(request, "reviews/queue.html#queue-list", context)
    context["pipelines"] = services.open_pipelines(request.user)
    return render(request, "reviews/queue.html", context)


@dataclass(frozen=True)
class QueueRow:
    """One row of the queue, computed once in Python: the template only prints it (rendering
    50 rows through template filters and ``{% url %}`` tags costs more than the queries)."""

    pk: int
    href: str
    title: str
    subject: str
    excerpt: str
    attempt: int
    group: str
    opened: str
    pipeline: str
    run_id: str
    run_href: str
    run_short: str
    deadline_iso: str
    deadline_title: str
    countdown: str
    urgency: str
    claimed_by: str
    claimed_by_me: bool
    on_timeout: str

    def html(self) -> SafeString:
        """The row's ``<tr>``, built here rather than in the template: 50 rows of some twenty
        variables each were most of the page's rendering time (template variable lookups and
        filters, ~10 µs each). Every value is escaped by ``format_html``; the titles and the
        excerpt also show bidi controls as markers (``show_bidi``), as the gate page does."""
        # The title cell's parts are joined by spaces, as the template's line breaks were:
        # between inline elements (the gate kind, the attempt badge) a space shows.
        if self.subject:
            parts = [
                format_html(
                    '<a class="rv-title rv-subject" id="gate-link-{}" href="{}" title="{}" '
                    'dir="auto" data-testid="row-subject">{}</a>',
                    self.pk,
                    self.href,
                    self.subject,
                    show_bidi(self.subject),
                ),
                format_html(
                    '<span class="rv-gate-kind" title="{}" dir="auto">{}</span>',
                    self.title,
                    show_bidi(self.title),
                ),
            ]
        else:
            parts = [
                format_html(
                    '<a class="rv-title" id="gate-link-{}" href="{}" title="{}" dir="auto">{}</a>',
                    self.pk,
                    self.href,
                    self.title,
                    show_bidi(self.title),
                )
            ]
        if self.attempt > 1:
            parts.append(
                format_html(
                    '<span class="badge badge-warn" title="The run looped back to this gate">'
                    "attempt {}</span>",
                    self.attempt,
                )
            )
        if self.excerpt:
            parts.append(
                format_html(
                    '<div class="rv-excerpt" title="{}" dir="auto" data-testid="row-excerpt">'
                    "{}</div>",
                    self.excerpt,
                    show_bidi(self.excerpt),
                )
            )
        parts.append(
            format_html('<div class="muted small">{} · opened {}</div>', self.group, self.opened)
        )
        if self.claimed_by:
            claim = format_html(
                '<span class="rv-claim{}"><span class="rv-avatar" aria-hidden="true">{}</span>'
                "{}</span>",
                " rv-claim-mine" if self.claimed_by_me else "",
                self.claimed_by[:1].upper(),
                "you" if self.claimed_by_me else self.claimed_by,
            )
        else:
            claim = mark_safe('<span class="muted">—</span>')
        # Stable ids (gate-row-7, gate-pick-7, gate-link-7, gate-run-7): a live refresh replaces
        # the rows, and htmx gives focus back to the element with the focused one's id.
        return format_html(
            '<tr class="rv-row" id="gate-row-{pk}" data-gate-id="{pk}" data-href="{href}">'
            '<td class="rv-col-pick"><label class="rv-pick-cell"><input type="checkbox" '
            'class="rv-pick" id="gate-pick-{pk}" name="gate" value="{pk}" form="bulk-form" '
            'aria-label="Select “{label}”"></label></td>'
            '<td class="rv-col-due"><time class="countdown rv-urgency-{urgency}" aria-live="off" '
            'datetime="{iso}" data-deadline="{iso}" title="{due_title}">{countdown}</time></td>'
            '<td class="rv-col-title">{title}</td>'
            '<td><span class="rv-pipeline">{pipeline}</span></td>'
            '<td><a class="rv-run mono" id="gate-run-{pk}" href="{run_href}" title="{run_id}">'
            "{run_short}</a></td>"
            "<td>{claim}</td>"
            '<td class="rv-col-default"><span class="badge badge-{default}">auto-{default}'
            "</span></td></tr>\n",
            pk=self.pk,
            href=self.href,
            label=self.subject or self.title,
            urgency=self.urgency,
            iso=self.deadline_iso,
            due_title=self.deadline_title,
            countdown=self.countdown,
            title=format_html_join(" ", "{}", ((part,) for part in parts)),
            pipeline=self.pipeline,
            run_href=self.run_href,
            run_id=self.run_id,
            run_short=self.run_short,
            claim=claim,
            default=self.on_timeout,
        )


def queue_rows(gates: list[Gate], user: Any, now: datetime) -> list[QueueRow]:
    base = reverse("reviews:queue")
    rows = []
    for g in gates:
        run_id = str(g.run_id)
        deadline = timezone.localtime(g.deadline)
        rows.append(
            QueueRow(
                pk=g.pk,
                href=f"{base}{g.pk}/",
                title=g.title,
                # The run's own title, unless it only repeats the gate's.
                subject=g.subject if g.subject != g.title else "",
                excerpt=g.excerpt,
                attempt=g.attempt,
                group=g.group,
                opened=short_time(g.created_at),
                pipeline=g.pipeline,
                run_id=run_id,
                run_href=f"/runs/{run_id}/",
                run_short=run_id[:8],
                deadline_iso=g.deadline.isoformat(),
                deadline_title=deadline.strftime("%Y-%m-%d %H:%M:%S %Z"),
                countdown=countdown(g.deadline, now),
                urgency=urgency(g.deadline, now),
                claimed_by=g.claimed_by.get_username() if g.claimed_by else "",
                claimed_by_me=g.claimed_by_id is not None and g.claimed_by_id == user.pk,
                on_timeout=g.on_timeout,
            )
        )
    return rows


def _fingerprint(total: int, gates: list[Gate]) -> str:
    """What the list shows, hashed: a poll that would render the same list gets 204."""
    parts = [str(total)] + [f"{g.pk}:{g.claimed_by_id or ''}" for g in gates]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


# --- bulk decisions -----------------------------------------------------------------------------

# At most this many skipped gates are listed one by one; the rest are counted.
BULK_SKIPS_LISTED = 20


@require_POST
@reviewer_required(page=_queue_page)
def bulk_decide(request: HttpRequest) -> HttpResponse:
    """Approve or reject the gates ticked in the queue, with one comment; then back to the
    queue (its filters kept), which says how many were decided and which were skipped, why."""
    back = request.POST.get("next", "")
    if not (back.startswith("/reviews/") and "//" not in back and "\\" not in back):
        back = reverse("reviews:queue")
    outcome = request.POST.get("outcome", "")
    comment = request.POST.get("comment", "").strip()
    # Ids that are not whole numbers name no gate: as good as none selected.
    ids = [i for i in request.POST.getlist("gate") if i.strip().isdigit()][: bulk.MAX_BULK + 1]
    if outcome not in bulk.OUTCOMES:
        messages.error(request, "Choose Approve or Reject for the selected gates.")
        return redirect(back)
    if len(comment) > UNSENT_COMMENT_LIMIT:
        messages.error(request, f"The comment is longer than {UNSENT_COMMENT_LIMIT} characters.")
        return redirect(back)
    if "\x00" in comment:
        messages.error(request, "The comment contains a NUL character, which cannot be stored.")
        return redirect(back)
    if not ids:
        messages.error(request, "Select at least one gate first.")
        return redirect(back)
    if len(ids) > bulk.MAX_BULK:
        messages.error(request, f"Select at most {bulk.MAX_BULK} gates at a time.")
        return redirect(back)
    result = bulk.bulk_decide(request.user, ids, outcome=outcome, comment=comment)
    verb = "Approved" if outcome == "approve" else "Rejected"
    n = len(result.decided)
    if n:
        messages.success(request, f"{verb} {n} gate{'s' if n != 1 else ''}.")
    if result.partial:
        messages.success(request, _partial_message(result.partial))
    if result.skipped:
        acted = bool(n or result.partial)
        messages.warning(request, _skipped_message(result.skipped, decided_any=acted))
    return redirect(back)


def _partial_message(partial: list[bulk.Partial]) -> str:
    """Four-eyes gates approved once by this reviewer: still open, awaiting another approver."""
    k = len(partial)
    head = (
        f"Your approval was recorded on {k} gate{'s' if k != 1 else ''} "
        "that need{} another approver:".format("s" if k == 1 else "")
    )
    items = format_html_join(
        "",
        '<li data-testid="bulk-partial"><bdi>“{}”</bdi> — approved ({} of {}).</li>',
        ((p.gate.title, p.count, p.required) for p in partial[:BULK_SKIPS_LISTED]),
    )
    more = f"<li>… and {k - BULK_SKIPS_LISTED} more.</li>" if k > BULK_SKIPS_LISTED else ""
    more_html = mark_safe(more)  # noqa: S308  (a number only)
    return format_html('{} <ul class="rv-skipped">{}{}</ul>', head, items, more_html)


def _skipped_message(skipped: list[bulk.Skipped], *, decided_any: bool) -> str:
    """One flash listing the skipped gates and why; titles are outside text, escaped and in
    <bdi> (the flash area sits outside <main>, whose elements sluice.css isolates)."""
    k = len(skipped)
    plural = "s" if k != 1 else ""
    head = f"Skipped {k} gate{plural}:" if decided_any else f"Nothing decided: skipped {k}:"
    items = format_html_join(
        "",
        '<li data-testid="bulk-skipped"><bdi>“{}”</bdi> — {}.</li>',
        ((s.title, s.message) for s in skipped[:BULK_SKIPS_LISTED]),
    )
    more = f"<li>… and {k - BULK_SKIPS_LISTED} more.</li>" if k > BULK_SKIPS_LISTED else ""
    more_html = mark_safe(more)  # noqa: S308  (a number only)
    return format_html('{} <ul class="rv-skipped">{}{}</ul>', head, items, more_html)


# --- gate page ----------------------------------------------------------------------------------


def _gate_context(
    request: HttpRequest,
    gate: Gate,
    *,
    form: DecisionForm | None = None,
    edits_form: EditsForm | None = None,
) -> dict[str, Any]:
    earlier = list(
        services.gates_visible_to(request.user)
        .filter(run_id=gate.run_id, title=gate.title, pk__lt=gate.pk)
        .select_related("decided_by_user")
        .order_by("-pk")
    )
    has_fields = bool((gate.fields_schema or {}).get("properties"))
    frees_others = services.overrides_claims(request.user)
    following = services.next_attempt(gate, request.user)
    return {
        **_four_eyes_context(request, gate),
        "nav": "reviews",
        "gate": gate,
        "view": present(gate.payload),
        "earlier": earlier,
        "events": list(gate.events.all()),
        "form": form or DecisionForm(gate, initial={"outcome": gate.on_timeout}),
        "edits_form": edits_form or (EditsForm(gate) if has_fields else None),
        "can_decide": gate.is_open
        and (gate.claimed_by_id in (None, request.user.pk) or frees_others),
        "frees_others": frees_others,
        "closed_message": ("" if gate.is_open else services.closed_message_for(gate, request.user)),
        "next_attempt": following,
        # A canceled gate's page keeps asking (slowly) whether its run was restarted, to link
        # the gate the restart opens (``gate_status`` answers 204 until then).
        "watch_restart": gate.status == GateStatus.CANCELED and following is None,
        "now": clock.now(),
        "poll_seconds": settings.SLUICE_REVIEW_POLL_SECONDS,
        "push_url": (
            f"{reverse('reviews:events')}?gate={gate.pk}"
            if gate.is_open and push.push_available()
            else ""
        ),
    }


def _four_eyes_context(request: HttpRequest, gate: Gate) -> dict[str, Any]:
    """What the decision panel shows of approvals, separation of duties and reassigning, and
    which choices this reviewer still has (no "approve" for someone who already approved or
    who started the run of a separation-of-duties gate)."""
    me = request.user.get_username()
    approvals = list(gate.approvals.all()) if gate.approvals_required > 1 else []
    # By user id, as the service decides (``services.approved_by``), not by name.
    approved_by_me = any(a.user_id == request.user.pk for a in approvals)
    barred = gate.separation_of_duties and services.started_the_run(gate, me, request.user)
    no_approve = approved_by_me or barred
    return {
        "approvals": approvals,
        "approved_by_me": approved_by_me,
        "barred_from_approving": barred,
        "my_choices": [c for c in gate.choices if not (no_approve and c == "approve")],
        "can_reassign": services.may_reassign(gate, request.user),
    }


@require_GET
@strict_styles
@reviewer_required
def gate_detail(request: HttpRequest, pk: int) -> HttpResponse:
    gate = _gate_or_404(request, pk)
    return render(request, "reviews/gate.html", _gate_context(request, gate))


@require_GET
@reviewer_required(page=_gate_page)
def gate_status(request: HttpRequest, pk: int) -> HttpResponse:
    """Re-fetched by an open gate's page when it hears the gate changed (or polls, without
    push): 204 while it stays open and its claim is the one the page shows (``claim``: the
    holder's id, empty for none; without it only closing counts). When the claim changed, the
    decision panel and the activity (out-of-band swaps). Once it closed, the banner plus the
    header and decision panel in their closed state, so no part of the page still offers
    Claim/Approve or shows the gate as open; the page then stops listening, except the page of
    a canceled gate, which asks (``restart=1``: 204 until then) until its run is restarted and
    then gets the banner linking the gate the restart opened."""
    gate = _gate_or_404(request, pk)
    if gate.is_open:
        shown = request.GET.get("claim")
        if shown is None or shown == str(gate.claimed_by_id or ""):
            return HttpResponse(status=204)
        return render(request, "reviews/gate.html#claim-update", _gate_context(request, gate))
    if (
        request.GET.get("restart") == "1"
        and gate.status == GateStatus.CANCELED
        and services.next_attempt(gate, request.user) is None
    ):
        return HttpResponse(status=204)  # a canceled gate's page: its run was not restarted yet
    return render(request, "reviews/gate.html#closed-update", _gate_context(request, gate))


def _streams_here(request: HttpRequest) -> bool:
    """Whether this server can hold a stream for minutes without starving other requests:
    ASGI, a threaded WSGI server (gunicorn gthread, runserver), or gevent. gunicorn's sync
    workers (the shipped default) would give each open page a whole worker process, and two
    pages would stop the site: their pages poll instead."""
    meta = request.META
    if meta.get("wsgi.multithread") is not False or "gunicorn.socket" not in meta:
        return True  # ASGI, a threaded server, or not gunicorn (the test client: in-process)
    monkey = sys.modules.get("gevent.monkey")  # gevent workers say multithread False too
    return bool(monkey is not None and monkey.is_module_patched("socket"))


@require_GET
@reviewer_required
def gate_events(request: HttpRequest) -> HttpResponseBase:
    """The Server-Sent Events stream of the queue page (every gate the user may see) or of one
    gate's page (``?gate=<id>``, 404 unless visible): ``event: gate`` with an id and a kind for
    each committed change, which makes the page re-fetch its fragment through the views above
    (reviews/push.py). 204 (the page polls instead) without push, for a closed gate, or when
    this process already serves ``SLUICE_SSE_MAX_STREAMS`` streams."""
    if not push.push_available():
        return HttpResponse(status=204)
    gate_id = None
    if "gate" in request.GET:
        raw = request.GET["gate"]
        if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
            raise Http404("No such gate.")
        gate = _gate_or_404(request, int(raw))
        if not gate.is_open:
            return HttpResponse(status=204)
        gate_id = gate.pk
    if push.hub.count() >= settings.SLUICE_SSE_MAX_STREAMS or not _streams_here(request):
        return HttpResponse(status=204)
    audience = push.audience_for(request.user, gate_id)
    if not connection.in_atomic_block:
        # The stream waits on an in-memory queue for minutes: it holds no database connection.
        connection.close()
    timing = {
        "heartbeat": settings.SLUICE_SSE_HEARTBEAT_SECONDS,
        "lifetime": settings.SLUICE_SSE_MAX_SECONDS,
    }
    # Under ASGI the stream waits on the event loop; under WSGI it holds its server thread.
    asgi = isinstance(request, ASGIRequest)
    body = push.astream(audience, **timing) if asgi else push.stream(audience, **timing)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@require_POST
@reviewer_required(page=_gate_page)
def gate_claim(request: HttpRequest, pk: int) -> HttpResponse:
    return _claim_action(request, pk, services.claim_gate, "You claimed this gate.")


@require_POST
@reviewer_required(page=_gate_page)
def gate_release(request: HttpRequest, pk: int) -> HttpResponse:
    return _claim_action(request, pk, services.release_gate, "You released this gate.")


def _claim_action(
    request: HttpRequest, pk: int, action: Callable[[Any, Any], Gate], done: str
) -> HttpResponse:
    gate = _gate_or_404(request, pk)
    error = ""
    try:
        gate = action(gate.pk, request.user)
    except (services.GateClosedError, services.GateClaimedError) as exc:
        error = str(exc)
        gate = services.get_gate(pk)
        if not gate.is_open:
            error = services.closed_message_for(gate, request.user)
    if getattr(request, "htmx", False):
        context = _gate_context(request, gate)
        context["claim_error"] = error
        response = render(request, "reviews/gate.html#panel-update", context)
        response["HX-Trigger"] = "gate-claim-changed"
        return response
    if error:
        messages.error(request, error[:1].upper() + error[1:])
    else:
        messages.success(request, done)
    return redirect("reviews:gate", pk=pk)


@require_POST
@strict_styles
@reviewer_required(page=_gate_page)
def gate_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Decide, then go straight to the next gate (or back to the queue when it is empty)."""
    gate = _gate_or_404(request, pk)
    if not gate.is_open:
        if _decided_so_by(request, gate):
            return _after_decision(request, gate, gate.outcome)
        return _not_taken(request, gate, request.POST.get("comment", ""))
    if (
        request.POST.get("outcome") == "approve"
        and gate.approvals_required > 1
        and services.approved_by(gate.pk, actor=request.user.get_username(), user=request.user)
    ):
        # A second tab's approval counts once (the service writes nothing): say so, and give
        # back the comment typed with it rather than drop it behind a success message.
        reason = "you already approved this gate; it waits for another reviewer's approval"
        return _not_taken(request, gate, request.POST.get("comment", ""), reason)
    form = DecisionForm(gate, request.POST)
    has_fields = bool((gate.fields_schema or {}).get("properties"))
    edits_form = EditsForm(gate, request.POST) if has_fields else None
    decided = form.is_valid()
    # Every outcome carries the fields' values (a gate's choices may be "ship" and "hold"),
    # but a rejection only the ones the reviewer changed: rejecting must not need made-up
    # corrections, which would be recorded as such.
    outcome = form.cleaned_data.get("outcome") if decided else request.POST.get("outcome")
    use_edits = edits_form is not None and (outcome != "reject" or edits_form.has_changed())
    forms_ok = decided & (not use_edits or edits_form is None or edits_form.is_valid())
    if forms_ok:
        try:
            services.decide_gate(
                gate.pk,
                outcome=form.cleaned_data["outcome"],
                comment=form.cleaned_data["comment"],
                edits=edits_form.edits() if use_edits and edits_form is not None else None,
                actor=request.user.get_username(),
                user=request.user,
                repeat_ok=False,
            )
        except services.AlreadyApprovedError as exc:
            # A second tab's approval that passed the check above at the same moment.
            return _not_taken(request, gate, form.cleaned_data["comment"], str(exc))
        except services.InvalidDecisionError as exc:
            for err in exc.errors:
                on_edits = edits_form is not None and err["field"] in edits_form.fields
                target = edits_form if on_edits and edits_form is not None else form
                name = err["field"] if err["field"] in target.fields else None
                target.add_error(name, err["message"])
        except services.SeparationOfDutiesError as exc:
            form.add_error(None, str(exc)[:1].upper() + str(exc)[1:] + ".")
            context = _gate_context(request, gate, form=form, edits_form=edits_form)
            return render(request, "reviews/gate.html", context, status=403)
        except (services.GateClosedError, services.GateClaimedError):
            if _decided_so_by(request, services.get_gate(gate.pk)):
                return _after_decision(request, gate, form.cleaned_data["outcome"])
            return _not_taken(request, gate, form.cleaned_data["comment"])
        else:
            return _after_decision(request, gate, form.cleaned_data["outcome"])
    context = _gate_context(request, gate, form=form, edits_form=edits_form)
    return render(request, "reviews/gate.html", context, status=422)


def _decided_so_by(request: HttpRequest, gate: Gate) -> bool:
    """The gate is closed by this very decision: the same reviewer's same outcome and comment,
    sent twice (a double click on a slow network, a resent POST). The repeat is answered like
    the first, rather than with a 409 saying the comment was not saved when it was."""
    form = DecisionForm(gate, request.POST)
    return (
        gate.status == GateStatus.DECIDED
        and gate.decided_by_user_id is not None
        and gate.decided_by_user_id == request.user.pk
        and form.is_valid()
        and form.cleaned_data["outcome"] == gate.outcome
        and form.cleaned_data["comment"] == gate.comment
    )


def _not_taken(request: HttpRequest, gate: Gate, comment: str, reason: str = "") -> HttpResponse:
    """409: the decision arrived after the gate closed, or after someone else claimed it.

    The page comes back in the gate's current state, which says why exactly once (the closed
    banner, or the claim bar naming the holder; no flash message on top), and the reviewer's
    comment and the fields they changed are shown read-only with a note that they were not
    saved, instead of being dropped.
    """
    fields: list[dict[str, Any]] = []
    if request.method == "POST" and (gate.fields_schema or {}).get("properties"):
        fields = EditsForm(gate, request.POST).edited_fields()[:UNSENT_FIELDS_LIMIT]
    gate = services.get_gate(gate.pk)
    context = _gate_context(request, gate)
    context["unsent_comment"] = comment[:UNSENT_COMMENT_LIMIT]
    context["unsent_fields"] = [{**f, "text": f["text"][:UNSENT_COMMENT_LIMIT]} for f in fields]
    context["unsent_reason"] = reason
    return render(request, "reviews/gate.html", context, status=409)


def _isolated(text: str) -> str:
    return f"\u2068{text}\u2069"


def _after_decision(request: HttpRequest, gate: Gate, outcome: str) -> HttpResponse:
    gate = services.get_gate(gate.pk)
    # Gates are named by their run's subject when it has one: a pipeline's gates share a title
    # ("Check the analysis"), and this message is what says which one was decided and which
    # one the page now shows.
    # Isolated (FSI … PDI): a right-to-left override in an LLM-written subject must not reorder
    # the rest of the sentence.
    name = _isolated(gate.subject or gate.title)
    if gate.is_open and outcome == "approve":
        # One approval of a four-eyes gate: it stays open for the next approver.
        count = gate.approvals.count()
        messages.success(
            request,
            f"You approved “{name}” ({count} of {gate.approvals_required} approvals); "
            "it waits for another reviewer.",
        )
        return redirect("reviews:gate", pk=gate.pk)
    verb = {"approve": "Approved", "reject": "Rejected"}.get(outcome, f"Decided “{outcome}” on")
    following = services.next_gate_for(request.user, after=gate)
    if following is None:
        messages.success(request, f"{verb} “{name}”. The queue is empty — nice work.")
        return redirect("reviews:queue")
    next_name = _isolated(following.subject or following.title)
    messages.success(request, f"{verb} “{name}”. Next up: “{next_name}”.")
    return redirect("reviews:gate", pk=following.pk)


@require_POST
@reviewer_required(page=_gate_page)
def gate_reassign(request: HttpRequest, pk: int) -> HttpResponse:
    """Hand the gate to a named reviewer (``services.reassign_gate`` says who may)."""
    gate = _gate_or_404(request, pk)
    if not services.may_reassign(gate, request.user) and gate.is_open:
        # Often a stale form (the gate was handed on from another tab): the gate's page, in
        # its current state, with why, rather than a bare 403 page.
        holder = gate.claimed_by.get_username() if gate.claimed_by else ""
        messages.error(
            request,
            (f"{holder} holds this gate now. " if holder else "")
            + "Only the reviewer who claimed it, its escalation group once it escalated, "
            "or staff can hand it to someone else.",
        )
        return render(request, "reviews/gate.html", _gate_context(request, gate), status=403)
    to = request.POST.get("to", "")[:150]
    try:
        gate = services.reassign_gate(gate.pk, request.user, to)
    except (
        services.GateClosedError,
        services.GateClaimedError,
        services.ReassignError,
    ) as exc:
        messages.error(request, str(exc)[:1].upper() + str(exc)[1:] + ".")
    else:
        holder = gate.claimed_by.get_username() if gate.claimed_by else to
        messages.success(request, f"You handed this gate to {holder}.")
    return redirect("reviews:gate", pk=pk)


# --- my decisions -------------------------------------------------------------------------------


@require_GET
@strict_styles
@reviewer_required
def my_decisions(request: HttpRequest) -> HttpResponse:
    # Scoped like every gate page: a reviewer who left a group or a tenant no longer sees the
    # payloads of the gates they decided there.
    qs = (
        services.gates_visible_to(request.user)
        .filter(decided_by_user_id=request.user.pk, status=GateStatus.DECIDED)
        .defer("payload", "fields_schema", "instruction")
        .order_by("-decided_at", "-pk")
    )
    page = Paginator(qs, settings.SLUICE_REVIEW_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "reviews/decisions.html", {"nav": "decisions", "page": page})


# --- notification preferences -------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@strict_styles
@reviewer_required
def preferences(request: HttpRequest) -> HttpResponse:
    """The signed-in reviewer's own notification preferences: there is no way to name another
    user here, so nobody reads or changes anyone else's."""
    from reviews.notifications import default_preferences

    user: Any = request.user  # a signed-in reviewer (reviewer_required)
    row = NotificationPreference.objects.filter(user_id=user.pk).first()
    instance = row or default_preferences(user)
    if request.method == "POST":
        form = PreferencesForm(request.POST, instance=instance)
        if form.is_valid():
            saved = form.save(commit=False)
            saved.user = user
            _save_preferences(saved)
            messages.success(request, "Your notification preferences are saved.")
            return redirect("reviews:preferences")
        status = 422
    else:
        form = PreferencesForm(instance=instance)
        status = 200
    context = {
        "nav": "preferences",
        "form": form,
        "has_email": bool(user.email),
        "email": user.email,
        "reminder_at": int(round(float(settings.SLUICE_REVIEW_REMINDER_AT or 0) * 100)),
    }
    return render(request, "reviews/preferences.html", context, status=status)


def _save_preferences(row: NotificationPreference) -> None:
    """Save ``row``; when it is the user's first and another request (a double click, a
    second tab) inserted theirs meanwhile, update that one instead: the later save wins, as
    it would have a moment later, and nobody sees a 500 for the unique user."""
    if row.pk is not None:
        row.save()
        return
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        row.pk = NotificationPreference.objects.values_list("pk", flat=True).get(
            user_id=row.user_id
        )
        row._state.adding = False
        row.save(force_update=True)
