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
  // The server's clock, not this browser's: a laptop ten minutes fast showed "due now" with
  // minutes left. A page that shows countdowns carries the server's time as it rendered
  // (data-now, epoch ms; so does each list a live refresh swaps in), and the difference from
  // this browser's clock is taken again whenever a newer one arrives.
  var skew = 0;
  var skewFrom = 0;
  function syncClock() {
    document.querySelectorAll("[data-now]").forEach(function (el) {
      var sent = Number(el.dataset.now);
      if (sent > skewFrom) {
        skewFrom = sent;
        skew = sent - Date.now();
      }
    });
  }
  function tick() {
    syncClock();
    var now = Date.now() + skew;
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
  document.addEventListener("htmx:afterSettle", tick);

  // --- queue: j/k selection that survives live refreshes --------------------------------------
  var selectedId = null;
  var knownIds = null;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#queue .rv-row")); }

  // The selected row is marked on its title link (aria-current): aria-selected means nothing
  // on a row of a plain table.
  function select(row, scroll) {
    rows().forEach(function (r) {
      r.classList.remove("selected");
      r.querySelectorAll("a.rv-title[aria-current]").forEach(function (a) { a.removeAttribute("aria-current"); });
    });
    if (!row) { selectedId = null; return; }
    row.classList.add("selected");
    var current = row.querySelector("a.rv-title");
    if (current) current.setAttribute("aria-current", "true");
    selectedId = row.dataset.gateId;
    if (scroll) {
      // j/k move keyboard focus with the selection (to the row's title link), so a screen
      // reader reads the gate out and Tab goes on from there; a live refresh keeps that focus
      // (the link's id is stable, reviews.views.QueueRow).
      var link = row.querySelector("a.rv-title");
      if (link) link.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
  }

  // What a live refresh changed, said once in the polite status line outside the list
  // (#queue-status): the list itself is not a live region, or every ticking countdown in it
  // would be read out.
  function announce(text) {
    var status = document.getElementById("queue-status");
    if (!status || !text) return;
    status.textContent = "";
    setTimeout(function () { status.textContent = text; }, 50);
  }
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  // A gate as the status line names it: the row's link (the run's subject, else the title).
  function rowName(r) {
    var link = r.querySelector("a.rv-title");
    return link ? (link.getAttribute("title") || link.textContent).trim() : "";
  }
  var knownNames = {};
  // Where the selection was before a live refresh replaced the list, and whether keyboard
  // focus was in the list (or nowhere): if the selected gate left, the row now in its place
  // takes the selection (and the focus), instead of focus falling to <body> and "j" starting
  // over at the first row.
  var before = null;
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail && e.detail.shouldSwap === false) return;
    var queue = document.getElementById("queue");
    if (!queue || !e.detail || e.detail.target !== queue) return;
    var a = document.activeElement;
    before = {
      at: rows().findIndex(function (r) { return r.dataset.gateId === selectedId; }),
      // Only when focus was on the selected row's link (or nowhere): a reviewer on another
      // control of the list (a row's pick box) keeps it.
      focused: !a || a === document.body || !!(a.matches && a.matches("a.rv-title") &&
        a.closest(".rv-row") && a.closest(".rv-row").dataset.gateId === selectedId)
    };
  });

  function reselect() {
    var list = rows();
    var ids = list.map(function (r) { return r.dataset.gateId; });
    var was = before;
    before = null;
    var lostSelected = !!(selectedId && knownIds && ids.indexOf(selectedId) < 0);
    var said = [];
    if (knownIds) {
      var known = knownIds;
      var added = 0;
      list.forEach(function (r) {
        if (known.indexOf(r.dataset.gateId) < 0) { r.classList.add("rv-new"); added += 1; }
      });
      var gone = known.filter(function (id) { return ids.indexOf(id) < 0; });
      if (added) said.push(plural(added, "new gate", "new gates"));
      if (lostSelected) {
        // The gate the reviewer was on: by name, so they know why focus moved.
        var others = gone.length - 1;
        said.push("“" + (knownNames[selectedId] || "the selected gate") + "” left the list" +
          (others ? " (and " + plural(others, "other gate", "other gates") + ")" : ""));
      } else if (gone.length) {
        said.push(plural(gone.length, "gate", "gates") + " left the list");
      }
    }
    knownIds = ids;
    knownNames = {};
    list.forEach(function (r) { knownNames[r.dataset.gateId] = rowName(r); });
    if (lostSelected) {
      var at = was && was.at >= 0 ? was.at : 0;
      var focus = !!(was && was.focused);
      var next = list[Math.min(at, list.length - 1)] || null;
      select(next, focus);
      if (!next) {
        said.push("the list is empty");
        var queue = document.getElementById("queue");
        if (focus && queue) {
          queue.setAttribute("tabindex", "-1");
          queue.focus({ preventScroll: true });
        }
      }
    } else if (selectedId) {
      var again = list.filter(function (r) { return r.dataset.gateId === selectedId; })[0];
      select(again || null, false);
    }
    if (said.length) announce(said.join(", ") + ".");
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
    if (!row || e.target.closest("a, button, input, select, label")) return;
    window.location.href = row.dataset.href;
  });

  // --- queue: ticking gates for a bulk decision ----------------------------------------------
  // The ticks live here (by gate id), not in the DOM: the list is replaced by live refreshes,
  // so after each one the boxes of gates still listed are ticked again and the others dropped.
  // Shift-click ticks (or unticks) the range from the last box clicked; "x" ticks the row
  // selected with j/k.
  var picked = {};
  var lastPicked = null;

  function pickBoxes() { return Array.prototype.slice.call(document.querySelectorAll("#queue .rv-pick")); }

  function setPicked(box, on) {
    box.checked = on;
    var row = box.closest(".rv-row");
    if (row) row.classList.toggle("rv-picked", on);
    if (on) picked[box.value] = true; else delete picked[box.value];
  }

  function showPicked() {
    var boxes = pickBoxes();
    var listed = {};
    boxes.forEach(function (b) { listed[b.value] = true; setPicked(b, !!picked[b.value]); });
    Object.keys(picked).forEach(function (id) { if (!listed[id]) delete picked[id]; });
    var n = Object.keys(picked).length;
    var count = document.querySelector("[data-testid=bulk-count]");
    // A live region (queue.html): written only when the number changed, or a live refresh of
    // the list would read "2 selected" out again every few seconds.
    if (count && count.textContent !== String(n)) count.textContent = String(n);
    document.querySelectorAll("[data-bulk-action]").forEach(function (b) { b.disabled = n === 0; });
    var bar = document.getElementById("bulk-form");
    if (bar) bar.classList.toggle("rv-bulk-active", n > 0);
    var all = document.querySelector("#queue [data-pick-all]");
    if (all) {
      all.checked = boxes.length > 0 && n === boxes.length;
      all.indeterminate = n > 0 && n < boxes.length;
    }
  }

  document.addEventListener("click", function (e) {
    var box = e.target.closest && e.target.closest("#queue .rv-pick");
    if (box) {
      var boxes = pickBoxes();
      var at = boxes.indexOf(box);
      var from = lastPicked === null ? -1 : boxes.findIndex(function (b) { return b.value === lastPicked; });
      if (e.shiftKey && from >= 0 && at >= 0) {
        var lo = Math.min(from, at), hi = Math.max(from, at);
        for (var i = lo; i <= hi; i++) setPicked(boxes[i], box.checked);
      } else {
        setPicked(box, box.checked);
      }
      lastPicked = box.value;
      showPicked();
      return;
    }
    var all = e.target.closest && e.target.closest("#queue [data-pick-all]");
    if (all) {
      pickBoxes().forEach(function (b) { setPicked(b, all.checked); });
      showPicked();
    }
  });

  function toggleSelectedRow() {
    var row = rows().filter(function (r) { return r.dataset.gateId === selectedId; })[0];
    var box = row && row.querySelector(".rv-pick");
    if (!box) return false;
    setPicked(box, !box.checked);
    lastPicked = box.value;
    showPicked();
    return true;
  }

  document.body.addEventListener("htmx:afterSettle", showPicked);
  if (document.readyState !== "loading") showPicked();
  else document.addEventListener("DOMContentLoaded", showPicked);

  document.body.addEventListener("htmx:afterSettle", reselect);
  document.addEventListener("DOMContentLoaded", reselect);
  if (document.readyState !== "loading") reselect();

  // --- what the reviewer typed survives live updates of the decision panel -------------------
  // Claiming, releasing, someone else's claim or the gate closing re-renders #decision-panel
  // (live, at any moment). What the reviewer changed in the form (the comment, corrected fields)
  // goes back into the new form; when there is no form any more (the gate closed, its run was
  // restarted, someone else holds the claim), the comment and every changed field are shown
  // read-only in #unsent-comment with a note that they were not saved, and go back into the
  // form if it returns (the claim was released).
  var pending = null;
  var parked = null;      // what #unsent-comment shows: { fields: [...], shown: [...] }

  function editedFields(form) {
    var out = [];
    form.querySelectorAll("input, textarea, select").forEach(function (el) {
      if (!el.name || /^(hidden|submit|button|file|reset)$/.test(el.type)) return;
      if (el.type === "checkbox" || el.type === "radio") {
        if (el.checked !== el.defaultChecked) out.push({ name: el.name, value: el.value, checked: el.checked });
      } else if (el.tagName === "SELECT") {
        var changed = Array.prototype.some.call(el.options, function (o) { return o.selected !== o.defaultSelected; });
        if (changed) out.push({ name: el.name, value: el.value });
      } else if (el.value !== el.defaultValue) {
        out.push({ name: el.name, value: el.value });
      }
    });
    return out;
  }

  // The changed fields as a person reads them: the field's label and what it holds now (a
  // choice's text, the ticked boxes' labels), one entry per field.
  function shownFields(form, fields) {
    var names = [];
    fields.forEach(function (f) { if (f.name !== "comment" && names.indexOf(f.name) < 0) names.push(f.name); });
    return names.map(function (name) {
      var inputs = Array.prototype.filter.call(form.querySelectorAll("[name]"), function (el) { return el.name === name; });
      var box = inputs[0] && inputs[0].closest(".rv-field");
      var label = (box && box.dataset.label) || name.replace(/^edit-/, "");
      var text;
      if (inputs.length && inputs[0].tagName === "SELECT") {
        var option = inputs[0].options[inputs[0].selectedIndex];
        text = option ? option.text : "";
      } else if (inputs.length && inputs[0].type === "checkbox") {
        if (inputs[0].closest(".rv-check")) {  // a yes/no checkbox, not a list of choices
          text = inputs[0].checked ? "ticked" : "not ticked";
        } else {
          text = inputs.filter(function (el) { return el.checked; }).map(function (el) {
            var l = el.closest("label");
            return l ? l.textContent.trim() : el.value;
          }).join(", ") || "(none)";
        }
      } else {
        text = inputs.length ? inputs[0].value : "";
      }
      return { label: label, text: text };
    });
  }

  function park(unsent, comment, shown) {
    var box = document.getElementById("unsent-comment-box");
    var list = document.getElementById("unsent-fields");
    var hasComment = !!(comment && comment.trim());
    unsent.querySelector("#unsent-comment-text").value = hasComment ? comment : "";
    if (box) box.hidden = !hasComment;
    if (list) {
      list.textContent = "";
      shown.forEach(function (f, i) {
        var id = "unsent-field-" + (i + 1);
        var label = document.createElement("label");
        label.className = "rv-label";
        label.htmlFor = id;
        label.textContent = f.label + " (not saved)";
        var area = document.createElement("textarea");
        area.id = id;
        area.readOnly = true;
        area.rows = 2;
        area.dir = "auto";
        area.setAttribute("data-unsent-field", "");
        area.value = f.text;
        list.appendChild(label);
        list.appendChild(area);
      });
      list.hidden = shown.length === 0;
    }
    var what = unsent.querySelector("[data-unsent-what]");
    if (what) {
      what.textContent = shown.length ? "Your corrections" + (hasComment ? " and comment" : "") + " were" : "Your comment was";
    }
    var it = unsent.querySelector("[data-unsent-it]");
    if (it) it.textContent = shown.length ? "what" : "it";
    unsent.hidden = !(hasComment || shown.length);
  }

  function restoreFields(form, fields) {
    fields.forEach(function (f) {
      form.querySelectorAll("[name]").forEach(function (el) {
        if (el.name !== f.name) return;
        if ("checked" in f) { if (el.value === f.value) el.checked = f.checked; }
        else el.value = f.value;
      });
    });
  }

  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail && e.detail.shouldSwap === false) return;
    var form = document.getElementById("decision-form");
    if (form) {
      var fields = editedFields(form);
      if (fields.length) pending = { fields: fields, shown: shownFields(form, fields) };
      return;
    }
    var unsent = document.getElementById("unsent-comment");
    if (!unsent || unsent.hidden) return;
    var text = unsent.querySelector("#unsent-comment-text");
    var comment = text ? text.value : "";
    var kept, shown;
    if (parked) {
      kept = parked.fields.filter(function (f) { return f.name !== "comment"; });
      shown = parked.shown;
    } else {
      // Handed back by the server (a decision that arrived too late): read them off the page.
      kept = [];
      shown = [];
      unsent.querySelectorAll("textarea[data-unsent-field]").forEach(function (t) {
        var label = unsent.querySelector('label[for="' + t.id + '"]');
        shown.push({ label: label ? label.textContent.replace(/ \(not saved\)$/, "") : "", text: t.value });
        if (t.dataset.name) kept.push({ name: t.dataset.name, value: t.value });
      });
    }
    if (comment.trim()) kept.push({ name: "comment", value: comment });
    if (kept.length || shown.length) pending = { fields: kept, shown: shown };
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!pending) return;
    var form = document.getElementById("decision-form");
    var unsent = document.getElementById("unsent-comment");
    if (form) {
      restoreFields(form, pending.fields);
      parked = null;
    } else if (unsent) {
      var comment = pending.fields.filter(function (f) { return f.name === "comment"; })[0];
      var shown = pending.shown || [];
      if ((comment && comment.value.trim()) || shown.length) {
        park(unsent, comment ? comment.value : "", shown);
        parked = { fields: pending.fields, shown: shown };
      }
    } else {
      return;
    }
    pending = null;
  });

  // --- text boxes grow with what is typed in them --------------------------------------------
  // The comment and the editable fields (a reply draft runs to many lines) start small and grow
  // to fit their text, up to 70% of the window, then scroll. The height is set through the
  // rows attribute, not a style: htmx re-applies a swapped element's attributes, and a style
  // attribute would break the pages' CSP (no inline styles at all).
  var GROW = "#decision-panel textarea:not([readonly]), .rv-main textarea:not([readonly])";
  function grow(box) {
    if (!box.hasAttribute("data-autogrow")) box.setAttribute("data-autogrow", "");
    if (!box.dataset.minRows) box.dataset.minRows = box.getAttribute("rows") || "2";
    var min = parseInt(box.dataset.minRows, 10) || 2;
    var css = window.getComputedStyle(box);
    var line = parseFloat(css.lineHeight) || (parseFloat(css.fontSize) || 16) * 1.4;
    var pad = (parseFloat(css.paddingTop) || 0) + (parseFloat(css.paddingBottom) || 0);
    var max = Math.max(min, Math.floor((window.innerHeight * 0.7 - pad) / line));
    box.rows = min;
    var need = Math.ceil((box.scrollHeight - pad) / line);
    box.rows = Math.max(min, Math.min(need, max));
    box.classList.toggle("rv-grown-max", need > max);
  }
  function growAll() { document.querySelectorAll(GROW).forEach(grow); }
  document.addEventListener("input", function (e) {
    if (e.target.matches && e.target.matches(GROW)) grow(e.target);
  });
  document.addEventListener("htmx:afterSettle", growAll);
  if (document.readyState !== "loading") growAll();
  else document.addEventListener("DOMContentLoaded", growAll);

  // --- keyboard focus survives live updates of the decision panel -----------------------------
  // The panel is replaced whole (a claim, a release, someone else's claim, the gate closing).
  // Focus in it would fall to <body>, where the next keystrokes of a half-typed comment are
  // shortcuts ("a" approves). So the focused field (id or name, caret) is remembered and
  // focused again once it is back; while it is gone (someone else holds the claim) focus waits
  // on the read-only copy of the comment, or on the panel's heading. After the reviewer's own
  // Claim or Release, focus goes to the button that took its place.
  var lost = null;        // the field a swap took away: { id, name, start, end }
  var couldDecide = false; // the panel had decision buttons before the swap
  var toldClaimed = false; // #key-note said someone else holds the claim
  var ownClaim = false;   // the swap answers this page's Claim/Release
  var swappedAt = 0;      // when the panel last changed under the reviewer
  var armed = false;      // Esc pressed since the last edit: shortcuts act on typed text
  var swapping = false;   // a swap is under way (afterSettle fires once per swapped element)
  var GUARD_MS = 1000;
  // A page reached by deciding (it opens with "Approved “X”. Next up: “Y”.") is a change under
  // the reviewer too: a key pressed twice, or pressed as the page loads, must not decide the
  // next gate unseen.
  if (document.querySelector("main .flashes > .flash-success")) swappedAt = Date.now();

  function panel() { return document.getElementById("decision-panel"); }

  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail && e.detail.shouldSwap === false) return;
    var box = panel();
    if (!box) return;
    swapping = true;
    couldDecide = !!box.querySelector("#decision-form [data-key]");
    var elt = e.detail && e.detail.requestConfig && e.detail.requestConfig.elt;
    ownClaim = !!(elt && elt.closest && elt.closest("form[data-claim-action]"));
    var a = document.activeElement;
    if (a && box.contains(a) && a.name && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && !a.readOnly) {
      lost = { id: a.id, name: a.name, start: a.selectionStart, end: a.selectionEnd };
    }
  });

  function focusQuietly(el, memo) {
    el.focus({ preventScroll: true });
    if (memo && memo.start !== null && memo.start !== undefined && el.setSelectionRange) {
      try { el.setSelectionRange(memo.start, memo.end); } catch (err) { /* not a text field */ }
    }
    var r = el.getBoundingClientRect();
    if (r.bottom < 0 || r.top > window.innerHeight) el.scrollIntoView({ block: "center" });
  }

  function usable(el) { return el && !el.disabled && !el.hidden && !el.closest("[hidden]"); }

  document.addEventListener("htmx:afterSettle", function () {
    var box = panel();
    if (!box || !swapping) return;
    swapping = false;
    armed = false;
    // The reviewer's own Claim/Release changed the panel as they asked: no pause after it.
    if (!ownClaim) swappedAt = Date.now();
    var canDecide = !!box.querySelector("#decision-form [data-key]");
    if (!ownClaim && couldDecide && !canDecide) {
      // Someone else took the gate: the buttons went away under the reviewer. Say so in the
      // polite note that is on the page from the start (a closed gate says so in its banner).
      var holder = box.querySelector("[data-testid=claimed-by]");
      if (holder) {
        keyNote("Claimed by " + holder.textContent.trim() + " — you can no longer decide this gate.", true);
        toldClaimed = true;
      }
    } else if (toldClaimed && canDecide) {
      keyNote("The claim was released — you can decide this gate again.");
      toldClaimed = false;
    }
    if (ownClaim) {
      ownClaim = false;
      // Refused (someone else was quicker): focus on why, so it is read out, not on <body>.
      var refused = box.querySelector(".flash-error");
      if (refused) { refused.setAttribute("tabindex", "-1"); focusQuietly(refused); return; }
      var main = box.querySelector("[data-claim-action] button") || box.querySelector("button:not([disabled])");
      if (usable(main)) { focusQuietly(main); return; }
      var head = document.getElementById("decision-h");
      if (head) { head.setAttribute("tabindex", "-1"); focusQuietly(head); return; }
    }
    if (!lost) return;
    var a = document.activeElement;
    var form = document.getElementById("decision-form");
    var back = (lost.id && document.getElementById(lost.id)) ||
      (form && form.querySelector('[name="' + lost.name.replace(/"/g, "") + '"]'));
    if (usable(back) && box.contains(back)) {
      focusQuietly(back, lost);
      lost = null;
      return;
    }
    if (a && a !== document.body && !box.contains(a)) { lost = null; return; }
    // Not back (yet): keep the keys out of the shortcuts, somewhere near.
    var parkedBox = document.querySelector("#unsent-comment:not([hidden]) #unsent-comment-text");
    if (!usable(parkedBox)) parkedBox = document.querySelector("#unsent-comment:not([hidden]) textarea[data-unsent-field]");
    var heading = document.getElementById("decision-h");
    if (usable(parkedBox)) focusQuietly(parkedBox);
    else if (heading) { heading.setAttribute("tabindex", "-1"); focusQuietly(heading); }
  });

  // A click or Tab elsewhere means the reviewer moved on: forget the field.
  document.addEventListener("pointerdown", function () { lost = null; });

  function unsentText() {
    var form = document.getElementById("decision-form");
    if (!form) return false;
    return editedFields(form).some(function (f) { return !("checked" in f) && String(f.value).trim(); });
  }

  document.addEventListener("input", function (e) {
    if (e.target.closest && e.target.closest("#decision-form")) armed = false;
  });

  // The polite note under the decision panel (gate.html #key-note). It clears itself after a
  // while, unless it says something that stays true (someone else holds the claim).
  function keyNote(text, keep) {
    var note = document.getElementById("key-note");
    if (!note) return;
    clearTimeout(keyNote.timer);
    if (note.textContent === text) {
      // The same words again (a second press): cleared first, so they are read out again.
      note.textContent = "";
      keyNote.timer = setTimeout(function () { keyNote(text, keep); }, 50);
      return;
    }
    note.textContent = text;
    if (!keep) keyNote.timer = setTimeout(function () { note.textContent = ""; }, 6000);
  }

  // --- keys --------------------------------------------------------------------------------------
  // A text box: Esc leaves it, so the shortcuts work again.
  function typing(el) {
    if (el && el.tagName === "INPUT" && /^(checkbox|radio)$/.test(el.type)) return false;
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }
  // Any form control (a checkbox and a radio too: a screen reader's keys reach them), or a
  // <summary>: single-letter shortcuts never fire from there.
  function inControl(el) {
    return !!el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT|SUMMARY)$/.test(el.tagName));
  }

  // The shortcuts can be turned off (WCAG 2.1.4: a screen reader's or speech control's letters
  // must not approve a gate): the "Keyboard shortcuts" checkbox in the pages' key hint, kept in
  // this browser (localStorage), on unless turned off. While off, the hint's list of keys and
  // the keys on the buttons are hidden, and the buttons' aria-keyshortcuts go.
  var KEYS_OFF = "sluice.reviews.shortcuts-off";
  function shortcutsOn() {
    try { return window.localStorage.getItem(KEYS_OFF) !== "1"; } catch (err) { return true; }
  }
  function showShortcuts() {
    var on = shortcutsOn();
    document.documentElement.classList.toggle("rv-keys-off", !on);
    document.querySelectorAll("[data-keys-toggle]").forEach(function (box) { box.checked = on; });
    document.querySelectorAll("[data-key]").forEach(function (b) {
      if (!b.dataset.shortcut) b.dataset.shortcut = b.getAttribute("aria-keyshortcuts") || "";
      if (on && b.dataset.shortcut) b.setAttribute("aria-keyshortcuts", b.dataset.shortcut);
      else b.removeAttribute("aria-keyshortcuts");
    });
  }
  document.addEventListener("change", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("[data-keys-toggle]")) return;
    try {
      if (box.checked) window.localStorage.removeItem(KEYS_OFF);
      else window.localStorage.setItem(KEYS_OFF, "1");
    } catch (err) { /* not kept: this page only */ }
    showShortcuts();
  });
  // Another tab turned them on or off.
  window.addEventListener("storage", function (e) { if (e.key === KEYS_OFF) showShortcuts(); });
  document.addEventListener("htmx:afterSettle", showShortcuts);
  if (document.readyState !== "loading") showShortcuts();
  else document.addEventListener("DOMContentLoaded", showShortcuts);

  // Enter and "o" open the selected gate only from the page itself (<body>, <main> after the
  // skip link) or from that gate's row: on a filter chip, a button or another link they do
  // what that control does.
  function onSelectedRow(target, row) {
    if (!row) return false;
    if (target === document.body || target === document.documentElement || target.tagName === "MAIN") return true;
    return target === row || (row.contains(target) && target.matches("a.rv-title"));
  }

  var KEY_NAMES = { a: "Approve", r: "Reject", c: "Claim or Release" };

  function press(key) {
    var button = document.querySelector('#decision-panel [data-key="' + key + '"]');
    if (button && !button.disabled) { button.click(); return true; }
    // Say why nothing happened (the button went with someone else's claim, or never was).
    var what = KEY_NAMES[key] ? "no " + KEY_NAMES[key] + " button" : "no choice " + key;
    var holder = document.querySelector("#decision-panel [data-testid=claimed-by]");
    var why = holder && holder.textContent.trim() !== "you" ? " (claimed by " + holder.textContent.trim() + ")" : "";
    keyNote("“" + key + "” did nothing: there is " + what + " on this gate now" + why + ".");
    return false;
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (!shortcutsOn()) return;
    if (e.key === "Escape") {
      // Esc leaves a text box so the shortcuts work again, and says "act on what I typed".
      armed = true;
      lost = null;
      if (typing(document.activeElement)) document.activeElement.blur();
      return;
    }
    if (inControl(e.target)) return;
    var inQueue = !!document.getElementById("queue");
    if (inQueue) {
      if (e.key === "j") { move(1); e.preventDefault(); }
      else if (e.key === "k") { move(-1); e.preventDefault(); }
      else if (e.key === "x") { if (toggleSelectedRow()) e.preventDefault(); }
      else if ((e.key === "Enter" || e.key === "o") && selectedId) {
        var row = rows().filter(function (r) { return r.dataset.gateId === selectedId; })[0];
        if (onSelectedRow(e.target, row)) { window.location.href = row.dataset.href; e.preventDefault(); }
      }
      return;
    }
    if (panel() && /^[arcu1-9]$/.test(e.key)) {
      // Held back: right after the panel changed under the reviewer (what is under the finger
      // may not be what they meant), and while the form holds text not sent, until Esc says
      // the shortcut is meant (Esc, then "a", approves with the comment).
      if (Date.now() - swappedAt < GUARD_MS) {
        keyNote("The decision panel just changed, so “" + e.key + "” did nothing. Check it and press again.");
        e.preventDefault();
        return;
      }
      if (unsentText() && !armed) {
        keyNote("You have typed text that is not sent, so “" + e.key + "” did nothing. Press Esc, then “" + e.key + "”, or use the buttons.");
        e.preventDefault();
        return;
      }
      if (e.key === "u") {
        var back = document.querySelector(".rv-crumbs a");
        if (back) window.location.href = back.href;
        return;
      }
      if (press(e.key)) e.preventDefault();
    }
  });
})();
