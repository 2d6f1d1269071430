// Administrators' forms on the review pages: create a detector (queues page), change a detector's
// threshold and patience and delete it (detector page), through the same API the SDK uses.
(function () {
  "use strict";
  const { send, say } = window.IO;

  // A note left by the page before a navigation (a deleted detector), shown once at the top.
  const NOTE = "io-note";
  const note = window.sessionStorage.getItem(NOTE);
  if (note) {
    window.sessionStorage.removeItem(NOTE);
    const main = document.querySelector("main");
    const el = document.createElement("p");
    el.id = "page-note";
    el.className = "status note";
    el.setAttribute("role", "status");
    el.textContent = note;
    if (main) main.insertBefore(el, main.firstChild);
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
        human_review: f.namedItem("human_review").value,
      };
      const url = "/device-api/v1/detectors/" + encodeURIComponent(settings.dataset.detectorId);
      const r = await send("PATCH", url, body);
      if (r.ok) {
        const review = { DEFAULT: "when the model is unsure", ALWAYS: "every query", NEVER: "never" }[body.human_review];
        say("settings-status", "Saved: threshold " + r.data.confidence_threshold + ", patience " + r.data.patience_time + " s, people review " + review + ".");
      } else {
        say("settings-status", r.detail || "could not save (" + r.status + ")", "error");
      }
    });
  }

  // Name and question: only what changed is sent (a name that is taken is refused with its reason).
  const describe = document.getElementById("describe-form");
  if (describe) {
    const f = describe.elements;
    const was = { name: f.namedItem("name").value, query: f.namedItem("query").value };
    describe.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      for (const key of ["name", "query"]) {
        const value = f.namedItem(key).value.trim();
        if (value !== was[key]) body[key] = value;
      }
      if (!Object.keys(body).length) {
        say("describe-status", "Nothing changed.");
        return;
      }
      const r = await send("PATCH", "/device-api/v1/detectors/" + encodeURIComponent(describe.dataset.detectorId), body);
      if (r.ok) {
        window.location.reload();
      } else {
        say("describe-status", r.detail || "could not save (" + r.status + ")", "error");
      }
    });
  }

  // Deleting a detector asks for its name, typed: a click alone must not hide a detector and its data.
  const remove = document.getElementById("delete-detector");
  const dialog = document.getElementById("delete-dialog");
  if (remove && dialog) {
    const form = document.getElementById("delete-form");
    const typed = form.elements.namedItem("confirm_name");
    const confirmButton = document.getElementById("delete-confirm");
    const name = remove.dataset.detectorName;
    const matches = () => typed.value.trim() === name;
    remove.addEventListener("click", () => {
      typed.value = "";
      confirmButton.disabled = true;
      say("delete-status", "");
      dialog.showModal();
      typed.focus();
    });
    typed.addEventListener("input", () => {
      confirmButton.disabled = !matches();
    });
    document.getElementById("delete-cancel").addEventListener("click", () => dialog.close());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!matches()) {
        say("delete-status", "Type the detector's name exactly to delete it.", "error");
        return;
      }
      confirmButton.disabled = true;
      const id = remove.dataset.detectorId;
      const r = await send("DELETE", "/device-api/v1/detectors/" + encodeURIComponent(id));
      if (r.ok) {
        window.sessionStorage.setItem(
          NOTE,
          "Deleted the detector " + name + " (" + id + "). An administrator can restore it with POST /api/v1/admin/detectors/" +
            id + "/restore until it is purged.",
        );
        window.location.assign("/ui/queues");
      } else {
        confirmButton.disabled = false;
        say("delete-status", r.detail || "could not delete the detector (" + r.status + ")", "error");
      }
    });
  }
})();
