// The dashboard: polls the JSON API every two seconds and redraws. Everything the database
// holds (names, errors, keys) is put on the page as text, never as HTML.
"use strict";

const POLL_MS = 2000;
const COLOURS = ["#4f8cff", "#f5a524", "#36c08a", "#e5484d", "#a66bff", "#2fb8c8"];
let selected = decodeURIComponent((location.hash.match(/run=([^&]*)/) || [])[1] || "");
let control = false;
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    // Through the CSSOM: the page's policy refuses inline style attributes.
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

const num = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));

function duration(s) {
  if (s == null) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function stateChip(state) {
  return el("span", { class: `state ${state}` }, state);
}

function progress(step) {
  const total = step.rows_total_estimate;
  if (step.state === "done") return 1;
  if (!total) return null;
  return Math.min(1, step.rows_done / total);
}

function runProgress(run) {
  let done = 0, total = 0;
  for (const s of run.steps) {
    const p = progress(s);
    if (p == null) continue;
    done += p;
    total += 1;
  }
  return total ? done / total : run.state === "done" ? 1 : 0;
}

function drawRuns(runs) {
  const list = $("runs");
  list.replaceChildren(...runs.map((run) => {
    const pct = Math.round(runProgress(run) * 100);
    const item = el("li", { class: run.plan === selected ? "active" : "", "data-run": run.plan },
      el("div", { class: "run-line" }, el("span", { class: "name" }, run.plan), stateChip(run.state)),
      el("div", { class: "bar" }, el("div", { class: "fill", style: `width:${pct}%` })),
      el("div", { class: "quiet small" }, `${pct}% · ${duration(run.elapsed_seconds)}`));
    item.addEventListener("click", () => select(run.plan));
    return item;
  }));
  $("no-runs").hidden = runs.length > 0;
}

function drawSteps(run) {
  const rows = run.steps.map((s) => {
    const p = progress(s);
    const pct = p == null ? null : Math.round(p * 1000) / 10;
    const bar = el("div", { class: "bar" }, el("div", { class: `fill ${s.state}`, style: `width:${pct ?? 0}%` }));
    const tr = el("tr", { "data-step": s.name },
      el("td", { class: "name" }, s.name),
      el("td", {}, stateChip(s.state)),
      el("td", { class: "wide" }, bar, el("span", { class: "pct" }, pct == null ? "–" : `${pct}%`)),
      el("td", { class: "num" }, `${num(s.rows_done)} / ${num(s.rows_total_estimate)}`),
      el("td", { class: "num" }, num(s.rows_per_second)),
      el("td", { class: "num" }, duration(s.eta_seconds)),
      el("td", { class: "num" }, num(s.batch_size)),
      el("td", { class: "num" }, `${num(s.batches_done)}${s.batches_failed ? ` (${s.batches_failed} failed)` : ""}`),
      el("td", { class: s.throttled ? "throttled" : "quiet" }, s.throttled || "–"));
    const out = [tr];
    if (s.error) out.push(el("tr", { class: "error-row" }, el("td", { colspan: "9", class: "error" }, s.error)));
    return out;
  }).flat();
  $("steps").tBodies[0].replaceChildren(...rows);
}

function drawWorkers(run) {
  $("workers-count").textContent = `(${run.workers.length} live)`;
  $("workers").tBodies[0].replaceChildren(...run.workers.map((w) => el("tr", {},
    el("td", { class: "name" }, w.worker), el("td", {}, w.host), el("td", { class: "num" }, String(w.pid)),
    el("td", {}, w.version), el("td", { class: "num" }, String(w.batches_in_flight)),
    el("td", {}, stateChip(w.state)), el("td", { class: "num" }, `${w.last_seen_seconds.toFixed(1)} s ago`))));
}

function drawErrors(errors) {
  $("errors-count").textContent = errors.length ? `(${errors.length})` : "(none)";
  $("errors").tBodies[0].replaceChildren(...errors.map((e) => el("tr", {},
    el("td", { class: "name" }, e.step), el("td", { class: "num" }, String(e.batch)),
    el("td", {}, `${e.start_key ?? "start"} … ${e.end_key ?? "end"}`), el("td", {}, stateChip(e.state)),
    el("td", { class: "num" }, String(e.attempts)), el("td", {}, e.error_code || "–"),
    el("td", { class: "wide error" }, e.error))));
}

function drawLetters(letters) {
  $("letters-count").textContent = letters.length ? `(${letters.length}${letters.length >= 50 ? "+" : ""})` : "(none)";
  $("letters").tBodies[0].replaceChildren(...letters.map((l) => el("tr", {},
    el("td", { class: "name" }, l.step), el("td", { class: "num" }, String(l.batch)),
    el("td", {}, l.key), el("td", { class: "wide error" }, l.error))));
}

// Rows per second per step, one polyline each, on a shared time axis. While the run goes, the
// latest bucket is still filling: left out, or every chart would end in a fall.
function drawChart(t, running) {
  if (running && t.points.length) {
    const last = Math.max(...t.points.map((p) => p.at_ms));
    t = { ...t, points: t.points.filter((p) => p.at_ms !== last) };
  }
  const svg = $("chart");
  const NS = "http://www.w3.org/2000/svg";
  const W = 800, H = 180, PAD = 4;
  const steps = [...new Set(t.points.map((p) => p.step))];
  const times = t.points.map((p) => p.at_ms);
  const min = Math.min(...times), max = Math.max(...times);
  const rate = (p) => p.rows / t.bucket_seconds;
  const top = Math.max(1, ...t.points.map(rate));
  const x = (ms) => (max === min ? W / 2 : PAD + ((ms - min) / (max - min)) * (W - 2 * PAD));
  const y = (r) => H - PAD - (r / top) * (H - 2 * PAD);
  const shapes = [];
  for (const f of [0.25, 0.5, 0.75]) {
    const line = document.createElementNS(NS, "line");
    Object.entries({ x1: 0, x2: W, y1: y(top * f), y2: y(top * f), class: "grid" }).forEach(([k, v]) => line.setAttribute(k, v));
    shapes.push(line);
  }
  steps.forEach((step, i) => {
    const byTime = new Map(t.points.filter((p) => p.step === step).map((p) => [p.at_ms, rate(p)]));
    // Buckets with no batch of the step count as zero between its first and last.
    const own = [...byTime.keys()].sort((a, b) => a - b);
    const pts = [];
    for (let ms = own[0]; ms <= own[own.length - 1]; ms += t.bucket_seconds * 1000) pts.push(`${x(ms)},${y(byTime.get(ms) || 0)}`);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("stroke", COLOURS[i % COLOURS.length]);
    line.setAttribute("class", "series");
    shapes.push(line);
  });
  svg.replaceChildren(...shapes);
  $("bucket").textContent = t.points.length ? `(peak ${num(top)}/s, ${t.bucket_seconds} s buckets)` : "(no batch done yet)";
  $("legend").replaceChildren(...steps.map((s, i) => el("span", { class: "key" },
    el("i", { style: `background:${COLOURS[i % COLOURS.length]}` }), s)));
}

function drawRun(run) {
  $("empty").hidden = true;
  $("run").hidden = false;
  $("run-name").textContent = run.plan;
  $("run-state").replaceWith(Object.assign(stateChip(run.state), { id: "run-state" }));
  const settings = Object.entries(run.settings || {}).filter(([, v]) => v != null).map(([k, v]) => `${k} ${v}`);
  $("run-meta").textContent = `${duration(run.elapsed_seconds)} elapsed${settings.length ? " · set: " + settings.join(", ") : ""}`;
  $("run-error").hidden = !run.error;
  $("run-error").textContent = run.error || "";
  const live = ["pending", "running", "paused"].includes(run.state);
  $("btn-pause").disabled = !control || !["pending", "running"].includes(run.state);
  $("btn-resume").disabled = !control || run.state !== "paused";
  $("btn-cancel").disabled = !control || !live && run.state !== "failed";
  $("btn-retry").disabled = !control || run.state === "done" || run.state === "cancelled";
  drawSteps(run);
  drawWorkers(run);
}

async function refresh() {
  try {
    const runs = await getJson("/api/runs");
    if (!selected && runs.length) selected = runs[runs.length - 1].plan;
    drawRuns(runs);
    const run = runs.find((r) => r.plan === selected);
    if (run) {
      const p = encodeURIComponent(run.plan);
      const [t, errors, letters] = await Promise.all([
        getJson(`/api/runs/${p}/throughput`), getJson(`/api/runs/${p}/errors`), getJson(`/api/runs/${p}/dead-letters`)]);
      drawRun(run);
      drawChart(t, run.state === "running");
      drawErrors(errors);
      drawLetters(letters);
    } else {
      $("run").hidden = true;
      $("empty").hidden = false;
    }
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("updated").classList.remove("error");
  } catch (e) {
    $("updated").textContent = `cannot update: ${e.message}`;
    $("updated").classList.add("error");
  }
}

function select(plan) {
  selected = plan;
  location.hash = `run=${encodeURIComponent(plan)}`;
  $("message").textContent = "";
  refresh();
}

async function act(action) {
  const token = $("token").value.trim();
  sessionStorage.setItem("godwit-token", token);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(`/api/runs/${encodeURIComponent(selected)}/${action}`, { method: "POST", headers });
  const body = await r.json().catch(() => ({}));
  const msg = $("message");
  msg.textContent = body.message || body.error || `${r.status} ${r.statusText}`;
  msg.className = r.ok ? "ok" : "error";
  refresh();
}

async function start() {
  try {
    const info = await getJson("/api/info");
    control = info.control;
    $("database").textContent = info.database;
    $("mode").textContent = control ? "control with token" : "read-only";
    $("mode").className = `badge ${control ? "live" : ""}`;
    $("token-box").hidden = !control;
    $("token").value = sessionStorage.getItem("godwit-token") || "";
  } catch (e) {
    $("mode").textContent = "offline";
  }
  for (const b of document.querySelectorAll(".controls button")) b.addEventListener("click", () => act(b.dataset.action));
  window.addEventListener("hashchange", () => {
    const h = decodeURIComponent((location.hash.match(/run=([^&]*)/) || [])[1] || "");
    if (h && h !== selected) select(h);
  });
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

start();
