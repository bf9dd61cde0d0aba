// pilotlight's console: the mesh as a graph with live figures, the
// services' scaling, and a tail of a broker's events with where each went.
// No libraries and no build step: it is served as written, from the binary.
import { layout } from './layout.js';

const SVG = 'http://www.w3.org/2000/svg';
const TABS = ['mesh', 'services', 'tail'];
const REFRESH_MS = 5000;
const TAIL_ROWS = 200;
const CHART_WINDOW_MS = 10 * 60 * 1000;
const TOKEN_KEY = 'pilotlight.adminToken';

// ---- small helpers ---------------------------------------------------------

// Elements are built with createElement and text nodes only: nothing the
// server sends is ever parsed as HTML.
function build(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) if (kid != null && kid !== false) el.append(kid);
  return el;
}
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG, tag), attrs, kids);
const $ = (sel) => document.querySelector(sel);

// Writing the same text again still costs a style pass; live frames only
// touch what changed.
function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: 'application/json' } });
  if (!r.ok) throw new Error(`${r.status} ${(await r.text()).trim() || r.statusText}`);
  return r.json();
}

const nf = new Intl.NumberFormat('en');
const count = (n) => (n == null ? '–' : nf.format(n));
// Rates: whole numbers from 10 up, one decimal below (0.3/s is worth seeing).
function rate(x) {
  if (x == null) return '–';
  return x >= 10 || Number.isInteger(x) ? nf.format(Math.round(x)) : x.toFixed(1);
}
const plural = (n, one, many) => (n === 1 ? one : many);
const keyOf = (n) => `${n.namespace}/${n.name}`;
const CHANNELS = new Set(['InMemoryChannel', 'KafkaChannel', 'Channel']);
// A channel's figures are those of its store, which the server keys like a broker's.
const figureKey = (n) => (CHANNELS.has(n.kind) ? `${keyOf(n)}-kn-channel` : keyOf(n));

