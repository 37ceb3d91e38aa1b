// The jobs page keeps running jobs' progress live: while any is queued or running, it asks for
// the page again every two seconds and swaps in the new table (no reload: the scroll position
// stays, and a focused Cancel button keeps its focus unless its job is gone).
(function () {
  "use strict";
  var box = document.getElementById("jobs-live");
  if (!box) return;
  function poll() {
    if (box.dataset.live !== "yes") return;
    fetch(window.location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("jobs-live");
        if (!fresh) return;  // signed out meanwhile: leave the page as it is
        var focused = document.activeElement && document.activeElement.closest("tr");
        var focusedId = focused ? focused.id : null;
        if (fresh.innerHTML !== box.innerHTML) {
          box.innerHTML = fresh.innerHTML;
          var again = focusedId && document.querySelector("#" + focusedId + " button");
          if (again) again.focus();
        }
        box.dataset.live = fresh.dataset.live;
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();
