/* The start-run form: add and remove items of repeatable fields (arrays of objects). New
 * items take the next free index, so the server reads every item present, gaps and all. */
(function () {
  "use strict";
  function refresh(array) {
    var items = array.querySelectorAll(":scope > .array-items > .array-item");
    var count = array.querySelector("[data-count]");
    if (count) count.textContent = items.length + (items.length === 1 ? " item" : " items");
    var max = parseInt(array.dataset.maxItems || "0", 10);
    var add = array.querySelector(":scope > [data-add-item]");
    if (add) add.disabled = max > 0 && items.length >= max;
  }
  document.addEventListener("click", function (e) {
    var add = e.target.closest("[data-add-item]");
    if (add) {
      var array = add.closest("[data-array]");
      var list = array.querySelector(":scope > .array-items");
      var used = Array.prototype.map.call(list.children, function (el) { return parseInt(el.dataset.index || "-1", 10); });
      var next = used.length ? Math.max.apply(null, used) + 1 : 0;
      var html = array.querySelector(":scope > template").innerHTML.split("__index__").join(String(next));
      var holder = document.createElement("div");
      holder.innerHTML = html.trim();
      var item = holder.firstElementChild;
      item.dataset.index = String(next);
      var legend = item.querySelector("legend");
      if (legend) {
        // Number the item in the legend's own text: an optional item's legend also holds its
        // "include" checkbox, which replacing the whole text removed (its data was then lost).
        var label = legend.querySelector("label") || legend;
        var texts = Array.prototype.filter.call(label.childNodes, function (n) {
          return n.nodeType === 3 && n.textContent.trim();
        });
        var text = texts[texts.length - 1];
        if (text) text.textContent = " " + text.textContent.trim() + " " + (list.children.length + 1);
      }
      list.appendChild(item);
      // An item just added is one to fill in: an optional one starts included.
      var own = item.querySelector(":scope > legend [data-present]");
      if (own) own.checked = true;
      item.querySelectorAll("[data-present]").forEach(include);
      refresh(array);
      var first = item.querySelector("input, textarea, select");
      if (first) first.focus();
      return;
    }
    var remove = e.target.closest("[data-remove-item]");
    if (remove) {
      var arr = remove.closest("[data-array]");
      remove.closest(".array-item").remove();
      refresh(arr);
    }
  });
  document.querySelectorAll("[data-array]").forEach(refresh);
  // A nullable object's "include" checkbox: unticked, its fields are disabled (not sent, not
  // checked by the browser); the server reads an unticked one as None in any case.
  function include(box) {
    var set = box.closest("fieldset[data-optional]");
    if (set) set.disabled = !box.checked;
  }
  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches("[data-present]")) include(e.target);
  });
  document.querySelectorAll("[data-present]").forEach(include);
  var form = document.getElementById("start-form");
  if (form) {
    form.addEventListener("submit", function () {
      var btn = form.querySelector("button[type=submit]");
      // The idempotency key makes a second submit harmless; this only avoids the double click.
      if (btn) { setTimeout(function () { btn.disabled = true; btn.textContent = "Starting…"; }, 0); }
    });
    var invalid = form.querySelector("[aria-invalid=true]");
    if (invalid) invalid.focus();
  }
})();
