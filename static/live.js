// Live pages: drag and drop / paste uploads with a preview, and heatmap swaps that work without
// a stored analysis (--no-store pages carry every overlay inline). Everything works without JS.
(function () {
  "use strict";

  function initUpload(form) {
    var input = form.querySelector("[data-file-input]");
    var zone = form.querySelector("[data-drop-zone]");
    var preview = form.querySelector("[data-preview]");
    if (!input || !zone) return;

    function show(file) {
      if (!preview || !file || !/^image\//.test(file.type || "")) return;
      var url = URL.createObjectURL(file);
      preview.src = url;
      preview.hidden = false;
    }

    function useFiles(files) {
      if (!files || !files.length) return false;
      try {
        var transfer = new DataTransfer();
        transfer.items.add(files[0]);
        input.files = transfer.files;
      } catch (e) {
        return false;
      }
      show(files[0]);
      return true;
    }

    input.addEventListener("change", function () { show(input.files && input.files[0]); });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (useFiles(event.dataTransfer && event.dataTransfer.files)) form.requestSubmit();
    });
    document.addEventListener("paste", function (event) {
      var items = (event.clipboardData && event.clipboardData.items) || [];
      for (var i = 0; i < items.length; i++) {
        if (items[i].kind === "file" && /^image\//.test(items[i].type)) {
          var file = items[i].getAsFile();
          if (file && useFiles([file])) { event.preventDefault(); form.requestSubmit(); }
          return;
        }
      }
    });
    form.addEventListener("submit", function () { form.classList.add("busy"); });
    // keep the class names of the example form in step with the main form
    var classes = form.querySelector("input[name=classes]");
    var mirror = document.querySelector("[data-classes-mirror]");
    if (classes && mirror) {
      classes.addEventListener("input", function () { mirror.value = classes.value; });
    }
  }

  // Unstored analyses have no URL to fetch a heatmap from: swap the inline overlay instead.
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest(".hit-main[data-overlay]");
    if (!link) return;
    document.querySelectorAll(".hit.selected").forEach(function (el) { el.classList.remove("selected"); });
    document.querySelectorAll(".hit-main.active").forEach(function (el) { el.classList.remove("active"); });
    link.classList.add("active");
    if (link.hasAttribute("hx-get")) return;  // stored analyses: htmx fetches the heatmap
    event.preventDefault();
    var img = document.querySelector("[data-overlay-img]");
    var caption = document.querySelector("[data-overlay-caption]");
    var figure = document.querySelector("#analysis-figure");
    if (figure) {
      figure.setAttribute("data-layer", link.getAttribute("data-layer"));
      figure.setAttribute("data-unit", link.getAttribute("data-unit"));
    }
    if (!img) return;
    img.src = link.getAttribute("data-overlay");
    img.hidden = false;
    if (caption) caption.textContent = "Heatmap of " + link.getAttribute("data-caption");
  });

  // The active hit follows the figure (which follows the URL): after Back/Forward htmx restores a
  // snapshot whose hit list may still mark the neuron clicked later, so mark the figure's one.
  function syncActiveHit() {
    var figure = document.querySelector("#analysis-figure[data-layer]");
    if (!figure) return;
    var layer = figure.getAttribute("data-layer");
    var unit = figure.getAttribute("data-unit");
    document.querySelectorAll(".hit-main[data-unit]").forEach(function (link) {
      var on = !!unit && link.getAttribute("data-layer") === layer && link.getAttribute("data-unit") === unit;
      link.classList.toggle("active", on);
      var hit = link.closest(".hit");
      if (hit) { hit.classList.toggle("selected", on); }
      if (on) { link.setAttribute("aria-current", "true"); } else { link.removeAttribute("aria-current"); }
    });
  }
  document.addEventListener("htmx:historyRestore", syncActiveHit);
  document.addEventListener("htmx:afterSettle", syncActiveHit);
  window.addEventListener("popstate", function () { setTimeout(syncActiveHit, 0); });
  window.addEventListener("pageshow", function (event) { if (event.persisted) { syncActiveHit(); } });

  function init() {
    document.querySelectorAll("[data-upload-form]").forEach(initUpload);
    syncActiveHit();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
