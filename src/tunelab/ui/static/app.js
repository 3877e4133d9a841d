// tunelab web UI: a small SVG line chart, table sort/filter, live run updates, the new-run form, uploads and
// streaming chat. No external libraries; every page works offline.
"use strict";

const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#bf3989", "#6e7781"];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toPrecision(4).replace(/\.?0+$/, "");
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  ticks.step = step;
  return ticks;
}

function tickLabel(t, step) {  // as many decimals as the tick spacing needs, so neighbours never read the same
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const a = Math.abs(t);
  if (a >= 1e5 || (a !== 0 && a < 1e-4)) return t.toExponential(1);
  return t.toFixed(Math.min(decimals, 8));
}

// series: [{name, points: [[x, y], ...], color, dashed}]
function lineChart(container, series, opts) {
  opts = opts || {};
  container.textContent = "";
  const W = 640, H = 310, L = 60, R = 16, T = 40, B = 40;
  const svg = el("svg:svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "chart"});
  container.appendChild(svg);
  if (opts.title) svg.appendChild(el("svg:text", {x: L, y: 14, "font-weight": "600"}, opts.title));
  const all = series.flatMap(s => s.points).filter(p => isFinite(p[0]) && isFinite(p[1]));
  if (!all.length) {
    svg.appendChild(el("svg:text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"},
                       opts.empty || "no points yet"));
    return svg;
  }
  let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
  let y0 = Math.min(...all.map(p => p[1])), y1 = Math.max(...all.map(p => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  const axis = el("svg:g", {class: "axis"});
  const yTicks = niceTicks(y0, y1, 5), xTicks = niceTicks(x0, x1, 6);
  for (const t of yTicks) {
    axis.appendChild(el("svg:line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid-line"}));
    axis.appendChild(el("svg:text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end"}, tickLabel(t, yTicks.step)));
  }
  for (const t of xTicks) {
    axis.appendChild(el("svg:text", {x: sx(t), y: H - B + 16, "text-anchor": "middle"}, tickLabel(t, xTicks.step)));
  }
  axis.appendChild(el("svg:line", {x1: L, x2: W - R, y1: H - B, y2: H - B}));
  axis.appendChild(el("svg:line", {x1: L, x2: L, y1: T, y2: H - B}));
  axis.appendChild(el("svg:text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"}, opts.xlabel || "step"));
  svg.appendChild(axis);
  let legendX = L + 4;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter(p => isFinite(p[0]) && isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    const path = el("svg:path", {d, class: "series", stroke: color, "data-name": s.name, "data-points": pts.length});
    if (s.dashed) path.setAttribute("stroke-dasharray", "5 4");
    svg.appendChild(path);
    if (pts.length <= 40) {
      for (const p of pts) svg.appendChild(el("svg:circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: color, class: "dot"}));
    }
    const label = el("svg:text", {x: legendX + 14, y: 32, fill: color}, s.name);
    svg.appendChild(el("svg:rect", {x: legendX, y: 27, width: 10, height: 3, fill: color}));
    svg.appendChild(label);
    legendX += 24 + 6.5 * s.name.length;
  });
  return svg;
}

async function api(url, body, method) {
  const res = await fetch(url, {method: method || (body === undefined ? "GET" : "POST"),
                                headers: body === undefined ? {} : {"Content-Type": "application/json", "X-Tunelab-UI": "1"},
                                body: body === undefined ? undefined : JSON.stringify(body)});
  let data;
  try { data = await res.json(); } catch (e) { data = {ok: false, error: `the server answered ${res.status}`}; }
  if (!res.ok && data.ok === undefined) data.ok = false;
  return data;
}

function showMessage(id, text, kind) {
  const box = document.getElementById(id);
  if (!box) return;
  box.className = "message " + (kind || "error");
  box.textContent = text || "";
}

