// chimeway console: refresh the overview's regions every 5 s without reloading.
// The pages are complete without it; this only swaps elements carrying data-refresh.
(function () {
  "use strict";
  var root = document.getElementById("overview");
  if (!root || !window.fetch || !window.DOMParser) { return; }
  var url = root.getAttribute("data-poll");
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        fresh.querySelectorAll("[data-refresh]").forEach(function (element) {
          var name = element.getAttribute("data-refresh");
          var old = root.querySelector('[data-refresh="' + name + '"]');
          if (old) { old.replaceWith(document.importNode(element, true)); }
        });
      })
      .catch(function () { /* the next poll tries again */ });
  }
  window.setInterval(refresh, 5000);
})();
