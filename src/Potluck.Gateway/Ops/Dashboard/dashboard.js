// The Potluck pool dashboard: polls the gateway once a second and draws everything itself (SVG, no libraries).
// /api/pool: model, coverage, nodes. /api/stats/recent: the gateway's own metrics, one sample a second.
// /api/sessions: running sessions and their routes. /api/events: recent pool events and departed nodes.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
// The charts' window: five minutes unless the page's buttons pick another (the gateway keeps ten).
let windowSeconds = 300;
const POLL_MS = 1000;

const $ = id => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = text; if (cls) e.className = cls; return e; };
const svg = (tag, attrs, text) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
};
const span = (a, b) => '[' + a + ', ' + b + ')';
const fmt = (v, digits) => v === null || v === undefined || !isFinite(v) ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: digits ?? 0 });
const clock = iso => { const d = new Date(iso); return isNaN(d) ? '' : d.toLocaleTimeString('en-GB', { hour12: false }); };
const age = seconds => seconds < 60 ? fmt(seconds, 0) + ' s' : Math.floor(seconds / 60) + ' min ' + fmt(seconds % 60, 0) + ' s';

async function getJson(path) {
  const response = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  // The login cookie expired (or the gateway restarted): reloading shows the login form again.
  if (response.status === 401) { location.reload(); throw new Error('logged out'); }
  const body = await response.json();
  if (!response.ok) throw new Error(body && body.error ? body.error.message : path + ': HTTP ' + response.status);
  return body;
}

// ---- charts ------------------------------------------------------------------------------------------------

const W = 320, H = 120, LEFT = 34, RIGHT = 6, TOP = 8, BOTTOM = 18;

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least minimum.
function niceMax(value, minimum) {
  const v = Math.max(value, minimum);
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Draws one chart: series are [{ key, cls, kind: 'line'|'bars', area }], values from the samples (null = no value).
function drawChart(figure, samples, nowMs, series, options) {
  const plot = figure.querySelector('svg');
  const x = t => LEFT + (W - LEFT - RIGHT) * (1 - (nowMs - t) / (windowSeconds * 1000));
  let max = 0;
  for (const s of series) for (const p of samples) { const v = s.value(p); if (v !== null && v > max) max = v; }
  const top = niceMax(max, options.minimum);
  const y = v => TOP + (H - TOP - BOTTOM) * (1 - v / top);
  plot.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    const gy = y(top * f);
    plot.append(svg('line', { class: 'grid', x1: LEFT, x2: W - RIGHT, y1: gy, y2: gy }));
    plot.append(svg('text', { class: 'axis', x: LEFT - 4, y: gy + 3, 'text-anchor': 'end' }, fmt(top * f, top * f < 10 && f > 0 ? 1 : 0)));
  }
  plot.append(svg('text', { class: 'axis', x: LEFT, y: H - 4 }, '−' + windowSeconds / 60 + ' min'));
  plot.append(svg('text', { class: 'axis', x: W - RIGHT, y: H - 4, 'text-anchor': 'end' }, 'now'));
  const visible = samples.filter(p => p.t >= nowMs - windowSeconds * 1000);
  for (const s of series) {
    if (s.kind === 'bars') {
      const width = Math.max(1, (W - LEFT - RIGHT) / windowSeconds);
      for (const p of visible) {
        const v = s.value(p);
        if (!v) continue;
        plot.append(svg('rect', { class: 'bar ' + (s.cls || ''), x: x(p.t) - width, y: y(v), width, height: y(0) - y(v) }));
      }
      continue;
    }
    // Lines break where a sample has no value (no first token in that second).
    let run = [];
    const runs = [];
    for (const p of visible) {
      const v = s.value(p);
      if (v === null) { if (run.length) runs.push(run); run = []; continue; }
      run.push([x(p.t), y(v)]);
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      const points = r.map(([px, py]) => px.toFixed(1) + ',' + py.toFixed(1)).join(' ');
      if (s.area && r.length > 1)
        plot.append(svg('polygon', { class: 'area', points: r[0][0].toFixed(1) + ',' + y(0) + ' ' + points + ' ' + r[r.length - 1][0].toFixed(1) + ',' + y(0) }));
      if (r.length === 1) plot.append(svg('circle', { class: 'dot', cx: r[0][0], cy: r[0][1], r: 2.4 }));
      else plot.append(svg('polyline', { class: 'series ' + (s.cls || ''), points }));
    }
  }
  // What the chart shows now, for people (the caption) and for tests (data-*).
  const latest = visible.length ? series[0].value(visible[visible.length - 1]) : null;
  figure.dataset.samples = String(visible.length);
  figure.dataset.latest = latest === null ? '' : String(latest);
  figure.dataset.max = String(max);
  figure.dataset.lastTime = visible.length ? String(visible[visible.length - 1].t) : '';
  figure.querySelector('.value').textContent = options.caption(visible);
}

