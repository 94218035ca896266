// /search while the model's search is being prepared (app/live/search_prep.py): the answer is a
// 503 with Retry-After whose results fragment shows the progress and asks again by itself. htmx
// does not swap error answers by default; this lets that one through (only into #search-results).
document.addEventListener("htmx:beforeSwap", (event) => {
  const xhr = event.detail.xhr;
  const target = event.detail.target;
  if (xhr && xhr.status === 503 && xhr.getResponseHeader("Retry-After") && target && target.id === "search-results") {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});

// Enter (or the Search button) updates the results in place like typing does, instead of also
// navigating: a navigation would abort the request typing started (htmx logs an abort as an
// error). Requests queue (hx-sync "queue last") rather than abort each other. Without htmx the
// form submits as usual.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!window.htmx || !form.matches || !form.matches("[data-search-form]")) return;
  const input = form.querySelector("input[name=q][hx-get]");
  if (!input) return;
  event.preventDefault();
  window.htmx.trigger(input, "search-submit");
});
// Clearing the field with its × button ("search" event, empty value) shows the suggestions again.
document.addEventListener("search", (event) => {
  const input = event.target;
  if (window.htmx && input.matches && input.matches("[data-search-form] input[name=q][hx-get]") && !input.value) {
    window.htmx.trigger(input, "search-submit");
  }
}, true);