// Text in an SVG does not ellipsise itself: measure with a canvas in the
// same font as the CSS and cut.
const measure = document.createElement('canvas').getContext('2d');
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
function fit(text, font, width) {
  const k = fits(text, font, width, '…');
  return k === text.length ? text : text.slice(0, k) + '…';
}
// How many of text's first characters fit in width, with `after` appended when cut.
function fits(text, font, width, after = '') {
  measure.font = `${font} ${FONT}`;
  if (measure.measureText(text).width <= width) return text.length;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (measure.measureText(text.slice(0, mid) + after).width <= width) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// ---- tabs -------------------------------------------------------------------

// The tab is in the URL's hash, so #services or #tail can be linked to;
// #tail=PATH also picks what to tail (a link to one broker's events).
const hashParts = () => {
  const hash = location.hash.slice(1), at = hash.indexOf('=');
  return at < 0 ? [hash, ''] : [hash.slice(0, at), decodeURIComponent(hash.slice(at + 1))];
};
const currentTab = () => (TABS.includes(hashParts()[0]) ? hashParts()[0] : 'mesh');
const linkedSource = () => (hashParts()[0] === 'tail' ? hashParts()[1] : '');

function showTab() {
  const tab = currentTab();
  for (const name of TABS) {
    $(`#tab-${name}`).hidden = name !== tab;
    const link = $(`nav a[data-tab="${name}"]`);
    if (name === tab) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (tab === 'services') refreshServices();
  if (tab === 'tail') openTail();
}

// ---- refused manifests --------------------------------------------------------

let refusedShown = '';
function renderRefused(errors) {
  const text = errors.map((e) => e.text).join('\n');
  if (text === refusedShown) return;
  refusedShown = text;
  $('#refused').replaceChildren(...errors.map((e) => h('li', { title: e.reason ?? null }, e.text)));
  $('#refused-box').hidden = errors.length === 0;
}

// ---- mesh ---------------------------------------------------------------------

const CATEGORY = {
  PingSource: 'source', ApiServerSource: 'source', KafkaSource: 'source', RabbitmqSource: 'source',
  ContainerSource: 'source', SinkBinding: 'source', Broker: 'broker', InMemoryChannel: 'channel',
  KafkaChannel: 'channel', Channel: 'channel', Trigger: 'trigger', Subscription: 'trigger',
  Sequence: 'flow', Parallel: 'flow', Service: 'service', JobSink: 'service', URI: 'uri',
};
const ROLES = ['sink', 'trigger', 'subscription', 'subscriber', 'reply', 'deadLetter'];

const mesh = {
  data: null,
  shape: '',          // node and edge ids of what is drawn: a change means a new layout
  nodes: new Map(),   // node id → {node, g, title, dot, detail, live parts}
};

async function refreshMesh() {
  try {
    const m = await getJSON('/api/v1/console/mesh');
    setText($('#mesh-status'), '');
    applyMesh(m);
  } catch (e) {
    setText($('#mesh-status'), `Could not load the mesh: ${e.message}`);
  }
}

function applyMesh(m) {
  m.nodes ??= []; m.edges ??= [];
  renderRefused(m.errors ?? []);
  const shape = [
    ...m.nodes.map((n) => `${n.id}|${n.tail ?? ''}|${n.replay ?? ''}`).sort(),
    ...m.edges.map((e) => `${e.from}>${e.to}:${e.role}`).sort(),
  ].join('\n');
  if (shape !== mesh.shape) {
    mesh.shape = shape;
    renderGraph(m);
  } else {
    for (const n of m.nodes) updateNode(mesh.nodes.get(n.id), n);
  }
  mesh.data = m;
  updateTailSources(m.nodes);
  if (live.last) applyFigures(live.last);
}

// Drawn once per change of shape; live frames then only change texts.
function renderGraph(m) {
  const view = $('#mesh-view');
  mesh.nodes.clear();
  if (!m.nodes.length) {
    view.replaceChildren(h('p', { class: 'empty' }, 'Nothing applied yet: pilotlight shows the mesh once it reads manifests.'));
    return;
  }
  const t0 = performance.now();
  const L = layout(m.nodes, m.edges);
  view.dataset.layoutMs = (performance.now() - t0).toFixed(1); // kept for a look in devtools
  const svg = s('svg', { id: 'mesh-graph', width: Math.ceil(L.width), height: Math.ceil(L.height), viewBox: `0 0 ${Math.ceil(L.width)} ${Math.ceil(L.height)}` });
  svg.append(s('defs', null, ROLES.concat('other').map((role) =>
    s('marker', { id: `arrow-${role}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,1 L9,5 L0,9 z', class: `arrow role-${role}` })))));
  const edges = s('g', { class: 'edges' });
  for (const r of L.edges) {
    const e = m.edges[r.index];
    const role = ROLES.includes(e.role) ? e.role : 'other';
    edges.append(s('path', { class: `edge role-${role}${r.back ? ' back' : ''}`, d: curve(r.points), 'marker-end': `url(#arrow-${role})`, 'data-from': e.from, 'data-to': e.to },
      s('title', null, `${e.from} → ${e.to} (${e.role})`)));
  }
  const nodes = s('g', { class: 'nodes' });
  for (const n of m.nodes) nodes.append(nodeElement(n, L.nodes.get(n.id)));
  svg.append(edges, nodes);
  view.replaceChildren(svg);
  view.dataset.renderMs = (performance.now() - t0).toFixed(1);
}

// Cubic Bézier through the route's points, leaving and entering each one
// horizontally.
function curve(points) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    const mx = (x0 + x1) / 2;
    d += y0 === y1 ? ` L${x1},${y1}` : ` C${mx},${y0} ${mx},${y1} ${x1},${y1}`;
  }
  return d;
}

function nodeElement(n, p) {
  const cat = CATEGORY[n.kind] ?? 'other';
  const g = s('g', { class: `node cat-${cat}`, 'data-id': n.id, 'data-kind': n.kind, 'data-ready': n.ready ?? '', transform: `translate(${p.x},${p.y})` });
  const el = { node: n, g, title: s('title'), dot: s('circle', { cx: p.w - 14, cy: 14, r: 5 }), detail: s('text', { class: 'detail', x: 14, y: 47 }) };
  const kindLine = n.namespace && n.kind !== 'URI' ? `${n.kind} · ${n.namespace}` : n.kind;
  const name = String(n.name ?? n.id);
  // A long URI wraps onto the detail line (which a URI does not use) before it is cut.
  let cut = n.kind === 'URI' && !n.detail ? fits(name, '600 13px', p.w - 28) : name.length;
  if (cut < name.length) {
    const at = Math.max(...['/', '.', ':', '?'].map((c) => name.lastIndexOf(c, cut - 1)));
    if (at > cut * 0.6) cut = at + 1; // break after a separator rather than mid-word
  }
  if (cut < name.length) el.wrapped = name.slice(cut);
  g.append(el.title,
    s('rect', { class: 'box', width: p.w, height: p.h, rx: 8 }),
    s('rect', { class: 'accent', x: 0, y: 10, width: 4, height: p.h - 20, rx: 2 }),
    s('text', { class: 'kind', x: 14, y: 17 }, fit(kindLine, '10.5px', p.w - 28 - (n.tail ? 56 : 14))),
    s('text', { class: 'name', x: 14, y: 33 }, cut < name.length ? name.slice(0, cut) : fit(name, '600 13px', p.w - 28)),
    el.dot, el.detail);
  // The live line's parts exist from the start; frames only set their text.
  const live = s('text', { class: 'live', x: 14, y: 61 });
  el.live = live;
  el.liveWidth = p.w - 24;
  if (cat === 'trigger') {
    el.ok = s('tspan'); el.failed = s('tspan', { class: 'failed' }); el.extra = s('tspan');
    live.append(el.ok, el.failed, el.extra);
  } else if (n.kind === 'Service') {
    el.instances = s('tspan', { class: 'instances', 'data-service': keyOf(n) });
    el.rest = s('tspan');
    live.append(el.instances, el.rest);
  } else {
    el.rest = s('tspan');
    live.append(el.rest);
  }
  g.append(live);
  if (n.tail) {
    const link = s('text', { class: 'tail-link', x: p.w - 26, y: 17, 'text-anchor': 'end', tabindex: 0, role: 'link' }, 'Tail ›');
    const go = (ev) => { ev.stopPropagation(); tailFrom(n.tail); };
    link.addEventListener('click', go);
    link.addEventListener('keydown', (ev) => ev.key === 'Enter' && go(ev));
    g.append(link);
  }
  if (n.replay) {
    g.classList.add('clickable');
    g.setAttribute('tabindex', 0);
    g.setAttribute('role', 'button');
    g.addEventListener('click', () => openReplay(mesh.nodes.get(n.id).node));
    g.addEventListener('keydown', (ev) => (ev.key === 'Enter' || ev.key === ' ') && (ev.preventDefault(), openReplay(mesh.nodes.get(n.id).node)));
  }
  mesh.nodes.set(n.id, el);
  updateNode(el, n);
  return g;
}

// What can change without moving anything: readiness, its explanation, the detail line.
function updateNode(el, n) {
  if (!el) return;
  el.node = n;
  el.g.setAttribute('data-ready', n.ready ?? '');
  el.dot.setAttribute('class', `dot ready-${n.ready ?? 'none'}`);
  setText(el.detail, fit(n.detail ?? el.wrapped ?? '', el.wrapped && !n.detail ? '600 13px' : '11px', el.liveWidth - 4));
  el.detail.classList.toggle('wrapped', !n.detail && !!el.wrapped);
  const lines = [n.kind === 'URI' ? n.name : `${n.kind} ${keyOf(n)}`];
  if (n.ready) lines.push(`Ready: ${n.ready}${n.reason ? ` (${n.reason})` : ''}`);
  if (n.message) lines.push(n.message);
  if (n.detail) lines.push(n.detail);
  if (n.source) lines.push(`from ${n.source}`);
  if (n.replay) lines.push('Click to replay its events.');
  setText(el.title, lines.join('\n'));
}

// ---- live figures ---------------------------------------------------------------

const live = { last: null, es: null, history: new Map() /* service key → [[ms, instances]] */ };

function openLive() {
  const es = new EventSource('/api/v1/console/live');
  live.es = es;
  es.addEventListener('figures', (e) => {
    let f;
    try { f = JSON.parse(e.data); } catch { return; }
    setConnected(true);
    live.last = f;
    recordInstances(f);
    applyFigures(f);
  });
  es.onopen = () => setConnected(true);
  es.onerror = () => {
    setConnected(false);
    // EventSource retries by itself after a dropped connection, but gives
    // up after an error status: then try again ourselves.
    if (es.readyState === EventSource.CLOSED) setTimeout(openLive, REFRESH_MS);
  };
}

function setConnected(up) {
  $('#live-status').hidden = up;
}

// A step chart only needs the changes: a point per change of a service's instances.
function recordInstances(f) {
  const at = Date.parse(f.time) || Date.now();
  for (const [key, sv] of Object.entries(f.services ?? {})) {
    const list = live.history.get(key) ?? [];
    if (!list.length || list[list.length - 1][1] !== sv.instances) list.push([at, sv.instances]);
    while (list.length > 2 && list[1][0] < at - CHART_WINDOW_MS) list.shift();
    live.history.set(key, list);
  }
}

function applyFigures(f) {
  const brokers = f.brokers ?? {}, triggers = f.triggers ?? {}, services = f.services ?? {};
  for (const el of mesh.nodes.values()) {
    const n = el.node, key = figureKey(n);
    if (el.ok) {
      const t = triggers[key];
      setText(el.ok, t ? `${rate(t.deliveredPerSec)}/s ✓` : '');
      setText(el.failed, t && t.failedPerSec > 0 ? ` · ${rate(t.failedPerSec)}/s ✗` : '');
      const extra = [];
      if (t?.backlog) extra.push(`backlog ${count(t.backlog)}`);
      if (t?.deadLettered) extra.push(`DL ${count(t.deadLettered)}`);
      if (t?.dropped) extra.push(`dropped ${count(t.dropped)}`);
      setText(el.extra, extra.map((x) => ` · ${x}`).join(''));
    } else if (el.instances) {
      const sv = services[key];
      setText(el.instances, sv ? String(sv.instances) : '');
      setText(el.rest, sv ? ` ${plural(sv.instances, 'instance', 'instances')}${sv.requestsPerSec ? ` · ${rate(sv.requestsPerSec)} req/s` : ''}` : '');
    } else if (CATEGORY[n.kind] === 'broker' || CATEGORY[n.kind] === 'channel') {
      const b = brokers[key];
      setText(el.rest, b ? `${rate(b.receivedPerSec)} ev/s${b.rejected ? ` · ${count(b.rejected)} rejected` : ''}` : '');
    }
    squeeze(el);
  }
  for (const [key, sv] of Object.entries(services)) {
    const card = svc.cards.get(key);
    if (!card) continue;
    setText(card.instances, String(sv.instances));
    setText(card.unit, ` ${plural(sv.instances, 'instance', 'instances')} `);
    setText(card.desired, sv.desired != null ? `desired ${sv.desired}` : '');
    setText(card.rps, rate(sv.requestsPerSec));
    setText(card.latency, sv.latencyMs == null ? '–' : `${rate(sv.latencyMs)} ms`);
  }
  if (currentTab() === 'services') drawCharts();
}

// The live line cannot be cut like a name: when a busy trigger's figures are
// wider than the box, they are squeezed to fit. Measured only when they change.
function squeeze(el) {
  const text = el.live.textContent;
  if (text === el.liveShown) return;
  el.liveShown = text;
  measure.font = `11px ${FONT}`;
  if (measure.measureText(text).width > el.liveWidth) {
    el.live.setAttribute('textLength', el.liveWidth);
    el.live.setAttribute('lengthAdjust', 'spacingAndGlyphs');
  } else {
    el.live.removeAttribute('textLength');
  }
}

// ---- services ----------------------------------------------------------------------

const svc = { shown: '', cards: new Map(), base: new Map() /* key → server's instancesHistory */ };

async function refreshServices() {
  try {
    const r = await getJSON('/api/v1/console/services');
    setText($('#services-status'), '');
    renderServices(r.services ?? []);
  } catch (e) {
    setText($('#services-status'), `Could not load the services: ${e.message}`);
  }
}

function renderServices(list) {
  for (const sv of list) svc.base.set(keyOf(sv), sv.instancesHistory ?? []);
  // The history moves every time; rebuild the cards only when anything else did.
  const shown = JSON.stringify(list.map(({ instancesHistory, ...rest }) => rest));
  if (shown !== svc.shown) {
    svc.shown = shown;
    svc.cards.clear();
    $('#services-list').replaceChildren(...(list.length ? list.map(serviceCard) : [h('p', { class: 'empty' }, 'No Knative Services.')]));
    if (live.last) applyFigures(live.last);
  }
  drawCharts();
}

function readyBadge(ready, reason) {
  const label = ready === 'True' ? 'Ready' : ready === 'False' ? 'Not ready' : 'Unknown';
  return h('span', { class: `ready ready-${ready ?? 'none'}` }, label + (ready !== 'True' && reason ? `: ${reason}` : ''));
}

function serviceCard(sv) {
  const key = keyOf(sv);
  const now = (sv.revisions ?? []).reduce((a, r) => a + (r.instances ?? 0), 0);
  const card = {
    instances: h('span', { class: 'instances', 'data-service': key }, String(now)),
    unit: h('span', null, ` ${plural(now, 'instance', 'instances')} `),
    desired: h('span', { class: 'muted' }),
    rps: h('span', null, rate(sv.requestsPerSec)),
    latency: h('span', null, sv.latencyMs == null ? '–' : `${rate(sv.latencyMs)} ms`),
    path: s('path', { class: 'step' }),
    area: s('path', { class: 'area' }),
    top: s('text', { x: 4, y: 12, class: 'axis' }),
  };
  svc.cards.set(key, card);
  // Only web addresses become links (a javascript: URL from a manifest would run here).
  const url = sv.url && /^https?:\/\//i.test(sv.url) ? h('a', { href: sv.url, target: '_blank', rel: 'noopener' }, sv.url) : sv.url ?? '';
  const revisions = (sv.revisions ?? []).map((r) => h('tr', null,
    h('td', null, r.name, r.latest ? h('span', { class: 'tag' }, 'latest') : null),
    h('td', { class: 'percent' }, bar(r.percent), `${r.percent ?? 0}%`),
    h('td', null, r.tag ? h('span', { class: 'tag' }, r.tag) : ''),
    h('td', null, `${r.instances ?? 0} / ${r.desired ?? 0}`),
    h('td', { title: r.message ?? null }, readyBadge(r.ready))));
  // The server lists them newest first.
  const colds = (sv.coldStartsMs ?? []).slice(0, 8).map((ms) => `${nf.format(Math.round(ms))} ms`);
  return h('section', { class: 'service', 'data-service': key },
    h('header', null, h('h2', null, sv.name, h('small', null, ` ${sv.namespace}`)), readyBadge(sv.ready, sv.reason)),
    h('p', { class: 'url' }, url),
    sv.ready !== 'True' && sv.message ? h('p', { class: 'message' }, sv.message) : null,
    h('div', { class: 'service-body' },
      h('div', { class: 'figures' },
        h('p', null, card.instances, card.unit, card.desired),
        h('p', null, card.rps, ' req/s · latency ', card.latency),
        h('p', { class: 'muted' }, colds.length ? `Last cold starts: ${colds.join(', ')}` : 'No cold start yet.')),
      s('svg', { class: 'chart', width: 360, height: 84, viewBox: '0 0 360 84', 'aria-label': 'instances over the last 10 minutes' },
        s('line', { x1: 0, x2: 360, y1: 70, y2: 70, class: 'baseline' }),
        card.area, card.path, card.top,
        s('text', { x: 4, y: 82, class: 'axis' }, '−10 min'),
        s('text', { x: 356, y: 82, class: 'axis', 'text-anchor': 'end' }, 'now'))),
    revisions.length ? h('table', { class: 'traffic' },
      h('thead', null, h('tr', null, ['Revision', 'Traffic', 'Tag', 'Instances / desired', 'Ready'].map((t) => h('th', null, t)))),
      h('tbody', null, revisions)) : null,
    sv.lastFailure ? h('p', { class: 'failure' }, `Last failure: ${describe(sv.lastFailure)}`) : null);
}

// Set through the CSSOM, which a Content-Security-Policy without inline styles allows.
function bar(percent) {
  const el = h('span', { class: 'bar' });
  el.style.width = `${Math.max(0, Math.min(100, Number(percent) || 0))}%`;
  return el;
}

// lastFailure is taken as text; an object is shown by its usual fields.
function describe(x) {
  if (typeof x !== 'object') return String(x);
  return [x.at ?? x.time, x.message ?? x.reason ?? x.text].filter(Boolean).join(' ') || JSON.stringify(x);
}

// Instances over the last ten minutes: the server's history, then the live frames since.
function drawCharts() {
  const now = (live.last && Date.parse(live.last.time)) || Date.now();
  const from = now - CHART_WINDOW_MS;
  for (const [key, card] of svc.cards) {
    const base = svc.base.get(key) ?? [];
    const lastBase = base.length ? base[base.length - 1][0] : -Infinity;
    const points = base.concat((live.history.get(key) ?? []).filter((p) => p[0] > lastBase));
    let start = 0; // the value when the window opens
    const inside = [];
    for (const [t, v] of points) (t <= from ? (start = v) : inside.push([t, v]));
    const max = Math.max(1, start, ...inside.map((p) => p[1]));
    const x = (t) => (((t - from) / CHART_WINDOW_MS) * 360).toFixed(1);
    const y = (v) => (70 - (v / max) * 54).toFixed(1);
    let d = `M0,${y(start)}`;
    for (const [t, v] of inside) d += ` H${x(Math.min(t, now))} V${y(v)}`;
    d += ' H360';
    card.path.setAttribute('d', d);
    card.area.setAttribute('d', `${d} V70 H0 z`);
    setText(card.top, `${max} ${plural(max, 'instance', 'instances')}`);
  }
}

// ---- tail ------------------------------------------------------------------------------

const tail = {
  es: null, url: '', path: '', filter: '', checkSeq: 0, timer: 0,
  paused: false, held: [], heldLost: 0, pending: [], flushing: false,
  entries: new WeakMap(), // row → {ev, raw, path, key}
  seen: new Set(),        // source + id of the rows shown, so a reconnect's replay is not shown twice
  selected: null,
};

let sourcesShown = '';
function updateTailSources(nodes) {
  const sources = nodes.filter((n) => n.tail).map((n) => ({ value: n.tail, label: `${n.kind} ${keyOf(n)}` }))
    .sort((a, b) => a.label.localeCompare(b.label));
  const shown = JSON.stringify(sources);
  if (shown === sourcesShown) return;
  sourcesShown = shown;
  const select = $('#tail-source'), was = select.value;
  select.replaceChildren(...sources.map((o) => h('option', { value: o.value }, o.label)));
  // Keep the choice; else the one the URL names, else a ready broker named
  // default, else any ready one.
  const ready = new Set(nodes.filter((n) => n.tail && n.ready === 'True').map((n) => n.tail));
  const linked = sources.find((o) => o.value === linkedSource())?.value;
  const first = linked
    ?? nodes.find((n) => n.tail && n.kind === 'Broker' && n.name === 'default' && ready.has(n.tail))?.tail
    ?? sources.find((o) => ready.has(o.value))?.value;
  if (sources.some((o) => o.value === was)) select.value = was;
  else if (first) select.value = first;
  if (currentTab() === 'tail') openTail();
}

// The graph's "Tail" link.
function tailFrom(path) {
  $('#tail-source').value = path;
  if (currentTab() === 'tail') openTail();
  else location.hash = '#tail'; // showTab opens it
}

function tailURL() {
  const path = $('#tail-source').value, since = $('#tail-since').value;
  if (!path) return '';
  return `${path}?rate=50${tail.filter ? `&filter=${encodeURIComponent(tail.filter)}` : ''}${since ? `&since=${encodeURIComponent(since)}` : ''}`;
}

function tailStatus(text, error = false) {
  setText($('#tail-status'), text);
  $('#tail-status').classList.toggle('muted', !error);
}

// (Re)opens the tail when what it asks for changed; a new tail starts a new list.
function openTail() {
  const url = tailURL();
  if (!url) { tailStatus(mesh.data ? 'Nothing to tail: no broker or channel is applied.' : 'Loading…'); return; }
  if (url === tail.url && tail.es && tail.es.readyState !== EventSource.CLOSED) return;
  closeTail();
  clearRows();
  tail.url = url;
  tail.path = $('#tail-source').value;
  const label = $('#tail-source').selectedOptions[0]?.textContent ?? tail.path;
  tailStatus(`Connecting to ${label}…`);
  const es = new EventSource(url);
  tail.es = es;
  es.onopen = () => tailStatus(`Tailing ${label}${tail.filter ? ' (filtered)' : ''}.`);
  es.onmessage = (e) => receive(e.data);
  es.addEventListener('skipped', (e) => {
    try { queue({ skipped: JSON.parse(e.data).skipped }); } catch { /* a malformed count is not worth a row */ }
  });
  es.addEventListener('end', (e) => {
    let reason = 'the stream ended';
    try { reason = JSON.parse(e.data).reason ?? reason; } catch { /* keep the default */ }
    closeTail();
    queue({ end: reason });
    tailStatus(`The tail ended: ${reason}`);
  });
  es.onerror = async () => {
    if (es !== tail.es) return;
    if (es.readyState !== EventSource.CLOSED) { tailStatus('Disconnected; reconnecting…'); return; }
    // EventSource does not say why a request was refused: ask again to read the text.
    closeTail();
    tailStatus(`The tail was refused: ${await refusal(url)}`, true);
  };
}

function closeTail() {
  tail.es?.close();
  tail.es = null;
  tail.url = '';
}

async function refusal(url) {
  const abort = new AbortController();
  try {
    const r = await fetch(url, { signal: abort.signal });
    return r.ok ? 'the stream closed' : `${r.status} ${(await r.text()).trim()}`;
  } catch (e) {
    return e.message;
  } finally {
    abort.abort();
  }
}

function receive(raw) {
  let ev;
  try { ev = JSON.parse(raw); } catch { return; }
  if (!ev || typeof ev !== 'object') return;
  queue({ ev, raw, path: tail.path, key: `${ev.source}\n${ev.id}` });
}

// Events come in faster than it is worth drawing: queue them and draw once
// per animation frame. While paused they are held, at most a table's worth.
function queue(item) {
  if (tail.paused) {
    tail.held.push(item);
    if (tail.held.length > TAIL_ROWS) { tail.held.shift(); tail.heldLost++; }
    setText($('#tail-pause'), `Resume (${tail.held.length + tail.heldLost} new)`);
    return;
  }
  tail.pending.push(item);
  // A background tab draws no frames: keep the newest rows' worth, count the rest.
  if (tail.pending.length > TAIL_ROWS + 1) {
    const lost = tail.pending.splice(0, tail.pending.length - TAIL_ROWS);
    tail.pending.unshift({ skipped: lost.reduce((n, i) => n + (i.skipped ?? (i.ev ? 1 : 0)), 0) });
  }
  if (!tail.flushing) { tail.flushing = true; requestAnimationFrame(flush); }
}

function flush() {
  tail.flushing = false;
  const body = $('#tail tbody'), rows = [];
  for (const item of tail.pending) {
    if (item.skipped != null) {
      // Consecutive skips add up in one quiet row rather than many.
      const top = rows.length ? rows[rows.length - 1] : body.firstElementChild;
      if (top?.classList.contains('tail-skipped')) bumpSkipped(top, item.skipped);
      else rows.push(skippedRow(item.skipped));
    } else if (item.end != null) {
      rows.push(h('tr', { class: 'tail-end' }, h('td', { colspan: 6 }, `The tail ended: ${item.end}`)));
    } else if (!tail.seen.has(item.key)) {
      tail.seen.add(item.key);
      const row = eventRow(item.ev);
      tail.entries.set(row, item);
      rows.push(row);
    }
  }
  tail.pending = [];
  body.prepend(...rows.reverse()); // newest on top
  while (body.childElementCount > TAIL_ROWS) {
    const old = body.lastElementChild;
    tail.seen.delete(tail.entries.get(old)?.key);
    old.remove();
  }
}

function skippedRow(n) {
  const row = h('tr', { class: 'tail-skipped' }, h('td', { colspan: 6 }));
  row.dataset.count = '0';
  bumpSkipped(row, n);
  return row;
}
function bumpSkipped(row, n) {
  const total = Number(row.dataset.count) + Number(n || 0);
  row.dataset.count = String(total);
  row.firstElementChild.textContent = `${count(total)} ${plural(total, 'event', 'events')} not shown (sampled or too fast)`;
}

function clearRows() {
  $('#tail tbody').replaceChildren();
  tail.seen.clear();
  tail.pending = []; tail.held = []; tail.heldLost = 0;
  if (tail.paused) setText($('#tail-pause'), 'Resume');
}

function clock(time) {
  const d = new Date(time);
  if (!time || Number.isNaN(d.getTime())) return time ?? '';
  return d.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function preview(ev) {
  if (ev.data_base64 != null) return `binary, ${nf.format(base64Length(ev.data_base64))} bytes`;
  if (ev.data === undefined) return '';
  const text = typeof ev.data === 'string' ? ev.data : JSON.stringify(ev.data);
  return text.length > 200 ? text.slice(0, 200) + '…' : text;
}
const base64Length = (b) => Math.floor((b.replace(/=+$/, '').length * 3) / 4);

function eventRow(ev) {
  const cell = (text, cls) => h('td', { class: cls ?? null, title: text || null }, text);
  return h('tr', { class: 'tail-event', 'data-id': ev.id ?? '', tabindex: 0 },
    h('td', { class: 'time', title: ev.time ?? null }, clock(ev.time)),
    cell(ev.type ?? ''), cell(ev.source ?? ''), cell(ev.id ?? '', 'mono'), cell(ev.subject ?? ''), cell(preview(ev), 'data'));
}

// The detail panel: every attribute, the data, and where the event went.
const ORDER = ['specversion', 'id', 'source', 'type', 'subject', 'time', 'datacontenttype', 'dataschema'];
function showDetail(row) {
  const item = tail.entries.get(row);
  if (!item) return;
  tail.selected?.classList.remove('selected');
  tail.selected = row;
  row.classList.add('selected');
  const { ev } = item;
  const keys = Object.keys(ev).filter((k) => k !== 'data' && k !== 'data_base64')
    .sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
  const deliveries = h('ul', { class: 'deliveries' });
  const panel = $('#event-detail');
  panel.replaceChildren(
    h('header', null, h('h3', null, 'Event'), h('button', { type: 'button', class: 'quiet', onclick: () => { panel.hidden = true; row.classList.remove('selected'); } }, 'Close')),
    h('table', { class: 'attributes' }, keys.map((k) => h('tr', null, h('th', null, k), h('td', null, typeof ev[k] === 'string' ? ev[k] : JSON.stringify(ev[k]))))),
    h('h4', null, 'Data'),
    dataView(ev),
    h('h4', null, 'Deliveries ', h('button', { type: 'button', class: 'quiet', onclick: () => loadDeliveries(item, deliveries) }, 'Refresh')),
    deliveries);
  panel.hidden = false;
  loadDeliveries(item, deliveries);
}

function dataView(ev) {
  if (ev.data_base64 != null) {
    return h('div', null, h('p', { class: 'muted' }, `Binary data, base64 (${nf.format(base64Length(ev.data_base64))} bytes):`), h('pre', null, ev.data_base64));
  }
  if (ev.data === undefined) return h('p', { class: 'muted' }, 'No data.');
  let data = ev.data;
  // JSON data that came as a string (e.g. a text/json body) is shown parsed too.
  if (typeof data === 'string' && /json/i.test(ev.datacontenttype ?? '')) {
    try { data = JSON.parse(data); } catch { /* shown as text */ }
  }
  return h('pre', null, typeof data === 'string' ? data : JSON.stringify(data, null, 2));
}

const OUTCOMES = { delivered: 'delivered', replied: 'delivered, replied', deadLettered: 'dead-lettered', dropped: 'dropped' };
async function loadDeliveries(item, list) {
  list.replaceChildren(h('li', { class: 'muted' }, 'Looking…'));
  try {
    const r = await fetch(item.path.replace(/\/events$/, '/deliveries'), {
      method: 'POST', headers: { 'Content-Type': 'application/cloudevents+json' }, body: item.raw,
    });
    if (!r.ok) throw new Error(`${r.status} ${(await r.text()).trim()}`);
    const { triggers = [] } = await r.json();
    if (!triggers.length) { list.replaceChildren(h('li', { class: 'muted' }, 'No trigger on this broker.')); return; }
    list.replaceChildren(...triggers.map((t) => h('li', { class: t.matched ? 'matched' : 'unmatched' },
      h('span', { class: 'who' }, t.trigger), ' ',
      !t.matched ? 'not matched' : !t.deliveries?.length ? 'matched · pending' : 'matched',
      (t.deliveries ?? []).map((d) => h('div', { class: `delivery outcome-${d.outcome}` },
        d.at ? `${clock(d.at)} · ` : '',
        `attempts ${(d.attempts ?? []).map((a) => (a.code == null ? 'no response' : a.code)).join(' → ') || 'none'} · `,
        h('strong', null, OUTCOMES[d.outcome] ?? d.outcome))))));
  } catch (e) {
    list.replaceChildren(h('li', { class: 'error' }, `Could not ask: ${e.message}`));
  }
}

// The filter is checked as it is typed; the tail is reopened only with a
// valid (or empty) expression, so a half-typed one never breaks it.
function filterTyped() {
  clearTimeout(tail.timer);
  tail.timer = setTimeout(checkFilter, 250);
}

async function checkFilter() {
  const expr = $('#tail-filter').value.trim();
  const seq = ++tail.checkSeq; // a slow answer to an older expression is ignored
  const show = (msg) => {
    setText($('#tail-filter-error'), msg);
    $('#tail-filter').setAttribute('aria-invalid', msg ? 'true' : 'false');
  };
  if (!expr) { show(''); tail.filter = ''; openTail(); return; }
  try {
    const r = await getJSON(`/api/v1/cesql/check?expression=${encodeURIComponent(expr)}`);
    if (seq !== tail.checkSeq) return;
    if (!r.ok) { show(`Line ${r.line ?? '?'}, column ${r.column ?? '?'}: ${r.error}`); return; }
    show('');
    tail.filter = expr;
    openTail();
  } catch (e) {
    if (seq === tail.checkSeq) show(`Could not check the expression: ${e.message}`);
  }
}

function togglePause() {
  tail.paused = !tail.paused;
  setText($('#tail-pause'), tail.paused ? 'Resume' : 'Pause');
  if (!tail.paused) {
    const held = tail.held, lost = tail.heldLost;
    tail.held = []; tail.heldLost = 0;
    if (lost) queue({ skipped: lost });
    held.forEach(queue);
  }
}

// ---- replay ------------------------------------------------------------------------------

const replay = { node: null };

function openReplay(n) {
  replay.node = n;
  setText($('#replay-title'), `Replay ${n.kind} ${keyOf(n)}`);
  $('#replay-since').value = '10m';
  $('#replay-offset').value = '';
  $('#admin-token').value = '';
  $('#token-row').hidden = true;
  resetReplay();
  $('#replay-dialog').showModal();
}

function resetReplay() {
  setText($('#replay-count'), '');
  setText($('#replay-error'), '');
  $('#replay-confirm').hidden = true;
}

// The body as JSON text: an offset is written as typed, since a JSON number
// read into JavaScript loses digits past 2^53.
function replayBody(dryRun) {
  const offset = $('#replay-offset').value.trim();
  const dry = dryRun ? ',"dryRun":true' : '';
  if (offset) {
    if (!/^\d+$/.test(offset)) throw new Error('The offset is a whole number (0 or more).');
    return `{"fromOffset":${offset}${dry}}`;
  }
  const since = $('#replay-since').value.trim();
  if (!since) throw new Error('Say since when (10m, 1h, or a time like 2026-12-06T15:00:00Z), or from which offset.');
  return `{"since":${JSON.stringify(since)}${dry}}`;
}

async function postReplay(dryRun) {
  setText($('#replay-error'), '');
  let body;
  try { body = replayBody(dryRun); } catch (e) { setText($('#replay-error'), e.message); return null; }
  const token = $('#admin-token').value || sessionStorage.getItem(TOKEN_KEY);
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const r = await fetch(replay.node.replay, { method: 'POST', headers, body });
    if (!r.ok) {
      setText($('#replay-error'), (await r.text()).trim() || `${r.status} ${r.statusText}`);
      if (r.status === 403) {
        // Off loopback replay needs the admin token: ask for it once, keep it for this tab only.
        sessionStorage.removeItem(TOKEN_KEY);
        $('#token-row').hidden = false;
        $('#admin-token').focus();
      }
      return null;
    }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    return await r.json();
  } catch (e) {
    setText($('#replay-error'), e.message);
    return null;
  }
}

async function countReplay() {
  resetReplay();
  const a = await postReplay(true);
  if (!a) return;
  const filter = replay.node.kind === 'Trigger' ? "; the trigger's filter still applies" : '';
  const n = `${count(a.events)} ${plural(a.events, 'event', 'events')}`;
  setText($('#replay-count'), a.upperBound
    ? `${n} will be delivered again (at most${filter})${a.note ? `. ${a.note}` : ''}`
    : `${n} will be delivered again${a.note ? `. ${a.note}` : ''}`);
  const confirm = $('#replay-confirm');
  confirm.hidden = false;
  confirm.disabled = !a.events;
  setText(confirm, a.events ? `Replay ${n}` : 'Nothing to replay');
}

async function confirmReplay() {
  $('#replay-confirm').disabled = true;
  const a = await postReplay(false);
  if (!a) { $('#replay-confirm').disabled = false; return; }
  $('#replay-confirm').hidden = true;
  setText($('#replay-count'), `Done: ${count(a.events)} ${plural(a.events, 'event is', 'events are')} being delivered again.${a.note ? ` ${a.note}` : ''}`);
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  window.addEventListener('hashchange', showTab);
  $('#tail-controls').addEventListener('submit', (e) => e.preventDefault());
  $('#tail-source').addEventListener('change', openTail);
  $('#tail-since').addEventListener('change', openTail);
  $('#tail-filter').addEventListener('input', filterTyped);
  $('#tail-pause').addEventListener('click', togglePause);
  $('#tail-clear').addEventListener('click', () => { $('#tail tbody').replaceChildren(); tail.seen.clear(); });
  const rowOf = (e) => e.target.closest('tr.tail-event');
  $('#tail tbody').addEventListener('click', (e) => rowOf(e) && showDetail(rowOf(e)));
  $('#tail tbody').addEventListener('keydown', (e) => e.key === 'Enter' && rowOf(e) && showDetail(rowOf(e)));
  $('#replay-form').addEventListener('submit', (e) => {
    // Enter in a field counts; only the Close button closes.
    if (e.submitter?.value !== 'close') { e.preventDefault(); countReplay(); }
  });
  $('#replay-confirm').addEventListener('click', confirmReplay);
  for (const id of ['#replay-since', '#replay-offset']) $(id).addEventListener('input', resetReplay);

  showTab();
  refreshMesh();
  openLive();
  setInterval(() => {
    if (document.hidden) return;
    refreshMesh();
    if (currentTab() === 'services') refreshServices();
  }, REFRESH_MS);
}

start();
