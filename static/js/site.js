// Small progressive enhancements; every page works without JavaScript.
(function () {
  "use strict";
  var KEY = "conceptscope.overlay";

  function initOverlayToggle() {
    var toggle = document.querySelector("[data-overlay-toggle]");
    if (!toggle) return;
    try { toggle.checked = localStorage.getItem(KEY) === "1"; } catch (e) { /* private mode */ }
    toggle.addEventListener("change", function () {
      try { localStorage.setItem(KEY, toggle.checked ? "1" : "0"); } catch (e) { /* ignore */ }
    });
  }

  function typing(event) {
    var t = event.target;
    return t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
  }

  document.addEventListener("keydown", function (event) {
    if (typing(event) || event.metaKey || event.ctrlKey || event.altKey) return;
    if (event.key === "h") {
      var toggle = document.querySelector("[data-overlay-toggle]");
      if (toggle) { toggle.click(); }
    } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      var link = document.querySelector(event.key === "ArrowLeft" ? ".neuron-nav a[rel=prev]" : ".neuron-nav a[rel=next]");
      if (link) { window.location.href = link.href; }
    }
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("[data-copy-link]");
    if (!link || !navigator.clipboard) return;
    event.preventDefault();
    navigator.clipboard.writeText(new URL(link.getAttribute("href"), window.location.href).href).then(function () {
      link.classList.add("copied");
      link.textContent = "link copied";
      setTimeout(function () { link.classList.remove("copied"); link.textContent = "permalink"; }, 1500);
    });
  });

  // Layer grid: choosing a sort key also picks its natural order (unit ascending, statistics
  // descending). Listens on the select itself, so it runs before htmx sees the event bubble up.
  function initSortSelect() {
    var select = document.querySelector("[data-sort-select]");
    var order = select && select.form && select.form.elements.order;
    if (!order) return;
    select.addEventListener("change", function () {
      var natural = select.options[select.selectedIndex].getAttribute("data-order");
      if (natural) { order.value = natural; }
    });
  }

  function init() { initOverlayToggle(); initSortSelect(); }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
