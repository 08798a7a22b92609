"""Login for the HTML pages, htmx requests included: one decorator for every login-protected view
(the run pages, the ops overview, and through ``reviews.views.reviewer_required`` the reviewer
pages).

Django's ``login_required`` answers an anonymous request with a 302 to the login page. htmx
follows that redirect itself and swaps the login page into the fragment it asked for: once a
session ends, a live poll pastes a whole login page (its top bar and form) into the runs table,
the ops overview or a gate's decision panel. Here an htmx request gets 204 with ``HX-Redirect``
instead, so htmx sends the whole tab to the login page.

``next`` is the page to come back to after logging in, never the URL of a fragment or of an
action (``/reviews/1/status/`` answers 204, ``/reviews/1/claim/`` takes only POST: either would
leave the user on a blank page):

- an htmx request: the page the user is on (htmx's ``HX-Current-URL``), its filters included,
  when it is on this site;
- otherwise a GET: the URL asked for, as Django does;
- otherwise (a form posted after the session ended, or an htmx request without the header): the
  view's ``page`` (the gate page for a Claim), else the request's path without the parameters
  that select a fragment, or for a POST the home page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, overload

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.http import url_has_allowed_host_and_scheme

View = Callable[..., HttpResponseBase]
# The page a view's URL belongs to, from the view's own arguments: (request, *args, **kwargs).
PageOf = Callable[..., str]

# Query parameters that ask a page for one of its fragments (a live poll's): not part of the
# page to come back to.
FRAGMENT_PARAMS = ("partial", "poll", "fp")


def _safe(request: HttpRequest, url: str | None) -> bool:
    return bool(url) and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )


def page_to_return_to(
    request: HttpRequest, page: PageOf | None = None, *args: Any, **kwargs: Any
) -> str:
    """Where the login page sends the user back to (see the module's docstring)."""
    htmx = getattr(request, "htmx", None)
    if htmx:
        current = htmx.current_url_abs_path  # None unless on this scheme and host
        if _safe(request, current):
            return str(current)
    elif request.method in ("GET", "HEAD"):
        return request.get_full_path()
    if page is not None:
        return page(request, *args, **kwargs)
    if request.method not in ("GET", "HEAD"):
        return str(settings.LOGIN_REDIRECT_URL)
    query = request.GET.copy()
    for name in FRAGMENT_PARAMS:
        query.pop(name, None)
    encoded = query.urlencode()
    return request.path + (f"?{encoded}" if encoded else "")


def to_login(
    request: HttpRequest, page: PageOf | None = None, *args: Any, **kwargs: Any
) -> HttpResponseBase:
    """The answer to an anonymous request: a redirect to the login page, or for htmx 204 with
    ``HX-Redirect`` there. ``next`` is encoded as Django encodes it (``redirect_to_login``)."""
    login = redirect_to_login(page_to_return_to(request, page, *args, **kwargs))
    if getattr(request, "htmx", False):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = login["Location"]
        return response
    return login


@overload
def login_required[V: View](view: V, *, page: PageOf | None = None) -> V: ...


@overload
def login_required[V: View](
    view: None = None, *, page: PageOf | None = None
) -> Callable[[V], V]: ...


def login_required(view: View | None = None, *, page: PageOf | None = None) -> Any:
    """``@login_required``, or ``@login_required(page=...)`` for a view whose URL is no page
    to come back to (``page`` gets the view's arguments and returns the page's URL)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return to_login(request, page, *args, **kwargs)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate if view is None else decorate(view)
