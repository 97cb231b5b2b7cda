// qmprr report: the timeline. Data is in Q.items (see qmprr/analysis/report.py) and Q.meta.
// Strings from the recording are shown with textContent only.
(function () {
  "use strict";
  const ERROR = 1, DEBUG = 2, INTERNAL = 4, NO_REPLY = 8;
  const COLORS = { primary: "#2563eb", debug: "#c026d3", internal: "#6b7280", error: "#dc2626",
    event: "#d97706", taint: "#a21caf", marker: "#374151", grid: "#e5e7eb", lane: "#f9fafb",
    tx: "rgba(37, 99, 235, 0.10)", txEdge: "rgba(37, 99, 235, 0.55)", txAbort: "rgba(220, 38, 38, 0.10)",
    txAbortEdge: "rgba(220, 38, 38, 0.6)" };
  const LABEL_W = 160, AXIS_H = 26, TXBAR_H = 18, LANE_H = 30, PAD_BOTTOM = 6, HIT_PX = 4;

  const meta = Q.meta || { end: 0, expected: {} };
  const end = Math.max(meta.end || 0, 0);
  const lanes = [{ name: "QEMU events · qmprr", role: "qemu", spans: [], marks: [], waits: [] }];
  const txs = [];
  for (const it of Q.items) {
    switch (it[0]) {
      case "L": if (lanes[it[1]]) lanes[it[1]].role = it[3];
        else lanes[it[1]] = { name: it[2], role: it[3], spans: [], marks: [], waits: [] }; break;
      case "S": lanes[it[2]].spans.push({ seq: it[1], lane: it[2], t0: it[3], t1: it[4], name: it[5], flags: it[6],
        cmd: it[7], reply: it[8], rseq: it[9], tx: it[10] }); break;
      case "E": lanes[0].marks.push({ seq: it[1], t: it[2], kind: "event", label: it[3], flags: 0, rec: it[4] }); break;
      case "M": lanes[it[2]].marks.push({ seq: it[1], t: it[3], kind: it[4], label: it[5], flags: it[6], rec: it[7] }); break;
      case "T": txs.push({ tx: it[1], label: it[2], owner: it[3], t0: it[4], t1: it[5], status: it[6] }); break;
      case "W": lanes[it[1]].waits.push({ t0: it[2], t1: it[3], tx: it[4] }); break;
    }
  }
  Q.items = null; // the parsed model is all we need
  for (let i = 0; i < lanes.length; i++) {
    if (!lanes[i]) lanes[i] = { name: "?", role: "?", spans: [], marks: [], waits: [] };
    const lane = lanes[i];
    lane.spans.sort((a, b) => a.t0 - b.t0);
    lane.marks.sort((a, b) => a.t - b.t);
    lane.maxDur = 0;
    for (const s of lane.spans) lane.maxDur = Math.max(lane.maxDur, spanEnd(s) - s.t0);
  }

  function spanEnd(s) { return s.t1 === null ? end : s.t1; }

  const canvas = document.getElementById("canvas");
  const box = document.getElementById("timeline");
  const tip = document.getElementById("tip");
  const ctx = canvas.getContext("2d");
  const status = document.getElementById("qmprr-status");
  let width = 0, height = 0, v0 = 0, v1 = 1;
  let selected = null; // what was clicked, outlined

  function pad() { return Math.max(end * 0.02, 1e-6); }
  function fit() {
    v0 = -pad(); v1 = (end > 0 ? end : 1e-3) + pad();
    draw();
  }
  function clamp() { // the view never starts before the recording (zero, and the fit's margin)
    if (v0 < -pad()) { v1 += -pad() - v0; v0 = -pad(); }
  }
  function plotW() { return Math.max(10, width - LABEL_W); }
  function xOf(t) { return LABEL_W + (t - v0) / (v1 - v0) * plotW(); }
  function tOf(x) { return v0 + (x - LABEL_W) / plotW() * (v1 - v0); }
  function laneTop(i) { return AXIS_H + TXBAR_H + i * LANE_H; }

  function fmt(t) {
    const a = Math.abs(t);
    if (a === 0) return "0";
    if (a < 1e-3) return (t * 1e6).toFixed(a < 1e-5 ? 2 : 0) + " µs";
    if (a < 1) return (t * 1e3).toFixed(a < 1e-2 ? 3 : 2) + " ms";
    return t.toFixed(a < 10 ? 4 : 2) + " s";
  }

  function fmtTick(t, step) { // as many decimals as the step needs, in the step's unit
    const [unit, name] = step < 1e-3 ? [1e-6, " µs"] : step < 1 ? [1e-3, " ms"] : [1, " s"];
    const decimals = Math.max(0, Math.ceil(-Math.log10(step / unit) - 1e-9));
    return (t / unit).toFixed(decimals) + name;
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    width = box.clientWidth || 1000;
    height = laneTop(lanes.length) + PAD_BOTTOM;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.height = height + "px";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  let hatch = null;
  function hatchPattern() {
    if (hatch) return hatch;
    const c = document.createElement("canvas");
    c.width = 8; c.height = 8;
    const g = c.getContext("2d");
    g.strokeStyle = "rgba(107, 114, 128, 0.85)"; g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6); g.stroke();
    hatch = ctx.createPattern(c, "repeat");
    return hatch;
  }

  function niceStep(span, px) {
    const raw = span / Math.max(1, px / 110);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function firstIndex(arr, t, key) { // first index with arr[i][key] >= t
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid][key] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function spanColor(s, role) {
    if (s.flags & ERROR) return COLORS.error;
    if (s.flags & DEBUG) return COLORS.debug;
    if (s.flags & INTERNAL) return COLORS.internal;
    return COLORS[role] || COLORS.primary;
  }

  function diamond(x, y, r) {
    ctx.beginPath(); ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y); ctx.closePath(); ctx.fill();
  }

  function drawMark(m, x, mid) {
    switch (m.kind) {
      case "event": ctx.fillStyle = COLORS.event; diamond(x, mid, 5); break;
      case "taint":
        ctx.fillStyle = COLORS.taint;
        ctx.beginPath(); ctx.moveTo(x, mid - 9); ctx.lineTo(x + 7, mid + 5); ctx.lineTo(x - 7, mid + 5); ctx.closePath(); ctx.fill();
        ctx.fillStyle = "#fff"; ctx.font = "bold 10px sans-serif"; ctx.textAlign = "center"; ctx.fillText("!", x, mid + 4); ctx.textAlign = "left";
        break;
      case "client":
        ctx.strokeStyle = COLORS.marker; ctx.lineWidth = 1.5;
        ctx.beginPath(); ctx.moveTo(x, mid - 10); ctx.lineTo(x, mid + 10); ctx.stroke(); break;
      case "close":
        ctx.strokeStyle = (m.flags & ERROR) ? COLORS.error : COLORS.marker; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x - 5, mid - 5); ctx.lineTo(x + 5, mid + 5); ctx.moveTo(x + 5, mid - 5); ctx.lineTo(x - 5, mid + 5); ctx.stroke(); break;
      default: // local answers, fds, notes, greeting
        ctx.fillStyle = (m.flags & ERROR) ? COLORS.error : COLORS.marker;
        ctx.beginPath(); ctx.arc(x, mid, 4, 0, 2 * Math.PI); ctx.fill();
    }
  }

  function draw() {
    const counts = { spans: 0, events: 0, markers: 0, transactions: 0, waits: 0, failed: 0 };
    ctx.clearRect(0, 0, width, height);
    const bottom = laneTop(lanes.length);
    // lanes
    for (let i = 0; i < lanes.length; i++) {
      if (i % 2 === 0) { ctx.fillStyle = COLORS.lane; ctx.fillRect(0, laneTop(i), width, LANE_H); }
    }
    // axis and grid
    const step = niceStep(v1 - v0, plotW());
    ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    const ticks = [];
    let labelEnd = -Infinity; // every major tick gets its label (with its unit), none before zero
    for (let k = Math.max(0, Math.ceil(v0 / step)); k * step <= v1; k++) {
      const t = k * step, x = xOf(t), label = "+" + fmtTick(t, step);
      ctx.strokeStyle = COLORS.grid; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x, AXIS_H - 4); ctx.lineTo(x, bottom); ctx.stroke();
      if (x < LABEL_W || x + 3 <= labelEnd) continue;
      ctx.fillStyle = "#6b7280"; ctx.fillText(label, x + 3, AXIS_H / 2);
      labelEnd = x + 3 + ctx.measureText(label).width + 4;
      ticks.push(label);
    }
    status.dataset.ticks = ticks.join("|");
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL_W, 0, width - LABEL_W, height); ctx.clip();
    // transactions: shaded across every lane, labelled on their own bar
    for (const tx of txs) {
      const t1 = tx.t1 === null ? end : tx.t1;
      if (t1 < v0 || tx.t0 > v1) continue;
      counts.transactions++;
      const x0 = xOf(tx.t0), x1 = Math.max(xOf(t1), x0 + 2);
      const aborted = tx.status === "aborted";
      ctx.fillStyle = aborted ? COLORS.txAbort : COLORS.tx;
      ctx.fillRect(x0, AXIS_H, x1 - x0, bottom - AXIS_H);
      ctx.strokeStyle = aborted ? COLORS.txAbortEdge : COLORS.txEdge; ctx.lineWidth = 1;
      if (tx.status === "open") ctx.setLineDash([4, 3]);
      ctx.strokeRect(x0 + 0.5, AXIS_H + 0.5, x1 - x0 - 1, bottom - AXIS_H - 1);
      ctx.setLineDash([]);
      const label = `tx ${tx.tx} ${tx.label} (${tx.owner})${aborted ? " aborted" : tx.status === "open" ? " open" : ""}`;
      const left = Math.max(x0, LABEL_W);
      if (x1 - left > ctx.measureText(label).width + 8) { // labelled when there is room
        ctx.fillStyle = aborted ? COLORS.error : COLORS.primary;
        ctx.fillText(label, left + 4, AXIS_H + TXBAR_H / 2);
      }
    }
    for (let i = 0; i < lanes.length; i++) {
      const lane = lanes[i], top = laneTop(i), mid = top + LANE_H / 2;
      // waits: hatched
      for (const w of lane.waits) {
        if (w.t1 < v0 || w.t0 > v1) continue;
        counts.waits++;
        const x0 = xOf(w.t0), x1 = Math.max(xOf(w.t1), x0 + 2);
        ctx.fillStyle = hatchPattern(); ctx.fillRect(x0, top + 4, x1 - x0, LANE_H - 8);
        ctx.strokeStyle = "#6b7280"; ctx.lineWidth = 1; ctx.strokeRect(x0 + 0.5, top + 4.5, x1 - x0 - 1, LANE_H - 9);
      }
      // spans: send -> reply; several in one pixel are drawn once, counted each
      const spans = lane.spans;
      let lastX = -1e9, lastColor = "";
      for (let k = firstIndex(spans, v0 - lane.maxDur, "t0"); k < spans.length; k++) {
        const s = spans[k];
        if (s.t0 > v1) break;
        const t1 = spanEnd(s);
        if (t1 < v0) continue;
        counts.spans++;
        if (s.flags & ERROR) counts.failed++;
        const x0 = xOf(s.t0), x1 = Math.max(xOf(t1), x0 + 1.5);
        const color = spanColor(s, lane.role);
        if (x1 < lastX + 0.5 && color === lastColor) continue;
        lastX = x1; lastColor = color;
        ctx.fillStyle = color;
        if (s.flags & NO_REPLY) {
          ctx.globalAlpha = 0.35; ctx.fillRect(x0, top + 7, x1 - x0, LANE_H - 14); ctx.globalAlpha = 1;
          ctx.strokeStyle = color; ctx.setLineDash([4, 3]); ctx.strokeRect(x0 + 0.5, top + 7.5, x1 - x0 - 1, LANE_H - 15); ctx.setLineDash([]);
        } else {
          ctx.fillRect(x0, top + 7, x1 - x0, LANE_H - 14);
        }
        if (x1 - x0 > 40) {
          ctx.save(); ctx.beginPath(); ctx.rect(x0, top, x1 - x0, LANE_H); ctx.clip();
          ctx.fillStyle = "#fff"; ctx.fillText(s.name, x0 + 3, mid); ctx.restore();
        }
      }
      // markers on top
      const marks = lane.marks;
      for (let k = firstIndex(marks, v0, "t"); k < marks.length; k++) {
        const m = marks[k];
        if (m.t > v1) break;
        if (m.kind === "event") counts.events++; else counts.markers++;
        drawMark(m, xOf(m.t), mid);
      }
    }
    if (selected) outline(selected);
    ctx.restore();
    // lane labels
    ctx.fillStyle = "#fff"; ctx.fillRect(0, AXIS_H, LABEL_W, bottom - AXIS_H);
    ctx.strokeStyle = COLORS.grid; ctx.beginPath(); ctx.moveTo(LABEL_W + 0.5, 0); ctx.lineTo(LABEL_W + 0.5, bottom); ctx.stroke();
    ctx.font = "12px sans-serif";
    ctx.fillStyle = "#6b7280"; ctx.fillText("transactions", 8, AXIS_H + TXBAR_H / 2);
    const laneLabels = [];
    for (let i = 0; i < lanes.length; i++) {
      const lane = lanes[i], mid = laneTop(i) + LANE_H / 2;
      ctx.fillStyle = lane.role === "debug" ? COLORS.debug : "#111827";
      const label = i === 0 ? lane.name : `${lane.name} (${lane.role})`;
      laneLabels.push(label);
      ctx.save(); ctx.beginPath(); ctx.rect(0, laneTop(i), LABEL_W - 4, LANE_H); ctx.clip();
      ctx.fillText(label, 8, mid); ctx.restore();
    }
    document.getElementById("range").textContent = `+${fmt(Math.max(v0, 0))} … +${fmt(v1)} (${fmt(v1 - v0)} shown)`;
    for (const k in counts) status.dataset[k] = String(counts[k]);
    status.dataset.lanes = String(lanes.length);
    status.dataset.laneLabels = laneLabels.join("|");
    status.textContent = `drawn: ${counts.spans} command spans, ${counts.events} events, ${counts.markers} markers, ` +
      `${counts.transactions} transactions, ${counts.waits} waits, ${lanes.length} lanes`;
  }

  function outline(h) {
    const i = lanes.indexOf(h.lane);
    if (i < 0) return;
    const top = laneTop(i);
    ctx.strokeStyle = "#111827"; ctx.lineWidth = 2;
    if (h.type === "span") {
      const x0 = xOf(h.item.t0), x1 = Math.max(xOf(spanEnd(h.item)), x0 + 1.5);
      ctx.strokeRect(x0 - 2, top + 5, x1 - x0 + 4, LANE_H - 10);
    } else if (h.type === "mark") {
      ctx.beginPath(); ctx.arc(xOf(h.item.t), top + LANE_H / 2, 8, 0, 2 * Math.PI); ctx.stroke();
    }
  }

  // -- finding what is under the pointer -------------------------------------------
  function hit(x, y) {
    if (x < LABEL_W) return null;
    const t = tOf(x), dt = HIT_PX * (v1 - v0) / plotW();
    if (y >= AXIS_H && y < AXIS_H + TXBAR_H) {
      for (const tx of txs) if (t >= tx.t0 - dt && t <= (tx.t1 === null ? end : tx.t1) + dt) return { type: "tx", item: tx };
      return null;
    }
    const i = Math.floor((y - AXIS_H - TXBAR_H) / LANE_H);
    if (i < 0 || i >= lanes.length) return null;
    const lane = lanes[i];
    let best = null, bestD = dt;
    for (let k = Math.max(0, firstIndex(lane.marks, t - dt, "t")); k < lane.marks.length && lane.marks[k].t <= t + dt; k++) {
      const d = Math.abs(lane.marks[k].t - t);
      if (d <= bestD) { best = { type: "mark", item: lane.marks[k], lane }; bestD = d; }
    }
    if (best) return best;
    for (let k = firstIndex(lane.spans, t + dt, "t0") - 1; k >= 0; k--) {
      const s = lane.spans[k];
      if (s.t0 < t - dt - lane.maxDur) break;
      if (t >= s.t0 - dt && t <= spanEnd(s) + dt) return { type: "span", item: s, lane };
    }
    for (const w of lane.waits) if (t >= w.t0 - dt && t <= w.t1 + dt) return { type: "wait", item: w, lane };
    return null;
  }

  function describe(h) {
    const it = h.item;
    if (h.type === "span") {
      const lat = it.t1 === null ? "no reply" : fmt(it.t1 - it.t0);
      return {
        title: `seq ${it.seq} ${it.name} from ${h.lane.name} (${h.lane.role}) at +${fmt(it.t0)}: ${lat}` +
          ((it.flags & ERROR) ? " ERROR" : "") + (it.tx !== null ? ` [tx ${it.tx}]` : ""),
        json: { command: it.cmd, reply: it.reply, seq: it.seq, reply_seq: it.rseq, sent: it.t0, replied: it.t1,
          latency_ms: it.t1 === null ? null : +((it.t1 - it.t0) * 1e3).toFixed(3), client: h.lane.name,
          role: h.lane.role, tx: it.tx },
      };
    }
    if (h.type === "mark") return { title: `seq ${it.seq} ${it.label} at +${fmt(it.t)}`, json: it.rec };
    if (h.type === "wait") return { title: `${h.lane.name} waited ${fmt(it.t1 - it.t0)} for transaction ${it.tx}`, json: it };
    return { title: `transaction ${it.tx} ${it.label} by ${it.owner}: ${it.status}, held ` +
      fmt((it.t1 === null ? end : it.t1) - it.t0), json: it };
  }

  function show(h) {
    selected = h;
    draw();
    const d = describe(h);
    document.getElementById("detail-title").textContent = d.title;
    document.getElementById("detail-json").textContent = JSON.stringify(d.json, null, 2);
  }

  // -- interaction -------------------------------------------------------------------
  function zoom(factor, atX) {
    const t = tOf(atX === undefined ? LABEL_W + plotW() / 2 : atX);
    let n0 = t - (t - v0) * factor, n1 = t + (v1 - t) * factor;
    if (n1 - n0 < 1e-7) return;
    v0 = n0; v1 = n1; clamp(); draw();
  }
  function pan(fraction) { const d = (v1 - v0) * fraction; v0 += d; v1 += d; clamp(); draw(); }

  let drag = null;
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    if (e.shiftKey) pan(e.deltaY / 1000); else zoom(Math.exp(e.deltaY * 0.0015), e.clientX - r.left);
  }, { passive: false });
  canvas.addEventListener("mousedown", (e) => {
    drag = { x: e.clientX, v0, v1, moved: false };
    box.classList.add("dragging");
  });
  window.addEventListener("mouseup", (e) => {
    box.classList.remove("dragging");
    if (drag && !drag.moved) {
      const r = canvas.getBoundingClientRect();
      const h = hit(e.clientX - r.left, e.clientY - r.top);
      if (h) show(h);
    }
    drag = null;
  });
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    if (drag) {
      const dx = e.clientX - drag.x;
      if (Math.abs(dx) > 3) drag.moved = true;
      if (drag.moved) {
        const dt = dx / plotW() * (drag.v1 - drag.v0);
        v0 = drag.v0 - dt; v1 = drag.v1 - dt; clamp(); draw();
      }
      tip.hidden = true;
      return;
    }
    const h = hit(x, y);
    if (!h) { tip.hidden = true; return; }
    const d = describe(h);
    let text = d.title;
    if (h.type === "span" && h.item.reply && h.item.reply.error) text += "\n" + JSON.stringify(h.item.reply.error);
    else if (h.type === "mark" && h.item.kind === "event" && h.item.rec && h.item.rec.data) text += "\n" + JSON.stringify(h.item.rec.data).slice(0, 300);
    text += "\nclick for the JSON";
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = Math.min(x + 14, width - 360) + "px";
    tip.style.top = (y + 16) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("dblclick", fit);
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("zoom-in").addEventListener("click", () => zoom(1 / 1.5));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(1.5));
  window.addEventListener("keydown", (e) => {
    if (e.key === "+" || e.key === "=") zoom(1 / 1.5);
    else if (e.key === "-") zoom(1.5);
    else if (e.key === "0") fit();
    else if (e.key === "ArrowLeft") pan(-0.2);
    else if (e.key === "ArrowRight") pan(0.2);
  });
  window.addEventListener("resize", () => { resize(); draw(); });

  function selectFromHash() { // report.html#seq=N shows record N's JSON; #view=T0,T1 shows T0..T1 seconds
    const v = /^#view=(-?[\d.e-]+),(-?[\d.e-]+)$/.exec(window.location.hash);
    if (v && Number(v[2]) > Number(v[1])) { v0 = Number(v[1]); v1 = Number(v[2]); clamp(); draw(); return; }
    const m = /^#seq=(\d+)$/.exec(window.location.hash);
    if (!m) return;
    const seq = Number(m[1]);
    for (const lane of lanes) {
      for (const s of lane.spans) if (s.seq === seq || s.rseq === seq) return show({ type: "span", item: s, lane });
      for (const k of lane.marks) if (k.seq === seq) return show({ type: "mark", item: k, lane });
    }
  }
  window.addEventListener("hashchange", selectFromHash);

  resize();
  fit();
  selectFromHash();
  status.dataset.ready = "1";
})();
