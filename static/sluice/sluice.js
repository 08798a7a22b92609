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
    if (document.hidden && elt && elt.hasAttribute && elt.hasAttribute("data-poll")) e.preventDefault();
  });
})();
