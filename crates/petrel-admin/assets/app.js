// Petrel dashboard: polls the broker's admin API and renders live numbers,
// two canvas charts and the clients / subscriptions / retained tables.
// Plain ES2020, no dependencies; every value from the API reaches the page
// through textContent, never as HTML.
'use strict';

const TOKEN_KEY = 'petrel.token';
const WINDOW_MS = 120_000; // how far back the charts reach
const $ = (selector) => document.querySelector(selector);
const numberFormat = new Intl.NumberFormat();

// ---------------------------------------------------------------- helpers

/** Creates an element; `props` are assigned (dataset merged), children appended. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(node, rest);
  if (dataset) Object.assign(node.dataset, dataset);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmtInt = (n) => (Number.isFinite(n) ? numberFormat.format(n) : '–');

function fmtRate(r) {
  if (r === 0) return '0';
  return r < 10 ? r.toFixed(1) : String(Math.round(r));
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function fmtDuration(total) {
  if (!Number.isFinite(total)) return '–';
  const d = Math.floor(total / 86400), h = Math.floor(total / 3600) % 24;
  const m = Math.floor(total / 60) % 60, s = Math.floor(total) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${s}s` : `${s}s`;
}

/** A unix time as local time of day when it is today, else date and time. */
function fmtSince(unix) {
  const date = new Date(unix * 1000);
  return date.toDateString() === new Date().toDateString()
    ? date.toLocaleTimeString() : date.toLocaleString();
}

// Browsers resolve "." and ".." path segments (even percent-encoded) before
// sending, so such a client id or topic level cannot be named in a URL path.
function pathSegment(s) {
  if (s === '.' || s === '..') throw new Error(`"${s}" cannot be addressed in a URL path`);
  return encodeURIComponent(s);
}
const topicPath = (topic) => topic.split('/').map(pathSegment).join('/');

// ---------------------------------------------------------------- API access

let needToken = false;

/** Moves a `#token=...` fragment into sessionStorage and out of the address bar. */
function takeTokenFromUrl() {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, '', location.pathname + location.search);
  }
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `cannot reach the broker (${e.message})`);
  }
  if (res.status === 401) askForToken();
  if (!res.ok) {
    let code = `http_${res.status}`, message = res.statusText || 'request failed';
    try {
      const body = await res.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch { /* not JSON: keep the HTTP status */ }
    throw new ApiError(res.status, code, `${res.status} ${code}: ${message}`);
  }
  return res.status === 204 ? null : res.json();
}

function askForToken() {
  if (needToken) return;
  needToken = true;
  const form = $('#token-form');
  form.hidden = false;
  $('#token-input').focus();
}

// ---------------------------------------------------------------- status line

const errors = new Map(); // poller name -> message of its last failure
let notice = null;        // { text, level, until } after an action
let lastUpdate = null;

function setError(source, err) {
  if (err) errors.set(source, err.message || String(err));
  else errors.delete(source);
  renderStatus();
}

function notify(text, level = 'ok') {
  notice = { text, level, until: Date.now() + 8000 };
  renderStatus();
}

function renderStatus() {
  const status = $('#status');
  const live = notice && notice.until > Date.now() ? notice : null;
  const problems = [...errors].map(([source, message]) => `${source}: ${message}`);
  if (live && live.level === 'error') problems.unshift(live.text);
  if (needToken) problems.unshift('401: the API wants a token; enter it below.');
  if (problems.length) {
    status.dataset.level = 'error';
    status.textContent = problems.join(' · ');
  } else if (live) {
    status.dataset.level = live.level;
    status.textContent = live.text;
  } else {
    status.dataset.level = 'info';
    status.textContent = lastUpdate ? `Live · updated ${lastUpdate.toLocaleTimeString()}` : 'Loading…';
  }
}

// ---------------------------------------------------------------- polling

/**
 * Runs `fn` now and then every `intervalMs` after it finishes. The returned
 * function asks for a run now; a request during a run queues one more.
 */