// -- runs list -----------------------------------------------------------------------------------------------
function initRunsList() {
  const table = document.getElementById("runs-table");
  if (!table) return;
  const params = new URLSearchParams(location.search);
  const filter = document.getElementById("filter"), status = document.getElementById("status-filter");
  filter.value = params.get("q") || ""; status.value = params.get("status") || "";
  const rows = () => Array.from(table.tBodies[0].rows);
  function apply() {
    const q = filter.value.toLowerCase(), st = status.value;
    let shown = 0;
    for (const row of rows()) {
      const ok = (!q || row.textContent.toLowerCase().includes(q)) && (!st || row.dataset.status === st);
      row.hidden = !ok; shown += ok;
    }
    document.getElementById("shown-count").textContent = `${shown} of ${rows().length} runs`;
    const p = new URLSearchParams(location.search);
    q ? p.set("q", filter.value) : p.delete("q"); st ? p.set("status", st) : p.delete("status");
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }
  filter.addEventListener("input", apply); status.addEventListener("change", apply);
  let sortKey = params.get("sort"), sortDir = params.get("dir") === "asc" ? 1 : -1;
  function sort(key, dir) {
    const body = table.tBodies[0];
    const value = r => { const c = r.querySelector(`[data-key="${key}"]`); const v = c ? c.dataset.value : "";
                         return v === "" || v === undefined ? null : (isNaN(+v) ? v.toLowerCase() : +v); };
    rows().sort((a, b) => { const x = value(a), y = value(b);
      if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : 0) * dir; })
      .forEach(r => body.appendChild(r));
    table.querySelectorAll("th.sortable").forEach(th => th.dataset.sorted = th.dataset.key === key ? (dir > 0 ? "asc" : "desc") : "");
  }
  table.querySelectorAll("th.sortable").forEach(th => th.addEventListener("click", () => {
    sortDir = sortKey === th.dataset.key ? -sortDir : -1; sortKey = th.dataset.key; sort(sortKey, sortDir);
    const p = new URLSearchParams(location.search); p.set("sort", sortKey); p.set("dir", sortDir > 0 ? "asc" : "desc");
    history.replaceState(null, "", location.pathname + "?" + p);
  }));
  if (sortKey) sort(sortKey, sortDir);
  apply();
  const compare = document.getElementById("compare");
  const picked = () => Array.from(table.querySelectorAll("input.pick:checked")).map(c => c.value);
  table.addEventListener("change", () => { compare.disabled = picked().length < 2; });
  compare.disabled = picked().length < 2;
  compare.addEventListener("click", () => {
    location.href = "/compare?" + picked().map(n => "run=" + encodeURIComponent(n)).join("&");
  });
  // Live list: reload when a run appears, disappears or changes status.
  const signature = rows().map(r => r.dataset.name + ":" + r.dataset.status).sort().join("|");
  setInterval(async () => {
    const data = await api("/api/runs");
    if (!data.ok) return;
    const now = data.runs.map(r => r.name + ":" + r.status).sort().join("|");
    if (now !== signature) location.reload();
  }, 2500);
}

// -- run page ------------------------------------------------------------------------------------------------
function drawRunCharts(run) {
  const c = run.curves || {};
  const loss = document.getElementById("chart-loss");
  if (loss) lineChart(loss, [{name: "train loss", points: c.loss || []},
                             {name: "eval loss", points: c.eval_loss || [], color: COLORS[1]}],
                      {title: "loss", empty: run.status === "running" ? "waiting for the first logged step" : "no loss logged"});
  const other = document.getElementById("chart-eval");
  if (other) {
    const keys = Object.keys(c).filter(k => k.startsWith("eval_") && k !== "eval_loss");
    if (keys.length) {
      other.parentElement.hidden = false;
      lineChart(other, keys.slice(0, 6).map(k => ({name: k.replace(/^eval_/, ""), points: c[k]})), {title: "eval metrics"});
    }
  }
}

function initRunPage() {
  const holder = document.getElementById("run-data");
  if (!holder) return;
  let run = JSON.parse(holder.textContent);
  drawRunCharts(run);
  const name = run.name;
  async function act(action) {
    showMessage("run-message", "");
    const data = await api(`/api/runs/${encodeURIComponent(name).replace(/%2F/g, "/")}/${action}`, {});
    if (!data.ok) { showMessage("run-message", data.error); return; }
    showMessage("run-message", data.message || "done", "info");
    setTimeout(() => location.reload(), action === "export" ? 2000 : 1200);
  }
  document.querySelectorAll("[data-action]").forEach(b => b.addEventListener("click", () => act(b.dataset.action)));
  if (run.status === "running" || run.job_alive) {
    const timer = setInterval(async () => {
      const data = await api(`/api/runs/${name}`);
      if (!data.ok) return;
      run = data.run;
      drawRunCharts(run);
      document.getElementById("log-tail").textContent = (run.log_tail || []).join("\n");
      const est = document.getElementById("time-estimate");
      if (est && run.time_estimate) est.textContent = run.time_estimate;
      if (run.status !== "running") { clearInterval(timer); location.reload(); }
    }, 1500);
  }
}

function initComparePage() {
  const holder = document.getElementById("compare-data");
  if (!holder) return;
  const runs = JSON.parse(holder.textContent);
  lineChart(document.getElementById("chart-compare-loss"),
            runs.map((r, i) => ({name: r.name, points: (r.curves.loss || []), color: COLORS[i % COLORS.length]})),
            {title: "train loss"});
  lineChart(document.getElementById("chart-compare-eval"),
            runs.map((r, i) => ({name: r.name, points: (r.curves.eval_loss || []), color: COLORS[i % COLORS.length]})),
            {title: "eval loss", empty: "no eval loss logged"});
}

