// The atlas: zoom (wheel, buttons, +/-), pan (drag, arrow keys) and highlight by label (?q= in the URL).
(function () {
  "use strict";
  function init() {
    var fig = document.querySelector("[data-atlas]");
    var svg = fig && fig.querySelector("[data-atlas-svg]");
    if (!svg) return;
    var full = svg.getAttribute("data-full").split(" ").map(Number);
    var view = full.slice();
    function apply() { svg.setAttribute("viewBox", view.join(" ")); }
    function zoom(factor, cx, cy) {
      if (!factor) { view = full.slice(); apply(); return; }
      var w = Math.min(full[2], Math.max(full[2] / 12, view[2] / factor));
      var h = w * full[3] / full[2];
      cx = cx === undefined ? view[0] + view[2] / 2 : cx;
      cy = cy === undefined ? view[1] + view[3] / 2 : cy;
      view = [cx - (cx - view[0]) * w / view[2], cy - (cy - view[1]) * h / view[3], w, h];
      clamp(); apply();
    }
    function clamp() {
      view[0] = Math.max(full[0], Math.min(full[0] + full[2] - view[2], view[0]));
      view[1] = Math.max(full[1], Math.min(full[1] + full[3] - view[3], view[1]));
    }
    function toSvg(event) {
      var r = svg.getBoundingClientRect();
      return [view[0] + (event.clientX - r.left) / r.width * view[2], view[1] + (event.clientY - r.top) / r.height * view[3]];
    }
    svg.addEventListener("wheel", function (event) {
      event.preventDefault();
      var p = toSvg(event);
      zoom(event.deltaY < 0 ? 1.25 : 0.8, p[0], p[1]);
    }, { passive: false });
    var drag = null, moved = false;
    svg.addEventListener("pointerdown", function (event) { drag = [event.clientX, event.clientY, view[0], view[1]]; moved = false; });
    window.addEventListener("pointermove", function (event) {
      if (!drag) return;
      var r = svg.getBoundingClientRect();
      var dx = (event.clientX - drag[0]) / r.width * view[2], dy = (event.clientY - drag[1]) / r.height * view[3];
      if (Math.abs(event.clientX - drag[0]) + Math.abs(event.clientY - drag[1]) > 4) { moved = true; }
      view[0] = drag[2] - dx; view[1] = drag[3] - dy; clamp(); apply();
    });
    window.addEventListener("pointerup", function () { drag = null; });
    svg.addEventListener("click", function (event) { if (moved) { event.preventDefault(); moved = false; } }, true);
    document.querySelectorAll("[data-atlas-zoom]").forEach(function (b) {
      b.addEventListener("click", function () { zoom(parseFloat(b.getAttribute("data-atlas-zoom"))); });
    });
    fig.addEventListener("keydown", function (event) {
      var step = view[2] / 8;
      var keys = { "+": function () { zoom(1.5); }, "=": function () { zoom(1.5); }, "-": function () { zoom(0.6667); },
        "0": function () { zoom(0); },
        ArrowLeft: function () { view[0] -= step; }, ArrowRight: function () { view[0] += step; },
        ArrowUp: function () { view[1] -= step; }, ArrowDown: function () { view[1] += step; } };
      if (event.target !== fig || !keys[event.key]) return;
      event.preventDefault();
      keys[event.key](); clamp(); apply();
    });
    // highlight by label
    var input = document.querySelector("[data-atlas-search]");
    var count = document.querySelector("[data-atlas-count]");
    var cells = Array.prototype.slice.call(svg.querySelectorAll(".atlas-cell"));
    function highlight() {
      var q = (input.value || "").trim().toLowerCase();
      fig.classList.toggle("searching", q !== "");
      var n = 0;
      cells.forEach(function (a) {
        var hit = q !== "" && a.getAttribute("data-label").indexOf(q) >= 0;
        a.classList.toggle("hit", hit);
        if (hit) { n += 1; }
      });
      if (count) { count.textContent = q ? n + " of " + cells.length + " units match" : ""; }
      var url = new URL(window.location.href);
      if (q) { url.searchParams.set("q", q); } else { url.searchParams.delete("q"); }
      history.replaceState(history.state, "", url.pathname + url.search);
    }
    if (input) {
      input.value = new URLSearchParams(window.location.search).get("q") || "";
      input.addEventListener("input", highlight);
      highlight();
    }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
