// Administrators' forms on the review pages: create a detector (queues page) and change a
// detector's threshold and patience (detector page), through the same API the SDK uses.
(function () {
  "use strict";

  async function send(method, url, body) {
    const resp = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", accept: "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : "";
    return { ok: resp.ok, status: resp.status, data, detail };
  }

  function say(id, text, kind) {
    const el = document.getElementById(id);
    el.textContent = text;
    el.className = "status" + (kind ? " " + kind : "");
  }

  const create = document.getElementById("create-form");
  if (create) {
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = create.elements;
      const mode = f.namedItem("mode").value;
      const body = {
        name: f.namedItem("name").value.trim(),
        query: f.namedItem("query").value.trim(),
        mode,
        confidence_threshold: Number(f.namedItem("confidence_threshold").value),
      };
      if (mode === "MULTI_CLASS") {
        body.mode_configuration = {
          class_names: f.namedItem("class_names").value.split(",").map((c) => c.trim()).filter(Boolean),
        };
      } else if (mode === "COUNT") {
        body.mode_configuration = {
          class_name: f.namedItem("class_name").value.trim() || "object",
          max_count: Number(f.namedItem("max_count").value),
        };
      }
      const r = await send("POST", "/device-api/v1/detectors", body);
      if (r.ok) {
        window.location.assign("/ui/detectors/" + encodeURIComponent(r.data.id));
      } else {
        say("create-status", r.detail || "could not create the detector (" + r.status + ")", "error");
      }
    });
  }

  const settings = document.getElementById("settings-form");
  if (settings) {
    settings.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = settings.elements;
      const body = {
        confidence_threshold: Number(f.namedItem("confidence_threshold").value),
        patience_time: Number(f.namedItem("patience_time").value),
      };
      const url = "/device-api/v1/detectors/" + encodeURIComponent(settings.dataset.detectorId);
      const r = await send("PATCH", url, body);
      if (r.ok) {
        say("settings-status", "Saved: threshold " + r.data.confidence_threshold + ", patience " + r.data.patience_time + " s.");
      } else {
        say("settings-status", r.detail || "could not save (" + r.status + ")", "error");
      }
    });
  }
})();
