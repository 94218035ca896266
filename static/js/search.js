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