function poller(name, intervalMs, fn) {
  let timer = null, running = false, again = false;
  async function tick() {
    clearTimeout(timer);
    if (running) { again = true; return; }
    running = true;
    try {
      if (!needToken) { await fn(); setError(name, null); }
    } catch (e) {
      setError(name, e.status === 401 ? null : e); // a 401 shows as the token prompt
    } finally {
      running = false;
      if (again) { again = false; tick(); } else timer = setTimeout(tick, intervalMs);
    }
  }
  return tick;
}

// ---------------------------------------------------------------- stats and charts

const samples = []; // { t, in, out, clients } from the second poll on
let previous = null; // { t, stats } of the last poll

// Tiles under "Broker": label, value, optional tooltip.
const sum = (s, keys) => keys.reduce((acc, k) => acc + (s[k] || 0), 0);
const DROPPED = ['dropped_qos0', 'dropped_queue_full', 'dropped_expired', 'dropped_too_large'];
const DENIED = ['denied_publish', 'denied_subscribe', 'denied_delivery'];
const breakdown = (s, keys) => keys.map((k) => `${k}: ${fmtInt(s[k])}`).join('\n');
const STAT_TILES = [
  ['Sessions', (s) => fmtInt(s.sessions)],
  ['Subscriptions', (s) => fmtInt(s.subscriptions)],
  ['Retained', (s) => fmtInt(s.retained)],
  ['Clients (peak)', (s) => fmtInt(s.clients_maximum)],
  ['Connections', (s) => fmtInt(s.connections_total)],
  ['Refused', (s) => fmtInt(s.connections_refused)],
  ['Messages in', (s) => fmtInt(s.messages_received), (s) => `PUBLISH: ${fmtInt(s.publish_received)}`],
  ['Messages out', (s) => fmtInt(s.messages_sent), (s) => `PUBLISH: ${fmtInt(s.publish_sent)}`],
  ['Bytes in', (s) => fmtBytes(s.bytes_received)],
  ['Bytes out', (s) => fmtBytes(s.bytes_sent)],
  ['Dropped', (s) => fmtInt(sum(s, DROPPED)), (s) => breakdown(s, DROPPED)],
  ['Denied', (s) => fmtInt(sum(s, DENIED)), (s) => breakdown(s, DENIED)],
  ['Auth failures', (s) => fmtInt(s.auth_failures), (s) => `successes: ${fmtInt(s.auth_successes)}`],
  ['Hibernating', (s) => fmtInt(s.hibernating), (s) => `hibernations: ${fmtInt(s.hibernations)}`],
  ['Store errors', (s) => fmtInt(s.store_errors), (s) => `store full: ${fmtInt(s.store_full)}`],
];

function renderStatTiles(stats) {
  const grid = $('#stats-grid');
  if (!grid.firstChild) {
    for (const [label] of STAT_TILES) grid.append(el('div', {}, el('dt', { textContent: label }), el('dd')));
  }
  STAT_TILES.forEach(([, value, title], i) => {
    const dd = grid.children[i].lastChild;
    dd.textContent = value(stats);
    dd.title = title ? title(stats) : '';
  });
}

async function pollStats() {
  const stats = await api('GET', '/api/v1/stats');
  const t = performance.now();
  const prev = previous && previous.stats;
  // A counter going back means the broker restarted: start the charts over.
  if (prev && (stats.publish_received < prev.publish_received
      || stats.publish_sent < prev.publish_sent || stats.uptime_seconds < prev.uptime_seconds)) {
    samples.length = 0;
    previous = null;
  }
  if (previous) {
    const seconds = (t - previous.t) / 1000;
    samples.push({
      t,
      in: (stats.publish_received - previous.stats.publish_received) / seconds,
      out: (stats.publish_sent - previous.stats.publish_sent) / seconds,
      clients: stats.clients_connected,
    });
    while (samples.length && samples[0].t < t - WINDOW_MS) samples.shift();
    const last = samples[samples.length - 1];
    $('#rate-in').textContent = fmtRate(last.in);
    $('#rate-out').textContent = fmtRate(last.out);
  }
  previous = { t, stats };
  $('#uptime').textContent = fmtDuration(stats.uptime_seconds);
  $('#clients-connected').textContent = fmtInt(stats.clients_connected);
  renderStatTiles(stats);
  drawCharts();
  lastUpdate = new Date();
}