// -- uploads -------------------------------------------------------------------------------------------------
async function upload(input, kind, messageId) {
  const file = input.files[0];
  if (!file) return null;
  const res = await fetch(`/api/upload?kind=${kind}&name=${encodeURIComponent(file.name)}`,
                          {method: "POST", body: file, headers: {"X-Tunelab-UI": "1"}});
  let data;
  try { data = await res.json(); } catch (e) { data = {ok: false, error: `upload failed (${res.status})`}; }
  if (!data.ok) { showMessage(messageId, data.error); input.value = ""; return null; }
  showMessage(messageId, `uploaded ${data.name}`, "info");
  return data;
}

function addOption(select, value, label) {
  let opt = Array.from(select.options).find(o => o.value === value);
  if (!opt) { opt = el("option", {value}, label); select.appendChild(opt); }
  select.value = value;
}

// -- new run form --------------------------------------------------------------------------------------------
function initNewRun() {
  const form = document.getElementById("new-run");
  if (!form) return;
  const collect = () => {
    const body = {overrides: {}};
    for (const input of form.querySelectorAll("[name]")) {
      if (input.dataset.setting) body.overrides[input.name] = input.value;
      else body[input.name] = input.value;
    }
    return body;
  };
  function showErrors(errors) {
    form.querySelectorAll(".field-error").forEach(e => e.textContent = "");
    form.querySelectorAll(".invalid").forEach(e => e.classList.remove("invalid"));
    const general = [];
    for (const [key, text] of Object.entries(errors || {})) {
      const box = form.querySelector(`.field-error[data-for="${key}"]`);
      const input = form.querySelector(`[name="${key}"]`);
      if (box) { box.textContent = text; if (input) input.classList.add("invalid"); }
      else if (key && form.querySelector('.field-error[data-for="extra"]') && (form.querySelector('[name="extra"]').value.includes(key))) {
        const extra = form.querySelector('.field-error[data-for="extra"]');
        extra.textContent = (extra.textContent ? extra.textContent + "\n" : "") + text;
        form.querySelector('[name="extra"]').classList.add("invalid");
      } else general.push(text);
    }
    showMessage("form-message", general.join("\n"));
  }
  function showEstimate(est) {
    const box = document.getElementById("estimate");
    if (!est) { box.textContent = ""; return; }
    let text = `${est.train_rows} train / ${est.eval_rows} eval rows, ${est.steps} steps`;
    text += est.seconds != null ? ` — about ${est.seconds < 90 ? est.seconds.toFixed(0) + " s" : (est.seconds / 60).toFixed(1) + " min"} (${est.basis})`
                                : " — the run measures its time estimate on its first batch and shows it on its page";
    box.textContent = text;
  }
  let pending = null;
  function showDefaults(defaults) {
    for (const [key, value] of Object.entries(defaults || {})) {
      const input = form.querySelector(`[name="${key}"]`);
      if (!input) continue;
      const shown = value === null ? "unset" : String(value);
      if (input.tagName === "SELECT") { input.options[0].textContent = `from the config (${shown})`; }
      else input.placeholder = shown;
    }
  }
  async function check() {
    const data = await api("/api/validate", collect());
    if (data.defaults) showDefaults(data.defaults);
    showErrors(data.errors || (data.ok ? {} : {"": data.error}));
    showEstimate(data.estimate);
    return data;
  }
  form.addEventListener("change", () => { clearTimeout(pending); pending = setTimeout(check, 250); });
  document.getElementById("check").addEventListener("click", e => { e.preventDefault(); check(); });
  form.addEventListener("submit", async e => {
    e.preventDefault();
    const button = document.getElementById("start");
    button.disabled = true;
    showMessage("form-message", "");
    const data = await api("/api/train", collect());
    button.disabled = false;
    if (!data.ok) { showErrors(data.errors || {"": data.error}); return; }
    location.href = data.url;
  });
  check();
  document.getElementById("config-upload").addEventListener("change", async e => {
    const data = await upload(e.target, "config", "form-message");
    if (data) { addOption(form.querySelector('[name="config"]'), data.value, data.name); check(); }
  });
  document.getElementById("data-upload").addEventListener("change", async e => {
    const data = await upload(e.target, "data", "form-message");
    if (data) { addOption(form.querySelector('[name="data"]'), data.value, data.name); check(); }
  });
}

