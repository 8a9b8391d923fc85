// parkwatch dashboard: a hash-routed page over the gateway's public API. Hand-written, no build step.
// Every request goes through `api()`: the session cookie rides along, state-changing requests carry
// the CSRF token the login answered, 401 leads back to the login form and 404 is shown as "no data".

const T = {
  zh: {
    'nav.overview': '总览', 'nav.incidents': '告警事件', 'nav.devices': '设备', 'nav.rules': '规则', 'nav.logout': '退出',
    'login.title': '登录', 'login.user': '用户名', 'login.password': '密码', 'login.submit': '登录', 'login.failed': '登录失败',
    nodata: '暂无数据', loading: '加载中…', error: '出错了', back: '返回',
    'ov.title': '园区总览', 'ov.health': '设备健康', 'ov.online': '在线', 'ov.offline': '离线', 'ov.open': '未关闭', 'ov.unacked': '未确认',
    'ov.devices': '设备', 'ov.components': '系统组件',
    'inc.title': '告警事件', 'inc.live': '实时', 'inc.offline': '重连中', 'inc.all': '全部', 'inc.grid': '网格', 'inc.severity': '级别',
    'inc.category': '类别', 'inc.state': '状态', 'inc.none': '没有符合条件的事件',
    'det.value': '数值', 'det.limit': '限值与标准', 'det.plan': '应急预案', 'det.history': '处置记录', 'det.deliveries': '通知送达',
    'det.ack': '确认', 'det.shelve': '搁置', 'det.comment': '备注', 'det.close': '关闭', 'det.reason': '原因', 'det.duration': '时长',
    'det.note': '关闭说明', 'det.text': '备注内容', 'det.raised': '发生时间', 'det.device': '设备', 'det.rule': '规则', 'det.message': '说明',
    'det.acked_by': '确认人', 'det.shelved_until': '搁置至', 'det.peak': '峰值',
    'dev.title': '设备', 'dev.points': '测点', 'dev.value': '最新值', 'dev.quality': '质量', 'dev.time': '时间', 'dev.status': '通信状态',
    'dev.events': '上下线记录', 'dev.polled': 'Modbus 轮询', 'dev.dlt645': 'DL/T 645 抄表', 'dev.mqtt': 'MQTT 上报', 'pt.trend': '趋势',
    'grid.title': '网格', 'grid.duty': '当前值班', 'grid.patrol': '巡检覆盖', 'grid.kpis': '指标（24 小时）', 'grid.rate': '报警率（ISA-18.2）',
    'grid.per_hour': '每小时', 'grid.per_10min': '10 分钟最多', 'grid.target': '目标', 'grid.ack_time': '确认用时', 'grid.close_time': '关闭用时',
    'grid.chattering': '频繁报警', 'grid.standing': '长期报警', 'grid.supervisor': '网格长', 'grid.manager': '安全负责人',
    'rules.title': '规则', 'rules.pack': '规则包', 'rules.params': '参数', 'rules.evals': '评估次数', 'rules.errors': '错误', 'rules.load_errors': '加载错误',
    'rules.loaded': '加载时间', 'rules.sources': '设备数',
    'sev.critical': '紧急', 'sev.major': '重要', 'sev.minor': '次要', 'sev.warning': '提示',
    'st.active_unacked': '报警未确认', 'st.active_acked': '报警已确认', 'st.returned_unacked': '已恢复未确认', 'st.normal': '已关闭', 'st.open': '未关闭',
    'q.good': '正常', 'q.bad': '无效', 'q.uncertain': '可疑', median: '中位数', p90: 'P90', count: '次数', yes: '达标', no: '超标',
  },
  en: {
    'nav.overview': 'Overview', 'nav.incidents': 'Incidents', 'nav.devices': 'Devices', 'nav.rules': 'Rules', 'nav.logout': 'Log out',
    'login.title': 'Log in', 'login.user': 'User', 'login.password': 'Password', 'login.submit': 'Log in', 'login.failed': 'Login failed',
    nodata: 'No data', loading: 'Loading…', error: 'Error', back: 'Back',
    'ov.title': 'Park overview', 'ov.health': 'Device health', 'ov.online': 'online', 'ov.offline': 'offline', 'ov.open': 'open', 'ov.unacked': 'unacked',
    'ov.devices': 'devices', 'ov.components': 'Components',
    'inc.title': 'Incidents', 'inc.live': 'live', 'inc.offline': 'reconnecting', 'inc.all': 'All', 'inc.grid': 'Grid', 'inc.severity': 'Severity',
    'inc.category': 'Category', 'inc.state': 'State', 'inc.none': 'No incidents match',
    'det.value': 'Value', 'det.limit': 'Limit and standard', 'det.plan': 'Emergency plan', 'det.history': 'History', 'det.deliveries': 'Deliveries',
    'det.ack': 'Acknowledge', 'det.shelve': 'Shelve', 'det.comment': 'Comment', 'det.close': 'Close', 'det.reason': 'Reason', 'det.duration': 'Duration',
    'det.note': 'Why closed', 'det.text': 'Comment', 'det.raised': 'Raised', 'det.device': 'Device', 'det.rule': 'Rule', 'det.message': 'Message',
    'det.acked_by': 'Acknowledged by', 'det.shelved_until': 'Shelved until', 'det.peak': 'Peak',
    'dev.title': 'Devices', 'dev.points': 'Points', 'dev.value': 'Latest', 'dev.quality': 'Quality', 'dev.time': 'Time', 'dev.status': 'Link status',
    'dev.events': 'Online/offline history', 'dev.polled': 'Modbus polling', 'dev.dlt645': 'DL/T 645 reading', 'dev.mqtt': 'MQTT', 'pt.trend': 'Trend',
    'grid.title': 'Grid', 'grid.duty': 'On duty now', 'grid.patrol': 'Patrol coverage', 'grid.kpis': 'KPIs (24 h)', 'grid.rate': 'Alarm rate (ISA-18.2)',
    'grid.per_hour': 'per hour', 'grid.per_10min': 'max per 10 min', 'grid.target': 'target', 'grid.ack_time': 'Time to acknowledge', 'grid.close_time': 'Time to close',
    'grid.chattering': 'Chattering', 'grid.standing': 'Standing alarms', 'grid.supervisor': 'Supervisor', 'grid.manager': 'Safety manager',
    'rules.title': 'Rules', 'rules.pack': 'Pack', 'rules.params': 'Parameters', 'rules.evals': 'Evaluations', 'rules.errors': 'Errors', 'rules.load_errors': 'Load errors',
    'rules.loaded': 'Loaded', 'rules.sources': 'Devices',
    'sev.critical': 'critical', 'sev.major': 'major', 'sev.minor': 'minor', 'sev.warning': 'warning',
    'st.active_unacked': 'active, unacked', 'st.active_acked': 'acknowledged', 'st.returned_unacked': 'returned, unacked', 'st.normal': 'closed', 'st.open': 'open',
    'q.good': 'good', 'q.bad': 'bad', 'q.uncertain': 'uncertain', median: 'median', p90: 'p90', count: 'count', yes: 'met', no: 'exceeded',
  },
};