const lastValue = (samples, key) => { for (let i = samples.length - 1; i >= 0; i--) if (samples[i][key] !== null) return samples[i][key]; return null; };
const sum = (samples, key) => samples.reduce((a, p) => a + (p[key] || 0), 0);

function drawCharts(stats) {
  const nowMs = Date.parse(stats.now);
  const samples = stats.samples;
  drawChart($('chart-tokens'), samples, nowMs, [{ value: p => p.tokens_per_second, area: true }],
    { minimum: 5, caption: s => s.length ? fmt(s[s.length - 1].tokens_per_second, 1) + ' tok/s' : '–' });
  drawChart($('chart-ttft'), samples, nowMs, [{ value: p => p.ttft_ms }],
    { minimum: 50, caption: s => { const v = lastValue(s, 'ttft_ms'); return v === null ? 'no requests yet' : 'last ' + fmt(v, 0) + ' ms'; } });
  drawChart($('chart-queue'), samples, nowMs, [{ value: p => p.queued }, { value: p => p.active, cls: 'second' }],
    { minimum: 2, caption: s => s.length ? fmt(s[s.length - 1].queued) + ' waiting · ' + fmt(s[s.length - 1].active) + ' running (dashed)' : '–' });
  // Admission: p95 (solid) and median (dashed) wait for a slot, and the requests turned away at capacity.
  drawChart($('chart-wait'), samples, nowMs, [{ value: p => p.wait_p95_s ?? null }, { value: p => p.wait_p50_s ?? null, cls: 'second' }],
    { minimum: 1, caption: s => { const p95 = lastValue(s, 'wait_p95_s'), p50 = lastValue(s, 'wait_p50_s');
      return (p95 === null ? 'no admissions yet' : 'p50 ' + fmt(p50, 2) + ' s · p95 ' + fmt(p95, 2) + ' s') + ' · ' + fmt(sum(s, 'rejections')) + ' turned away'; } });
  drawChart($('chart-errors'), samples, nowMs, [{ value: p => p.errors, kind: 'bars' }, { value: p => p.server_errors, kind: 'bars', cls: 'server' }],
    { minimum: 2, caption: s => fmt(sum(s, 'errors')) + ' of ' + fmt(sum(s, 'requests')) + ' requests' });
}

// ---- coverage --------------------------------------------------------------------------------------------

function replicaClass(count) { return count >= 2 ? 'r2' : count === 1 ? 'r1' : 'r0'; }

function groupBySpan(nodes) {
  const groups = new Map();
  for (const n of nodes) {
    const key = n.span.start + ':' + n.span.end;
    if (!groups.has(key)) groups.set(key, { start: n.span.start, end: n.span.end, nodes: [] });
    groups.get(key).nodes.push(n);
  }
  return [...groups.values()].sort((a, b) => a.start - b.start || a.end - b.end);
}

