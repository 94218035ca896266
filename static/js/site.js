// Small progressive enhancements; every page works without JavaScript.
// No inline scripts anywhere (the Content-Security-Policy allows only these files).
(function () {
  "use strict";
  var KEY = "conceptscope.overlay";
  var LIST_KEY = "conceptscope.list";

  function params() { return new URLSearchParams(window.location.search); }

  // ---------------------------------------------------------------- the URL is the state
  // Replace one query parameter of the current URL without a page load (null removes it).
  function setParam(name, value) {
    var url = new URL(window.location.href);
    if (value === null || value === undefined || value === "") { url.searchParams.delete(name); }
    else { url.searchParams.set(name, value); }
    if (url.href !== window.location.href) {
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
      syncState();
    }
  }

  // Links and forms marked data-keep-state="a,b" carry the current URL's values of a and b
  // (absent there: removed), so moving between views of a page never drops the rest of its state.
  function syncState() {
    var current = params();
    document.querySelectorAll("a[data-keep-state]").forEach(function (link) {
      var url = new URL(link.getAttribute("href"), window.location.href);
      link.getAttribute("data-keep-state").split(",").forEach(function (key) {
        if (current.has(key)) { url.searchParams.set(key, current.get(key)); } else { url.searchParams.delete(key); }
      });
      link.setAttribute("href", url.pathname + url.search + url.hash);
    });
    document.querySelectorAll("form[data-keep-state]").forEach(function (form) {
      form.getAttribute("data-keep-state").split(",").forEach(function (key) {
        var field = form.querySelector("input[type=hidden][name='" + key + "'][data-kept]");
        if (current.has(key)) {
          if (!field) {
            field = document.createElement("input");
            field.type = "hidden"; field.name = key; field.setAttribute("data-kept", "");
            form.appendChild(field);
          }
          field.value = current.get(key);
        } else if (field) { field.remove(); }
      });
    });
    // the page's permalink, its JSON twin and alternate link follow the state
    document.querySelectorAll("[data-copy-link][data-current-url]").forEach(function (link) {
      link.setAttribute("href", window.location.pathname + window.location.search);
    });
    var path = window.location.pathname;
    var twin = (path === "/" ? "/.json" : path.replace(/\/$/, "") + ".json") + window.location.search;
    document.querySelectorAll("a.json-link, link[rel=alternate][type='application/json']").forEach(function (el) {
      if (!/\.json$/.test(path)) { el.setAttribute("href", twin); }
    });
  }

  // Form fields show the URL's values (after Back/Forward, a restored snapshot may not).
  function fillFromUrl() {
    var current = params();
    document.querySelectorAll("form[data-url-fields]").forEach(function (form) {
      Array.prototype.forEach.call(form.elements, function (field) {
        if (!field.name || field.type === "hidden" || field.type === "submit") return;
        var value = current.has(field.name) ? current.get(field.name) : (field.getAttribute("data-default") || "");
        if (field.tagName === "SELECT") {
          if (!value && field.name === "order" && form.elements.sort && form.elements.sort.selectedIndex >= 0) {
            value = form.elements.sort.options[form.elements.sort.selectedIndex].getAttribute("data-order") || "";
          }
          if (!value && field.options.length) { value = field.options[0].value; }
          if (Array.prototype.some.call(field.options, function (o) { return o.value === value; })) { field.value = value; }
        } else if (field.type === "checkbox" || field.type === "radio") {
          field.checked = current.has(field.name) ? current.getAll(field.name).indexOf(field.value) >= 0 : field.defaultChecked;
        } else {
          field.value = value;
        }
      });
    });
  }

  // Snapshots htmx keeps for Back/Forward hold attributes, not typed values: write them down.
  document.addEventListener("htmx:beforeHistorySave", function () {
    document.querySelectorAll("input, select, textarea").forEach(function (field) {
      if (field.tagName === "SELECT") {
        Array.prototype.forEach.call(field.options, function (o) {
          if (o.selected) { o.setAttribute("selected", ""); } else { o.removeAttribute("selected"); }
        });
      } else if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked) { field.setAttribute("checked", ""); } else { field.removeAttribute("checked"); }
      } else if (field.type !== "file" && field.type !== "password") {
        field.setAttribute("value", field.value);
      }
    });
  });

  // htmx requests from state-keeping links use their current href (htmx read it at load time).
  document.addEventListener("htmx:configRequest", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.tagName === "A" && elt.hasAttribute("data-keep-state")) {
      event.detail.path = elt.getAttribute("href");
    }
  });

  function afterNavigation() { fillFromUrl(); syncState(); initOverlayToggle(); initLists(); }
  document.addEventListener("htmx:pushedIntoHistory", function () { syncState(); });
  document.addEventListener("htmx:replacedInHistory", function () { syncState(); });
  document.addEventListener("htmx:historyRestore", afterNavigation);
  document.addEventListener("htmx:afterSettle", function () { syncState(); initOverlayToggle(); initLists(); });
  window.addEventListener("pageshow", function (event) { if (event.persisted) { afterNavigation(); } });

  // ---------------------------------------------------------------- heatmap overlay toggle
  // State: ?overlay=1|0 in the URL when set there, else the last choice (localStorage), else the
  // toggle's data-default. Whenever the shown state differs from the default, the URL says so.
  function initOverlayToggle() {
    var toggle = document.querySelector("[data-overlay-toggle]");
    if (!toggle || toggle.hasAttribute("data-ready")) return;
    toggle.setAttribute("data-ready", "");
    var fallback = toggle.getAttribute("data-default") || "0";
    var fromUrl = params().get("overlay");
    var stored = null;
    try { stored = localStorage.getItem(KEY); } catch (e) { /* private mode */ }
    var state = fromUrl === "1" || fromUrl === "0" ? fromUrl : (stored === "1" || stored === "0" ? stored : fallback);
    toggle.checked = state === "1";
    if (fromUrl === null && state !== fallback) { setParam("overlay", state); }
    toggle.addEventListener("change", function () {
      var value = toggle.checked ? "1" : "0";
      try { localStorage.setItem(KEY, value); } catch (e) { /* ignore */ }
      setParam("overlay", value === fallback ? null : value);
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
      if (event.target && event.target.closest && event.target.closest("[data-atlas]")) return;
      var link = document.querySelector(event.key === "ArrowLeft" ? ".neuron-nav a[rel=prev]" : ".neuron-nav a[rel=next]");
      if (link) { window.location.href = link.href; }
    }
  });

  // ---------------------------------------------------------------- copy a permalink
  // data-current-url: the page's full current URL (with its state); otherwise the link's href.
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("[data-copy-link]");
    if (!link || !navigator.clipboard) return;
    event.preventDefault();
    var text = link.hasAttribute("data-current-url")
      ? window.location.href
      : new URL(link.getAttribute("href"), window.location.href).href;
    var label = link.textContent;
    navigator.clipboard.writeText(text).then(function () {
      link.classList.add("copied");
      link.textContent = "link copied";
      setTimeout(function () { link.classList.remove("copied"); link.textContent = label; }, 1500);
    });
  });

  // Layer grid: choosing a sort key also picks its natural order (unit ascending, statistics
  // descending). Listens on the select itself, so it runs before htmx sees the event bubble up.
  function initSortSelect() {
    var select = document.querySelector("[data-sort-select]");
    var order = select && select.form && select.form.elements.order;
    if (!order || select.hasAttribute("data-ready")) return;
    select.setAttribute("data-ready", "");
    select.addEventListener("change", function () {
      var natural = select.options[select.selectedIndex].getAttribute("data-order");
      if (natural) { order.value = natural; }
    });
  }

  // Fields marked data-url-param="name" write their value to the URL as they change.
  document.addEventListener("change", function (event) {
    var field = event.target;
    if (!field || !field.hasAttribute || !field.hasAttribute("data-url-param")) return;
    var value = field.type === "checkbox" ? (field.checked ? "1" : "0") : field.value;
    setParam(field.getAttribute("data-url-param"), value);
  });

  // ---------------------------------------------------------------- lists of units
  // A list lives in localStorage until shared; its URL (/lists?units=…) is the shareable form.
  function readList() {
    try { var v = JSON.parse(localStorage.getItem(LIST_KEY) || "[]"); return Array.isArray(v) ? v : []; }
    catch (e) { return []; }
  }
  function writeList(list) { try { localStorage.setItem(LIST_KEY, JSON.stringify(list)); } catch (e) { /* ignore */ } }

  function initLists() {
    var list = readList();
    document.querySelectorAll("[data-add-to-list]").forEach(function (button) {
      var ref = button.getAttribute("data-add-to-list");
      var inList = list.indexOf(ref) >= 0;
      button.hidden = false;
      button.setAttribute("aria-pressed", inList ? "true" : "false");
      var compact = button.hasAttribute("data-compact");
      button.textContent = inList ? (compact ? "✓" : "✓ in list") : (compact ? "+" : "+ list");
      button.title = inList ? "remove " + ref + " from your list" : "add " + ref + " to your list";
    });
    document.querySelectorAll("[data-list-link]").forEach(function (link) {
      var url = new URL(link.getAttribute("href"), window.location.href);
      url.search = "";
      if (list.length) { url.searchParams.set("units", list.join(",")); }
      link.setAttribute("href", url.pathname + url.search);
      link.hidden = list.length === 0;
      var count = link.querySelector("[data-list-count]");
      if (count) { count.textContent = String(list.length); }
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-add-to-list]");
    if (!button) return;
    event.preventDefault();
    var ref = button.getAttribute("data-add-to-list");
    var list = readList();
    var at = list.indexOf(ref);
    if (at >= 0) { list.splice(at, 1); } else { list.push(ref); }
    writeList(list.slice(0, 60));
    initLists();
  });
  window.addEventListener("storage", function (event) { if (event.key === LIST_KEY) initLists(); });

  // ---------------------------------------------------------------- keyboard-operable zones
  // A label-like element with data-activate-input opens its file input on Enter or Space.
  document.addEventListener("keydown", function (event) {
    var zone = event.target && event.target.closest && event.target.closest("[data-activate-input]");
    if (!zone || event.target !== zone || (event.key !== "Enter" && event.key !== " ")) return;
    var input = zone.querySelector("input[type=file]");
    if (input) { event.preventDefault(); input.click(); }
  });

  function init() { fillFromUrl(); syncState(); initOverlayToggle(); initSortSelect(); initLists(); }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
