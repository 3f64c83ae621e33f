// The live page: polls /v1/status every second and redraws three canvases. No libraries.
"use strict";

const key = new URLSearchParams(location.hash.slice(1)).get("key");
const headers = key ? { Authorization: "Bearer " + key } : {};
const COLORS = { p50: "#1e8449", p99: "#d35400", slo: "#c0392b", front: "#2471a3", other: "#bbb" };
const FONT = "13px system-ui, sans-serif";
const PAD = { left: 64, right: 16, top: 30, bottom: 50 };
let stitches = null;

async function getJSON(path) {
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function fmt(v, digits = 1) { return v === null || v === undefined ? "–" : v.toFixed(digits); }

// A canvas drawn at the screen's pixel density, in CSS pixels; returns its context and size.
function setup(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = FONT; ctx.lineWidth = 1;
  return { ctx, w, h };
}

// Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return { values: out, step };
}

function label(v, step) {
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(Math.min(digits, 3));
}

// Linear scale from [lo, hi] onto [a, b].
function scale(lo, hi, a, b) {
  const span = hi - lo || 1;
  return (v) => a + ((v - lo) / span) * (b - a);
}

// Axes with grid lines, round tick labels and a title per axis; returns the two scales.
function axes(ctx, w, h, x, y) {
  const X = scale(x.lo, x.hi, PAD.left, w - PAD.right), Y = scale(y.lo, y.hi, h - PAD.bottom, PAD.top);
  ctx.strokeStyle = "#e3e3e3"; ctx.fillStyle = "#333"; ctx.textBaseline = "middle";
  const yt = ticks(y.lo, y.hi);
  ctx.textAlign = "right";
  for (const v of yt.values) {
    ctx.beginPath(); ctx.moveTo(PAD.left, Y(v)); ctx.lineTo(w - PAD.right, Y(v)); ctx.stroke();
    ctx.fillText(label(v, yt.step), PAD.left - 6, Y(v));
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  if (x.labels) {  // a name per slot: every k-th where they would overlap, slanted when long
    const slot = X(1) - X(0), widest = Math.max(...x.labels.map((t) => ctx.measureText(t).width));
    const every = Math.max(1, Math.ceil(18 / slot)), slant = widest + 6 > slot * every;
    x.labels.forEach((text, i) => {
      if (i % every) return;
      ctx.save(); ctx.translate(X(i + 0.5), h - PAD.bottom + 6);
      if (slant) { ctx.rotate(-Math.PI / 6); ctx.textAlign = "right"; }
      ctx.fillText(text, 0, 0); ctx.restore();
    });
  } else {
    const xt = ticks(x.lo, x.hi);
    for (const v of xt.values) {
      ctx.beginPath(); ctx.moveTo(X(v), PAD.top); ctx.lineTo(X(v), h - PAD.bottom); ctx.stroke();
      ctx.fillText(label(v, xt.step), X(v), h - PAD.bottom + 6);
    }
  }
  ctx.strokeStyle = "#888";
  ctx.beginPath(); ctx.moveTo(PAD.left, PAD.top); ctx.lineTo(PAD.left, h - PAD.bottom); ctx.lineTo(w - PAD.right, h - PAD.bottom); ctx.stroke();
  ctx.font = "bold " + FONT;
  ctx.fillText(x.title, (PAD.left + w - PAD.right) / 2, h - 20);
  ctx.save(); ctx.translate(16, (PAD.top + h - PAD.bottom) / 2); ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle"; ctx.fillText(y.title, 0, 0); ctx.restore();
  ctx.font = FONT; ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
  return { X, Y };
}

// A legend in the top left corner of the plot: [text, color, dashed].
function legend(ctx, items) {
  let x = PAD.left + 8;
  for (const [text, color, dashed] of items) {
    ctx.strokeStyle = color; ctx.lineWidth = 3; ctx.setLineDash(dashed ? [6, 4] : []);
    ctx.beginPath(); ctx.moveTo(x, 14); ctx.lineTo(x + 22, 14); ctx.stroke(); ctx.setLineDash([]); ctx.lineWidth = 1;
    ctx.fillStyle = "#222"; ctx.fillText(text, x + 28, 18);
    x += 40 + ctx.measureText(text).width;
  }
}

const METRIC_TITLES = { top1: "top-1 accuracy (%)", miou: "mIoU (%)", absrel: "AbsRel (lower is better)" };

function drawPareto(current) {
  const canvas = document.getElementById("pareto");
  const { ctx, w, h } = setup(canvas);
  const m = stitches.metric || "top1";  // top1, miou or absrel
  const rows = stitches.stitches.filter((r) => r.latency_ms !== null && r[m] !== null);
  const xs = rows.map((r) => r.latency_ms), ys = rows.map((r) => r[m]);
  const xpad = (Math.max(...xs) - Math.min(...xs)) * 0.05 || 0.01, ypad = (Math.max(...ys) - Math.min(...ys)) * 0.08 || 0.5;
  const { X, Y } = axes(ctx, w, h,
    { lo: Math.max(0, Math.min(...xs) - xpad), hi: Math.max(...xs) + xpad, title: "latency of one image (ms)" },
    { lo: Math.min(...ys) - ypad, hi: Math.max(...ys) + ypad, title: METRIC_TITLES[m] || m });
  ctx.fillStyle = COLORS.other;
  for (const r of rows) { ctx.beginPath(); ctx.arc(X(r.latency_ms), Y(r[m]), 2.5, 0, 7); ctx.fill(); }
  ctx.strokeStyle = COLORS.front; ctx.lineWidth = 1.5; ctx.beginPath();
  stitches.front.forEach((r, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(r.latency_ms), Y(r[m])));
  ctx.stroke(); ctx.lineWidth = 1;
  ctx.fillStyle = COLORS.front;
  for (const r of stitches.front) { ctx.beginPath(); ctx.arc(X(r.latency_ms), Y(r[m]), 4, 0, 7); ctx.fill(); }
  legend(ctx, [["Pareto front", COLORS.front], ["running stitch", COLORS.slo]]);
  const cur = rows.find((r) => r.stitch === current);
  if (cur) {
    ctx.strokeStyle = COLORS.slo; ctx.fillStyle = COLORS.slo; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.arc(X(cur.latency_ms), Y(cur[m]), 8, 0, 7); ctx.stroke(); ctx.lineWidth = 1;
    ctx.font = "bold " + FONT; ctx.textAlign = X(cur.latency_ms) > w / 2 ? "right" : "left";
    ctx.fillText(current, X(cur.latency_ms) + (ctx.textAlign === "right" ? -12 : 12), Y(cur[m]) - 10);
    ctx.font = FONT; ctx.textAlign = "left";
  }
  canvas.dataset.highlighted = current;
  canvas.dataset.points = String(rows.length);
}

function drawLatency(status) {
  const canvas = document.getElementById("latency-chart");
  const { ctx, w, h } = setup(canvas);
  const hist = status.history.filter((p) => p.p99_ms !== null);
  canvas.dataset.points = String(hist.length);
  if (!hist.length) { ctx.fillText("no requests yet", w / 2 - 40, h / 2); return; }
  const now = hist[hist.length - 1].t;
  const top = Math.max(...hist.map((p) => p.p99_ms), status.slo_ms || 0) * 1.15;
  const { X, Y } = axes(ctx, w, h,
    { lo: Math.min(-10, hist[0].t - now), hi: 0, title: "seconds ago" },
    { lo: 0, hi: top, title: "latency (ms)" });
  if (status.slo_ms) {
    ctx.strokeStyle = COLORS.slo; ctx.lineWidth = 2; ctx.setLineDash([8, 5]); ctx.beginPath();
    ctx.moveTo(PAD.left, Y(status.slo_ms)); ctx.lineTo(w - PAD.right, Y(status.slo_ms)); ctx.stroke();
    ctx.setLineDash([]); ctx.lineWidth = 1;
    ctx.fillStyle = COLORS.slo; ctx.font = "bold " + FONT; ctx.textAlign = "right";
    ctx.fillText("SLO " + status.slo_ms + " ms", w - PAD.right - 4, Y(status.slo_ms) - 6);
    ctx.font = FONT; ctx.textAlign = "left";
  }
  for (const [field, color, width] of [["p50_ms", COLORS.p50, 1.5], ["p99_ms", COLORS.p99, 3]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    hist.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(p.t - now), Y(p[field])));
    ctx.stroke(); ctx.lineWidth = 1;
  }
  const last = hist[hist.length - 1];
  ctx.fillStyle = COLORS.p99; ctx.font = "bold " + FONT; ctx.textAlign = "right";
  ctx.fillText("p99 " + fmt(last.p99_ms) + " ms", w - PAD.right - 4, Math.max(PAD.top + 12, Y(last.p99_ms) - 8));
  ctx.font = FONT; ctx.textAlign = "left";
  legend(ctx, [["p50", COLORS.p50], ["p99", COLORS.p99], ...(status.slo_ms ? [["SLO", COLORS.slo, true]] : [])]);
}

