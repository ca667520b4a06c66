// Sluice review: the only script the pages run (the CSP allows no other).
(function () {
  "use strict";

  // The queue refreshes itself.
  const queue = document.getElementById("queue");
  if (queue) {
    const seconds = Number(queue.dataset.refreshS || "15");
    setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }

  // A verdict just sent: ask until the review flow has taken it (or refused it) and, when it closed
  // the case, until the final decision is out.
  const box = document.getElementById("verdict-status");
  if (!box) { return; }
  const text = document.getElementById("verdict-text");
  const finalBox = document.getElementById("final-decision");
  const started = Date.now();

  function show(s) {
    if (s.status === "accepted") {
      text.textContent = "accepted (" + s.detail.replace(/_/g, " ") + ")";
    } else if (s.status === "rejected") {
      text.textContent = "rejected: " + s.detail;
    }
    box.className = "status " + s.status;
    if (s.final) {
      const by = s.final.by === "chain" ? "by the chain" : "default action";
      finalBox.textContent = "Final decision: " + s.final.decision + " (" + by + ")";
      box.dataset.state = "final";
    } else {
      box.dataset.state = s.status;
    }
  }

  function done(s) {
    return s.status === "rejected" || (s.status === "accepted" && (s.case_status !== "closed" || s.final));
  }

  function poll() {
    fetch("/api/verdicts/" + encodeURIComponent(box.dataset.verdict), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (s) { show(s); }
        if ((!s || !done(s)) && Date.now() - started < 120000) { setTimeout(poll, 400); }
      })
      .catch(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
