// Queues page: keep the counts fresh, and Enter starts labeling.
"use strict";

(() => {
  const table = document.getElementById("queues");

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.ctrlKey && !ev.metaKey && !ev.altKey && ev.target === document.body) {
      window.location.assign("/ui/label");
    }
  });

  if (!table) return;

  async function refresh() {
    let queues;
    try {
      const resp = await fetch("/api/v1/review/queues", { credentials: "same-origin" });
      if (resp.status === 401) {
        window.location.assign("/login");
        return;
      }
      if (!resp.ok) return;
      queues = await resp.json();
    } catch (err) {
      return;
    }
    for (const q of queues) {
      const row = table.querySelector('tr[data-detector-id="' + CSS.escape(q.detector_id) + '"]');
      if (!row) {
        // A detector created since the page loaded: show it (and the order) as the server has it.
        window.location.reload();
        return;
      }
      for (const field of ["pending", "claimable", "answered_last_hour"]) {
        const cell = row.querySelector('[data-field="' + field + '"]');
        if (cell) cell.textContent = String(q[field]);
      }
    }
  }

  // "In Label all": leave a detector out of (or take it back into) this reviewer's Label all queues.
  for (const box of table.querySelectorAll("input.label-all")) {
    box.addEventListener("change", async () => {
      const id = box.closest("tr").dataset.detectorId;
      const status = document.getElementById("queues-status");
      let ok = false;
      try {
        const resp = await fetch("/api/v1/review/queues/" + encodeURIComponent(id) + "/label-all", {
          method: "PUT",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ included: box.checked }),
        });
        ok = resp.status === 204;
      } catch (err) {
        ok = false;
      }
      if (!ok) {
        box.checked = !box.checked;
        status.textContent = "Could not save that; try again.";
        status.className = "status error";
        return;
      }
      status.textContent = box.checked ? "Back in Label all queues." : "Left out of Label all queues.";
      status.className = "status";
    });
  }

  setInterval(refresh, 5000);
})();