/** Step of 1, 2 or 5 times a power of ten so that about four steps cover `max`. */
function niceStep(max, minStep) {
  const rough = Math.max(max / 4, minStep);
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
  return Math.max(step, minStep);
}

/** Draws `series` ([{ key, color }]) of `samples` as lines over the last WINDOW_MS. */
function drawChart(canvas, series, minStep) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const left = 44, right = 8, top = 8, bottom = 20;
  const plotW = w - left - right, plotH = h - top - bottom;

  let max = 0;
  for (const s of samples) for (const { key } of series) max = Math.max(max, s[key]);
  const step = niceStep(max, minStep);
  const ceiling = step * Math.max(1, Math.ceil(max / step));
  const decimals = step < 1 ? Math.ceil(-Math.log10(step)) : 0;
  const now = performance.now();
  const x = (t) => left + plotW * (1 - (now - t) / WINDOW_MS);
  const y = (v) => top + plotH * (1 - v / ceiling);

  // Grid and axis labels.
  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  ctx.strokeStyle = color('--line');
  ctx.fillStyle = color('--muted');
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let v = 0; v <= ceiling + step / 2; v += step) {
    const py = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(w - right, py); ctx.stroke();
    ctx.fillText(v.toFixed(decimals), left - 6, py);
  }
  ctx.textBaseline = 'alphabetic';
  [['-2m', 0, 'left'], ['-1m', 0.5, 'center'], ['now', 1, 'right']].forEach(([label, f, align]) => {
    ctx.textAlign = align;
    ctx.fillText(label, left + plotW * f, h - 5);
  });

  // One line per series, with a faint fill below it.
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top - 2, plotW, plotH + 4); ctx.clip();
  for (const { key, color: name } of series) {
    if (samples.length < 2) break;
    const stroke = color(name);
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s[key])) : ctx.moveTo(x(s.t), y(s[key]))));
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.75;
    ctx.lineJoin = 'round';
    ctx.stroke();
    ctx.lineTo(x(samples[samples.length - 1].t), y(0));
    ctx.lineTo(x(samples[0].t), y(0));
    ctx.closePath();
    ctx.globalAlpha = 0.1;
    ctx.fillStyle = stroke;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  ctx.restore();
}

function drawCharts() {
  const last = samples[samples.length - 1];
  const messages = $('#chart-messages'), clients = $('#chart-clients');
  drawChart(messages, [{ key: 'in', color: '--in' }, { key: 'out', color: '--out' }], 0.1);
  drawChart(clients, [{ key: 'clients', color: '--clients' }], 1);
  if (last) {
    messages.setAttribute('aria-label',
      `Messages per second, last two minutes; now ${fmtRate(last.in)} in, ${fmtRate(last.out)} out`);
    clients.setAttribute('aria-label', `Connected clients, last two minutes; now ${last.clients}`);
  }
}

// ---------------------------------------------------------------- tables

const tables = {
  clients: { page: 1, limit: 50, last: null },
  subs: { page: 1, limit: 100, last: null },
  retained: { page: 1, limit: 100, last: null },
};
const refresh = {}; // table name -> poller trigger, filled in at start

/** Replaces a table body's rows, keeping keyboard focus on the same action button. */
function fillBody(body, rows, columns, emptyText) {
  const focused = document.activeElement;
  const focusKey = body.contains(focused) && focused.dataset ? Object.entries(focused.dataset)[0] : null;
  body.replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { className: 'empty', colSpan: columns, textContent: emptyText }))]));
  if (focusKey) {
    const again = [...body.querySelectorAll('button')].find((b) => b.dataset[focusKey[0]] === focusKey[1]);
    if (again) again.focus();
  }
}