function drawCoverage(pool, groups) {
  const layers = pool.model.layers;
  const plot = $('coverage');
  const left = 10, right = 10, width = 800 - left - right, stripY = 18, stripH = 16, rowH = 22, rowGap = 4;
  const x = l => left + width * l / layers;
  const perLayer = new Array(layers).fill(0);
  for (const g of groups) for (const n of g.nodes) if (n.state === 'healthy') for (let l = Math.max(0, g.start); l < Math.min(layers, g.end); l++) perLayer[l]++;
  const height = stripY + stripH + 8 + groups.length * (rowH + rowGap) + 4;
  plot.setAttribute('viewBox', '0 0 800 ' + height);
  plot.replaceChildren();
  // Layer ticks: 0, every span boundary, the last.
  const ticks = new Set([0, layers]);
  for (const g of groups) { ticks.add(g.start); ticks.add(g.end); }
  for (const t of [...ticks].filter(t => t >= 0 && t <= layers))
    plot.append(svg('text', { class: 'tick', x: x(t), y: 12, 'text-anchor': t === 0 ? 'start' : t === layers ? 'end' : 'middle' }, t));
  // The strip: healthy replicas per layer.
  for (let l = 0; l < layers; l++) {
    const cell = svg('rect', { class: replicaClass(perLayer[l]), x: x(l), y: stripY, width: Math.max(0.5, x(l + 1) - x(l) - (layers <= 100 ? 1 : 0)), height: stripH });
    cell.append(svg('title', {}, 'layer ' + l + ': ' + perLayer[l] + ' healthy replica' + (perLayer[l] === 1 ? '' : 's')));
    plot.append(cell);
  }
  // One row per span, its replicas grouped.
  let y = stripY + stripH + 8;
  for (const g of groups) {
    const healthy = g.nodes.filter(n => n.state === 'healthy').length;
    const joining = g.nodes.every(n => n.state === 'joining');
    const rect = svg('rect', { class: joining ? 'joining' : replicaClass(healthy), x: x(g.start), y, width: Math.max(1, x(g.end) - x(g.start)), height: rowH, rx: 3 });
    rect.append(svg('title', {}, span(g.start, g.end) + ': ' + g.nodes.map(n => n.id + ' (' + n.state + ')').join(', ')));
    plot.append(rect);
    const label = span(g.start, g.end) + ' ×' + healthy + (healthy === g.nodes.length ? '' : '/' + g.nodes.length) + ': ' + g.nodes.map(n => n.id).join(', ');
    const inside = (x(g.end) - x(g.start)) > label.length * 6.5;
    plot.append(svg('text', { class: 'label' + (inside && !joining ? '' : ' dark'), x: inside ? x(g.start) + 6 : Math.min(x(g.end) + 6, 790), y: y + 15,
      'text-anchor': inside || x(g.end) + 6 < 600 ? 'start' : 'end' }, label));
    y += rowH + rowGap;
  }
  const min = perLayer.length ? Math.min(...perLayer) : 0;
  $('coverage-summary').textContent = layers + ' layers · ' + groups.length + ' span' + (groups.length === 1 ? '' : 's') +
    ' · fewest healthy replicas of any layer: ' + min;
  plot.dataset.replicas = perLayer.join(',');
}

// ---- nodes -----------------------------------------------------------------------------------------------

function stateOf(n) {
  if (n.state === 'unhealthy' && n.problem === 'draining') return 'draining';
  return n.state;
}

function nodeRow(n) {
  const state = stateOf(n);
  const row = el('tr');
  row.dataset.node = n.id;
  row.dataset.state = state;
  row.className = ['unhealthy', 'failed', 'model-mismatch'].includes(state) ? 'state-bad' : state === 'draining' ? 'state-warn' : state === 'left' ? 'state-gone' : '';
  row.append(el('td', n.id));
  const stateCell = el('td', null, 'state');
  stateCell.append(el('span', state, 'pill ' + state));
  const problem = n.problem && n.problem !== 'draining' ? n.problem : n.detail;
  if (problem) stateCell.append(el('span', problem + (n.since ? ' · since ' + clock(n.since) : ''), 'problem'));
  row.append(stateCell);
  const live = state !== 'failed' && state !== 'left' && state !== 'joining';
  // The node's measured decode time for its whole span (one token, one session), and the steps it runs now.
  const speed = el('td', live && n.ms_per_token > 0 ? fmt(n.ms_per_token, n.ms_per_token < 1 ? 3 : 1) + ' ms/token' + (n.load_steps_per_second > 0 ? ' · ' + fmt(n.load_steps_per_second, 1) + ' steps/s' : '') : '–');
  if (live && n.ms_per_token > 0) speed.title = 'span decode ' + fmt(n.ms_per_token, 3) + ' ms per token (about ' + fmt(1000 / n.ms_per_token, 0) + ' tokens/s alone)';
  row.append(speed);
  row.append(el('td', live ? fmt(n.open_sessions) : '–', 'num'));
  const kv = el('td');
  if (live && n.kv_budget_tokens > 0) {
    const free = n.free_kv_tokens / n.kv_budget_tokens;
    kv.className = free < 0.10 ? 'kv-critical' : free < 0.25 ? 'kv-low' : '';
    const bar = el('span', null, 'kv');
    const used = el('span');
    used.style.width = Math.round((1 - free) * 100) + '%';
    bar.append(used);
    kv.append(bar, document.createTextNode(fmt((1 - free) * 100, 0) + '% · ' + fmt(n.free_kv_tokens) + ' / ' + fmt(n.kv_budget_tokens) + ' free'));
    kv.title = 'KV cache: ' + fmt(n.free_kv_tokens) + ' of ' + fmt(n.kv_budget_tokens) + ' tokens free for new sessions (amber below 25%, red below 10%)';
  } else kv.textContent = '–';
  row.append(kv);
  row.append(el('td', live && n.hop_latency_ms !== null && n.hop_latency_ms !== undefined ? fmt(n.hop_latency_ms, 2) + ' ms' : '–', 'num'));
  row.append(el('td', n.process_id ?? '–', 'num'));
  row.append(el('td', n.endpoint));
  return row;
}

