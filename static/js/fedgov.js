// fedgov's progressive enhancements. Every form works without this file; it only hides
// inputs that do not apply (the quorum k under "every party", hidden layers for a logistic
// regression) and tells the reader when the live round view lost its connection.
// Loaded as a file because the CSP allows no inline script.
(function () {
  "use strict";

  function toggle(selectId, targetName, showWhen) {
    var select = document.getElementById(selectId);
    var field = document.getElementById("field-" + targetName);
    if (!select || !field) return;
    var update = function () {
      var show = select.value === showWhen;
      field.hidden = !show;
      var input = field.querySelector("input, select, textarea");
      if (input) input.disabled = !show;
    };
    select.addEventListener("change", update);
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    toggle("id_approval_rule", "approval_quorum", "quorum");
    toggle("id_model_kind", "hidden", "mlp");
  });

  // Live round progress: when a poll fails, say so instead of showing stale figures silently;
  // htmx keeps polling and the next successful answer replaces the section (and the note).
  document.addEventListener("htmx:responseError", function (event) {
    markStale(event.detail.elt);
  });
  document.addEventListener("htmx:sendError", function (event) {
    markStale(event.detail.elt);
  });
  function markStale(elt) {
    if (!elt || elt.id !== "round-progress" || elt.querySelector(".stale-note")) return;
    var note = document.createElement("p");
    note.className = "stale-note errorlist";
    note.setAttribute("role", "status");
    note.textContent = "Lost contact with the server; retrying every 2 s. The figures below may be out of date.";
    elt.appendChild(note);
  }
})();
