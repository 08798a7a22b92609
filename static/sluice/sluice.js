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
})();