function drawNodes(groups) {
  const body = $('nodes');
  body.replaceChildren();
  if (!groups.length) { const r = el('tr'); const c = el('td', 'No nodes yet: start one with potluck node --join …', 'empty'); c.colSpan = 8; r.append(c); body.append(r); return; }
  for (const g of groups) {
    const healthy = g.nodes.filter(n => n.state === 'healthy').length;
    const header = el('tr', null, 'group');
    const cell = el('td', 'Layers ' + span(g.start, g.end) + ' · ' + healthy + ' of ' + g.nodes.length + ' replica' + (g.nodes.length === 1 ? '' : 's') + ' healthy');
    cell.colSpan = 8;
    header.append(cell);
    body.append(header);
    for (const n of g.nodes.sort((a, b) => a.id.localeCompare(b.id))) body.append(nodeRow(n));
  }
}

// ---- sessions and events ---------------------------------------------------------------------------------

function drawSessions(sessions) {
  const body = $('sessions');
  body.replaceChildren();
  if (!sessions.length) { const r = el('tr'); const c = el('td', 'No session running.', 'empty'); c.colSpan = 4; r.append(c); body.append(r); return; }
  for (const s of sessions) {
    const row = el('tr');
    row.dataset.session = s.id;
    const id = el('td', '…' + s.id.slice(-8));
    id.title = s.id;
    const tokens = s.completion_tokens ?? 0;
    const route = (s.route || []).map(h => h.node + ' ' + span(h.start, h.end)).join(' → ');
    row.append(id, el('td', age(s.age_seconds)),
      el('td', (s.prompt_tokens ?? 0) + ' + ' + tokens + (s.age_seconds > 0 ? ' (' + fmt(tokens / s.age_seconds, 1) + '/s)' : ''), 'num'),
      el('td', (route || 'opening…') + (s.reroutes ? ' · rerouted ' + s.reroutes + '×' : ''), 'route'));
    body.append(row);
  }
}

function drawEvents(events) {
  const list = $('events');
  list.replaceChildren();
  if (!events.length) { list.append(el('li', 'Nothing yet.', 'empty')); return; }
  for (const e of events.slice(0, 50)) {
    const item = el('li');
    item.dataset.kind = e.kind;
    const time = el('time', clock(e.time));
    time.dateTime = e.time;
    item.append(time, el('span', e.kind, 'pill ' + e.kind), document.createTextNode(' ' + e.node + ' ' + span(e.start, e.end) + (e.detail ? ': ' + e.detail : '')));
    list.append(item);
  }
}

// ---- the loop --------------------------------------------------------------------------------------------

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const status = $('status');
  try {
    const [pool, stats, sessions, events] = await Promise.all([getJson('/api/pool'), getJson('/api/stats/recent?seconds=' + windowSeconds),
      getJson('/api/sessions'), getJson('/api/events')]);
    $('model').textContent = '— ' + pool.model.name + ' (' + pool.model.layers + ' layers)';
    status.textContent = pool.coverage.full_chain ? 'Ready: every layer of ' + span(0, pool.model.layers) + ' is covered' : 'Not ready: ' + pool.coverage.problem;
    status.className = 'status ' + (pool.coverage.full_chain ? 'ok' : 'bad');
    // Departed stages stay listed (red when they failed) unless the same node is back.
    const present = new Set(pool.nodes.map(n => n.id + ':' + n.span.start + ':' + n.span.end));
    const departed = events.departed.filter(d => !present.has(d.id + ':' + d.span.start + ':' + d.span.end));
    const groups = groupBySpan(pool.nodes.concat(departed));
    drawCharts(stats);
    drawCoverage(pool, groupBySpan(pool.nodes.filter(n => n.state !== 'model-mismatch')));
    drawNodes(groups);
    drawSessions(sessions.sessions);
    drawEvents(events.events);
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    // A failed fetch is a TypeError (the gateway is down or unreachable); anything else is the gateway's own answer.
    if (e.message !== 'logged out') { status.textContent = (e instanceof TypeError ? 'Gateway unreachable: ' : '') + e.message; status.className = 'status bad'; }
  } finally {
    busy = false;
  }
}

for (const button of document.querySelectorAll('#window button')) {
  button.addEventListener('click', () => {
    windowSeconds = Number(button.dataset.seconds);
    for (const b of document.querySelectorAll('#window button')) b.classList.toggle('on', b === button);
    refresh();
  });
}

refresh();
setInterval(refresh, POLL_MS);
