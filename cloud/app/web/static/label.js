// The labeling page: claim an item, show it, answer with one key, next. Heartbeats keep the lease
// while the page is open; closing the page gives the lease back.
//
// COUNT and BOUNDING_BOX items are answered with boxes (boxes.js draws and edits them over the image):
// Enter submits the boxes as they are, the count being the number of boxes. A number key is taken only
// when it equals that number (it then submits the boxes too), never as a count of its own. Z (or Ctrl+Z)
// undoes the latest box edit first and, with none left on this item, the previous answer.
"use strict";

(() => {
  const root = document.getElementById("labeler");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const detectorId = root.dataset.detectorId || "";
  const stage = root.querySelector(".stage");

  let item = null; // the claimed item, as the API returned it
  let keyMap = new Map(); // key -> label
  let busy = false;
  let leaseWarned = false; // the "lease ends soon" message was shown for this item
  let answered = 0;
  let heartbeatTimer = null;
  let pollTimer = null;

  const BOX_MODES = new Set(["COUNT", "BOUNDING_BOX"]);
  const LEASE_WARN_S = 10;
  const DEADLINE_SOON_MS = 60000;
  const GREATER_THAN_MAX = "GREATER_THAN_MAX";
  let editor = null; // the box editor, made for the first box item
  const ownBoxes = new Map(); // item id -> the boxes this reviewer answered it with (for an undo)

  const boxMode = () => Boolean(item && BOX_MODES.has(item.mode));

  function boxEditor() {
    if (!editor) {
      editor = new window.IntelliOpticsBoxes.BoxEditor(stage, {
        canEdit: () => boxMode() && root.dataset.state === "ready",
        onChange: showBoxCount,
      });
    }
    return editor;
  }

  const boxWord = (n) => n + (n === 1 ? " box" : " boxes");

  function showBoxCount() {
    const el = $("box-count");
    const on = boxMode();
    el.hidden = !on;
    $("box-help").hidden = !on;
    root.dataset.boxCount = on && editor ? String(editor.count()) : "";
    if (!on || !editor) return;
    const n = editor.count();
    $("box-count-value").textContent = boxWord(n);
    el.classList.toggle("late", item.max_count != null && n > item.max_count);
    const submit = $("submit-boxes");
    if (submit) submit.lastChild.textContent = " Submit " + boxWord(n);
  }

  function setState(state) {
    root.dataset.state = state;
    root.dataset.itemId = item ? String(item.id) : "";
  }

  function say(text, kind) {
    const el = $("status");
    el.textContent = text || "";
    el.className = "status" + (kind ? " " + kind : "");
  }

  function detail(resp) {
    return (resp && resp.data && resp.data.detail) || "Something went wrong (HTTP " + (resp ? resp.status : "?") + ").";
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch("/api/v1/review" + path, init);
    if (resp.status === 401) {
      window.location.assign("/login");
      throw new Error("session ended");
    }
    let data = null;
    if (resp.status !== 204) {
      try {
        data = await resp.json();
      } catch (err) {
        data = null;
      }
    }
    return { status: resp.status, data };
  }

  function stopTimers() {
    clearInterval(heartbeatTimer);
    clearTimeout(pollTimer);
    heartbeatTimer = null;
    pollTimer = null;
  }

  // -- showing an item --------------------------------------------------------------------------------

  function relative(iso) {
    const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
    const abs = Math.abs(s);
    const text = abs < 120 ? abs + " s" : abs < 7200 ? Math.round(abs / 60) + " min" : Math.round(abs / 3600) + " h";
    return s >= 0 ? "in " + text : text + " ago";
  }

  function tick() {
    if (!item) return;
    // Coloured only while it needs attention: the last minute before it passes. Once passed, the camera
    // already has the model's answer; the item still teaches the model, with no hurry.
    const toGo = Date.parse(item.deadline) - Date.now();
    $("deadline").textContent = toGo < 0 ? "passed " + relative(item.deadline) : relative(item.deadline);
    $("deadline").className = toGo < 0 ? "muted" : toGo < DEADLINE_SOON_MS ? "soon" : "";
    const left = Math.max(0, Math.round((Date.parse(item.lease_expires_at) - Date.now()) / 1000));
    // Heartbeats keep the lease; it only runs low when they fail (a sleeping tab, a lost network).
    $("lease").textContent = left > 0 ? left + " s left" : "ran out: answering takes it back if nobody else has";
    // Heartbeats come every third of the lease, so a lease this low means they have been failing.
    const warnAt = Math.min(LEASE_WARN_S, (item.lease_s || 60) / 3);
    $("lease").className = left <= warnAt ? "late" : "";
    if (left <= warnAt && !leaseWarned) {
      leaseWarned = true;
      say(left > 0 ? "Your lease on this item ends in " + left + " s." : "Your lease on this item ran out.", "warn");
    }
  }

  function showPrediction(p) {
    if (!p || (p.label == null && p.count == null)) {
      $("prediction").textContent = "no prediction";
      $("confidence").textContent = "–";
      $("confidence-meter").value = 0;
      return;
    }
    const what = p.count != null ? String(p.count) : p.label;
    $("prediction").textContent = what + (p.source ? " (" + (p.from_edge ? "edge " : "") + p.source.toLowerCase() + ")" : "");
    if (p.confidence == null) {
      $("confidence").textContent = "–";
      $("confidence-meter").value = 0;
    } else {
      $("confidence").textContent = (100 * p.confidence).toFixed(1) + " %";
      $("confidence-meter").value = p.confidence;
    }
  }

  function showOod(it) {
    const el = $("ood");
    if (it.in_domain_score == null && it.out_of_domain == null) {
      el.textContent = "–";
      el.className = "";
      return;
    }
    const score = it.in_domain_score == null ? "" : it.in_domain_score.toFixed(2);
    el.textContent = score + (it.out_of_domain ? " · out of domain" : " · in domain");
    el.className = it.out_of_domain ? "late" : "";
  }

  function answerButton(label, key, text, onClick, extraClass) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "answer" + (extraClass ? " " + extraClass : "");
    button.dataset.label = label;
    if (key) {
      const kbd = document.createElement("kbd");
      kbd.textContent = key.length === 1 ? key.toUpperCase() : key;
      button.append(kbd);
    }
    button.append(" " + text);
    button.addEventListener("click", (ev) => {
      ev.currentTarget.blur();
      onClick();
    });
    return button;
  }

  // Box modes: submit the boxes (Enter), more than the maximum (M, BOUNDING_BOX only), UNCLEAR.
  function showBoxAnswers(it) {
    const box = $("answers");
    box.replaceChildren();
    keyMap = new Map();
    const submit = answerButton("", "Enter", "Submit", () => submitBoxes(false), "primary submit");
    submit.id = "submit-boxes";
    box.append(submit);
    if (greaterAllowed(it)) {
      box.append(answerButton(GREATER_THAN_MAX, "m", "More than " + it.max_count, () => submitBoxes(true), "more"));
    }
    for (const a of it.answers) {
      if (a.label !== "UNCLEAR") continue;
      if (a.key) keyMap.set(a.key, a.label);
      box.append(answerButton(a.label, a.key, a.label, () => answer(a.label, null), "unclear"));
    }
  }

  function greaterAllowed(it) {
    return it.mode === "BOUNDING_BOX" && it.max_count != null;
  }

  function showAnswers(answers) {
    const box = $("answers");
    box.replaceChildren();
    keyMap = new Map();
    for (const a of answers) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = a.label === "UNCLEAR" ? "answer unclear" : "answer";
      button.dataset.label = a.label;
      if (a.key) {
        keyMap.set(a.key, a.label);
        const kbd = document.createElement("kbd");
        kbd.textContent = a.key.toUpperCase();
        button.append(kbd, " ");
      }
      button.append(a.label);
      button.addEventListener("click", (ev) => {
        ev.currentTarget.blur();
        answer(a.label);
      });
      box.append(button);
    }
  }

  // The detector's labelled images most like this one, in the model's embedding space: what it was taught.
  async function showNeighbours(it) {
    const list = $("neighbours-list");
    const why = $("neighbours-why");
    list.replaceChildren();
    why.textContent = "Looking for similar labelled images…";
    let r = null;
    try {
      r = await api("GET", "/items/" + it.id + "/neighbours");
    } catch (err) {
      r = null;
    }
    if (!item || item.id !== it.id) return; // the reviewer moved on meanwhile
    if (r === null || r.status !== 200) {
      why.textContent = "Similar images are not available right now.";
      return;
    }
    if (!r.data.available) {
      why.textContent = "No similar images: " + r.data.why + ".";
      return;
    }
    why.textContent = "Of " + r.data.compared + " labelled images of this detector:";
    list.replaceChildren(
      ...r.data.neighbours.map((n) => {
        const li = document.createElement("li");
        const img = document.createElement("img");
        img.src = n.image_url;
        img.alt = "Labelled " + n.label;
        img.loading = "lazy";
        const caption = document.createElement("span");
        caption.className = "neighbour-label";
        caption.textContent = n.label + " · " + Math.round(100 * n.similarity) + " % alike";
        li.dataset.label = n.label;
        li.append(img, caption);
        return li;
      })
    );
  }

  // -- the image viewer: fitted to the stage (smoothly scaled); the wheel, + and - zoom about the pointer
  // or the centre, 0 (where 0 is no answer) or a double-click goes back to fit; a drag pans (on box
  // detectors a drag draws, so the scrollbars pan there). Past 100 % the pixels show as they are.
  let zoom = 1;
  const ZOOM_MAX = 8;

  // The image's content box at fit (object-fit: contain may letterbox it inside its element).
  function fitSize(img) {
    const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
    return { w: img.naturalWidth * scale, h: img.naturalHeight * scale };
  }

  let fitted = null; // the content size at zoom 1, measured before zooming in

  function resetZoom() {
    const img = $("image");
    zoom = 1;
    fitted = null;
    stage.classList.remove("zoomed");
    if (img) {
      for (const prop of ["width", "height", "maxWidth", "maxHeight", "minWidth", "imageRendering"]) img.style[prop] = "";
    }
    showZoom();
  }

  // Zoom to `next` keeping the image point under (clientX, clientY) where it is (the centre without one).
  function setZoom(next, clientX, clientY) {
    const img = $("image");
    if (!img || img.hidden || !img.naturalWidth) return;
    next = Math.min(ZOOM_MAX, Math.max(1, next));
    if (next === zoom) return;
    if (next === 1) {
      resetZoom();
      return;
    }
    const box = stage;
    if (zoom === 1) fitted = fitSize(img);
    const before = img.getBoundingClientRect();
    const s = box.getBoundingClientRect();
    const x = clientX === undefined ? s.left + s.width / 2 : clientX;
    const y = clientY === undefined ? s.top + s.height / 2 : clientY;
    // The image fraction under the pointer (its element box is the content box once zoomed).
    const fx = zoom === 1 ? 0.5 : Math.min(1, Math.max(0, (x - before.left) / before.width));
    const fy = zoom === 1 ? 0.5 : Math.min(1, Math.max(0, (y - before.top) / before.height));
    zoom = next;
    const w = fitted.w * zoom;
    const h = fitted.h * zoom;
    box.classList.add("zoomed");
    Object.assign(img.style, {
      width: w + "px",
      height: h + "px",
      maxWidth: "none",
      maxHeight: "none",
      minWidth: "0",
      imageRendering: w > img.naturalWidth ? "pixelated" : "auto",
    });
    const after = img.getBoundingClientRect();
    box.scrollLeft += after.left + fx * w - x;
    box.scrollTop += after.top + fy * h - y;
    showZoom();
  }

  function showZoom() {
    const img = $("image");
    const el = $("zoom");
    if (!img || !img.naturalWidth) {
      el.textContent = "–";
      return;
    }
    const shown = zoom === 1 ? fitSize(img).w : img.getBoundingClientRect().width;
    el.textContent = (zoom === 1 ? "fit, " : "") + Math.round((100 * shown) / img.naturalWidth) + " %";
  }

  function showImageFacts(it, img) {
    const when = new Date(it.created_at);
    $("image-size").textContent = img.naturalWidth + " × " + img.naturalHeight + " px · taken " + when.toLocaleString();
    $("full-size").href = it.image_url;
    $("full-size").hidden = false;
    showZoom();
  }

  function show(it) {
    item = it;
    leaseWarned = false;
    resetZoom();
    refreshLeft();
    showNeighbours(it);
    $("loading").hidden = true;
    $("empty").hidden = true;
    $("detector-name").textContent = it.detector_name;
    $("question").textContent = it.query;
    $("reason").textContent = it.reason_text || it.reason || "–";
    $("reason").title = it.reason || "";
    showPrediction(it.prediction);
    showOod(it);
    if (BOX_MODES.has(it.mode)) showBoxAnswers(it);
    else showAnswers(it.answers);
    tick();
    const img = new Image();
    img.id = "image";
    img.alt = "Image of query " + it.image_query_id;
    const ready = () => {
      if (item && item.id === it.id) setState("ready");
    };
    img.addEventListener("load", () => {
      if (item && item.id === it.id) showImageFacts(it, img);
    });
    img.addEventListener("load", ready);
    img.addEventListener("error", () => {
      say("The image could not be loaded; answer UNCLEAR or skip.", "warn");
      ready();
    });
    img.src = "/api/v1/review/items/" + it.id + "/image";
    $("image").replaceWith(img);
    if (BOX_MODES.has(it.mode)) {
      const own = ownBoxes.get(it.id);
      boxEditor().load(img, own || it.model_rois || [], Boolean(own));
      if (own) {
        const before = $("status").textContent;
        say((before ? before + " " : "") + "Your boxes from that answer are back.");
      }
    } else if (editor) {
      editor.clear();
    }
    showBoxCount();
    setState("loading");
    const every = Math.max(1000, (1000 * (it.lease_s || Number(root.dataset.leaseS) || 60)) / 3);
    heartbeatTimer = setInterval(heartbeat, every);
  }

  function showEmpty() {
    item = null;
    refreshLeft();
    $("loading").hidden = true;
    $("image").hidden = true;
    $("empty").hidden = false;
    $("detector-name").textContent = "";
    $("question").textContent = "Queue empty";
    for (const id of ["prediction", "confidence", "ood", "deadline", "lease", "reason"]) $(id).textContent = "–";
    $("answers").replaceChildren();
    keyMap = new Map();
    if (editor) editor.clear();
    showBoxCount();
    setState("empty");
  }

  // -- talking to the queue ---------------------------------------------------------------------------

  // "N left (k you can take now)" for this queue (or all of them), asked at most every few seconds.
  let leftAsked = 0;
  async function refreshLeft() {
    const now = Date.now();
    if (now - leftAsked < 5000) return;
    leftAsked = now;
    let r = null;
    try {
      r = await api("GET", "/queues");
    } catch (err) {
      return;
    }
    if (r.status !== 200 || !Array.isArray(r.data)) return;
    const queues = detectorId ? r.data.filter((q) => q.detector_id === detectorId) : r.data;
    const pending = queues.reduce((n, q) => n + q.pending, 0);
    const claimable = queues.reduce((n, q) => n + q.claimable, 0);
    $("left").textContent = pending + " left" + (pending ? " (" + claimable + " you can take now)" : "");
  }

  async function claim() {
    stopTimers();
    item = null;
    if (editor) editor.clear();
    showBoxCount();
    busy = true;
    setState("loading");
    const qs = detectorId ? "?detector_id=" + encodeURIComponent(detectorId) : "";
    let r = null;
    try {
      r = await api("POST", "/claim" + qs);
    } catch (err) {
      r = null;
    }
    busy = false;
    if (r === null) {
      say("Cannot reach the server; retrying…", "error");
      pollTimer = setTimeout(claim, 3000);
      return;
    }
    if (r.status === 204) {
      showEmpty();
      pollTimer = setTimeout(claim, 3000);
      return;
    }
    if (r.status !== 200) {
      say(detail(r), "error");
      setState("error");
      pollTimer = setTimeout(claim, 5000);
      return;
    }
    show(r.data);
  }

  async function heartbeat() {
    if (!item || busy) return;
    const id = item.id;
    let r = null;
    try {
      r = await api("POST", "/items/" + id + "/heartbeat");
    } catch (err) {
      return;
    }
    if (!item || item.id !== id) return;
    if (r.status === 200) {
      item.lease_expires_at = r.data.lease_expires_at;
      leaseWarned = false;
    } else if (r.status === 409 || r.status === 404) {
      const why = await reclaim(id);
      if (why === null) return;
      say("Your lease on that item ran out (" + why + "); here is the next one.", "warn");
      claim();
    }
  }

  // The lease on the item shown ran out: take that same item back, if nobody else holds it now.
  // null when it is ours again, else why not.
  async function reclaim(id) {
    let r = null;
    try {
      r = await api("POST", "/items/" + id + "/claim");
    } catch (err) {
      return "the server cannot be reached";
    }
    if (!item || item.id !== id) return "another item is shown";
    if (r.status !== 200) return detail(r);
    item.lease_expires_at = r.data.lease_expires_at;
    leaseWarned = false;
    tick();
    return null;
  }

  // rois: the boxes, for COUNT and BOUNDING_BOX items (null with UNCLEAR); left out for the others.
  async function answer(label, rois, retried) {
    if (!item || busy || root.dataset.state !== "ready") return;
    busy = true;
    setState("busy");
    const id = item.id;
    const body = { label };
    if (boxMode()) body.rois = rois || null;
    let r = null;
    try {
      // The next item comes back with the answer: one round trip between items, not two.
      const qs = "?next=true" + (detectorId ? "&detector_id=" + encodeURIComponent(detectorId) : "");
      r = await api("POST", "/items/" + id + "/answer" + qs, body);
    } catch (err) {
      r = null;
    }
    busy = false;
    if (r === null) {
      say("Cannot reach the server; try again.", "error");
      setState("ready");
      return;
    }
    if (r.status === 200) {
      answered += 1;
      $("count").textContent = String(answered);
      remember(item && item.id === id ? item : { id, detector_name: "" }, r.data.label || label);
      ownBoxes.delete(id);
      if (body.rois) {
        ownBoxes.set(id, body.rois);
        if (ownBoxes.size > 50) ownBoxes.delete(ownBoxes.keys().next().value);
      }
      say("Answered " + label + (body.rois ? " (" + boxWord(body.rois.length) + ")" : "") + ".");
      if (r.data && r.data.next) {
        stopTimers();
        item = null;
        if (editor) editor.clear();
        show(r.data.next);
      } else {
        claim();
      }
    } else if (r.status === 409 && !retried) {
      // The lease had run out: take the item back if nobody else has, and send the answer again once.
      const why = await reclaim(id);
      if (why === null) {
        setState("ready");
        await answer(label, rois, true);
      } else {
        say("Your answer " + label + " was not recorded: " + why + ". Loading the next item.", "warn");
        claim();
      }
    } else if (r.status === 409 || r.status === 404) {
      say("Your answer " + label + " was not recorded: " + detail(r) + ". Loading the next item.", "warn");
      claim();
    } else {
      say(detail(r), "error");
      setState("ready");
    }
  }

  // Enter: the boxes as they are. The label follows from them: the count for COUNT; NO_OBJECTS,
  // BOUNDING_BOX or (greater) GREATER_THAN_MAX for BOUNDING_BOX.
  function submitBoxes(greater) {
    if (!item || busy || root.dataset.state !== "ready" || !boxMode() || !editor) return;
    if (editor.dragging()) return;
    if (!editor.showing()) {
      say("The image is not shown, so its boxes cannot be checked: answer UNCLEAR or skip.", "warn");
      return;
    }
    const n = editor.count();
    let label;
    if (item.mode === "COUNT") {
      if (item.max_count != null && n > item.max_count) {
        say(boxWord(n) + " is more than this detector counts (at most " + item.max_count + "): remove some.", "warn");
        return;
      }
      label = String(n);
    } else if (greater) {
      label = GREATER_THAN_MAX;
    } else if (item.max_count != null && n > item.max_count) {
      say(
        boxWord(n) + " is more than this detector takes (" + item.max_count + "): press M for more than " +
          item.max_count + ", or remove some.",
        "warn"
      );
      return;
    } else {
      label = n === 0 ? "NO_OBJECTS" : "BOUNDING_BOX";
    }
    answer(label, editor.rois(item.class_name));
  }

  // A number key on a box item: only the number of boxes drawn, and then it submits those boxes.
  function numberKey(digit) {
    if (!item || busy || root.dataset.state !== "ready" || !editor) return;
    const n = editor.count();
    if (digit !== n) {
      say("You pressed " + digit + " but there are " + boxWord(n) + ": fix the boxes, then press Enter.", "warn");
      return;
    }
    submitBoxes(false);
  }

  // Z: the latest box edit on this item first, then the previous answer.
  function undoKey() {
    if (boxMode() && editor && root.dataset.state === "ready" && editor.undo()) {
      say("Undid a box edit (" + boxWord(editor.count()) + " now).");
      return;
    }
    undo();
  }

  async function skip() {
    if (!item || busy || root.dataset.state !== "ready") return;
    busy = true;
    setState("busy");
    const id = item.id;
    try {
      await api("POST", "/items/" + id + "/skip");
    } catch (err) {
      // the lease runs out by itself
    }
    busy = false;
    say("Skipped; it is under Skipped below if you want it back.");
    refreshSkipped();
    claim();
  }

  // One list entry: what it is, and a button acting on its item.
  function itemRow(text, id, action, act) {
    const li = document.createElement("li");
    const what = document.createElement("span");
    what.textContent = text;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost";
    button.textContent = action;
    button.dataset.itemId = String(id);
    button.addEventListener("click", () => act(id));
    li.append(what, " ", button);
    return li;
  }

  // The items this reviewer skipped that still wait for an answer, each with a button to take the skip back.
  async function refreshSkipped() {
    let r = null;
    try {
      r = await api("GET", "/skipped");
    } catch (err) {
      return;
    }
    if (r.status !== 200 || !Array.isArray(r.data)) return;
    const list = $("skipped-list");
    const rows = r.data.map((s) =>
      itemRow(s.detector_name + ": " + s.query + " (item " + s.item_id + ")", s.item_id, "Un-skip", unskip)
    );
    list.replaceChildren(...rows);
    $("skipped-count").textContent = String(rows.length);
    $("skipped").hidden = rows.length === 0;
  }

  async function unskip(id) {
    let r = null;
    try {
      r = await api("DELETE", "/items/" + id + "/skip");
    } catch (err) {
      say("Cannot reach the server; try again.", "error");
      return;
    }
    if (r.status === 204) say("Item " + id + " is back in your queue.");
    else say(detail(r), "warn");
    leftAsked = 0;
    refreshLeft();
    await refreshSkipped();
    if (root.dataset.state === "empty" && !busy) claim();
  }

  async function undo() {
    if (busy) return;
    busy = true;
    const before = root.dataset.state;
    setState("busy");
    let r = null;
    try {
      r = await api("POST", "/undo");
    } catch (err) {
      r = null;
    }
    if (r !== null && r.status === 200) {
      // Put the current item back so that the undone one (earlier in the queue) comes next.
      if (item) await releaseShown();
      answered = Math.max(0, answered - 1);
      $("count").textContent = String(answered);
      recent = recent.filter((x) => x.id !== r.data.item_id);
      showRecent();
      busy = false;
      say("Undid " + r.data.label + ": answer it again.");
      claim();
      return;
    }
    busy = false;
    say(r === null ? "Cannot reach the server." : r.status === 404 ? "Nothing to undo." : detail(r), "warn");
    setState(before === "busy" ? "ready" : before);
  }

  // -- recent answers: this visit's last few, each can be reopened and answered again ------------------

  const RECENT_MAX = 5;
  let recent = []; // {id, label, detector}, newest first

  function remember(it, label) {
    recent = [{ id: it.id, label, detector: it.detector_name }, ...recent.filter((r) => r.id !== it.id)].slice(0, RECENT_MAX);
    showRecent();
  }

  function showRecent() {
    const list = $("recent-list");
    list.replaceChildren(
      ...recent.map((r) => itemRow(r.label + " · " + r.detector + " (item " + r.id + ")", r.id, "Change", reopen))
    );
    $("recent").hidden = recent.length === 0;
  }

  // The item shown goes back to the queue for everybody (its lease would run out by itself anyway).
  async function releaseShown() {
    try {
      await api("POST", "/items/" + item.id + "/release");
    } catch (err) {
      // the lease runs out by itself
    }
  }

  // Take back the answer to `id` and show that item again, leased to this reviewer, to answer anew.
  async function reopen(id) {
    if (busy) return;
    busy = true;
    let r = null;
    try {
      r = await api("POST", "/items/" + id + "/undo");
    } catch (err) {
      r = null;
    }
    if (r === null || r.status !== 200) {
      busy = false;
      say(r === null ? "Cannot reach the server." : "Cannot change that answer: " + detail(r) + ".", "warn");
      return;
    }
    const label = r.data.label;
    recent = recent.filter((x) => x.id !== id);
    showRecent();
    answered = Math.max(0, answered - 1);
    $("count").textContent = String(answered);
    if (item && item.id !== id) await releaseShown();
    let again = null;
    try {
      again = await api("POST", "/items/" + id + "/claim");
    } catch (err) {
      again = null;
    }
    busy = false;
    if (again !== null && again.status === 200) {
      stopTimers();
      item = null;
      if (editor) editor.clear();
      show(again.data);
      say("Took back " + label + ": answer item " + id + " again.");
    } else {
      say("Took back " + label + "; the item is back in the queue.", "warn");
      claim();
    }
  }

  // -- keyboard first ---------------------------------------------------------------------------------

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    const sheet = $("keys");
    if (key === "?") {
      ev.preventDefault();
      if (sheet.open) sheet.close();
      else sheet.showModal();
      return;
    }
    if (sheet.open) return; // the sheet is modal: no answers behind it (Esc closes it)
    const ctrlZ = (ev.ctrlKey || ev.metaKey) && !ev.altKey && !ev.shiftKey && key === "z";
    if (ctrlZ) {
      ev.preventDefault();
      if (!ev.repeat) undoKey();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    // The box editor first (arrows may repeat): nudge, delete the selected box, select, deselect.
    if (boxMode() && editor && editor.handleKey(ev, key)) {
      ev.preventDefault();
      return;
    }
    if (key === "+" || key === "=") {
      ev.preventDefault();
      setZoom(zoom * 1.5);
      return;
    }
    if (key === "-" || key === "_") {
      ev.preventDefault();
      setZoom(zoom / 1.5);
      return;
    }
    if (key === "0" && !keyMap.has("0") && !boxMode()) {
      ev.preventDefault();
      resetZoom();
      return;
    }
    if (ev.repeat) return;
    if (key === "z" || key === "Backspace") {
      ev.preventDefault();
      undoKey();
    } else if (boxMode() && key === "Enter") {
      ev.preventDefault();
      submitBoxes(false);
    } else if (boxMode() && key === "m" && greaterAllowed(item)) {
      ev.preventDefault();
      submitBoxes(true);
    } else if (boxMode() && /^[0-9]$/.test(key)) {
      ev.preventDefault();
      numberKey(Number(key));
    } else if (key === "s") {
      ev.preventDefault();
      skip();
    } else if (keyMap.has(key)) {
      ev.preventDefault();
      answer(keyMap.get(key));
    }
  });

  const stageEl = stage;
  stageEl.addEventListener(
    "wheel",
    (ev) => {
      if (!item || $("image").hidden) return;
      ev.preventDefault();
      setZoom(zoom * (ev.deltaY < 0 ? 1.25 : 0.8), ev.clientX, ev.clientY);
    },
    { passive: false }
  );
  stageEl.addEventListener("dblclick", (ev) => {
    if (!boxMode()) {
      ev.preventDefault();
      resetZoom();
    }
  });
  let pan = null;
  stageEl.addEventListener("pointerdown", (ev) => {
    if (zoom === 1 || boxMode() || ev.button !== 0) return;
    pan = { x: ev.clientX, y: ev.clientY, left: stageEl.scrollLeft, top: stageEl.scrollTop };
    stageEl.setPointerCapture(ev.pointerId);
    stageEl.classList.add("panning");
    ev.preventDefault();
  });
  stageEl.addEventListener("pointermove", (ev) => {
    if (!pan) return;
    stageEl.scrollLeft = pan.left - (ev.clientX - pan.x);
    stageEl.scrollTop = pan.top - (ev.clientY - pan.y);
  });
  const endPan = () => {
    pan = null;
    stageEl.classList.remove("panning");
  };
  stageEl.addEventListener("pointerup", endPan);
  stageEl.addEventListener("pointercancel", endPan);

  $("skip").addEventListener("click", (ev) => {
    ev.currentTarget.blur();
    skip();
  });
  $("undo").addEventListener("click", (ev) => {
    ev.currentTarget.blur();
    undoKey();
  });

  // Closing the page gives the lease back at once instead of letting it run out.
  window.addEventListener("pagehide", () => {
    if (item) navigator.sendBeacon("/api/v1/review/items/" + item.id + "/release");
  });

  setInterval(tick, 1000);
  refreshSkipped();
  claim();
})();
