/* Sluice pipeline graphs: renders figure.sluice-graph with the vendored mermaid, and keeps the
 * graph of a live run up to date by polling its JSON endpoint (data-graph-url) until the run
 * ends. Safe to include many times: the first copy installs window.SluiceGraph, later copies
 * only scan for new figures (also after HTMX swaps). */
(function () {
  "use strict";
  if (window.SluiceGraph) { window.SluiceGraph.scan(document); return; }
  var me = document.currentScript;
  var mermaidSrc = me && me.dataset.mermaidSrc;
  var loading = null;
  var counter = 0;
  var POLL_MS = 1500;

  function load() {
    if (window.mermaid && window.SluiceGraph.ready) return Promise.resolve(window.mermaid);
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var done = function () { init(); resolve(window.mermaid); };
        if (window.mermaid) { done(); return; }
        var s = document.createElement("script");
        s.src = mermaidSrc;
        s.onload = done;
        s.onerror = function () { reject(new Error("could not load " + mermaidSrc)); };
        document.head.appendChild(s);
      });
    }
    return loading;
  }

  function init() {
    window.mermaid.initialize({
      startOnLoad: false,
      securityLevel: "strict",
      theme: "base",
      fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif',
      themeVariables: {
        fontSize: "14px",
        primaryColor: "#ffffff",
        primaryBorderColor: "#9aa4b2",
        primaryTextColor: "#1b1f24",
        lineColor: "#8b949e",
        textColor: "#30363d",
        labelBackgroundColor: "#f6f7f9",
        edgeLabelBackground: "#f6f7f9",
        clusterBkg: "#f8fafc",
        clusterBorder: "#cfd4da",
        tertiaryColor: "#f8fafc",
        background: "#ffffff"
      },
      state: { useMaxWidth: true, padding: 6 }
    });
    window.SluiceGraph.ready = true;
  }

  function draw(fig, text) {
    var canvas = fig.querySelector(".graph-canvas");
    return load().then(function (mermaid) {
      counter += 1;
      return mermaid.render("sluice-graph-" + counter, text);
    }).then(function (out) {
      canvas.innerHTML = out.svg;
      fig.dataset.rendered = "1";
      fig._text = text;
      fig.classList.add("is-rendered");
      fig.dispatchEvent(new CustomEvent("sluice:graph-rendered", { bubbles: true }));
    }).catch(function (err) {
      canvas.innerHTML = "";
      var p = document.createElement("p");
      p.className = "graph-error";
      p.textContent = "The graph could not be drawn: " + err.message;
      canvas.appendChild(p);
    });
  }

  function describe(fig, data) {
    var status = fig.querySelector(".graph-status");
    fig.dataset.status = data.status;
    fig.dataset.current = (data.current || []).join(" ");
    if (!status) return;
    var now = (data.current || []).map(function (s) { return s.replace(/__/g, " / "); });
    status.textContent = "Run " + data.status + (now.length ? " · now at " + now.join(", ") : "");
  }

  function poll(fig) {
    var url = fig.dataset.graphUrl;
    var tick = function () {
      if (!document.body.contains(fig)) return;
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (data) {
          describe(fig, data);
          var next = data.mermaid !== fig._text ? draw(fig, data.mermaid) : Promise.resolve();
          next.then(function () { if (data.active) setTimeout(tick, POLL_MS); });
        })
        .catch(function () { setTimeout(tick, POLL_MS * 4); });
    };
    tick();
  }

  function scan(root) {
    var figs = (root || document).querySelectorAll("figure.sluice-graph:not([data-bound])");
    Array.prototype.forEach.call(figs, function (fig) {
      fig.dataset.bound = "1";
      var source = fig.querySelector(".graph-source");
      draw(fig, source ? source.textContent : "").then(function () {
        if (fig.dataset.graphUrl) poll(fig);
      });
    });
  }

  window.SluiceGraph = { scan: scan, draw: draw, ready: false };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { scan(document); });
  } else {
    scan(document);
  }
  document.addEventListener("htmx:afterSettle", function (e) { scan(e.target); });
})();
