/* Behaviour every page shares, kept out of the HTML so the Content-Security-Policy can forbid
 * inline scripts and inline event handlers (config/settings.py, SECURE_CSP). */
(function () {
  "use strict";

  // <form data-confirm="Question?">: ask before submitting (replaces onsubmit="return confirm()").
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form && form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });

  // <select data-autosubmit>: submit its form on change (replaces onchange="this.form.submit()").
  document.addEventListener("change", function (e) {
    var el = e.target;
    if (el && el.matches && el.matches("select[data-autosubmit]") && el.form) el.form.submit();
  });

  // Live polls (hx-trigger="every …" on an element with data-poll) pause while the tab is
  // hidden. htmx would evaluate a "[!document.hidden]" trigger filter with Function(), which the
  // policy forbids ('unsafe-eval'), so the check lives here.
  document.addEventListener("htmx:confirm", function (e) {
    var elt = e.detail && e.detail.elt;
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-poll")) return;
    if (document.hidden) { e.preventDefault(); return; }
    // Push (reviews pages, docs/reviews.md): an element with data-push also listens to a
    // Server-Sent Events stream (htmx's sse extension). While that stream is open, its timer
    // polls (a request without a triggering event) are skipped: the stream's events trigger
    // the same request. When the stream fails or ends, the polls run again: the fallback.
    if (elt.hasAttribute("data-push-live") && !e.detail.triggeringEvent) e.preventDefault();
  });
  function pushLive(e, live) {
    var elt = e.target;
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-push")) return;
    if (live) elt.setAttribute("data-push-live", "");
    else elt.removeAttribute("data-push-live");
  }
  document.addEventListener("htmx:sseOpen", function (e) { pushLive(e, true); });
  document.addEventListener("htmx:sseError", function (e) { pushLive(e, false); });
  document.addEventListener("htmx:sseClose", function (e) { pushLive(e, false); });

  // An htmx request answered 4xx or 5xx is not swapped, so without this a refused Claim (a
  // CSRF 403 after logging in again in another tab, a 404 for a gate that is gone, a 500)
  // changes nothing on screen. Say so in a flash like the server's messages, as an alert, once:
  // a poll failing every two seconds updates the one message rather than piling them up.
  // 4xx: the page no longer matches the server (stale token, gone, no longer allowed), and
  // only a reload helps. 5xx or no answer: it may pass; the message goes when a request works.
  var PROBLEMS = {
    stale: "This page is out of date — reload it.",
    action: "The server could not do that. Try again, or reload the page.",
    refresh: "The server could not refresh this page; it keeps trying.",
    offline: "The server could not be reached. Check your connection and try again."
  };
  // A message gives way only to one as important or more: a refresh failing after a refused
  // Claim must not hide why the Claim did nothing.
  var RANK = { stale: 3, action: 2, offline: 1, refresh: 1 };

  function problemBox() {
    var box = document.getElementById("htmx-problem");
    if (box) return box;
    box = document.createElement("div");
    box.id = "htmx-problem";
    box.className = "flash flash-error flash-live";
    box.setAttribute("role", "alert");
    box.setAttribute("data-testid", "htmx-problem");
    var text = document.createElement("span");
    var reload = document.createElement("button");
    reload.type = "button";
    reload.className = "btn btn-sm";
    reload.setAttribute("data-reload", "");
    reload.textContent = "Reload";
    box.appendChild(text);
    box.appendChild(reload);
    // With the server's messages when there are some (base.html), else where they would be.
    var flashes = document.querySelector(".flashes");
    if (!flashes) {
      flashes = document.createElement("div");
      flashes.className = "flashes container";
      var main = document.querySelector("main");
      document.body.insertBefore(flashes, main || document.body.firstChild);
    }
    flashes.appendChild(box);
    return box;
  }

  function showProblem(kind, byUser) {
    var box = problemBox();
    var shown = box.getAttribute("data-kind");
    if (!shown || RANK[kind] >= RANK[shown]) {
      box.setAttribute("data-kind", kind);
      box.firstChild.textContent = PROBLEMS[kind];
    }
    // After a click, bring the message into view (the page may be scrolled down to the form);
    // a poll's failure does not move the page.
    if (byUser) {
      var top = box.getBoundingClientRect().top;
      if (top < 0 || top > window.innerHeight) box.scrollIntoView({ block: "center" });
    }
  }

  // GETs are the pages' own refreshes (polls, pushes); anything else is a button or a form.
  function byUser(e) {
    var config = (e.detail && e.detail.requestConfig) || {};
    return String(config.verb || "get").toLowerCase() !== "get";
  }

  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail && e.detail.xhr;
    var status = xhr ? xhr.status : 0;
    var user = byUser(e);
    if (status >= 400 && status < 500) showProblem("stale", user);
    else showProblem(user ? "action" : "refresh", user);
  });
  document.addEventListener("htmx:sendError", function (e) {
    showProblem("offline", byUser(e));
  });
  // A passing problem's message goes when a request works again: a refresh's with the next
  // refresh, a refused action's only with the next action (a poll two seconds later must not
  // take it away before it is read). "Out of date" stays until the reload.
  document.addEventListener("htmx:afterRequest", function (e) {
    var box = document.getElementById("htmx-problem");
    if (!box || !e.detail || !e.detail.successful) return;
    var kind = box.getAttribute("data-kind");
    if (kind === "refresh" || kind === "offline" || (kind === "action" && byUser(e))) {
      box.parentNode.removeChild(box);
    }
  });
  document.addEventListener("click", function (e) {
    var button = e.target && e.target.closest && e.target.closest("#htmx-problem [data-reload]");
    if (button) window.location.reload();
  });
})();