/** Renders "1–50 of 120" and the previous/next buttons of a table. */
function renderPager(name, meta) {
  const pager = document.querySelector(`.pager[data-table="${name}"]`);
  if (!pager.firstChild) {
    const button = (dir, text, label) => el('button', { type: 'button', textContent: text, ariaLabel: label, dataset: { dir } });
    pager.append(button('-1', '‹', 'Previous page'), el('span'), button('1', '›', 'Next page'));
    pager.addEventListener('click', (e) => {
      const dir = e.target.closest('button')?.dataset.dir;
      if (!dir) return;
      tables[name].page = Math.max(1, tables[name].page + Number(dir));
      refresh[name]();
    });
  }
  const { page, limit, count } = meta;
  const pages = Math.max(1, Math.ceil(count / limit));
  const first = count ? (page - 1) * limit + 1 : 0;
  pager.children[1].textContent = count ? `${fmtInt(first)}–${fmtInt(Math.min(count, page * limit))} of ${fmtInt(count)}` : '0';
  pager.children[0].disabled = page <= 1;
  pager.children[2].disabled = page >= pages;
  if (page > pages) { tables[name].page = pages; refresh[name](); } // the list shrank under us
}

/** GETs one page of a listing; returns null when nothing changed since the last call. */
async function fetchPage(name, path, filters) {
  const state = tables[name];
  const query = new URLSearchParams({ page: state.page, limit: state.limit });
  for (const [key, value] of Object.entries(filters)) if (value) query.set(key, value);
  const result = await api('GET', `${path}?${query}`);
  const text = JSON.stringify(result);
  if (text === state.last) return null;
  state.last = text;
  renderPager(name, result.meta);
  return result.data;
}

const kicking = new Set();

async function pollClients() {
  const data = await fetchPage('clients', '/api/v1/clients', { client_id: $('#clients-filter').value.trim() });
  if (!data) return;
  const rows = data.map((c) => el('tr', {},
    el('td', { className: 'wrap', title: `keep-alive ${c.keep_alive} s · clean start ${c.clean_start ? 'yes' : 'no'} · session expiry ${c.session_expiry} s` },
      el('code', { textContent: c.client_id })),
    el('td', { textContent: c.username ?? '–' }),
    el('td', { textContent: c.address ?? '–', title: `listener ${c.listener || '(in-process)'}` }),
    el('td', { textContent: c.protocol }),
    el('td', { textContent: fmtSince(c.connected_at), title: new Date(c.connected_at * 1000).toISOString() }),
    el('td', { className: 'num', textContent: fmtInt(c.queue_depth) }),
    el('td', { className: 'num', textContent: fmtInt(c.inflight) }),
    el('td', { className: 'num', textContent: fmtInt(c.subscriptions) }),
    el('td', {}, el('button', {
      type: 'button', className: 'danger', textContent: 'Kick', disabled: kicking.has(c.client_id),
      title: `Disconnect ${c.client_id}`, ariaLabel: `Kick ${c.client_id}`, dataset: { kick: c.client_id },
    }))));
  fillBody($('#clients-body'), rows, 9, 'No clients connected');
}

async function kick(clientId) {
  kicking.add(clientId);
  tables.clients.last = null; // re-render so the button shows as disabled
  refresh.clients();
  try {
    await api('DELETE', `/api/v1/clients/${pathSegment(clientId)}`);
    notify(`Disconnected ${clientId}`);
  } catch (e) {
    notify(e.status === 404 ? `${clientId} is not connected` : `Kick ${clientId}: ${e.message}`, 'error');
  } finally {
    kicking.delete(clientId);
    tables.clients.last = null;
    refresh.clients();
  }
}

