// Training page: follow the detector's newest job every 2 s (epoch, loss and accuracy curves, ETA,
// log tail); admins can start and cancel jobs. When a job the page saw running ends, the page reloads
// to show the new version and its plots.
"use strict";

(() => {
  const live = document.getElementById("live");
  if (!live) return;
  const detectorId = live.dataset.detectorId;
  const statusUrl = "/ui/detectors/" + encodeURIComponent(detectorId) + "/training/status";
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = { train: "#2f6fec", val: "#e07a10" };

  const $ = (id) => document.getElementById(id);
  const field = (name) => live.querySelector('[data-field="' + name + '"]');
  let sawActive = live.dataset.active === "true";
  let currentJob = null;

  function say(text, kind) {
    const el = $("live-status");
    el.textContent = text || "";
    el.className = "status" + (kind ? " " + kind : "");
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  function fixed(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : "–";
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A small line chart: one polyline per series, y from the data's range, x from epoch 1..n. `log`: a
  // logarithmic y axis (losses: one early spike would flatten everything after it on a linear one).
  function chart(svg, series, fixedRange, log) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 420, H = 180, L = 40, R = 10, T = 10, B = 24;
    const points = series.flatMap((s) => s.points);
    if (points.length === 0) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for the first epoch"));
      return;
    }
    // A loss that rounds to 0 sits at the floor of the axis rather than turning it linear.
    const positive = points.filter((p) => p[1] > 0).map((p) => p[1]);
    const logY = Boolean(log) && positive.length > 0;
    const floor = logY ? Math.min(...positive) / 10 : 0;
    const ty = (y) => (logY ? Math.log10(Math.max(y, floor)) : y);
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => ty(p[1]));
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = fixedRange ? fixedRange[0] : Math.min(...ys);
    let y1 = fixedRange ? fixedRange[1] : Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (ty(y) - y0) / (y1 - y0)) * (H - T - B);
    const label = (y) => (logY ? Math.pow(10, y).toPrecision(2) + " (log)" : y.toFixed(2));
    svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#c5cad3" }));
    svg.appendChild(el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#c5cad3" }));
    svg.appendChild(el("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, label(y1)));
    svg.appendChild(el("text", { x: L - 4, y: H - B, "text-anchor": "end" }, label(y0)));
    svg.dataset.scale = logY ? "log" : "linear";
    svg.appendChild(el("text", { x: L, y: H - 6 }, "epoch " + x0));
    svg.appendChild(el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "epoch " + x1));
    for (const s of series) {
      if (s.points.length === 0) continue;
      const d = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
      const line = el("polyline", { points: d, fill: "none", stroke: s.color, "stroke-width": 2 });
      line.appendChild(el("title", {}, s.name));
      svg.appendChild(line);
    }
  }

  function seriesOf(history, key) {
    return history
      .filter((h) => typeof h[key] === "number")
      .map((h) => [h.epoch, h[key]]);
  }

  function render(body) {
    const job = body.job;
    currentJob = job;
    const active = Boolean(body.active);
    $("live-empty").hidden = active;
    $("live-body").hidden = !active && !sawActive;
    const cancel = $("cancel-job");
    if (cancel) cancel.hidden = !active || (job && job.cancel_requested);
    if (!job) return;
    if (sawActive && !active) {
      say("Job " + job.id + " " + job.status + "; reloading…");
      window.setTimeout(() => window.location.reload(), 800);
      sawActive = false;
      return;
    }
    if (!active) return;
    sawActive = true;
    const p = job.progress || {};
    const history = Array.isArray(p.history) ? p.history : [];
    field("id").textContent = job.id;
    const row = document.querySelector('#jobs tr[data-job-id="' + CSS.escape(job.id) + '"] .tag');
    if (row) {
      row.textContent = job.status;
      row.className = "tag job-" + job.status;
    }
    const status = field("status");
    status.textContent = job.status + (job.cancel_requested ? " (cancel requested)" : "");
    status.className = "tag job-" + job.status;
    field("trainer").textContent = job.lease_owner || "–";
    field("stage").textContent = p.stage ? p.stage + (p.message ? ": " + p.message : "") : "waiting for a trainer";
    field("epoch").textContent = p.epochs ? (p.epoch || 0) + " / " + p.epochs : "–";
    const bar = $("live-progress");
    bar.max = p.epochs || 1;
    bar.value = p.epoch || 0;
    const last = history.length ? history[history.length - 1] : null;
    field("latest").textContent = last
      ? "train " + fixed(last.train_loss, 4) + " / " + fixed(last.train_accuracy, 3) +
        " · val " + fixed(last.val_loss, 4) + " / " + fixed(last.val_accuracy, 3)
      : "–";
    field("elapsed").textContent = seconds(job.duration_s);
    field("eta").textContent = seconds(p.eta_s);
    chart($("chart-loss"), [
      { name: "train", color: COLORS.train, points: seriesOf(history, "train_loss") },
      { name: "validation", color: COLORS.val, points: seriesOf(history, "val_loss") },
    ], null, true);
    chart($("chart-accuracy"), [
      { name: "train", color: COLORS.train, points: seriesOf(history, "train_accuracy") },
      { name: "validation", color: COLORS.val, points: seriesOf(history, "val_accuracy") },
    ], [0, 1]);
    const log = $("live-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = (body.log_tail || []).join("\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  async function poll() {
    try {
      const resp = await fetch(statusUrl, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) {
        window.location.assign("/login");
        return;
      }
      if (resp.ok) render(await resp.json());
    } catch (err) {
      say("cannot reach the cloud; retrying", "warn");
      return;
    }
  }

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let detail = "";
    try { detail = (await resp.json()).detail || ""; } catch (err) { detail = ""; }
    return { ok: resp.ok, status: resp.status, detail: typeof detail === "string" ? detail : JSON.stringify(detail) };
  }

  const form = document.getElementById("start-training");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const epochs = form.elements.namedItem("epochs").value;
      const config = epochs ? { epochs: Number(epochs) } : {};
      const result = await post("/api/v1/training-jobs", { detector_id: detectorId, config: config });
      if (result.ok) {
        say("Training job queued; a trainer will lease it.");
        sawActive = true;
        poll();
      } else {
        say(result.detail || "could not start training (" + result.status + ")", "error");
      }
    });
  }

  const cancel = $("cancel-job");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!currentJob) return;
      // A running job's work so far is lost: ask first.
      if (!window.confirm("Cancel training job " + currentJob.id + "? The work done so far is discarded.")) return;
      const result = await post("/api/v1/training-jobs/" + encodeURIComponent(currentJob.id) + "/cancel", {});
      say(result.ok ? "Cancel requested: the trainer stops at the end of its current epoch." :
        (result.detail || "could not cancel (" + result.status + ")"), result.ok ? "" : "error");
      poll();
    });
  }

  // Administrators: make a version production, or go back to the one before. Edges follow the
  // production version at their next refresh.
  for (const button of document.querySelectorAll(".version-actions button")) {
    button.addEventListener("click", async () => {
      const version = button.dataset.version;
      const promote = button.dataset.action === "promote";
      const question = promote
        ? "Make " + version + " the production version? Edges switch to it at their next refresh."
        : "Roll back from " + version + " to the version promoted before it? Edges follow at their next refresh.";
      if (!window.confirm(question)) return;
      button.disabled = true;
      const url = promote
        ? "/api/v1/models/" + encodeURIComponent(button.dataset.modelId) + "/promote"
        : "/api/v1/detectors/" + encodeURIComponent(detectorId) + "/models/rollback";
      const result = await post(url, {});
      if (result.ok) {
        window.location.reload();
      } else {
        button.disabled = false;
        say(result.detail || (promote ? "could not promote" : "could not roll back") + " (" + result.status + ")", "error");
      }
    });
  }

  poll();
  window.setInterval(poll, POLL_MS);
})();