// -- data page -----------------------------------------------------------------------------------------------
function initDataPage() {
  const form = document.getElementById("data-form");
  if (!form) return;
  document.getElementById("data-upload").addEventListener("change", async e => {
    const data = await upload(e.target, "data", "data-message");
    if (data) addOption(form.querySelector('[name="data"]'), data.value, data.name);
  });
  document.getElementById("config-upload").addEventListener("change", async e => {
    const data = await upload(e.target, "config", "data-message");
    if (data) addOption(form.querySelector('[name="config"]'), data.value, data.name);
  });
  const holder = document.getElementById("lengths-data");
  if (holder) {
    const h = JSON.parse(holder.textContent);
    barChart(document.getElementById("chart-lengths"), h);
  }
}

function barChart(container, h) {
  container.textContent = "";
  const W = 640, H = 260, L = 48, R = 12, T = 20, B = 36;
  const svg = el("svg:svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "token length histogram"});
  container.appendChild(svg);
  const top = Math.max(...h.counts, 1), lo = h.edges[0], hi = h.edges[h.edges.length - 1] || lo + 1;
  const sx = x => L + (x - lo) / (hi - lo || 1) * (W - L - R), sy = y => H - B - y / top * (H - T - B);
  h.counts.forEach((c, i) => svg.appendChild(el("svg:rect", {x: sx(h.edges[i]), y: sy(c), class: "bar",
      width: Math.max(1, sx(h.edges[i + 1]) - sx(h.edges[i]) - 1), height: H - B - sy(c), fill: "#4c72b0"})));
  const yt = niceTicks(0, top, 4), xt = niceTicks(lo, hi, 6);
  for (const t of yt) svg.appendChild(el("svg:text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end"}, tickLabel(t, yt.step)));
  for (const t of xt) svg.appendChild(el("svg:text", {x: sx(t), y: H - B + 15, "text-anchor": "middle"}, tickLabel(t, xt.step)));
  svg.appendChild(el("svg:line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#8c959f"}));
  if (h.max_length >= lo && h.max_length <= hi) {
    svg.appendChild(el("svg:line", {x1: sx(h.max_length), x2: sx(h.max_length), y1: T, y2: H - B, stroke: "#c44e52",
                                    "stroke-dasharray": "5 4"}));
    svg.appendChild(el("svg:text", {x: sx(h.max_length) - 4, y: T + 10, "text-anchor": "end", fill: "#c44e52"},
                       `max_length ${h.max_length}`));
  }
  svg.appendChild(el("svg:text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, "tokens per input"));
}

// -- chat ----------------------------------------------------------------------------------------------------
function initChat() {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const log = document.getElementById("chat-log");
  let messages = [];
  const bubble = (role, text) => { const b = el("div", {class: "bubble " + role}, text); log.appendChild(b);
                                   log.scrollTop = log.scrollHeight; return b; };
  document.getElementById("chat-reset").addEventListener("click", e => { e.preventDefault(); messages = []; log.textContent = ""; });
  form.querySelector('[name="target"]').addEventListener("change", () => { messages = []; log.textContent = ""; });
  form.addEventListener("submit", async e => {
    e.preventDefault();
    const box = form.querySelector('[name="message"]'), text = box.value.trim();
    if (!text) return;
    box.value = "";
    const send = document.getElementById("chat-send");
    send.disabled = true;
    bubble("user", text);
    messages.push({role: "user", content: text});
    const reply = bubble("assistant", "");
    reply.dataset.chunks = "0"; reply.dataset.done = "false";
    const value = n => form.querySelector(`[name="${n}"]`);
    const body = {target: value("target").value, messages, system: value("system").value,
                  max_new_tokens: value("max_new_tokens").value, temperature: value("temperature").value,
                  top_p: value("top_p").value, greedy: value("greedy").checked};
    try {
      const res = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json", "X-Tunelab-UI": "1"},
                                            body: JSON.stringify(body)});
      if (!res.ok || !res.body) {
        let msg = `the server answered ${res.status}`;
        try { msg = (await res.json()).error || msg; } catch (err) { /* not JSON */ }
        reply.className = "bubble error"; reply.textContent = msg; messages.pop();
      } else {
        const reader = res.body.getReader(), decoder = new TextDecoder();
        let text = "";
        for (;;) {
          const {done, value: chunk} = await reader.read();
          if (done) break;
          const piece = decoder.decode(chunk, {stream: true});
          if (!piece) continue;
          text += piece;
          const marker = text.indexOf("\u0000error:");
          if (marker >= 0) { reply.className = "bubble error"; reply.textContent = text.slice(marker + 7); break; }
          reply.textContent = text;
          reply.dataset.chunks = String(+reply.dataset.chunks + 1);
          log.scrollTop = log.scrollHeight;
        }
        messages.push({role: "assistant", content: text});
      }
    } catch (err) {
      reply.className = "bubble error"; reply.textContent = "the connection to the server was lost";
    }
    reply.dataset.done = "true";
    send.disabled = false;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initRunsList(); initRunPage(); initComparePage(); initNewRun(); initDataPage(); initChat();
});