async function pollSubscriptions() {
  const data = await fetchPage('subs', '/api/v1/subscriptions', {
    client_id: $('#subs-client').value.trim(), filter: $('#subs-filter').value.trim(),
  });
  if (!data) return;
  const tag = (text, title) => el('span', { className: 'tag', textContent: text, title });
  const rows = data.map((s) => el('tr', {},
    el('td', { className: 'wrap' }, el('code', { textContent: s.client_id })),
    el('td', { className: 'wrap' }, el('code', { textContent: s.filter })),
    el('td', { className: 'num', textContent: s.qos }),
    el('td', {},
      s.no_local ? tag('NL', 'No Local') : null,
      s.retain_as_published ? tag('RAP', 'Retain As Published') : null,
      s.retain_handling ? tag(`RH ${s.retain_handling}`, 'Retain Handling') : null,
      s.identifier !== null && s.identifier !== undefined ? tag(`id ${s.identifier}`, 'Subscription Identifier') : null)));
  fillBody($('#subs-body'), rows, 4, 'No subscriptions');
}

async function pollRetained() {
  const data = await fetchPage('retained', '/api/v1/retained', { filter: $('#retained-filter').value.trim() || '#' });
  if (!data) return;
  const rows = data.map((m) => {
    const base64 = m.payload_encoding === 'base64';
    const payload = m.payload ?? '';
    const preview = payload.length > 200 ? `${payload.slice(0, 200)}…` : payload;
    return el('tr', {},
      el('td', { className: 'wrap' }, el('code', { textContent: m.topic })),
      el('td', { className: 'num', textContent: m.qos }),
      el('td', { className: 'num', textContent: fmtBytes(m.size) }),
      el('td', {}, base64 ? el('span', { className: 'tag', textContent: 'base64' }) : null,
        el('code', { className: 'payload', textContent: preview || '(empty)', title: preview })),
      el('td', {}, el('button', {
        type: 'button', className: 'danger', textContent: 'Delete',
        ariaLabel: `Delete retained message on ${m.topic}`, dataset: { deleteRetained: m.topic },
      })));
  });
  fillBody($('#retained-body'), rows, 5, 'No retained messages match');
}

async function deleteRetained(topic, button) {
  button.disabled = true;
  try {
    await api('DELETE', `/api/v1/retained/${topicPath(topic)}`);
    notify(`Deleted the retained message on ${topic}`);
  } catch (e) {
    notify(`Delete ${topic}: ${e.message}`, 'error');
  } finally {
    tables.retained.last = null;
    refresh.retained();
  }
}

// ---------------------------------------------------------------- start

/** Re-queries `table` from page 1 shortly after typing in one of `inputs` stops. */
function watchFilter(table, ...inputs) {
  let timer = null;
  for (const input of inputs) {
    input.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => { tables[table].page = 1; refresh[table](); }, 300);
    });
  }
}

function start() {
  takeTokenFromUrl();
  const pollStatsNow = poller('stats', 1000, pollStats);
  refresh.clients = poller('clients', 2000, pollClients);
  refresh.subs = poller('subscriptions', 5000, pollSubscriptions);
  refresh.retained = poller('retained', 10000, pollRetained);
  const all = () => { pollStatsNow(); refresh.clients(); refresh.subs(); refresh.retained(); };

  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token-input').value.trim());
    $('#token-input').value = '';
    $('#token-form').hidden = true;
    needToken = false;
    errors.clear();
    renderStatus();
    all();
  });
  $('#clients-body').addEventListener('click', (e) => {
    const button = e.target.closest('button[data-kick]');
    if (button && !button.disabled) kick(button.dataset.kick);
  });
  $('#retained-body').addEventListener('click', (e) => {
    const button = e.target.closest('button[data-delete-retained]');
    if (button && !button.disabled) deleteRetained(button.dataset.deleteRetained, button);
  });
  $('#retained-refresh').addEventListener('click', () => { tables.retained.last = null; refresh.retained(); });
  watchFilter('clients', $('#clients-filter'));
  watchFilter('subs', $('#subs-client'), $('#subs-filter'));
  watchFilter('retained', $('#retained-filter'));
  window.addEventListener('resize', () => requestAnimationFrame(drawCharts));
  drawCharts(); // empty axes until the first numbers come
  all();
}

start();
