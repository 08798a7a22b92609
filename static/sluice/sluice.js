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
  // Not on the first arrow key, though: a closed <select> changes its value (and fires change)
  // on each arrow, Home/End or letter, so a keyboard user could never get past the first
  // option. A value changed from the keyboard is submitted on Enter, or when focus leaves.
  var STEP_KEYS = /^(ArrowUp|ArrowDown|ArrowLeft|ArrowRight|Home|End|PageUp|PageDown)$/;
  function autosubmit(el) { return el && el.matches && el.matches("select[data-autosubmit]") && el.form; }
  function submitIfChanged(el) {
    var changed = Array.prototype.some.call(el.options, function (o) { return o.selected !== o.defaultSelected; });
    delete el.dataset.keyed;
    if (changed) el.form.submit();
  }
  document.addEventListener("keydown", function (e) {
    var el = e.target;
    if (!autosubmit(el) || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Enter") { e.preventDefault(); submitIfChanged(el); return; }
    // A step key or a letter (type to select) changes the value with the list closed.
    if (STEP_KEYS.test(e.key) || (e.key.length === 1 && e.key !== " ")) el.dataset.keyed = "1";
    else delete el.dataset.keyed;  // Space, F4, Alt+Down open the list: a pick there is a choice
  });
  document.addEventListener("pointerdown", function (e) {
    if (autosubmit(e.target)) delete e.target.dataset.keyed;
  });
  document.addEventListener("change", function (e) {
    var el = e.target;
    if (!autosubmit(el) || el.dataset.keyed) return;
    el.form.submit();
  });
  document.addEventListener("focusout", function (e) {
    var el = e.target;
    if (autosubmit(el) && el.dataset.keyed) submitIfChanged(el);
  });

  // After a form came back with errors (422), focus goes to the first field marked invalid
  // (Django sets aria-invalid and aria-describedby to its message), so the message is read out
  // and the field is where the next keystroke goes.
  function focusFirstInvalid() {
    var field = document.querySelector("main [aria-invalid=true]:not([type=hidden]):not([disabled])");
    if (!field || (document.activeElement && document.activeElement !== document.body)) return;
    field.focus({ preventScroll: true });
    field.scrollIntoView({ block: "center" });
  }
  // Otherwise a page that opens with a message from the server (base.html: "Approved “X”. Next
  // up: “Y”.", or why something was refused) puts focus on the first one, so it is read out and
  // the reviewer knows where they landed: a status region that is on the page from the start is
  // not announced, and the next gate's page can look just like the one decided. Only when there
  // is a message, and only while nothing else has focus.
  function focusFirstFlash() {
    var flash = document.querySelector("main .flashes > .flash[tabindex]");
    if (!flash || (document.activeElement && document.activeElement !== document.body)) return;
    // A field the page focuses itself (the login form's username) keeps it: the browser
    // applies autofocus after this, and not at all once something else has the focus.
    if (document.querySelector("main [autofocus]")) return;
    flash.focus({ preventScroll: true });
  }
  function focusOnLoad() { focusFirstInvalid(); focusFirstFlash(); }
  if (document.readyState !== "loading") focusOnLoad();
  else document.addEventListener("DOMContentLoaded", focusOnLoad);

  // Live updates keep keyboard focus and typed text. htmx puts focus back on an element with
  // the same id after a swap; for a focused link or button without one (a row of a list that
  // is re-rendered, a timeline entry), the same link (by href) or the same named control is
  // found again in the nearest element with an id. Inputs marked data-keep (a reason typed into
  // the run page's cancel form) get back what was typed when they are re-rendered.
  var focusMemo = null;
  var kept = null;
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail && e.detail.shouldSwap === false) return;
    var a = document.activeElement;
    focusMemo = null;
    if (a && a !== document.body && a.closest) {
      var scope = a.parentElement && a.parentElement.closest("[id]");
      focusMemo = {
        id: a.id, tag: a.tagName, href: a.getAttribute("href"), name: a.getAttribute("name"),
        value: a.getAttribute("value"), scope: scope ? scope.id : "",
        start: a.selectionStart, end: a.selectionEnd
      };
    }
    kept = [];
    document.querySelectorAll("[data-keep][id]").forEach(function (el) {
      if (el.value !== el.defaultValue) kept.push({ id: el.id, value: el.value });
    });
  });
  function sameControl(m) {
    if (m.id) return document.getElementById(m.id);
    var root = (m.scope && document.getElementById(m.scope)) || document;
    var tag = m.tag.toLowerCase();
    var found = null;
    root.querySelectorAll(tag).forEach(function (el) {
      if (found) return;
      if (m.href !== null && el.getAttribute("href") === m.href) found = el;
      else if (m.href === null && m.name && el.getAttribute("name") === m.name &&
               el.getAttribute("value") === m.value) found = el;
    });
    return found;
  }
  document.addEventListener("htmx:afterSettle", function () {
    if (kept) {
      kept.forEach(function (k) {
        var el = document.getElementById(k.id);
        if (el && el.value === el.defaultValue) el.value = k.value;
      });
      kept = null;
    }
    var m = focusMemo;
    focusMemo = null;
    var a = document.activeElement;
    if (!m || (a && a !== document.body)) return;
    var el = sameControl(m);
    if (!el || el.disabled || el.hidden) return;
    el.focus({ preventScroll: true });
    if (m.start !== null && m.start !== undefined && el.setSelectionRange) {
      try { el.setSelectionRange(m.start, m.end); } catch (err) { /* not a text field */ }
    }
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
    // With the server's messages when there are some (base.html), else where they would be:
    // at the start of <main>.
    var flashes = document.querySelector(".flashes");
    if (!flashes) {
      flashes = document.createElement("div");
      var main = document.querySelector("main");
      flashes.className = main ? "flashes" : "flashes container";
      if (main) main.insertBefore(flashes, main.firstChild);
      else document.body.insertBefore(flashes, document.body.firstChild);
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
