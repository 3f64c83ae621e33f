// The live page: polls /v1/status every second and redraws three canvases. No libraries.
"use strict";

const key = new URLSearchParams(location.hash.slice(1)).get("key");
const headers = key ? { Authorization: "Bearer " + key } : {};
let stitches = null;

async function getJSON(path) {
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function fmt(v, digits = 1) { return v === null || v === undefined ? "–" : v.toFixed(digits); }

function setup(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px sans-serif";
  return ctx;
}

// Linear scale from [lo, hi] onto [a, b].
function scale(lo, hi, a, b) {
  const span = hi - lo || 1;
  return (v) => a + ((v - lo) / span) * (b - a);
}

function axes(ctx, w, h, pad, xlabel, ylabel, xr, yr) {
  ctx.strokeStyle = "#999"; ctx.fillStyle = "#444";
  ctx.beginPath(); ctx.moveTo(pad, pad / 2); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 10, h - pad); ctx.stroke();
  ctx.fillText(xlabel, w / 2 - 30, h - 8);
  ctx.save(); ctx.translate(12, h / 2 + 30); ctx.rotate(-Math.PI / 2); ctx.fillText(ylabel, 0, 0); ctx.restore();
  ctx.fillText(xr[0].toPrecision(3), pad, h - pad + 14);
  ctx.fillText(xr[1].toPrecision(3), w - 50, h - pad + 14);
  ctx.fillText(yr[1].toPrecision(3), 2, pad / 2 + 10);
  ctx.fillText(yr[0].toPrecision(3), 2, h - pad);
}

function drawPareto(current) {
  const canvas = document.getElementById("pareto");
  const ctx = setup(canvas), w = canvas.width, h = canvas.height, pad = 45;
  const rows = stitches.stitches.filter((r) => r.latency_ms !== null && r.top1 !== null);
  const xs = rows.map((r) => r.latency_ms), ys = rows.map((r) => r.top1);
  const xr = [Math.min(...xs), Math.max(...xs)], yr = [Math.min(...ys), Math.max(...ys)];
  const X = scale(xr[0], xr[1], pad, w - 20), Y = scale(yr[0], yr[1], h - pad, pad / 2);
  axes(ctx, w, h, pad, "latency ms (batch 1)", "top-1 %", xr, yr);
  ctx.fillStyle = "#bbb";
  for (const r of rows) { ctx.beginPath(); ctx.arc(X(r.latency_ms), Y(r.top1), 2.5, 0, 7); ctx.fill(); }
  ctx.strokeStyle = "#2471a3"; ctx.lineWidth = 1.5; ctx.beginPath();
  stitches.front.forEach((r, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(r.latency_ms), Y(r.top1)));
  ctx.stroke(); ctx.lineWidth = 1;
  ctx.fillStyle = "#2471a3";
  for (const r of stitches.front) { ctx.beginPath(); ctx.arc(X(r.latency_ms), Y(r.top1), 4, 0, 7); ctx.fill(); }
  const cur = rows.find((r) => r.stitch === current);
  if (cur) {
    ctx.strokeStyle = "#c0392b"; ctx.fillStyle = "#c0392b"; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.arc(X(cur.latency_ms), Y(cur.top1), 8, 0, 7); ctx.stroke(); ctx.lineWidth = 1;
    ctx.fillText(current, Math.min(X(cur.latency_ms) + 10, w - 80), Y(cur.top1) - 10);
  }
  canvas.dataset.highlighted = current;
  canvas.dataset.points = String(rows.length);
}

function drawLatency(status) {
  const canvas = document.getElementById("latency-chart");
  const ctx = setup(canvas), w = canvas.width, h = canvas.height, pad = 45;
  const hist = status.history.filter((p) => p.p99_ms !== null);
  canvas.dataset.points = String(hist.length);
  if (!hist.length) { ctx.fillText("no requests yet", w / 2 - 40, h / 2); return; }
  const ts = hist.map((p) => p.t);
  const top = Math.max(...hist.map((p) => p.p99_ms), status.slo_ms || 0) * 1.1;
  const xr = [Math.min(...ts), Math.max(...ts)], yr = [0, top];
  const X = scale(xr[0], xr[1], pad, w - 20), Y = scale(0, top, h - pad, pad / 2);
  axes(ctx, w, h, pad, "seconds since start", "ms", xr, yr);
  if (status.slo_ms) {
    ctx.strokeStyle = "#c0392b"; ctx.setLineDash([6, 4]); ctx.beginPath();
    ctx.moveTo(pad, Y(status.slo_ms)); ctx.lineTo(w - 20, Y(status.slo_ms)); ctx.stroke(); ctx.setLineDash([]);
    ctx.fillStyle = "#c0392b"; ctx.fillText("SLO " + status.slo_ms + " ms", w - 110, Y(status.slo_ms) - 4);
  }
  for (const [field, color] of [["p50_ms", "#1e8449"], ["p99_ms", "#d35400"]]) {
    ctx.strokeStyle = color; ctx.beginPath();
    hist.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(p.t), Y(p[field])));
    ctx.stroke(); ctx.fillStyle = color;
    ctx.fillText(field.replace("_ms", ""), pad + 8 + (field === "p99_ms" ? 40 : 0), pad / 2 + 10);
  }
}

function drawPerStitch(status) {
  const canvas = document.getElementById("per-stitch");
  const ctx = setup(canvas), w = canvas.width, h = canvas.height, pad = 45;
  const order = stitches.stitches.map((r) => r.stitch);
  const entries = Object.entries(status.requests_per_stitch)
    .sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
  canvas.dataset.bars = String(entries.length);
  if (!entries.length) { ctx.fillText("no requests yet", w / 2 - 40, h / 2); return; }
  const most = Math.max(...entries.map((e) => e[1]));
  const bw = (w - pad - 20) / entries.length;
  axes(ctx, w, h, pad, "stitch (cheap → accurate)", "requests", [0, entries.length], [0, most]);
  entries.forEach(([s, n], i) => {
    const bh = ((h - 1.5 * pad) * n) / most;
    ctx.fillStyle = s === status.stitch ? "#c0392b" : "#2471a3";
    ctx.fillRect(pad + i * bw + 2, h - pad - bh, bw - 4, bh);
    ctx.fillStyle = "#444";
    ctx.fillText(s, pad + i * bw + 2, h - pad - bh - 4);
  });
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
