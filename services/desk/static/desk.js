// Live updates over server-sent events: rows arriving in Incoming, and a notice on a
// story's page when someone else changes it. Everything else works without this script.
"use strict";
(function () {
  function listen(url, onStory, say) {
    var source = new EventSource(url);
    var quiet = null;
    // A stream ends every few seconds on purpose and reconnects at once: say so only if it stays down.
    source.addEventListener("open", function () { clearTimeout(quiet); quiet = null; say("Live"); });
    source.addEventListener("error", function () {
      if (quiet === null) { quiet = setTimeout(function () { say("Reconnecting…"); }, 3000); }
    });
    source.addEventListener("signed-out", function () { source.close(); say("Signed out: reload to sign in"); });
    source.addEventListener("story", function (event) { onStory(JSON.parse(event.data)); });
  }

  var list = document.getElementById("incoming");
  var live = document.getElementById("live");
  if (list && window.EventSource) {
    listen(list.getAttribute("data-stream"), function (change) {
      var old = document.getElementById("story-" + change.id);
      if (!change.html) { if (old) { old.remove(); } return; }
      var template = document.createElement("template");
      template.innerHTML = change.html.trim();
      var row = template.content.firstElementChild;
      if (!row) { return; }
      if (old) { old.remove(); }
      row.classList.add("fresh");
      list.insertBefore(row, list.firstElementChild);
      var empty = document.getElementById("incoming-empty");
      if (empty) { empty.remove(); }
    }, function (text) { if (live) { live.textContent = text; } });
  }

  var notice = document.getElementById("changed");
  if (notice && window.EventSource) {
    var loaded = Number(notice.getAttribute("data-version"));
    listen(notice.getAttribute("data-stream"), function (change) {
      var template = document.createElement("template");
      template.innerHTML = (change.html || "").trim();
      var row = template.content.firstElementChild;
      var version = row ? Number(row.getAttribute("data-version")) : loaded + 1;
      if (version > loaded) {
        notice.textContent = "This story changed since you opened it (now version " + version +
          "): reload to see the change before you act.";
      }
    }, function () {});
  }
})();
