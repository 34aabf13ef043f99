// pj status page: polls the admin JSON API once a second and keeps the page
// in step with it. No framework and no build step; the server's
// Content-Security-Policy allows only this file and style.css, so nothing
// here writes inline styles or evaluates strings.
//
// Elements are created once per proxy, backend and connection (keyed by
// name, address and id) and then only their text changes: a button under
// the pointer is never replaced between a press and its release.
'use strict';

(() => {
  const POLL_MS = 1000;     // how often the API is read
  const TIMEOUT_MS = 5000;  // a request taking longer counts as pj not answering
  const HISTORY = 60;       // samples kept for the throughput sparklines
  const CONN_LIMIT = 500;   // rows asked for; the count says how many there are
  const TOKEN_KEY = 'pj-admin-token';

  const $ = (id) => document.getElementById(id);

  // ---------- formatting ----------

  const numFmt = new Intl.NumberFormat('en');
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

  // bytes in 1024-based units, as the configuration writes sizes, with one
  // decimal below 100: 0 B, 812 B, 1.2 KiB, 34.5 MiB, 210 GiB.
  function fmtBytes(n) {
    if (!Number.isFinite(n) || n < 0) return '–';
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    if (i === 0) return Math.round(n) + ' B';
    return (n >= 100 ? n.toFixed(0) : n.toFixed(1)) + ' ' + UNITS[i];
  }

  function fmtRate(bytesPerSec) {
    return bytesPerSec === null ? '–' : fmtBytes(bytesPerSec) + '/s';
  }

  function fmtPerSec(r) {
    if (r === null) return '–';
    if (r === 0) return '0/s';
    return (r >= 100 ? numFmt.format(Math.round(r)) : r.toFixed(1)) + '/s';
  }

  function fmtAge(s) {
    s = Math.max(0, Math.floor(s));
    const pad = (v) => String(v).padStart(2, '0');
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + pad(s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + pad(Math.floor(s / 60) % 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor(s / 3600) % 24 + 'h';
  }

  function fmtClock(d) {
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  // ---------- DOM helpers ----------

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }

  // place puts child at position i of parent, moving it only if needed.
  function place(parent, child, i) {
    const at = parent.children[i];
    if (at !== child) parent.insertBefore(child, at || null);
  }

  // ---------- the API ----------

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status; // 0: no answer
    }
  }

  let token = '';
  try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch { /* storage disabled: ask each time */ }

  async function api(method, path, body) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'text/plain';
    let res;
    try {
      res = await fetch(path, { method, headers, body, signal: ctl.signal, cache: 'no-store' });
    } catch (e) {
      throw new APIError(0, ctl.signal.aborted ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s'
        : 'cannot reach pj (' + e.message + ')');
    } finally {
      clearTimeout(timer);
    }
    if (!res.ok) {
      let msg = res.status + ' ' + res.statusText;
      try {
        const j = await res.json();
        if (j && j.error) msg = res.status + ': ' + j.error;
      } catch { /* not JSON: the status line says enough */ }
      throw new APIError(res.status, msg);
    }
    if (res.status === 204) return null;
    try {
      return await res.json();
    } catch {
      throw new APIError(res.status, path + ' did not answer with JSON');
    }
  }

  // ---------- problems and notices ----------

  const problem = $('problem');
  function setProblem(title, msg) {
    if (!title) {
      if (!problem.hidden) { problem.hidden = true; problem.textContent = ''; }
      return;
    }
    problem.replaceChildren(el('strong', { text: title + ' ' }), msg);
    problem.hidden = false;
  }

  const notice = $('notice');
  let noticeTimer = 0;
  // tell shows the outcome of an action; errors stay until dismissed.
  function tell(msg, isError) {
    clearTimeout(noticeTimer);
    $('notice-text').textContent = msg;
    notice.classList.toggle('banner-error', !!isError);
    notice.setAttribute('role', isError ? 'alert' : 'status');
    notice.hidden = false;
    if (!isError) noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
  }
  $('notice-close').addEventListener('click', () => { notice.hidden = true; });

  // ---------- who may change things ----------

  let auth = { token_required: false, allowed: false };

  async function loadAuth() {
    try {
      auth = await api('GET', 'api/v1/auth');
    } catch (e) {
      if (e.status === 0) return; // the poll shows that pj does not answer
      tell('Reading /api/v1/auth failed: ' + e.message, true);
      return;
    }
    document.body.classList.toggle('can-change', !!auth.allowed);
    const form = $('auth');
    form.hidden = !auth.token_required;
    form.classList.toggle('has-token', !!auth.allowed);
    $('token-forget').hidden = !token;
    let text;
    if (auth.token_required && auth.token_configured === false) {
      // No token exists: changes are off on a listener others can reach.
      text = 'Changes (closing connections, draining backends) are off: this admin listener is reachable from other machines and pj has no admin token. Set admin.token (or PJ_ADMIN_TOKEN) to allow them.';
      $('auth-text').textContent = text;
      form.classList.add('no-token');
      return;
    }
    form.classList.remove('no-token');
    if (auth.allowed) text = 'Changes are allowed with the token given.';
    else if (token) text = 'The token given is not accepted. Changes (closing connections, draining backends) need pj\u2019s admin token (admin.token, PJ_ADMIN_TOKEN).';
    else text = 'Changes (closing connections, draining backends) need pj\u2019s admin token (admin.token, PJ_ADMIN_TOKEN).';
    $('auth-text').textContent = text;
  }

  $('auth').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('token');
    token = input.value.trim();
    input.value = '';
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* kept for this page only */ }
    loadAuth();
  });

  $('token-forget').addEventListener('click', () => {
    token = '';
    try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ }
    loadAuth();
  });

  // ---------- rates ----------

  // A proxy's samples, keyed by name: the counters at the time they were
  // read, and the rates since the sample before.
  const samples = new Map();

  // rates turns two readings of the counters into per-second rates.
  // connections_total counts finished connections, so the connections
  // accepted so far are connections_total + active_connections. That sum
  // can dip for a moment while a connection ends (one counter moves before
  // the other), so the rate counts from the highest value seen. A counter
  // that went backwards (pj restarted) gives no rate for that interval.
  function rates(p, now) {
    const cur = {
      t: now, total: p.connections_total, accepted: p.connections_total + p.active_connections,
      up: p.bytes_up, down: p.bytes_down,
    };
    let s = samples.get(p.name);
    if (!s) { s = { last: null, conn: null, up: null, down: null, history: [] }; samples.set(p.name, s); }
    const prev = s.last;
    s.last = cur;
    if (!prev) return s;
    const dt = (cur.t - prev.t) / 1000;
    if (dt <= 0) return s;
    if (cur.total < prev.total || cur.up < prev.up || cur.down < prev.down) {
      s.conn = s.up = s.down = null;
      s.history = [];
      return s;
    }
    cur.accepted = Math.max(cur.accepted, prev.accepted);
    s.conn = (cur.accepted - prev.accepted) / dt;
    s.up = (cur.up - prev.up) / dt;
    s.down = (cur.down - prev.down) / dt;
    s.history.push({ up: s.up, down: s.down });
    if (s.history.length > HISTORY) s.history.shift();
    return s;
  }

  // ---------- proxies ----------

  const proxiesEl = $('proxies');
  const proxyViews = new Map();
  const busy = new Set(); // actions in flight, by key
  let proxySeq = 0;

  function stat(label, cls) {
    const dd = el('dd', { class: cls, text: '–' });
    return [el('div', {}, el('dt', { text: label }), dd), dd];
  }

  function buildProxy(p) {
    const id = 'proxy-' + (++proxySeq);
    const v = { backends: new Map() };
    v.name = el('h3', { id, text: p.name });
    v.listen = el('span', { class: 'listen mono' });
    v.balance = el('span', { class: 'chip', title: 'balance algorithm' });
    const [sa, active] = stat('Active', 'active-count');
    const [sc, conn] = stat('New conns', 'conn-rate');
    const [su, up] = stat('Up', 'up-rate');
    const [sd, down] = stat('Down', 'down-rate');
    Object.assign(v, { active, conn, up, down });

    v.spark = svg('svg', { class: 'spark', viewBox: '0 0 ' + (HISTORY - 1) + ' 40', preserveAspectRatio: 'none', 'aria-hidden': 'true', focusable: 'false' });
    for (const y of [0.5, 20, 39.5]) v.spark.append(svg('line', { class: 'grid', x1: 0, x2: HISTORY - 1, y1: y, y2: y }));
    v.areaDown = svg('polygon', { class: 'a-down' });
    v.areaUp = svg('polygon', { class: 'a-up' });
    v.lineDown = svg('polyline', { class: 'l-down' });
    v.lineUp = svg('polyline', { class: 'l-up' });
    v.spark.append(v.areaDown, v.areaUp, v.lineDown, v.lineUp);

    v.totals = el('span', { class: 'all' });
    v.list = el('ul', { class: 'backends', 'aria-label': 'Backends of ' + p.name });
    v.root = el('article', { class: 'card', 'data-proxy': p.name, 'aria-labelledby': id },
      el('header', { class: 'card-head' }, v.name, v.listen, v.balance),
      el('dl', { class: 'stats' }, sa, sc, su, sd),
      v.spark,
      el('p', { class: 'totals' },
        el('span', { class: 'key key-up', text: 'up' }),
        el('span', { class: 'key key-down', text: 'down' }),
        el('span', { class: 'visually-hidden', text: ', last minute. ' }),
        v.totals),
      v.list);
    return v;
  }

  function sparkPoints(history, key, max) {
    const n = history.length;
    const pts = [];
    for (let i = 0; i < n; i++) {
      const x = HISTORY - n + i;
      const y = 39 - (history[i][key] / max) * 37;
      pts.push(x + ',' + y.toFixed(2));
    }
    return pts;
  }

  function drawSpark(v, history) {
    if (history.length < 2) {
      for (const e of [v.areaDown, v.areaUp, v.lineDown, v.lineUp]) e.setAttribute('points', '');
      return;
    }
    let max = 1;
    for (const h of history) max = Math.max(max, h.up, h.down);
    const x0 = HISTORY - history.length;
    for (const [key, line, area] of [['up', v.lineUp, v.areaUp], ['down', v.lineDown, v.areaDown]]) {
      const pts = sparkPoints(history, key, max);
      line.setAttribute('points', pts.join(' '));
      area.setAttribute('points', x0 + ',40 ' + pts.join(' ') + ' ' + (HISTORY - 1) + ',40');
    }
  }

  function buildBackend(proxy, b) {
    const v = {};
    v.badge = el('span', { class: 'badge' });
    v.addr = el('span', { class: 'addr mono', text: b.address });
    v.bname = el('span', { class: 'b-name' });
    v.weight = el('span');
    v.backup = el('span', { class: 'tag', text: 'backup', title: 'used only when no other backend is up' });
    v.route = el('span', { class: 'tag route', title: 'the route of the proxy this backend serves' });
    v.counts = el('span');
    v.error = el('p', { class: 'b-error' });
    v.buttons = {};
    const actions = el('div', { class: 'b-actions', role: 'group', 'aria-label': 'State of backend ' + b.address });
    for (const [state, label, cls] of [['up', 'Enable', 'good'], ['drain', 'Drain', 'warn'], ['down', 'Down', 'danger']]) {
      const btn = el('button', {
        type: 'button', class: cls, text: label,
        'data-action': 'backend-state', 'data-state': state, 'data-proxy': proxy, 'data-backend': b.address,
        'aria-label': label + ' backend ' + b.address + ' of ' + proxy,
      });
      v.buttons[state] = btn;
      actions.append(btn);
    }
    v.root = el('li', { class: 'backend', 'data-backend': b.address },
      v.badge,
      el('div', { class: 'b-main' },
        el('div', {}, v.addr, v.bname),
        el('div', { class: 'b-meta' }, v.counts, v.weight, v.backup, v.route)),
      actions,
      v.error);
    return v;
  }

  function updateBackend(proxy, v, b) {
    const state = ['up', 'drain', 'down'].includes(b.state) ? b.state : 'down';
    v.root.dataset.state = b.state;
    v.badge.className = 'badge ' + state;
    setText(v.badge, b.state);
    setText(v.bname, b.name ? 'from ' + b.name : '');
    v.bname.hidden = !b.name;
    setText(v.weight, 'weight ' + b.weight);
    v.backup.hidden = !b.backup;
    setText(v.route, b.route ? 'route ' + b.route : '');
    v.route.hidden = !b.route;
    setText(v.counts, numFmt.format(b.active_connections) + ' active · ' + numFmt.format(b.connections_total) + ' total');
    setText(v.error, b.error || '');
    v.error.hidden = !b.error;
    for (const [s, btn] of Object.entries(v.buttons)) {
      btn.disabled = s === b.state || busy.has('b ' + proxy + ' ' + b.address);
    }
  }

  function updateProxy(v, p, now) {
    const s = rates(p, now);
    setText(v.name, p.name);
    setText(v.listen, p.listen === p.name ? '' : p.listen);
    v.listen.hidden = p.listen === p.name;
    setText(v.balance, p.balance);
    setText(v.active, numFmt.format(p.active_connections));
    setText(v.conn, fmtPerSec(s.conn));
    setText(v.up, fmtRate(s.up));
    setText(v.down, fmtRate(s.down));
    const accepted = p.connections_total + p.active_connections;
    setText(v.totals, 'in all: ' + numFmt.format(accepted) + (accepted === 1 ? ' connection · ' : ' connections · ') +
      fmtBytes(p.bytes_up) + ' up · ' + fmtBytes(p.bytes_down) + ' down');
    drawSpark(v, s.history);

    const seen = new Set();
    (p.backends || []).forEach((b, i) => {
      let key = b.address; // unique but for two names of one address
      for (let n = 2; seen.has(key); n++) key = b.address + ' #' + n;
      let bv = v.backends.get(key);
      if (!bv) { bv = buildBackend(p.name, b); v.backends.set(key, bv); }
      place(v.list, bv.root, i);
      updateBackend(p.name, bv, b);
      seen.add(key);
    });
    for (const [key, bv] of v.backends) {
      if (!seen.has(key)) { bv.root.remove(); v.backends.delete(key); }
    }
    return s;
  }

  function renderProxies(list, now) {
    const seen = new Set();
    const sum = { active: 0, conn: 0, up: 0, down: 0, known: list.length > 0 };
    list.forEach((p, i) => {
      let v = proxyViews.get(p.name);
      if (!v) { v = buildProxy(p); proxyViews.set(p.name, v); }
      place(proxiesEl, v.root, i);
      const s = updateProxy(v, p, now);
      seen.add(p.name);
      sum.active += p.active_connections;
      if (s.conn === null) sum.known = false;
      else { sum.conn += s.conn; sum.up += s.up; sum.down += s.down; }
    });
    for (const [name, v] of proxyViews) {
      if (!seen.has(name)) { v.root.remove(); proxyViews.delete(name); samples.delete(name); }
    }
    const empty = $('proxies-empty');
    empty.hidden = list.length > 0;
    setText(empty, 'pj runs no proxies.');

    let up = 0, all = 0;
    const other = { drain: 0, down: 0 };
    for (const p of list) {
      for (const b of p.backends || []) {
        all++;
        if (b.state === 'up') up++;
        else other[b.state === 'drain' ? 'drain' : 'down']++;
      }
    }
    setText($('proxies-count'), '(' + numFmt.format(list.length) + ')');
    setText($('sum-backends'), numFmt.format(up) + ' / ' + numFmt.format(all));
    const hint = [];
    if (other.drain) hint.push(numFmt.format(other.drain) + ' draining');
    if (other.down) hint.push(numFmt.format(other.down) + ' down');
    setText($('sum-backends-hint'), hint.length ? hint.join(', ') : 'all in service');
    $('sum-backends').classList.toggle('bad', other.down > 0);
    setText($('sum-active'), numFmt.format(sum.active));
    setText($('sum-rate'), sum.known ? fmtPerSec(sum.conn) : '–');
    setText($('sum-up'), sum.known ? fmtRate(sum.up) : '–');
    setText($('sum-down'), sum.known ? fmtRate(sum.down) : '–');
    updateFilter(list);
    return sum;
  }

  // ---------- connections ----------

  const filterEl = $('conns-filter');
  let filter = '';

  function updateFilter(list) {
    const names = list.map((p) => p.name);
    const have = Array.from(filterEl.options).slice(1).map((o) => o.value);
    if (names.join('\n') === have.join('\n')) return;
    filterEl.replaceChildren(el('option', { value: '', text: 'all' }),
      ...names.map((n) => el('option', { value: n, text: n })));
    if (filter && !names.includes(filter)) filter = '';
    filterEl.value = filter;
  }

  filterEl.addEventListener('change', () => {
    filter = filterEl.value;
    refreshNow();
  });

  const connBody = $('conns-body');
  const connViews = new Map();
  // Connections closed from this page: a reading taken just before the
  // close still lists them, and must not bring their rows back.
  const closed = new Set();

  function cell(label, cls, text) {
    return el('td', { class: cls, 'data-label': label, text });
  }

  function buildConn(c) {
    const v = {};
    v.id = cell('ID', 'id mono', c.id);
    v.client = cell('Client', 'mono', c.client);
    v.proxy = cell('Proxy', '', c.proxy);
    v.backend = cell('Backend', 'mono', c.backend);
    v.age = cell('Age', 'num', '');
    v.up = cell('Up', 'num', '');
    v.down = cell('Down', 'num', '');
    v.close = el('button', {
      type: 'button', class: 'danger', text: 'Close',
      'data-action': 'close', 'data-conn': c.id, 'data-client': c.client,
      'aria-label': 'Close connection ' + c.id + ' from ' + c.client,
    });
    v.root = el('tr', { 'data-conn': c.id, 'data-client': c.client },
      v.id, v.client, v.proxy, v.backend, v.age, v.up, v.down, el('td', { class: 'act' }, v.close));
    return v;
  }

  function renderConns(all, total) {
    const list = all.filter((c) => !closed.has(c.id));
    for (const id of closed) if (!all.some((c) => c.id === id)) closed.delete(id);
    const seen = new Set();
    list.forEach((c, i) => {
      let v = connViews.get(c.id);
      if (!v) { v = buildConn(c); connViews.set(c.id, v); }
      place(connBody, v.root, i);
      setText(v.backend, c.backend || '–');
      setText(v.age, fmtAge(c.age_seconds));
      setText(v.up, fmtBytes(c.bytes_up));
      setText(v.down, fmtBytes(c.bytes_down));
      v.close.disabled = busy.has('c ' + c.id);
      seen.add(c.id);
    });
    for (const [id, v] of connViews) {
      if (!seen.has(id)) { v.root.remove(); connViews.delete(id); }
    }
    // The count is the table's, unless the table was cut at CONN_LIMIT
    // rows: then the proxies' active counts say how many there are.
    const shown = list.length;
    const cut = shown >= CONN_LIMIT;
    total = cut ? Math.max(total, shown) : shown;
    setText($('conns-count'), '(' + numFmt.format(total) + ')');
    $('conns-empty').hidden = shown > 0;
    setText($('conns-empty'), filter ? 'No open connections through ' + filter + '.' : 'No open connections.');
    document.querySelector('.table-wrap').classList.toggle('is-empty', shown === 0);
    const more = $('conns-more');
    more.hidden = !cut || shown >= total;
    setText(more, 'Showing the oldest ' + numFmt.format(shown) + ' of ' + numFmt.format(total) + ' connections.');
  }

  // ---------- actions ----------

  async function act(key, what, run) {
    busy.add(key);
    try {
      await run();
      return true;
    } catch (e) {
      if (e.status === 401 || e.status === 403) loadAuth();
      tell(what + ' failed: ' + e.message, true);
      return false;
    } finally {
      busy.delete(key);
      refreshNow();
    }
  }

  async function closeConn(btn) {
    const id = btn.dataset.conn;
    const client = btn.dataset.client;
    btn.disabled = true;
    await act('c ' + id, 'Closing connection ' + id, async () => {
      try {
        await api('DELETE', 'api/v1/connections/' + encodeURIComponent(id));
      } catch (e) {
        if (e.status !== 404) throw e;
        tell('Connection ' + id + ' from ' + client + ' had already ended.');
        return;
      }
      closed.add(id);
      const v = connViews.get(id);
      if (v) { v.root.remove(); connViews.delete(id); }
      tell('Closed connection ' + id + ' from ' + client + '.');
    });
  }

  async function setBackendState(btn) {
    const { proxy, backend, state } = btn.dataset;
    btn.disabled = true;
    const path = 'api/v1/proxies/' + encodeURIComponent(proxy) + '/backends/' + encodeURIComponent(backend) + '/state';
    await act('b ' + proxy + ' ' + backend, 'Setting backend ' + backend + ' of ' + proxy + ' to ' + state, async () => {
      await api('PUT', path, state);
      tell('Backend ' + backend + ' of ' + proxy + ' is now ' + state + '.');
    });
  }

  document.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button[data-action]');
    if (!btn || btn.disabled) return;
    if (btn.dataset.action === 'close') closeConn(btn);
    else if (btn.dataset.action === 'backend-state') setBackendState(btn);
  });

  // ---------- polling ----------

  const live = $('live');
  let lastOK = null;
  let timer = 0;
  let inFlight = false;
  let again = false;

  async function poll() {
    inFlight = true;
    clearTimeout(timer);
    const started = performance.now();
    try {
      const q = 'api/v1/connections?limit=' + CONN_LIMIT + (filter ? '&proxy=' + encodeURIComponent(filter) : '');
      const [p, c] = await Promise.all([api('GET', 'api/v1/proxies'), api('GET', q)]);
      const proxies = p.proxies || [];
      renderProxies(proxies, performance.now());
      const total = proxies.filter((x) => !filter || x.name === filter)
        .reduce((n, x) => n + x.active_connections, 0);
      renderConns(c.connections || [], total);
      lastOK = new Date();
      setProblem('');
      document.body.classList.remove('stale');
      live.className = 'live ok';
      setText($('live-text'), 'Live · ' + fmtClock(lastOK));
    } catch (e) {
      const since = lastOK ? ' The page shows what pj said at ' + fmtClock(lastOK) + '.' : '';
      const gone = !e.status;
      setProblem(gone ? 'pj is not answering.' : 'The admin API answered with an error.',
        e.message + '.' + since + ' Trying again every second.');
      document.body.classList.toggle('stale', lastOK !== null);
      live.className = 'live bad';
      setText($('live-text'), gone ? 'Not answering' : 'API error');
    } finally {
      inFlight = false;
      const wait = again ? 0 : Math.max(0, POLL_MS - (performance.now() - started));
      again = false;
      timer = setTimeout(poll, wait);
    }
  }

  // refreshNow reads the API again at once, to show the effect of an
  // action without waiting for the next tick.
  function refreshNow() {
    if (inFlight) { again = true; return; }
    clearTimeout(timer);
    timer = setTimeout(poll, 0);
  }

  // The version is decoration: it comes from pj_build_info, read once.
  async function loadVersion() {
    try {
      const res = await fetch('metrics', { cache: 'no-store' });
      if (!res.ok) return;
      const m = /^pj_build_info\{[^}]*\bversion="([^"]*)"/m.exec(await res.text());
      if (m) {
        const v = $('version');
        v.textContent = m[1];
        v.title = 'pj version';
        v.hidden = false;
      }
    } catch { /* no version shown; the poll reports an unreachable pj */ }
  }

  loadAuth();
  loadVersion();
  poll();
})();
