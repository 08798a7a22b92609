/* Reviewer pages: live countdowns and keyboard shortcuts. The pages work without it. */
(function () {
  "use strict";

  // --- countdowns (same format as reviews_tags.remaining_text) --------------------------------
  function remaining(seconds) {
    if (seconds <= 0) return "due now";
    var s = Math.floor(seconds);
    var d = Math.floor(s / 86400); s -= d * 86400;
    var h = Math.floor(s / 3600); s -= h * 3600;
    var m = Math.floor(s / 60); s -= m * 60;
    var pad = function (n) { return n < 10 ? "0" + n : "" + n; };
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + pad(m) + "m";
    if (m) return m + "m " + pad(s) + "s";
    return s + "s";
  }
  function urgency(seconds) {
    if (seconds <= 0) return "overdue";
    if (seconds < 3600) return "soon";
    return seconds < 86400 ? "today" : "later";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-deadline]").forEach(function (el) {
      var left = (Date.parse(el.dataset.deadline) - now) / 1000;
      if (isNaN(left)) return;
      var text = remaining(left);
      if (el.textContent !== text) el.textContent = text;
      var level = "rv-urgency-" + urgency(left);
      if (!el.classList.contains(level)) {
        el.className = el.className.replace(/\brv-urgency-\w+/g, "").trim() + " " + level;
      }
    });
  }
  tick();
  setInterval(tick, 1000);

  // --- queue: j/k selection that survives live refreshes --------------------------------------
  var selectedId = null;
  var knownIds = null;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#queue .rv-row")); }

  function select(row, scroll) {
    rows().forEach(function (r) { r.classList.remove("selected"); r.removeAttribute("aria-selected"); });
    if (!row) { selectedId = null; return; }
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
    selectedId = row.dataset.gateId;
    if (scroll) row.scrollIntoView({ block: "nearest" });
  }

  function reselect() {
    var list = rows();
    var ids = list.map(function (r) { return r.dataset.gateId; });
    if (knownIds) {
      list.forEach(function (r) { if (knownIds.indexOf(r.dataset.gateId) < 0) r.classList.add("rv-new"); });
    }
    knownIds = ids;
    if (selectedId) {
      var again = list.filter(function (r) { return r.dataset.gateId === selectedId; })[0];
      select(again || null, false);
    }
  }

  function move(step) {
    var list = rows();
    if (!list.length) return;
    var at = list.findIndex(function (r) { return r.dataset.gateId === selectedId; });
    var next = at < 0 ? (step > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, at + step));
    select(list[next], true);
  }

  document.addEventListener("click", function (e) {
    var row = e.target.closest && e.target.closest("#queue .rv-row");
    if (!row || e.target.closest("a, button, input, select")) return;
    window.location.href = row.dataset.href;
  });

  document.body.addEventListener("htmx:afterSettle", reselect);
  document.addEventListener("DOMContentLoaded", reselect);
  if (document.readyState !== "loading") reselect();

  // --- a typed comment survives live updates of the decision panel -----------------------------
  // Claiming, releasing or the gate closing re-renders #decision-panel. Text the reviewer typed
  // goes back into the new form; when the gate closed there is no form any more, so it is shown
  // read-only in #unsent-comment with a note that it was not saved.
  var pendingComment = "";
  document.addEventListener("htmx:beforeSwap", function () {
    var box = document.querySelector("#decision-form textarea[name=comment]");
    if (box && box.value.trim()) pendingComment = box.value;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!pendingComment) return;
    var box = document.querySelector("#decision-form textarea[name=comment]");
    var unsent = document.getElementById("unsent-comment");
    if (box) {
      if (!box.value) box.value = pendingComment;
    } else if (unsent) {
      unsent.querySelector("textarea").value = pendingComment;
      unsent.hidden = false;
    } else {
      return;
    }
    pendingComment = "";
  });

  // --- text boxes grow with what is typed in them --------------------------------------------
  // The comment and the editable fields (a reply draft runs to many lines) start small and grow
  // to fit their text, up to 70% of the screen (reviews.css), then scroll. Heights are set
  // through the CSSOM, which the pages' CSP allows (it forbids only style attributes in HTML).
  var GROW = "#decision-panel textarea:not([readonly]), .rv-main textarea:not([readonly])";
  function grow(box) {
    if (!box.hasAttribute("data-autogrow")) box.setAttribute("data-autogrow", "");
    var limit = window.innerHeight * 0.7;
    box.style.height = "auto";
    var wanted = box.scrollHeight + (box.offsetHeight - box.clientHeight);
    box.style.height = Math.min(wanted, limit) + "px";
    box.classList.toggle("rv-grown-max", wanted > limit);
  }
  function growAll() { document.querySelectorAll(GROW).forEach(grow); }
  document.addEventListener("input", function (e) {
    if (e.target.matches && e.target.matches(GROW)) grow(e.target);
  });
  document.addEventListener("htmx:afterSettle", growAll);
  if (document.readyState !== "loading") growAll();
  else document.addEventListener("DOMContentLoaded", growAll);

  // --- keys --------------------------------------------------------------------------------------
  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  function press(key) {
    var button = document.querySelector('#decision-panel [data-key="' + key + '"]');
    if (button && !button.disabled) { button.click(); return true; }
    return false;
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape" && typing(document.activeElement)) { document.activeElement.blur(); return; }
    if (typing(e.target)) return;
    var inQueue = !!document.getElementById("queue");
    if (inQueue) {
      if (e.key === "j") { move(1); e.preventDefault(); }
      else if (e.key === "k") { move(-1); e.preventDefault(); }
      else if ((e.key === "Enter" || e.key === "o") && selectedId) {
        var row = rows().filter(function (r) { return r.dataset.gateId === selectedId; })[0];
        if (row) { window.location.href = row.dataset.href; e.preventDefault(); }
      }
      return;
    }
    if (document.getElementById("decision-panel")) {
      if (e.key === "u") {
        var back = document.querySelector(".rv-crumbs a");
        if (back) window.location.href = back.href;
        return;
      }
      if (/^[arc1-9]$/.test(e.key) && press(e.key)) e.preventDefault();
    }
  });
})();
