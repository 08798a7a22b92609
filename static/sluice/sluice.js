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
    offline: "The server could not be reached. Check your connection and try again.",
    forbidden: "You no longer have access to this page (your groups or account changed). " +
      "Copy anything you typed before reloading.",
    signedout: "You were signed out. Sign in again in a new tab; what you typed stays here."
  };
  // A message gives way only to one as important or more: a refresh failing after a refused
  // Claim must not hide why the Claim did nothing.
  var RANK = { signedout: 4, forbidden: 3, stale: 3, action: 2, offline: 1, refresh: 1 };

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

  // The signed-out message's link to the login page (which comes back to this page), opened in
  // a new tab so that this one keeps what was typed.
  function signInLink(box, href) {
    var link = box.querySelector("a[data-sign-in]");
    if (!href) {
      if (link) link.parentNode.removeChild(link);
      return;
    }
    if (!link) {
      link = document.createElement("a");
      link.setAttribute("data-sign-in", "");
      link.className = "btn btn-sm";
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "Sign in (new tab)";
      box.insertBefore(link, box.querySelector("[data-reload]"));
    }
    link.href = href;
  }

  function showProblem(kind, byUser, href) {
    var box = problemBox();
    var shown = box.getAttribute("data-kind");
    if (!shown || RANK[kind] >= RANK[shown]) {
      box.setAttribute("data-kind", kind);
      box.firstChild.textContent = PROBLEMS[kind];
      signInLink(box, kind === "signedout" ? href : null);
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
    // 403 on a refresh or an action that passed the CSRF check (the header is fresh, see
    // below): the account lost its group or was deactivated; a reload shows the refusal.
    if (status === 403) showProblem("forbidden", user);
    else if (status >= 400 && status < 500) showProblem("stale", user);
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
    if (kind === "refresh" || kind === "offline" || kind === "signedout" ||
        (kind === "action" && byUser(e))) {
      box.parentNode.removeChild(box);
    }
  });
  document.addEventListener("click", function (e) {
    var button = e.target && e.target.closest && e.target.closest("#htmx-problem [data-reload]");
    if (!button) return;
    if (unsentInput() &&
        !window.confirm("Reloading loses what you typed on this page. Reload anyway?")) return;
    window.location.reload();
  });

  // --- the session ended while the page was open ------------------------------------------
  // A live refresh (or an htmx action) of a page whose session ended (logged out in another
  // tab, cookies cleared, account deactivated) is answered 204 with HX-Redirect to the login
  // page (config/login.py), and htmx would take the whole tab there. When the page holds input
  // not sent (a comment, a reason, ticked boxes), it stays instead: the message links to the
  // login page in a new tab, and the page's polls stop until a request works again (htmx 2
  // fires htmx:beforeOnLoad before it looks at HX-Redirect, and stops when it is cancelled).
  var LOGIN_PATH = "/accounts/login/";  // settings.LOGIN_URL
  var signedOut = false;

  function fieldChanged(el) {
    if (el.disabled || el.matches("[data-keys-toggle]")) return false;  // a preference, kept at once
    if (el.tagName === "SELECT") {
      var opts = Array.prototype.slice.call(el.options);
      // No option marked selected: the browser shows the first one (not disabled) by default.
      if (!el.multiple && !opts.some(function (o) { return o.defaultSelected; })) {
        var first = opts.filter(function (o) { return !o.disabled; })[0];
        return !!first && el.selectedIndex !== first.index;
      }
      return opts.some(function (o) { return o.selected !== o.defaultSelected; });
    }
    if (el.type === "checkbox" || el.type === "radio") return el.checked !== el.defaultChecked;
    if (/^(hidden|submit|button|reset|image|file)$/.test(el.type)) return false;
    return el.value !== el.defaultValue;
  }
  function unsentInput() {
    var main = document.querySelector("main");
    if (!main) return false;
    return Array.prototype.some.call(main.querySelectorAll("input, textarea, select"), fieldChanged);
  }
  function toLogin(url) {
    try { return new URL(url, window.location.href).pathname === LOGIN_PATH; } catch (err) { return false; }
  }
  document.addEventListener("htmx:beforeOnLoad", function (e) {
    var xhr = e.detail && e.detail.xhr;
    var to = xhr && xhr.getResponseHeader("HX-Redirect");
    if (!to || !toLogin(to) || !unsentInput()) return;
    e.preventDefault();
    signedOut = true;
    showProblem("signedout", byUser(e), to);
  });
  document.addEventListener("htmx:confirm", function (e) {
    var elt = e.detail && e.detail.elt;
    if (!signedOut || !elt || !elt.hasAttribute) return;
    if (elt.hasAttribute("data-poll") || elt.hasAttribute("data-push")) e.preventDefault();
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail && e.detail.successful) signedOut = false;
  });

  // --- the CSRF token changed while the page was open ---------------------------------------
  // Logging in (in another tab) rotates Django's CSRF token; the one base.html put into
  // hx-headers and the forms' hidden inputs at render is then refused. The cookie (not
  // HttpOnly, config/settings.py) always has the current one: requests take it from there.
  function csrfCookie() {
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  document.addEventListener("htmx:configRequest", function (e) {
    var token = csrfCookie();
    if (token && e.detail && e.detail.headers) e.detail.headers["X-CSRFToken"] = token;
  });
  document.addEventListener("submit", function (e) {
    var token = csrfCookie();
    var form = e.target;
    if (!token || !form || !form.querySelectorAll) return;
    form.querySelectorAll("input[name=csrfmiddlewaretoken]").forEach(function (input) {
      input.value = token;
    });
  }, true);

  // --- one submit per form ------------------------------------------------------------------
  // On a slow network a second click (or key) on Approve sent the form again, and the second
  // POST was told the gate had closed. A plain form (not htmx's) that is being sent ignores
  // further submits until the page is shown again (Back restores it from the cache: it works
  // again there). Marked last (bubbling to window), so a submit another listener stopped (a
  // confirm() answered No) is not counted; refused first (capturing at window).
  function plainPost(form) {
    if (!form || form.tagName !== "FORM" || form.method !== "post") return false;
    if (form.target && form.target !== "_self") return false;
    return !form.matches("[hx-post],[hx-put],[hx-patch],[hx-delete],[hx-get]," +
      "[data-hx-post],[data-hx-put],[data-hx-patch],[data-hx-delete],[data-hx-get]");
  }
  window.addEventListener("submit", function (e) {
    var form = e.target;
    if (form && form.hasAttribute && form.hasAttribute("data-submitting")) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);
  window.addEventListener("submit", function (e) {
    if (e.defaultPrevented || !plainPost(e.target)) return;
    e.target.setAttribute("data-submitting", "");
    e.target.setAttribute("aria-busy", "true");
  });
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-submitting]").forEach(function (form) {
      form.removeAttribute("data-submitting");
      form.removeAttribute("aria-busy");
    });
  });
})();
