// The box editor of the labeling page (COUNT and BOUNDING_BOX detectors): an SVG layer laid exactly
// over the shown image. Boxes are kept normalised (0..1 of the image, origin top-left) and drawn in
// pixels, so they follow the image whatever its displayed size. The model's boxes start dashed; a box
// the reviewer drew, moved or resized is solid. Each add, move, resize and delete is one undo step.
//
// Mouse: click a box to select it, drag inside it to move it, drag a corner handle of the selected box
// to resize it, drag on empty image to draw a new box (drags under MIN_PX pixels are ignored).
// Keys (handleKey): arrows nudge the selected box (Shift: 10 px), D / Delete / Backspace delete it,
// Tab / Shift+Tab select the next / previous box, Escape deselects or cancels a drag.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MIN_PX = 4; // smaller drags are accidents, not boxes or moves
  const HANDLE_PX = 10;
  const MAX_BOXES = 100; // what the API accepts in one answer
  const CORNERS = { nw: ["left", "top"], ne: ["right", "top"], sw: ["left", "bottom"], se: ["right", "bottom"] };
  const OPPOSITE = { nw: "se", ne: "sw", sw: "ne", se: "nw" };

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const clamp01 = (v) => clamp(v, 0, 1);
  const round6 = (v) => Math.round(v * 1e6) / 1e6;

  function svg(name, attrs) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  // A ROI of the API (label, score, geometry) as an editor box, or null when it cannot be drawn.
  function fromRoi(roi) {
    const g = roi && roi.geometry;
    if (!g) return null;
    const xs = [Number(g.left), Number(g.right)];
    const ys = [Number(g.top), Number(g.bottom)];
    if (![...xs, ...ys].every(Number.isFinite)) return null;
    const box = {
      left: clamp01(Math.min(...xs)),
      right: clamp01(Math.max(...xs)),
      top: clamp01(Math.min(...ys)),
      bottom: clamp01(Math.max(...ys)),
      label: typeof roi.label === "string" ? roi.label : "",
      score: Number.isFinite(Number(roi.score)) ? Number(roi.score) : null,
      model: true,
    };
    return box.right > box.left && box.bottom > box.top ? box : null;
  }

  const copyBoxes = (boxes) => boxes.map((b) => ({ ...b }));
  const sameGeometry = (a, b) =>
    a.left === b.left && a.top === b.top && a.right === b.right && a.bottom === b.bottom;

  class BoxEditor {
    // stage: the positioned element holding the image; canEdit(): whether edits are allowed now;
    // onChange(editor): after every change of the boxes or the selection.
    constructor(stage, { canEdit, onChange } = {}) {
      this.stage = stage;
      this.canEdit = canEdit || (() => true);
      this.onChange = onChange || (() => {});
      this.img = null;
      this.active = false;
      this.boxes = [];
      this.history = [];
      this.selected = -1;
      this.drag = null;
      this.size = { w: 0, h: 0 };
      this.layer = svg("svg", { id: "boxes", class: "box-layer", role: "img", "aria-label": "Boxes on the image" });
      this.layer.style.display = "none";
      stage.append(this.layer);
      this.resizeObserver = new ResizeObserver(() => this.layout());
      this.resizeObserver.observe(stage);
      window.addEventListener("resize", () => this.layout());
      this.layer.addEventListener("pointerdown", (ev) => this.pointerDown(ev));
      this.layer.addEventListener("pointermove", (ev) => this.pointerMove(ev));
      this.layer.addEventListener("pointerup", (ev) => this.pointerUp(ev));
      this.layer.addEventListener("pointercancel", () => this.cancelDrag());
      this.layer.addEventListener("lostpointercapture", () => {
        if (this.drag) this.finishDrag();
      });
    }

    // -- what label.js uses ---------------------------------------------------------------------------

    // Show `rois` over `img` (the model's boxes, dashed; with own: true, the reviewer's, solid).
    load(img, rois, own) {
      this.attach(img);
      this.boxes = (rois || []).map(fromRoi).filter(Boolean).slice(0, MAX_BOXES);
      if (own) for (const b of this.boxes) b.model = false;
      this.history = [];
      this.selected = -1;
      this.drag = null;
      this.active = true;
      this.layout();
      this.changed();
    }

    clear() {
      this.active = false;
      this.boxes = [];
      this.history = [];
      this.selected = -1;
      this.drag = null;
      this.layer.style.display = "none";
      this.layer.replaceChildren();
      this.changed();
    }

    count() {
      return this.boxes.length;
    }

    // Whether the reviewer can see the boxes over a loaded image.
    showing() {
      return this.active && this.size.w > 0 && this.size.h > 0;
    }

    dragging() {
      return this.drag !== null;
    }

    canUndo() {
      return this.active && this.history.length > 0 && !this.drag;
    }

    undo() {
      if (!this.canUndo()) return false;
      this.boxes = this.history.pop();
      if (this.selected >= this.boxes.length) this.selected = -1;
      this.render();
      this.changed();
      return true;
    }

    // The boxes as API ROIs, clamped to the image; every box is the reviewer's answer now.
    rois(className) {
      return this.boxes.map((b) => {
        const left = round6(clamp01(Math.min(b.left, b.right)));
        const right = round6(clamp01(Math.max(b.left, b.right)));
        const top = round6(clamp01(Math.min(b.top, b.bottom)));
        const bottom = round6(clamp01(Math.max(b.top, b.bottom)));
        return {
          label: className || b.label || "object",
          score: 1.0,
          geometry: { left, top, right, bottom, x: round6((left + right) / 2), y: round6((top + bottom) / 2) },
        };
      });
    }

    // A key press (no Ctrl/Alt/Meta); true when the editor used it.
    handleKey(ev, key) {
      if (!this.active || !this.canEdit()) return false;
      if (this.drag) {
        if (key === "Escape") this.cancelDrag();
        return true; // nothing else while the mouse is busy
      }
      const sel = this.selected >= 0 ? this.boxes[this.selected] : null;
      const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
      if (key in steps) {
        if (!sel || !this.showing()) return false;
        const px = ev.shiftKey ? 10 : 1;
        const [sx, sy] = steps[key];
        // A held key (its auto-repeats) is one move, hence one undo step.
        this.edit(!ev.repeat, () => this.moveBox(sel, (sx * px) / this.size.w, (sy * px) / this.size.h, { ...sel }));
        return true;
      }
      if (key === "d" || key === "Delete" || key === "Backspace") {
        if (!sel) return false;
        this.edit(true, () => {
          this.boxes.splice(this.selected, 1);
          this.selected = -1;
        });
        return true;
      }
      if (key === "Escape") {
        if (this.selected < 0) return false;
        this.select(-1);
        return true;
      }
      if (key === "Tab") {
        if (!this.boxes.length) return false;
        const n = this.boxes.length;
        const from = this.selected < 0 ? (ev.shiftKey ? 0 : -1) : this.selected;
        this.select((from + (ev.shiftKey ? n - 1 : 1)) % n);
        return true;
      }
      return false;
    }

    // -- layout and drawing ---------------------------------------------------------------------------

    attach(img) {
      if (this.img === img) return;
      if (this.img) this.resizeObserver.unobserve(this.img);
      this.img = img;
      if (img) {
        this.resizeObserver.observe(img);
        img.addEventListener("load", () => this.layout());
      }
    }

    // Put the layer exactly over the image's content (object-fit: contain may letterbox it).
    layout() {
      const img = this.img;
      if (!this.active || !img || !img.isConnected || img.hidden || !img.naturalWidth || !img.naturalHeight) {
        this.size = { w: 0, h: 0 };
        this.layer.style.display = "none";
        return;
      }
      const cw = img.clientWidth;
      const ch = img.clientHeight;
      const scale = Math.min(cw / img.naturalWidth, ch / img.naturalHeight);
      const w = img.naturalWidth * scale;
      const h = img.naturalHeight * scale;
      if (!(w > 0 && h > 0)) {
        this.size = { w: 0, h: 0 };
        this.layer.style.display = "none";
        return;
      }
      const s = this.stage.getBoundingClientRect();
      const r = img.getBoundingClientRect();
      // Scroll offsets: a zoomed image scrolls inside the stage, and the layer with it.
      const left = r.left - s.left - this.stage.clientLeft + this.stage.scrollLeft + img.clientLeft + (cw - w) / 2;
      const top = r.top - s.top - this.stage.clientTop + this.stage.scrollTop + img.clientTop + (ch - h) / 2;
      Object.assign(this.layer.style, {
        display: "block",
        left: left + "px",
        top: top + "px",
        width: w + "px",
        height: h + "px",
      });
      this.layer.setAttribute("viewBox", `0 0 ${w} ${h}`);
      this.size = { w, h };
      this.render();
    }

    render() {
      const { w, h } = this.size;
      const layer = this.layer;
      layer.replaceChildren();
      if (!w || !h) return;
      // Larger boxes first, so that a box inside another stays clickable; the selected one on top.
      const order = this.boxes
        .map((b, i) => i)
        .sort((a, b) => this.area(this.boxes[b]) - this.area(this.boxes[a]));
      if (this.selected >= 0) order.push(...order.splice(order.indexOf(this.selected), 1));
      for (const i of order) {
        const b = this.boxes[i];
        const g = svg("g", {
          class: "box" + (b.model ? " model" : " own") + (i === this.selected ? " selected" : ""),
          "data-index": i,
        });
        g.append(
          svg("rect", {
            class: "box-rect",
            "data-index": i,
            x: b.left * w,
            y: b.top * h,
            width: Math.max(0, (b.right - b.left) * w),
            height: Math.max(0, (b.bottom - b.top) * h),
          })
        );
        if (b.model && b.score != null) {
          const tag = svg("text", { class: "box-score", x: b.left * w + 3, y: Math.max(11, b.top * h - 3) });
          tag.textContent = b.score.toFixed(2);
          g.append(tag);
        }
        if (i === this.selected) {
          for (const [corner, [sx, sy]] of Object.entries(CORNERS)) {
            g.append(
              svg("rect", {
                class: "handle " + corner,
                "data-index": i,
                "data-corner": corner,
                x: b[sx] * w - HANDLE_PX / 2,
                y: b[sy] * h - HANDLE_PX / 2,
                width: HANDLE_PX,
                height: HANDLE_PX,
              })
            );
          }
        }
        layer.append(g);
      }
      const d = this.drag;
      if (d && d.kind === "draw" && d.box) {
        layer.append(
          svg("rect", {
            class: "box-draft",
            x: d.box.left * w,
            y: d.box.top * h,
            width: (d.box.right - d.box.left) * w,
            height: (d.box.bottom - d.box.top) * h,
          })
        );
      }
    }

    area(b) {
      return (b.right - b.left) * (b.bottom - b.top);
    }

    changed() {
      this.onChange(this);
    }

    select(index) {
      this.selected = index;
      this.render();
      this.changed();
    }

    // Run `change` on the boxes; when it changed anything and `step` is set, that is one undo step.
    edit(step, change) {
      const before = copyBoxes(this.boxes);
      const selectedBefore = this.selected;
      change();
      const same =
        before.length === this.boxes.length && before.every((b, i) => sameGeometry(b, this.boxes[i]));
      if (same && selectedBefore === this.selected) return false;
      if (!same && step) this.history.push(before);
      this.render();
      this.changed();
      return !same;
    }

    // Move `box` to `from` shifted by (dx, dy), kept inside the image; a moved box is the reviewer's.
    moveBox(box, dx, dy, from) {
      const bw = from.right - from.left;
      const bh = from.bottom - from.top;
      const left = clamp(from.left + dx, 0, 1 - bw);
      const top = clamp(from.top + dy, 0, 1 - bh);
      if (left === box.left && top === box.top) return;
      Object.assign(box, { left, top, right: left + bw, bottom: top + bh, model: false });
    }

    // -- the mouse ------------------------------------------------------------------------------------

    point(ev) {
      const r = this.layer.getBoundingClientRect();
      return {
        x: r.width ? (ev.clientX - r.left) / r.width : 0,
        y: r.height ? (ev.clientY - r.top) / r.height : 0,
        cx: ev.clientX,
        cy: ev.clientY,
      };
    }

    pointerDown(ev) {
      if (ev.button !== 0 || !this.showing() || !this.canEdit() || this.drag) return;
      ev.preventDefault();
      const p = this.point(ev);
      const target = ev.target instanceof Element ? ev.target : null;
      const hit = target && target.closest("[data-index]");
      const index = hit ? Number(hit.getAttribute("data-index")) : -1;
      const corner = target && target.getAttribute("data-corner");
      const before = copyBoxes(this.boxes);
      if (index >= 0 && corner) {
        const b = this.boxes[index];
        const [ax, ay] = CORNERS[OPPOSITE[corner]];
        this.drag = { kind: "resize", index, start: p, from: { ...b }, anchor: { x: b[ax], y: b[ay] }, before };
      } else if (index >= 0) {
        this.drag = { kind: "move", index, start: p, from: { ...this.boxes[index] }, before };
        this.selected = index;
      } else {
        this.drag = { kind: "draw", start: p, box: null, before };
        this.selected = -1;
      }
      this.drag.started = false;
      this.drag.selectedBefore = this.selected;
      try {
        this.layer.setPointerCapture(ev.pointerId);
      } catch (err) {
        // capture is a convenience (drags leaving the layer); without it a drag still works inside
      }
      this.render();
      this.changed();
    }

    pointerMove(ev) {
      const d = this.drag;
      if (!d) return;
      ev.preventDefault();
      const p = this.point(ev);
      if (!d.started && Math.hypot(p.cx - d.start.cx, p.cy - d.start.cy) < MIN_PX) return;
      d.started = true;
      const { w, h } = this.size;
      if (d.kind === "move") {
        this.moveBox(this.boxes[d.index], p.x - d.start.x, p.y - d.start.y, d.from);
      } else if (d.kind === "resize") {
        const box = this.boxes[d.index];
        const minW = MIN_PX / w;
        const minH = MIN_PX / h;
        const x = clamp01(p.x);
        const y = clamp01(p.y);
        const a = d.anchor;
        const [left, right] = x >= a.x ? [a.x, Math.min(1, Math.max(x, a.x + minW))] : [Math.max(0, Math.min(x, a.x - minW)), a.x];
        const [top, bottom] = y >= a.y ? [a.y, Math.min(1, Math.max(y, a.y + minH))] : [Math.max(0, Math.min(y, a.y - minH)), a.y];
        Object.assign(box, { left, right, top, bottom, model: false });
      } else {
        const x0 = clamp01(d.start.x);
        const y0 = clamp01(d.start.y);
        const x1 = clamp01(p.x);
        const y1 = clamp01(p.y);
        d.box = { left: Math.min(x0, x1), right: Math.max(x0, x1), top: Math.min(y0, y1), bottom: Math.max(y0, y1) };
      }
      this.render();
      if (d.kind !== "draw") this.changed();
    }

    pointerUp(ev) {
      if (!this.drag) return;
      ev.preventDefault();
      this.finishDrag();
    }

    finishDrag() {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      const { w, h } = this.size;
      if (d.kind === "draw") {
        const b = d.box;
        if (b && (b.right - b.left) * w >= MIN_PX && (b.bottom - b.top) * h >= MIN_PX) {
          if (this.boxes.length >= MAX_BOXES) {
            this.render();
            return;
          }
          this.history.push(d.before);
          this.boxes.push({ ...b, label: "", score: null, model: false });
          this.selected = this.boxes.length - 1;
        }
      } else {
        const b = this.boxes[d.index];
        if (d.started && b && !sameGeometry(b, d.from)) {
          this.history.push(d.before);
        } else if (b) {
          Object.assign(b, d.from); // a click, or a drag that came back where it started
        }
      }
      this.render();
      this.changed();
    }

    cancelDrag() {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      this.boxes = d.before;
      if (this.selected >= this.boxes.length) this.selected = -1;
      this.render();
      this.changed();
    }
  }

  window.IntelliOpticsBoxes = { BoxEditor, MIN_PX, MAX_BOXES };
})();
