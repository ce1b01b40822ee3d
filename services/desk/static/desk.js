// Incoming, live: rows arrive over server-sent events and replace or join the list.
// Everything else on the desk works without this script.
"use strict";
(function () {
  var list = document.getElementById("incoming");
  var live = document.getElementById("live");
  if (!list || !window.EventSource) { return; }
  var source = new EventSource(list.getAttribute("data-stream"));
  function say(text) { if (live) { live.textContent = text; } }
  source.addEventListener("open", function () { say("Live"); });
  source.addEventListener("error", function () { say("Reconnecting…"); });
  source.addEventListener("signed-out", function () { source.close(); say("Signed out: reload to sign in"); });
  source.addEventListener("story", function (event) {
    var change = JSON.parse(event.data);
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
  });
})();