const SEVERITIES = ['critical', 'major', 'minor', 'warning'];
const RANK = { critical: 4, major: 3, minor: 2, warning: 1 };
const ROLES = ['viewer', 'officer', 'supervisor', 'safety_manager', 'admin'];
const $ = (s) => document.querySelector(s);
const main = $('#main');

let lang = localStorage.getItem('pw.lang') === 'en' ? 'en' : 'zh';
let me = null; // { name, role, grids }
let site = null; // { id, name, timezone }
let live = null; // the incident EventSource while the list is shown

const t = (k) => T[lang][k] ?? T.zh[k] ?? k;

/** An element with attributes and children; text is always text, never markup. */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) if (k != null && k !== false) e.append(k instanceof Node ? k : String(k));
  return e;
}

/** A flex row; bare text becomes its own item so the gaps apply. */
const row = (cls, ...kids) => h('div', { class: `row ${cls}` }, kids.flat().filter((k) => k != null && k !== false)
  .map((k) => (k instanceof Node ? k : h('span', {}, k))));

const svg = (tag, attrs = {}) => {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRF-Token'] = sessionStorage.getItem('pw.csrf') || '';
  }
  const r = await fetch(path, { method, headers, credentials: 'same-origin', body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (r.status === 401 && !path.endsWith('/login')) {
    me = null;
    go('#/login');
    throw new HttpError(401, data?.error || 'unauthorized');
  }
  if (!r.ok) throw new HttpError(r.status, data?.error || r.statusText);
  return data;
}

/** `api()` that answers `null` for 404 (an endpoint or record not there yet). */
async function maybe(path) {
  try { return await api(path); } catch (e) { if (e.status === 404) return null; throw e; }
}

const go = (hash) => { if (location.hash !== hash) location.hash = hash; else route(); };
const roleAtLeast = (r) => me && ROLES.indexOf(me.role) >= ROLES.indexOf(r);
const empty = (text = t('nodata')) => h('div', { class: 'empty' }, text);
const errorBox = (e) => h('div', { class: 'error', role: 'alert' }, `${t('error')}: ${e.message || e}`);
const sevTag = (s) => h('span', { class: `sev sev-${s}` }, t(`sev.${s}`));
const stateTag = (s) => h('span', { class: `state state-${s}`, 'data-state': s }, t(`st.${s}`));

function fmtTime(v) {
  if (v == null || v === '') return '—';
  const d = typeof v === 'number' ? new Date(v) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  const opts = { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  if (site?.timezone) opts.timeZone = site.timezone;
  return new Intl.DateTimeFormat(lang === 'zh' ? 'zh-CN' : 'en-GB', opts).format(d);
}

const fmtNum = (v, unit = '') => (v == null ? '—' : `${typeof v === 'number' ? +v.toFixed(3) : v}${unit ? ` ${unit}` : ''}`);
const fmtSecs = (s) => (s == null ? '—' : s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

function applyLang() {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  document.querySelectorAll('[data-i18n]').forEach((e) => { e.textContent = t(e.dataset.i18n); });
  $('#lang').textContent = lang === 'zh' ? 'English' : '中文';
}

$('#lang').addEventListener('click', () => {
  lang = lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem('pw.lang', lang);
  applyLang();
  route();
});

$('#logout').addEventListener('click', async () => {
  try { await api('/api/v1/logout', { method: 'POST' }); } catch { /* the session may be gone already */ }
  sessionStorage.removeItem('pw.csrf');
  me = null;
  go('#/login');
});

async function ensureMe() {
  if (me) return true;
  try {
    me = await api('/api/v1/me');
  } catch {
    return false;
  }
  if (!site) {
    const g = await maybe('/api/v1/grids');
    site = g?.site || null;
  }
  return true;
}

function page(title, ...kids) {
  main.replaceChildren(h('h1', {}, title), ...kids.flat().filter((k) => k != null && k !== false));
}

// ---------------------------------------------------------------- login

function loginPage() {
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  const msg = h('div');
  const user = h('input', { id: 'user', name: 'user', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'login card', onsubmit: async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    try {
      const r = await api('/api/v1/login', { method: 'POST', body: { user: user.value, password: pass.value } });
      sessionStorage.setItem('pw.csrf', r.csrf_token);
      me = { name: r.user, role: r.role, grids: r.grids };
      const g = await maybe('/api/v1/grids');
      site = g?.site || null;
      go('#/');
    } catch (e) {
      msg.replaceChildren(h('div', { class: 'error', role: 'alert' }, `${t('login.failed')}: ${e.message}`));
    }
  } },
  h('label', { for: 'user' }, t('login.user')), user,
  h('label', { for: 'password' }, t('login.password')), pass,
  h('button', { type: 'submit', id: 'login-submit' }, t('login.submit')), msg);
  page(t('login.title'), form);
  user.focus();
}

// ---------------------------------------------------------------- overview

async function overview() {
  const [g, health] = await Promise.all([maybe('/api/v1/grids'), maybe('/api/v1/health').catch(() => null)]);
  if (!g || !g.grids.length) return page(t('ov.title'), empty());
  site = g.site;
  const tiles = h('div', { class: 'tiles', id: 'tiles' }, g.grids.map((c) => h('a', {
    class: `tile sev-${c.worst || 'none'}`, href: `#/grid/${encodeURIComponent(c.id)}`, 'data-grid': c.id,
  },
  h('b', {}, c.name || c.id),
  row('', c.worst ? sevTag(c.worst) : null, `${t('ov.open')} ${c.open}`, `${t('ov.unacked')} ${c.unacked}`),
  h('div', { class: 'muted' }, `${t('ov.devices')} ${c.devices.online}/${c.devices.online + c.devices.offline} ${t('ov.online')}`,
    c.devices.offline ? h('span', { class: 'bad' }, ` · ${c.devices.offline} ${t('ov.offline')}`) : null))));
  const total = g.grids.reduce((a, c) => ({ on: a.on + c.devices.online, off: a.off + c.devices.offline }), { on: 0, off: 0 });
  const comps = (health?.components || []).map((c) => [c.component, c]);
  page(g.site.name || t('ov.title'), g.plan ? planMap(g.plan, g.grids) : null, tiles,
    h('h2', {}, t('ov.health')),
    row('card', h('span', { class: 'ok' }, `${total.on} ${t('ov.online')}`), h('span', { class: total.off ? 'bad' : 'muted' }, `${total.off} ${t('ov.offline')}`)),
    comps.length ? h('div', { class: 'scroll' }, h('table', {}, h('tr', {}, h('th', {}, t('ov.components')), h('th', {}, t('inc.state'))),
      comps.map(([name, c]) => h('tr', {}, h('td', {}, name), h('td', { class: c.status === 'ok' ? 'ok' : 'bad' }, c.status ?? '', c.reason ? ` — ${c.reason}` : ''))))) : null);
}

/** The site plan with each outlined cell drawn over it, coloured by its worst alarm; a cell is a link. */
function planMap(plan, grids) {
  const map = svg('svg', { viewBox: `0 0 ${plan.width} ${plan.height}`, class: 'plan', id: 'plan', role: 'img', 'aria-label': t('ov.title') });
  map.append(svg('image', { href: plan.image, x: 0, y: 0, width: plan.width, height: plan.height, preserveAspectRatio: 'none' }));
  for (const c of grids.filter((c) => c.outline.length >= 3)) {
    const link = svg('a', { href: `#/grid/${encodeURIComponent(c.id)}`, class: `cell sev-${c.worst || 'none'}`, 'data-grid': c.id });
    link.append(svg('polygon', { points: c.outline.map(([x, y]) => `${x},${y}`).join(' ') }));
    // The label sits at the corners' mean: good enough for the convex cells of a site plan.
    const cx = c.outline.reduce((a, [x]) => a + x, 0) / c.outline.length;
    const cy = c.outline.reduce((a, [, y]) => a + y, 0) / c.outline.length;
    const label = svg('text', { x: cx, y: cy, 'text-anchor': 'middle', 'font-size': Math.max(plan.width, plan.height) / 40 });
    label.textContent = c.open ? `${c.name || c.id} · ${c.open}` : (c.name || c.id);
    link.append(label);
    map.append(link);
  }
  return h('div', { class: 'planbox' }, map);
}

// ---------------------------------------------------------------- incidents

function query(hash) {
  const q = hash.split('?')[1] || '';
  return Object.fromEntries(new URLSearchParams(q));
}

async function incidents(params) {
  const f = { state: params.state ?? 'open', grid: params.grid || '', severity: params.severity || '', category: params.category || '' };
  const g = await maybe('/api/v1/grids');
  const grids = g?.grids?.map((c) => c.id) || me.grids || [];
  const qs = new URLSearchParams(Object.entries(f).filter(([, v]) => v)).toString();
  const rows = new Map();
  const ul = h('ul', { class: 'list', id: 'incident-list' });
  const status = h('span', { class: 'live', id: 'live' }, t('inc.offline'));
  const categories = new Set(['electrical', 'fire', 'gas', 'environment', 'security', 'equipment', 'patrol', 'system']);

  const matches = (i) => (!f.grid || i.grid === f.grid) && (!f.severity || i.severity === f.severity)
    && (!f.category || i.category === f.category)
    && (!f.state || (f.state === 'open' ? i.state !== 'normal' : f.state === 'closed' ? i.state === 'normal' : i.state === f.state));

  const draw = () => {
    const list = [...rows.values()].filter(matches).sort((a, b) => b.id - a.id);
    ul.replaceChildren(...list.map((i) => h('li', { class: i.fresh ? 'fresh' : null, 'data-id': i.id, 'data-state': i.state, 'data-grid': i.grid },
      h('a', { href: `#/incident/${i.id}` },
        row('', sevTag(i.severity), h('b', {}, i.title), stateTag(i.state)),
        row('muted', `#${i.id}`, i.grid, i.device, i.value != null ? fmtNum(i.value) : null, fmtTime(i.raised_at || i.at))))));
    if (!list.length) ul.replaceChildren(h('li', {}, empty(t('inc.none'))));
    list.forEach((i) => { delete i.fresh; });
  };

  const select = (name, options, label) => h('select', { name, 'aria-label': label, onchange: (ev) => {
    const next = { ...f, [name]: ev.target.value };
    go(`#/incidents?${new URLSearchParams(Object.entries(next).filter(([, v]) => v !== '')).toString()}${next.state === '' ? '&state=' : ''}`);
  } }, h('option', { value: '' }, `${label}: ${t('inc.all')}`), options.map(([v, text]) => h('option', { value: v, selected: f[name] === v }, text)));

  const filters = h('div', { class: 'filters' },
    select('grid', grids.map((x) => [x, x]), t('inc.grid')),
    select('severity', SEVERITIES.map((s) => [s, t(`sev.${s}`)]), t('inc.severity')),
    select('category', [...categories].map((c) => [c, c]), t('inc.category')),
    select('state', ['open', 'active_unacked', 'active_acked', 'returned_unacked', 'closed'].map((s) => [s, t(`st.${s === 'closed' ? 'normal' : s}`)]), t('inc.state')));
  page(t('inc.title'), row('', status), filters, ul);

  // The stream first: its `ready` event marks the log position the list is read after, so no change
  // between the list and the stream is missed; a change older than a listed row never replaces it.
  let loaded = false;
  const pending = [];
  const apply = (c) => {
    const old = rows.get(c.id);
    if (old && old.seq && old.seq >= c.seq) return;
    rows.set(c.id, { ...(old || {}), ...c, raised_at: old?.raised_at || c.at, fresh: !old || old.state !== c.state });
  };
  const es = new EventSource('/api/v1/incidents/stream');
  live = es;
  es.addEventListener('open', () => { status.classList.add('on'); status.textContent = t('inc.live'); });
  es.addEventListener('error', () => { status.classList.remove('on'); status.textContent = t('inc.offline'); });
  es.addEventListener('change', (ev) => {
    const c = JSON.parse(ev.data);
    if (!loaded) { pending.push(c); return; }
    apply(c);
    draw();
  });
  const load = async () => {
    const list = await api(`/api/v1/incidents?${qs}&limit=200`);
    for (const i of list) rows.set(i.id, { ...i, seq: 0 });
    loaded = true;
    pending.splice(0).forEach(apply);
    draw();
  };
  await new Promise((resolve) => {
    // A stream that cannot open (404, too many streams) still leaves the list usable.
    const done = () => { es.removeEventListener('ready', done); es.removeEventListener('error', done); resolve(); };
    es.addEventListener('ready', done);
    es.addEventListener('error', done);
    setTimeout(done, 3000);
  });
  await load();
}

async function incident(id) {
  const i = await maybe(`/api/v1/incidents/${encodeURIComponent(id)}`);
  if (!i) return page(`#${id}`, empty());
  const rules = await maybe('/api/v1/rules').catch(() => null);
  const rule = rules?.rules?.find((r) => r.id === i.rule);
  const msg = h('div', { id: 'action-msg' });
  const act = async (what, body) => {
    msg.replaceChildren();
    try {
      await api(`/api/v1/incidents/${i.id}/${what}`, { method: 'POST', body });
      await incident(id);
    } catch (e) {
      msg.replaceChildren(errorBox(e));
    }
  };
  const actions = h('div', { class: 'actions' });
  if (roleAtLeast('officer') && i.state !== 'normal') {
    if (i.state.endsWith('unacked')) actions.append(h('button', { id: 'ack', onclick: () => act('ack', {}) }, t('det.ack')));
    if (i.state !== 'returned_unacked' && (i.severity !== 'critical' || roleAtLeast('supervisor'))) {
      const dur = h('select', { name: 'duration', 'aria-label': t('det.duration') }, ['30m', '1h', '4h', '8h', '1d'].map((d) => h('option', { value: d }, d)));
      const reason = h('input', { name: 'reason', placeholder: t('det.reason'), required: true });
      actions.append(h('form', { id: 'shelve', onsubmit: (ev) => { ev.preventDefault(); act('shelve', { duration: dur.value, reason: reason.value }); } },
        dur, reason, h('button', { type: 'submit', class: 'ghost' }, t('det.shelve'))));
    }
    const note = h('input', { name: 'note', placeholder: t('det.note'), required: true });
    actions.append(h('form', { id: 'close', onsubmit: (ev) => { ev.preventDefault(); act('close', { note: note.value }); } },
      note, h('button', { type: 'submit', class: 'ghost' }, t('det.close'))));
  }
  if (roleAtLeast('officer')) {
    const text = h('input', { name: 'text', placeholder: t('det.text'), required: true });
    actions.append(h('form', { id: 'comment', onsubmit: (ev) => { ev.preventDefault(); act('comment', { text: text.value }); } },
      text, h('button', { type: 'submit', class: 'ghost' }, t('det.comment'))));
  }
  const kv = (pairs) => h('dl', { class: 'kv' }, pairs.filter(([, v]) => v != null && v !== '').flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const params = rule ? Object.entries(rule.params || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join('; ') : null;
  page(i.title,
    h('div', { class: 'card' },
      row('', sevTag(i.severity), stateTag(i.state), `#${i.id}`, i.persisted === false ? h('span', { class: 'bad' }, '(not yet on disk)') : null),
      kv([
        [t('det.device'), h('a', { href: `#/device/${encodeURIComponent(i.device)}` }, `${i.device} · ${i.grid}`)],
        [t('det.value'), i.point ? h('a', { href: `#/point/${encodeURIComponent(i.device)}/${encodeURIComponent(i.point)}` }, `${i.point} = ${fmtNum(i.value)}`) : fmtNum(i.value)],
        [t('det.peak'), i.peak != null ? fmtNum(i.peak) : null],
        [t('det.message'), i.message],
        [t('det.limit'), [i.rule, params].filter(Boolean).join(' — ')],
        [t('det.raised'), fmtTime(i.raised_at)],
        [t('det.acked_by'), i.acked_by ? `${i.acked_by} · ${fmtTime(i.acked_at)}` : null],
        [t('det.shelved_until'), i.shelved_until ? fmtTime(i.shelved_until) : null],
      ]),
      actions, msg),
    i.plan_detail ? h('div', { class: 'card' }, h('h2', {}, `${t('det.plan')}: ${i.plan_detail.title}`),
      h('ol', {}, i.plan_detail.steps.map((s) => h('li', {}, s.text)))) : null,
    h('h2', {}, t('det.history')),
    h('div', { class: 'scroll' }, h('table', { id: 'history' }, (i.history || []).map((e) => h('tr', {},
      h('td', {}, fmtTime(e.at)), h('td', {}, e.kind), h('td', {}, e.state ? t(`st.${e.state}`) : ''), h('td', {}, e.value != null ? fmtNum(e.value) : ''),
      h('td', {}, [e.who, e.note].filter(Boolean).join(': ')))))),
    h('h2', {}, t('det.deliveries')),
    (i.deliveries || []).length ? h('div', { class: 'scroll' }, h('table', {}, i.deliveries.map((d) => h('tr', {},
      h('td', {}, fmtTime(d.created)), h('td', {}, `${d.receiver} · ${d.channel}`), h('td', {}, d.reason, d.step != null ? ` #${d.step}` : ''),
      h('td', { class: d.status === 'delivered' ? 'ok' : d.status === 'failed' ? 'bad' : '' }, d.status, d.attempts > 1 ? ` ×${d.attempts}` : '', d.error ? ` — ${d.error}` : ''),
      h('td', {}, d.done ? fmtTime(d.done) : ''))))) : empty());
}

// ---------------------------------------------------------------- devices and points

async function devices() {
  const [list, points] = await Promise.all([maybe('/api/v1/devices'), maybe('/api/v1/points')]);
  if (!list || !list.length) return page(t('dev.title'), empty());
  const latest = new Map();
  for (const p of points || []) latest.set(`${p.device}/${p.point}`, p);
  page(t('dev.title'), h('ul', { class: 'list' }, list.map((d) => h('li', {}, h('a', { href: `#/device/${encodeURIComponent(d.id)}` },
    row('', h('b', {}, d.name || d.id), h('span', { class: 'muted' }, `${d.grid} · ${d.category}`),
      (d.modbus || d.dlt645) ? h('span', { class: (d.modbus || d.dlt645).online ? 'ok' : 'bad' }, (d.modbus || d.dlt645).online ? t('ov.online') : t('ov.offline')) : null),
    row('muted', d.points.map((p) => {
      const v = latest.get(`${d.id}/${p.name}`);
      return `${p.name} ${v ? fmtNum(v.value, p.unit) : '—'}`;
    })))))));
}

async function device(id) {
  const [list, points, events] = await Promise.all([maybe('/api/v1/devices'), maybe(`/api/v1/points?device=${encodeURIComponent(id)}`).catch(() => null), maybe('/api/v1/events?limit=1000')]);
  const d = list?.find((x) => x.id === id);
  if (!d) return page(id, empty());
  const latest = new Map((points || []).map((p) => [p.point, p]));
  const onoff = (events || []).filter((e) => e.device === id && /online|offline|modbus|dlt645/.test(e.kind));
  const m = d.modbus;
  const k = d.dlt645;
  page(d.name || d.id,
    h('div', { class: 'card' }, h('dl', { class: 'kv' },
      h('dt', {}, t('inc.grid')), h('dd', {}, d.grid), h('dt', {}, t('inc.category')), h('dd', {}, d.category),
      h('dt', {}, t('dev.status')), h('dd', {}, m
        ? h('span', { class: m.online ? 'ok' : 'bad' }, `${t('dev.polled')} ${m.connection}: ${m.online ? t('ov.online') : t('ov.offline')} · ${m.latency_ms} ms${m.last_error ? ` · ${m.last_error}` : ''}`)
        : k ? h('span', { class: k.online ? 'ok' : 'bad' }, `${t('dev.dlt645')} ${k.bus} ${k.address || ''}: ${k.online ? t('ov.online') : t('ov.offline')} · ${k.latency_ms} ms${k.last_error ? ` · ${k.last_error}` : ''}`)
        : `${t('dev.mqtt')}${latest.size ? ` · ${fmtTime(Math.max(...[...latest.values()].map((p) => Date.parse(p.ts))))}` : ''}`))),
    h('h2', {}, t('dev.points')),
    h('div', { class: 'scroll' }, h('table', {}, h('tr', {}, ['dev.points', 'dev.value', 'dev.quality', 'dev.time'].map((k) => h('th', {}, t(k)))),
      d.points.map((p) => {
        const v = latest.get(p.name);
        return h('tr', {}, h('td', {}, h('a', { href: `#/point/${encodeURIComponent(id)}/${encodeURIComponent(p.name)}` }, p.name)),
          h('td', {}, v ? fmtNum(v.value, p.unit) : '—'), h('td', { class: v ? `q-${v.quality}` : '' }, v ? t(`q.${v.quality}`) : '—'), h('td', {}, v ? fmtTime(v.ts) : '—'));
      }))),
    h('h2', {}, t('dev.events')),
    onoff.length ? h('div', { class: 'scroll' }, h('table', {}, onoff.map((e) => h('tr', {}, h('td', {}, fmtTime(e.ts)), h('td', { class: e.kind === 'online' ? 'ok' : 'bad' }, e.kind))))) : empty());
}

const ZOOMS = [['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 86400e3], ['7d', 7 * 86400e3], ['30d', 30 * 86400e3], ['1y', 365 * 86400e3]];

async function point(dev, name, params) {
  const span = ZOOMS.find(([k]) => k === params.zoom) || ZOOMS[2];
  const points = await maybe(`/api/v1/points?device=${encodeURIComponent(dev)}`).catch(() => null);
  const p = (points || []).find((x) => x.point === name);
  const chart = h('div', { id: 'chart' }, h('p', { class: 'muted' }, t('loading')));
  const zoom = h('div', { class: 'zoom' }, ZOOMS.map(([k]) => h('button', { type: 'button', class: k === span[0] ? 'ghost on' : 'ghost',
    onclick: () => go(`#/point/${encodeURIComponent(dev)}/${encodeURIComponent(name)}?zoom=${k}`) }, k)));
  page(`${dev} · ${name}`,
    h('div', { class: 'card' }, h('dl', { class: 'kv' },
      h('dt', {}, t('dev.value')), h('dd', {}, p ? fmtNum(p.value, p.unit) : '—'),
      h('dt', {}, t('dev.quality')), h('dd', { class: p ? `q-${p.quality}` : '' }, p ? t(`q.${p.quality}`) : '—'),
      h('dt', {}, t('dev.time')), h('dd', {}, p ? fmtTime(p.ts) : '—'))),
    h('h2', {}, t('pt.trend')), zoom, chart);
  const to = new Date();
  const from = new Date(to.getTime() - span[1]);
  const hist = await maybe(`/api/v1/points/${encodeURIComponent(dev)}/${encodeURIComponent(name)}/history?from=${from.toISOString()}&to=${to.toISOString()}&step=auto`);
  chart.replaceChildren(hist && hist.rows?.length ? drawChart(hist, from.getTime(), to.getTime()) : empty());
}

/** A line of the averages over a band of min..max, with the time and value ranges marked. */
function drawChart(hist, t0, t1) {
  const W = 800, H = 220, L = 48, R = 8, TP = 10, B = 24;
  const rows = hist.rows.map((r) => ({ t: r.t_ms ?? Date.parse(r.t), avg: r.avg ?? r.last, min: r.min ?? r.avg, max: r.max ?? r.avg })).filter((r) => r.avg != null);
  let lo = Math.min(...rows.map((r) => r.min)), hi = Math.max(...rows.map((r) => r.max));
  if (!(hi > lo)) { hi += 1; lo -= 1; }
  const x = (v) => L + ((v - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => TP + (1 - (v - lo) / (hi - lo)) * (H - TP - B);
  const s = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${hist.point} ${hist.unit || ''}` });
  const band = rows.map((r) => `${x(r.t).toFixed(1)},${y(r.max).toFixed(1)}`).concat(rows.slice().reverse().map((r) => `${x(r.t).toFixed(1)},${y(r.min).toFixed(1)}`));
  s.append(svg('polygon', { class: 'band', points: band.join(' ') }));
  s.append(svg('polyline', { class: 'line', points: rows.map((r) => `${x(r.t).toFixed(1)},${y(r.avg).toFixed(1)}`).join(' ') }));
  s.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }), svg('line', { class: 'axis', x1: L, y1: TP, x2: L, y2: H - B }));
  const label = (tx, ty, text, anchor = 'start') => { const e = svg('text', { x: tx, y: ty, 'text-anchor': anchor }); e.textContent = text; s.append(e); };
  label(L - 4, TP + 10, fmtNum(hi), 'end');
  label(L - 4, H - B, fmtNum(lo), 'end');
  label(L, H - 6, fmtTime(t0));
  label(W - R, H - 6, fmtTime(t1), 'end');
  return h('div', {}, s, h('p', { class: 'muted' }, `${hist.unit || ''} · ${hist.step || ''} · ${rows.length}`));
}

// ---------------------------------------------------------------- grid supervisor page

async function grid(id) {
  const e = encodeURIComponent(id);
  const [duty, patrols, kpis] = await Promise.all([maybe(`/api/v1/duty?grid=${e}`), maybe(`/api/v1/patrols?grid=${e}`), maybe(`/api/v1/grids/${e}/kpis?window=24h`)]);
  const person = (p) => (p ? `${p.name}${p.mobile ? ` (${p.mobile})` : ''}` : '—');
  const pg = patrols?.grids?.find((x) => x.grid === id);
  const kv = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
  const stat = (s) => (s ? `${t('count')} ${s.count} · ${t('median')} ${fmtSecs(s.median)} · ${t('p90')} ${fmtSecs(s.p90)}` : '—');
  const rate = kpis?.alarm_rate;
  page(`${t('grid.title')} ${kpis?.name || id}`,
    h('div', { class: 'grid2' },
      h('div', { class: 'card', id: 'duty' }, h('h2', {}, t('grid.duty')), duty ? kv([
        [duty.shift?.name || '—', duty.shift ? duty.shift.people.map(person).join('、') : '—'],
        [t('grid.supervisor'), person(duty.supervisor)],
        [t('grid.manager'), person(duty.safety_manager)],
      ]) : empty()),
      h('div', { class: 'card', id: 'patrol' }, h('h2', {}, t('grid.patrol')), pg ? kv([
        ['%', pg.coverage_pct == null ? '—' : `${pg.coverage_pct.toFixed ? pg.coverage_pct.toFixed(1) : pg.coverage_pct} %`],
        ['due / scanned / missed', `${pg.due} / ${pg.scanned} / ${pg.missed}`],
      ]) : empty())),
    h('div', { class: 'card', id: 'kpis' }, h('h2', {}, t('grid.kpis')), kpis ? h('div', {},
      kv([
        [t('ov.open'), `${kpis.open.total} (${t('ov.unacked')} ${kpis.open.unacked})`],
        [t('inc.severity'), Object.entries(kpis.open.by_severity || {}).map(([s, n]) => `${t(`sev.${s}`)} ${n}`).join(' · ')],
        [t('grid.ack_time'), stat(kpis.ack_time_s)],
        [t('grid.close_time'), stat(kpis.close_time_s)],
      ]),
      h('h2', {}, t('grid.rate')),
      rate ? kv([
        [t('grid.per_hour'), h('span', { class: rate.per_hour <= rate.target_per_hour ? 'ok' : 'bad' }, `${fmtNum(rate.per_hour)} (${t('grid.target')} ≤ ${rate.target_per_hour})`)],
        [t('grid.per_10min'), h('span', { class: rate.max_per_10min <= rate.target_per_10min ? 'ok' : 'bad' }, `${rate.max_per_10min} (${t('grid.target')} ≤ ${rate.target_per_10min})`)],
        ['ISA-18.2', h('b', { class: rate.ok ? 'ok' : 'bad' }, rate.ok ? t('yes') : t('no'))],
      ]) : empty(),
      h('h2', {}, t('grid.chattering')),
      kpis.chattering?.length ? h('table', {}, kpis.chattering.map((c) => h('tr', {}, h('td', {}, c.rule), h('td', {}, c.device), h('td', {}, c.count)))) : empty(),
      h('h2', {}, t('grid.standing')),
      kpis.standing?.length ? h('table', {}, kpis.standing.map((s) => h('tr', {}, h('td', {}, h('a', { href: `#/incident/${s.id}` }, `#${s.id}`)), h('td', {}, s.rule), h('td', {}, s.device), h('td', {}, fmtSecs(s.age_s))))) : empty(),
    ) : empty()),
    h('p', {}, h('a', { href: `#/incidents?grid=${e}` }, `${t('nav.incidents')} →`)));
}

// ---------------------------------------------------------------- rules

async function rules() {
  const r = await maybe('/api/v1/rules');
  if (!r) return page(t('rules.title'), empty());
  const packs = new Map();
  for (const rule of r.rules) { if (!packs.has(rule.pack)) packs.set(rule.pack, []); packs.get(rule.pack).push(rule); }
  page(t('rules.title'),
    h('p', { class: 'muted' }, `${t('rules.loaded')}: ${fmtTime(r.loaded_at)}`),
    r.errors?.length ? h('div', { class: 'card' }, h('h2', { class: 'bad' }, t('rules.load_errors')),
      h('ul', {}, r.errors.map((e) => h('li', {}, `${e.pack}${e.rule ? ` / ${e.rule}` : ''}: ${e.message}`)))) : null,
    [...packs.entries()].map(([pack, list]) => h('div', { class: 'card' }, h('h2', {}, `${t('rules.pack')} ${pack}`),
      h('div', { class: 'scroll' }, h('table', {},
        h('tr', {}, [t('det.rule'), t('inc.severity'), t('rules.params'), t('rules.sources'), t('rules.evals'), t('rules.errors')].map((k) => h('th', {}, k))),
        list.map((x) => h('tr', {}, h('td', {}, h('b', {}, x.title), h('br'), h('span', { class: 'muted' }, x.id)), h('td', {}, sevTag(x.severity)),
          h('td', {}, Object.entries(x.params || {}).map(([k, v]) => h('div', {}, `${k} = ${JSON.stringify(v)}`))),
          h('td', {}, `${x.sources}${x.disabled_sources ? ` (−${x.disabled_sources})` : ''}`), h('td', {}, x.evaluations),
          h('td', { class: x.errors ? 'bad' : '' }, x.errors))))))));
}

// ---------------------------------------------------------------- routing

async function route() {
  if (live) { live.close(); live = null; }
  const hash = location.hash || '#/';
  const [path] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'login') return loginPage();
  if (!(await ensureMe())) return go('#/login');
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('on', a.getAttribute('href') === `#/${parts[0] || ''}`));
  main.replaceChildren(h('p', { class: 'muted' }, t('loading')));
  try {
    switch (parts[0]) {
      case undefined: return await overview();
      case 'incidents': return await incidents(query(hash));
      case 'incident': return await incident(parts[1]);
      case 'devices': return await devices();
      case 'device': return await device(parts[1]);
      case 'point': return await point(parts[1], parts[2], query(hash));
      case 'grid': return await grid(parts[1]);
      case 'rules': return await rules();
      default: return page('404', empty());
    }
  } catch (e) {
    if (e.status !== 401) main.replaceChildren(errorBox(e));
  }
}

window.addEventListener('hashchange', route);
applyLang();
route();