function drawPerStitch(status) {
  const canvas = document.getElementById("per-stitch");
  const { ctx, w, h } = setup(canvas);
  const order = stitches.stitches.map((r) => r.stitch);  // by latency, cheapest first
  const entries = Object.entries(status.requests_per_stitch)
    .sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
  canvas.dataset.bars = String(entries.length);
  canvas.dataset.labels = entries.map((e) => e[0]).join(" ");
  if (!entries.length) { ctx.fillText("no requests yet", w / 2 - 40, h / 2); return; }
  const most = Math.max(...entries.map((e) => e[1]));
  const { X, Y } = axes(ctx, w, h,
    { lo: 0, hi: entries.length, labels: entries.map((e) => e[0]), title: "stitch (fastest left)" },
    { lo: 0, hi: most * 1.1, title: "requests answered" });
  const bw = X(1) - X(0);
  entries.forEach(([s, n], i) => {
    ctx.fillStyle = s === status.stitch ? COLORS.slo : COLORS.front;
    ctx.fillRect(X(i) + bw * 0.15, Y(n), bw * 0.7, Y(0) - Y(n));
  });
  legend(ctx, [["running stitch", COLORS.slo], ["other stitches", COLORS.front]]);
}

async function tick() {
  try {
    if (!stitches) {
      stitches = await getJSON("v1/stitches");
      document.getElementById("source").textContent =
        stitches.source + ": " + stitches.stitches.length + " stitches, " + stitches.front.length + " on the front";
    }
    const s = await getJSON("v1/status");
    const r = s.recent;
    document.getElementById("current-stitch").textContent = s.stitch;
    document.getElementById("mode").textContent = s.mode;
    document.getElementById("latency").textContent = fmt(r.p50_ms) + " / " + fmt(r.p99_ms) + " ms";
    const slo = document.getElementById("slo");
    slo.textContent = s.slo_ms ? s.slo_ms + " ms" : "none";
    slo.className = s.slo_ms && r.p99_ms !== null ? (r.p99_ms <= s.slo_ms ? "ok" : "bad") : "";
    document.getElementById("queue").textContent = s.queue_depth + " / " + s.max_queue;
    document.getElementById("rate").textContent = fmt(r.rate) + " /s";
    document.getElementById("switches").textContent = String(s.switches);
    document.getElementById("load").textContent = fmt(s.load_avg_1min, 2);
    drawPareto(s.stitch);
    drawLatency(s);
    drawPerStitch(s);
    document.getElementById("error").textContent = "";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
}

tick();
setInterval(tick, 1000);
