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
      if (!row) continue;
      for (const field of ["pending", "claimable", "answered_last_hour"]) {
        const cell = row.querySelector('[data-field="' + field + '"]');
        if (cell) cell.textContent = String(q[field]);
      }
    }
  }

  setInterval(refresh, 5000);
})();
