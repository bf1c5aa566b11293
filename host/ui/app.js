// Portcullis dashboard. Every action here is an admin-API call (docs/admin-api.md) made
// from this origin as the viewer; the page has no endpoints of its own and never
// receives a secret. Text from the host or an upstream is only ever set as text (never
// as HTML), and the page's Content-Security-Policy allows no inline code and no HTML
// sink at all (Trusted Types).

const main = document.getElementById('main');
const AUTH_TYPES = {
  none: 'No credential',
  bearer_token: 'Bearer token',
  api_key: 'API key',
  basic: 'Basic (username and password)',
  oauth2_client_credentials: 'OAuth 2.0 client credentials (shared)',
  oauth2_authorization_code: 'OAuth 2.0 authorization code (per user)',
  oauth2_dcr: 'OAuth 2.0 with dynamic client registration (per user)',
};
// The secret field of each auth type, as the config names it.
const SECRET_FIELD = {
  bearer_token: 'secret', api_key: 'secret', basic: 'password',
  oauth2_client_credentials: 'client_secret', oauth2_authorization_code: 'client_secret',
};
const WITH_CLIENT = ['oauth2_client_credentials', 'oauth2_authorization_code'];
const WITH_SCOPES = ['oauth2_client_credentials', 'oauth2_authorization_code', 'oauth2_dcr'];
const PER_USER = ['oauth2_authorization_code', 'oauth2_dcr'];
const MASK = '********';
const APERTURE_CAP = 'tailscale.com/cap/aperture';

// ---------- small helpers ----------

/** Builds an element; children are nodes or strings (set as text, never parsed). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...present(children.flat()).map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return el;
}

const present = (list) => list.filter((c) => c !== undefined && c !== null && c !== false && c !== '');

let fieldSeq = 0;
const uid = (p) => `${p}-${++fieldSeq}`;

/** Only web addresses become links or navigations (a provider's docs, an authorization URL). */
function webUrl(u) {
  try {
    const url = new URL(u);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
  } catch {
    return null;
  }
}

/** An API failure, with the host's error code and message. */
class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : {};
    super(err.message || `the host answered ${status}`);
    this.status = status;
    this.code = err.code || `http_${status}`;
    this.body = err;
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: { code: 'network', message: `the host could not be reached (${e.message}); is it running?` } });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { data, headers: resp.headers, status: resp.status };
}

function toast(message) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 3500);
}

function notice(kind, ...children) {
  return h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

function errorNotice(e, what) {
  return notice('error', h('p', {}, h('strong', {}, `${what}: `), e.message),
    e.code ? h('p', { class: 'meta' }, `Error code: ${e.code}`) : null);
}

/** One message slot under the page's heading: a new message replaces the last. */
function flash(node) {
  main.querySelector('.flash')?.remove();
  node.classList.add('flash');
  main.querySelector('h1')?.after(node);
}

function copyBox(label, value) {
  const code = h('code', { text: value, 'data-testid': 'copy-value' });
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      toast('Copied');
    } catch {
      // Not a secure context (plain HTTP on a tailnet address): select it for the user.
      window.getSelection().selectAllChildren(code);
      toast('Selected: press Ctrl+C (⌘C) to copy');
    }
  };
  return h('div', { class: 'copy' }, code, h('button', { type: 'button', class: 'small', 'aria-label': `Copy ${label}`, onclick: copy }, 'Copy'));
}

// ---------- unsaved edits ----------

let dirty = false;
const markDirty = () => { dirty = true; };
const leaveOk = () => !dirty || window.confirm('You have unsaved changes. Leave this page and lose them?');
main.addEventListener('input', (e) => { if (e.target.closest('[data-edits]')) markDirty(); });
window.addEventListener('beforeunload', (e) => { if (dirty) e.preventDefault(); });

// ---------- form parts ----------

/** Editable chips (scopes, sources, patterns): remove with × or Backspace, add with Enter, comma or the button. */
function chips({ label, values, onChange, placeholder, hint, name }) {
  const id = uid('chip');
  const list = h('ul', { class: 'chips', 'aria-label': label });
  const input = h('input', { type: 'text', id, placeholder: placeholder || '', autocomplete: 'off', 'data-chips': name || label });
  const changed = () => { markDirty(); onChange(values); };
  const draw = () => {
    list.replaceChildren(...values.map((v, i) => h('li', { class: 'chip' }, h('span', { text: v }),
      h('button', {
        type: 'button', 'aria-label': `Remove ${v}`, title: `Remove ${v}`,
        onclick: () => { values.splice(i, 1); draw(); changed(); input.focus(); },
      }, '×'))));
  };
  const add = () => {
    const parts = input.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
    let grew = false;
    for (const p of parts) if (!values.includes(p)) { values.push(p); grew = true; }
    input.value = '';
    if (grew) { draw(); changed(); }
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ',') { e.preventDefault(); add(); }
    else if (e.key === 'Backspace' && !input.value && values.length) { values.pop(); draw(); changed(); }
  });
  input.addEventListener('blur', add);
  draw();
  const problem = h('p', { class: 'problem', hidden: true });
  const wrap = h('div', { class: 'field' },
    h('label', { for: id, text: label }), list,
    h('div', { class: 'row' }, input, h('button', { type: 'button', class: 'small', onclick: add, 'aria-label': `Add to ${label}` }, 'Add')),
    hint ? h('p', { class: 'hint', text: hint }) : null, problem);
  wrap.setProblem = (msg) => { problem.hidden = !msg; problem.textContent = msg || ''; };
  return wrap;
}

function textField({ label, value, onInput, type = 'text', hint, required, name, autocomplete = 'off', placeholder }) {
  const id = uid('f');
  const hintId = hint ? `${id}-hint` : null;
  const problem = h('p', { class: 'problem', id: `${id}-problem`, hidden: true });
  const input = h('input', {
    type, id, value: value ?? '', required, autocomplete, placeholder, 'data-field': name,
    'aria-describedby': [hintId, `${id}-problem`].filter(Boolean).join(' '),
    oninput: (e) => onInput(e.target.value),
  });
  const wrap = h('div', { class: 'field' }, h('label', { for: id }, label, required ? h('span', { 'aria-hidden': 'true' }, ' *') : null),
    input, hint ? h('p', { class: 'hint', id: hintId, text: hint }) : null, problem);
  wrap.setProblem = (msg) => {
    problem.hidden = !msg;
    problem.textContent = msg || '';
    input.setAttribute('aria-invalid', msg ? 'true' : 'false');
  };
  return wrap;
}

function selectField({ label, value, options, onChange, name }) {
  const id = uid('s');
  const sel = h('select', { id, 'data-field': name, onchange: (e) => onChange(e.target.value) },
    ...Object.entries(options).map(([v, t]) => h('option', { value: v, selected: v === value }, t)));
  return h('div', { class: 'field' }, h('label', { for: id, text: label }), sel);
}

/**
 * Name/value rows (`auth_params`). Rows are edited in place (focus stays where it is);
 * an empty or repeated name is a problem shown at the rows, never a silent loss.
 */
function keyValues(label, rows, onChange) {
  const box = h('div');
  const problem = h('p', { class: 'problem', hidden: true });
  const check = () => {
    const names = rows.map(([k]) => k.trim());
    const msg = names.some((n) => !n) ? 'Every parameter needs a name.'
      : names.some((n, i) => names.indexOf(n) !== i) ? 'A parameter name appears twice; keep one.' : '';
    problem.hidden = !msg;
    problem.textContent = msg;
    return !msg;
  };
  const changed = () => { check(); markDirty(); onChange(); };
  const draw = () => {
    box.replaceChildren(...rows.map((row, i) => {
      const kid = uid('k'); const vid = uid('v');
      return h('div', { class: 'kv' },
        h('div', {}, h('label', { for: kid, class: 'sr-only', text: `Name of parameter ${i + 1}` }),
          h('input', { type: 'text', id: kid, value: row[0], oninput: (e) => { row[0] = e.target.value; changed(); } })),
        h('div', {}, h('label', { for: vid, class: 'sr-only', text: `Value of parameter ${i + 1}` }),
          h('input', { type: 'text', id: vid, value: row[1], oninput: (e) => { row[1] = e.target.value; changed(); } })),
        h('button', { type: 'button', class: 'small', 'aria-label': `Remove parameter ${i + 1}`, onclick: () => { rows.splice(i, 1); draw(); changed(); addButton.focus(); } }, '×'));
    }));
  };
  const addButton = h('button', { type: 'button', class: 'small', onclick: () => { rows.push(['', '']); draw(); changed(); box.lastElementChild?.querySelector('input')?.focus(); } }, 'Add parameter');
  draw();
  const wrap = h('div', { class: 'field' }, h('span', { class: 'label', text: label }), box, problem, addButton,
    h('p', { class: 'hint', text: 'Sent with the authorization request, e.g. access_type=offline. Providers pre-fill what they need for refresh tokens.' }));
  wrap.valid = check;
  wrap.setProblem = (msg) => { if (msg) { problem.hidden = false; problem.textContent = msg; } else check(); };
  return wrap;
}

function diagnosticList(diags, lineOf) {
  if (!diags.length) return [];
  return [h('ul', { class: 'diags', 'aria-label': 'Problems' }, ...diags.map((d) => {
    const line = lineOf ? lineOf(d.path) : null;
    const text = [h('span', { class: `sev-${d.severity}`, text: d.severity }), ' ',
      line ? `line ${line}: ` : '', d.path ? h('code', { text: d.path }) : '', d.path ? ' — ' : '', d.message];
    return h('li', { 'data-line': line || '' }, line && lineOf.go
      ? h('button', { type: 'button', onclick: () => lineOf.go(line) }, ...text)
      : text);
  }))];
}

/** A page's data from `path`, or null once the page says why it could not be loaded. */
async function loadOr(render, title, what, path) {
  try {
    return (await api('GET', path)).data;
  } catch (e) {
    render(title, errorNotice(e, what));
    return null;
  }
}

// ---------- who is looking ----------

let me = null;

async function whoami() {
  if (me) return me;
  const { data } = await api('GET', '/api/whoami');
  me = data;
  document.getElementById('who').textContent = `${data.login}${data.role === 'admin' ? ' · admin' : ''}`;
  for (const li of document.querySelectorAll('.admin-only')) li.hidden = data.role !== 'admin';
  return me;
}

/** Settings are for admins; the API refuses anyone else anyway, this only says so. */
function notAdmin(render) {
  if (me && me.role === 'admin') return false;
  render('Settings', notice('warning', h('p', {}, `${me ? me.login : 'You'} is not an admin. Settings need a grant with {"role": "admin"}; ask an admin of this host.`)));
  return true;
}

// ---------- Connectors (every user) ----------

const STATUS_BADGE = { Ready: 'ok', 'Needs auth': 'warn', Misconfigured: 'bad', 'No access': 'info' };

async function connectorsPage(render) {
  const list = await loadOr(render, 'Connectors', 'The connectors could not be loaded', '/api/connectors');
  if (!list) return;
  const connectors = list.connectors;
  const intro = h('p', { class: 'lead' }, 'Every connector of this host with your status on it. Agents reach HTTP connectors at /v1/connectors/<id>/ and MCP tools at /v1/mcp.');
  if (!connectors.length) {
    render('Connectors', intro, notice('info', h('p', {}, 'No connectors are configured yet.'),
      me && me.role === 'admin' ? h('p', {}, h('a', { href: '#/settings/connectors/new' }, 'Add a connector')) : null));
    return;
  }
  const loads = [];
  const cards = h('ul', { class: 'cards' }, ...connectors.map((c) => connectorCard(c, loads, render)));
  render('Connectors', intro, cards);
  // A few at a time: a slow upstream must not hold every connection the browser has.
  const next = async () => { while (loads.length) await loads.shift()(); };
  await Promise.all([next(), next(), next()]);
}

function connectorCard(c, loads, render) {
  const healthState = c.health ? c.health.state : 'unknown';
  const checks = c.health ? Object.entries(c.health.checks) : [];
  const capsBox = h('div', { class: 'caps' });
  const actions = h('div', { class: 'actions' });
  const headingId = uid('conn');
  const card = h('li', { class: 'card', 'data-connector': c.id, 'aria-labelledby': headingId },
    h('header', {},
      h('div', {}, h('h2', { id: headingId, text: c.id }), h('p', { class: 'meta', text: `${c.protocol.toUpperCase()} · ${c.provider} · ${AUTH_TYPES[c.auth_type] || c.auth_type}` })),
      h('span', { class: `badge ${STATUS_BADGE[c.status] || 'info'}`, 'data-testid': 'status' }, c.status)),
    c.description ? h('p', { text: c.description }) : null,
    h('p', { class: 'meta' }, 'Health: ', h('span', { class: `badge ${healthState === 'ok' ? 'ok' : healthState === 'failing' ? 'bad' : 'info'}`, 'data-testid': 'health' }, healthState)),
    checks.length ? h('ul', { class: 'checks', 'aria-label': `Health checks of ${c.id}` },
      ...checks.map(([name, r]) => h('li', {}, `${name}: `, r.ok ? 'ok' : `failing — ${r.error || 'no detail'}`))) : null,
    c.status === 'Misconfigured' ? notice('warning', h('p', {}, 'Connected without offline access: the connection ends when the access token expires. Ask an admin to enable offline access (scopes or auth_params), then Reconnect.')) : null,
    c.step_up ? notice('warning', h('p', {}, `${c.id} asked for more access than you granted (${c.step_up.scopes.join(' ')}). Reconnect to allow it.`)) : null,
    capsBox, actions);
  if (c.per_user && c.status !== 'No access') {
    if (c.status === 'Needs auth') {
      actions.append(h('button', { type: 'button', class: 'primary', onclick: (e) => connect(c, e.target) }, `Connect ${c.id}`));
    } else {
      actions.append(
        h('button', { type: 'button', onclick: (e) => connect(c, e.target) }, `Reconnect ${c.id}`),
        h('button', { type: 'button', class: 'danger', onclick: (e) => disconnect(c, e.target, render) }, `Disconnect ${c.id}`));
    }
  }
  if (c.status === 'No access') {
    capsBox.append(h('p', { class: 'meta', text: 'You have no grant on this connector; ask an admin for one.' }));
  } else if (c.status === 'Needs auth' && c.protocol === 'mcp') {
    capsBox.append(h('p', { class: 'meta', text: 'Connect to see what you can use.' }));
  } else {
    capsBox.append(h('p', { class: 'meta', text: 'Loading capabilities…' }));
    capsBox.setAttribute('aria-busy', 'true');
    loads.push(() => loadCapabilities(c, capsBox));
  }
  return card;
}

async function loadCapabilities(c, box) {
  try {
    const { data } = await api('GET', `/api/connectors/${encodeURIComponent(c.id)}/capabilities`);
    const groups = [
      ['Tools', data.tools.map((t) => [t.name, t.description])],
      ['Prompts', (data.prompts || []).map((p) => [p.name, p.description])],
      ['Resources', data.resources.map((r) => [r.uri, r.name])],
      ['Resource templates', data.templates.map((t) => [t.uri_template, t.name])],
    ].filter(([, items]) => items.length);
    const parts = [h('p', { class: 'meta' }, 'Endpoint: ', h('code', { text: data.endpoint }),
      ...(data.mcp_endpoint ? [' (this connector alone, names unprefixed: ', h('code', { text: data.mcp_endpoint }), ')'] : []))];
    if (!groups.length) {
      parts.push(h('p', { class: 'meta', text: c.protocol === 'mcp'
        ? 'No tools, prompts, resources or templates you may use (the upstream lists none, or it could not be reached: see Health).'
        : 'An HTTP API: agents call it through the endpoint above.' }));
    }
    for (const [title, items] of groups) {
      parts.push(h('h3', { text: `${title} (${items.length})` }),
        h('ul', { 'aria-label': `${title} of ${c.id}`, tabindex: '0' }, ...items.map(([name, d]) => h('li', {}, h('code', { text: name }), d ? ` — ${d}` : ''))));
    }
    box.replaceChildren(...parts);
  } catch (e) {
    box.replaceChildren(h('p', { class: 'meta', text: `Capabilities could not be loaded: ${e.message}` }));
  }
  box.removeAttribute('aria-busy');
}

async function connect(c, button) {
  button.disabled = true;
  try {
    const { data } = await api('POST', `/api/connectors/${encodeURIComponent(c.id)}/connect`, {});
    const url = webUrl(data.auth_url);
    if (!url) throw new ApiError(0, { error: { code: 'bad_auth_url', message: 'the authorization URL is not a web address; ask an admin to check the connector' } });
    // The provider sends the browser back to the callback page, which says how it went.
    window.location.assign(url);
  } catch (e) {
    button.disabled = false;
    flash(errorNotice(e, `${c.id} could not start connecting`));
  }
}

async function disconnect(c, button, render) {
  if (!window.confirm(`Disconnect ${c.id}? Your agents lose access until you connect again; the provider is asked to revoke the tokens.`)) return;
  button.disabled = true;
  try {
    await api('DELETE', `/api/connectors/${encodeURIComponent(c.id)}/connection`);
    toast(`${c.id} disconnected`);
    await connectorsPage(render);
  } catch (e) {
    button.disabled = false;
    flash(errorNotice(e, `${c.id} could not be disconnected`));
  }
}

// ---------- Settings: connectors (admins) ----------

async function settingsConnectors(render) {
  if (notAdmin(render)) return;
  const cfg = await loadOr(render, 'Settings: connectors', 'The config could not be read', '/api/config');
  if (!cfg) return;
  const servers = (cfg.config.connectors && cfg.config.connectors.servers) || {};
  const ids = Object.keys(servers).sort();
  const addLink = h('a', { class: 'button primary', href: '#/settings/connectors/new' }, 'Add connector');
  if (!ids.length) {
    render('Settings: connectors', addLink, notice('info', h('p', {}, 'No connectors yet. Add one from a verified provider or as a custom connector.')));
    return;
  }
  const rows = ids.map((id) => {
    const s = servers[id];
    return h('tr', { 'data-connector': id },
      h('th', { scope: 'row' }, h('a', { href: `#/settings/connectors/edit/${encodeURIComponent(id)}`, text: id })),
      h('td', { text: s.provider || 'Custom' }),
      h('td', { text: s.protocol || '' }),
      h('td', { text: (s.auth && s.auth.type) || 'none' }),
      h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: () => removeConnector(id, render) }, `Delete ${id}`)));
  });
  render('Settings: connectors', addLink,
    h('table', {}, h('caption', { class: 'sr-only', text: 'Configured connectors' }),
      h('thead', {}, h('tr', {}, ...['ID', 'Provider', 'Protocol', 'Auth', 'Actions'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, ...rows)));
}

async function removeConnector(id, render) {
  if (!window.confirm(`Delete connector ${id}? Every user's tokens for it are revoked. Grants that name it must go too.`)) return;
  try {
    await api('DELETE', `/api/config/connectors/${encodeURIComponent(id)}`);
    toast(`${id} deleted`);
    await settingsConnectors(render);
  } catch (e) {
    const box = h('div', {}, errorNotice(e, `${id} was not deleted`), ...diagnosticList(e.body.diagnostics || []));
    flash(box);
  }
}

/** Two letters standing in for a provider's icon: its words' initials (Google Workspace → GW),
 *  else its capitals (GitHub → GH), else its first two letters (Slack → Sl). */
function initials(name) {
  const words = name.split(/\s+/).filter(Boolean);
  if (words.length >= 2) return (words[0][0] + words[1][0]).toUpperCase();
  const capitals = name.replace(/[^A-Z]/g, '');
  return capitals.length >= 2 ? capitals.slice(0, 2) : name.slice(0, 2);
}

async function picker(render) {
  if (notAdmin(render)) return;
  const reg = await loadOr(render, 'Add connector', 'The provider registry could not be read', '/api/registry');
  if (!reg) return;
  const choose = (id) => () => { location.hash = `#/settings/connectors/new/${encodeURIComponent(id)}`; };
  const entry = (p) => h('li', {}, h('button', { type: 'button', 'data-provider': p.id, onclick: choose(p.id) },
    h('span', { class: 'initials', 'aria-hidden': 'true', text: initials(p.name) }),
    h('strong', { text: p.name }), h('span', { class: 'meta', text: p.description })));
  // Categories as the plugins name them, alphabetically, "Other" last.
  const groups = new Map();
  for (const p of reg.providers.slice().sort((a, b) => a.name.localeCompare(b.name))) {
    const category = p.category || 'Other';
    if (!groups.has(category)) groups.set(category, []);
    groups.get(category).push(p);
  }
  const order = [...groups.keys()].sort((a, b) => (a === 'Other') - (b === 'Other') || a.localeCompare(b));
  // A plugin's category may read like a built-in group ("Custom"): their ids differ.
  const group = (title, items, kind = 'category') => {
    const id = `picker-${kind}-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
    return h('section', { class: 'picker-group', 'aria-labelledby': id },
      h('h2', { id, text: title }), h('ul', { class: 'picker', 'aria-label': title }, ...items));
  };
  const broken = (reg.errors || []).map((err) => h('li', {}, h('button', { type: 'button', class: 'broken', disabled: true },
    h('strong', { text: err.entry }), h('span', { class: 'meta', text: `Did not load: ${err.message}` }))));
  const custom = h('li', {}, h('button', { type: 'button', 'data-provider': 'custom', onclick: choose('custom') },
    h('span', { class: 'initials', 'aria-hidden': 'true', text: '+' }),
    h('strong', { text: 'Custom connector' }), h('span', { class: 'meta', text: 'Any HTTP API or MCP server not in the registry.' })));
  render('Add connector',
    h('p', { class: 'lead', text: 'Choose a verified provider to start from its URLs, scopes and parameters, or a custom connector.' }),
    reg.dir ? null : notice('info', h('p', {}, 'No provider registry is loaded (start the host with --registry); only custom connectors can be added.')),
    ...order.map((c) => group(c, groups.get(c).map(entry))),
    group('Custom', [custom], 'builtin'),
    broken.length ? group('Did not load', broken, 'builtin') : null);
}

/** The form's state → the connector exactly as it will be saved. */
function connectorJson(st) {
  const server = { protocol: st.protocol };
  if (st.url) server.url = st.url;
  if (st.description) server.description = st.description;
  if (st.provider) server.provider = st.provider;
  if (Object.keys(st.provider_vars).length) server.provider_vars = { ...st.provider_vars };
  const t = st.auth.type;
  const a = { type: t };
  const field = SECRET_FIELD[t];
  if (t === 'api_key') { a.name = st.auth.name; a.in = st.auth.in; }
  if (t === 'bearer_token' && st.auth.scheme) a.scheme = st.auth.scheme;
  if (t === 'basic') a.username = st.auth.username;
  if (WITH_CLIENT.includes(t)) a.client_id = st.auth.client_id;
  if (field) {
    const ref = secretRef(st, field);
    if (ref !== undefined) a[field] = ref;
  }
  if (t === 'oauth2_authorization_code') a.authorization_url = st.auth.authorization_url;
  if (WITH_CLIENT.includes(t)) a.token_url = st.auth.token_url;
  if (t === 'oauth2_authorization_code' && st.auth.revocation_url) a.revocation_url = st.auth.revocation_url;
  if (t === 'oauth2_authorization_code' && st.auth.refresh_url) a.refresh_url = st.auth.refresh_url;
  if (WITH_SCOPES.includes(t)) a.scopes = st.auth.scopes.slice();
  if (t === 'oauth2_authorization_code' && st.auth.auth_params.length) a.auth_params = Object.fromEntries(st.auth.auth_params.map(([k, v]) => [k.trim(), v]));
  for (const [k, v] of Object.entries(st.extra)) if (!(k in server)) server[k] = v;
  if (t !== 'none') server.auth = a;
  return server;
}

/**
 * What the saved config will hold for the secret. A typed secret is sent inline; the
 * host moves it into the vault under `<id>_<field>`, or the first of `_2`, `_3`… that no
 * config field refers to yet (so a new value never replaces one in use), all within the
 * save. The preview shows that reference, never the value. Untouched, the saved
 * reference stays.
 */
function secretRef(st, field) {
  if (st.secretValue) return { vault: vaultName(st, field) };
  if (st.kept && st.kept.field === field) return st.kept.value;
  return undefined;
}

function vaultName(st, field) {
  const base = `${st.id}_${field}`;
  const referred = (name) => (st.secrets.find((s) => s.name === name)?.used_by || []).length > 0;
  let name = base;
  for (let n = 2; referred(name); n++) name = `${base}_${n}`;
  return name;
}

function fromServer(id, server) {
  const auth = server.auth || { type: 'none' };
  const field = SECRET_FIELD[auth.type];
  const known = ['protocol', 'url', 'description', 'provider', 'provider_vars', 'auth'];
  const extra = Object.fromEntries(Object.entries(server).filter(([k]) => !known.includes(k)));
  const keptValue = field ? auth[field] : undefined;
  return {
    id, protocol: server.protocol || 'http', url: server.url || '', description: server.description || '',
    provider: server.provider || '', provider_vars: { ...(server.provider_vars || {}) }, extra,
    auth: {
      type: auth.type || 'none', client_id: auth.client_id || '', username: auth.username || '', name: auth.name || '', in: auth.in || 'header', scheme: auth.scheme || '',
      authorization_url: auth.authorization_url || '', token_url: auth.token_url || '', revocation_url: auth.revocation_url || '', refresh_url: auth.refresh_url || '',
      scopes: (auth.scopes || []).slice(), auth_params: Object.entries(auth.auth_params || {}),
    },
    // A template's empty placeholder is no secret to keep.
    kept: keptValue !== undefined && keptValue !== '' ? { field, value: keptValue } : null,
    secretValue: '',
    secrets: [],
  };
}

async function connectorForm(render, providerId, editId) {
  if (notAdmin(render)) return;
  let cfg; let reg; let secrets; let existing = null;
  try {
    [{ data: cfg }, { data: reg }, { data: secrets }] = await Promise.all([
      api('GET', '/api/config'), api('GET', '/api/registry'), api('GET', '/api/secrets')]);
    if (editId) existing = (await api('GET', `/api/config/connectors/${encodeURIComponent(editId)}`)).data;
  } catch (e) {
    render(editId ? `Edit ${editId}` : 'Add connector', errorNotice(e, 'The form could not be prepared'));
    return;
  }
  let provider = null;
  let st;
  if (existing) {
    provider = reg.providers.find((p) => p.id === existing.server.provider) || null;
    st = fromServer(existing.id, existing.server);
  } else if (providerId !== 'custom') {
    provider = reg.providers.find((p) => p.id === providerId);
    if (!provider) {
      render('Add connector', notice('error', h('p', {}, `No provider "${providerId}" is loaded; `, h('a', { href: '#/settings/connectors/new' }, 'choose another'), '.')));
      return;
    }
    st = fromServer(provider.connector.id, provider.connector.server);
    // A new connector starts from the provider's defaults; a saved one keeps what it has.
    for (const i of provider.inputs) if (st.provider_vars[i.name] === undefined && i.default) st.provider_vars[i.name] = i.default;
  } else {
    st = fromServer('', { protocol: 'http', auth: { type: 'none' } });
  }
  st.secrets = (secrets && secrets.secrets) || [];
  const servers = (cfg.config.connectors && cfg.config.connectors.servers) || {};
  // Where the host builds redirect URIs from: public_url, else the Host this page uses.
  const publicUrl = cfg.config.public_url;
  const base = (publicUrl || `http://${location.host}`).replace(/\/+$/, '');
  const title = existing ? `Edit ${existing.id}` : provider ? `Add ${provider.name}` : 'Add a custom connector';

  const preview = h('pre', { 'data-testid': 'preview', tabindex: '0', 'aria-label': 'Connector preview (JSON)' });
  const previewId = h('code', { 'data-testid': 'preview-id' });
  const secretNote = h('p', { class: 'hint' });
  const callbackField = h('div', { class: 'field' });
  const general = h('div');
  const fields = {};
  const saveButton = h('button', { type: 'submit', class: 'primary' }, existing ? 'Save changes' : 'Save connector');

  const refresh = () => {
    preview.textContent = JSON.stringify(connectorJson(st), null, 2);
    previewId.textContent = st.id || '<id>';
    const field = SECRET_FIELD[st.auth.type];
    secretNote.textContent = field && st.secretValue
      ? `On save, the ${field} goes into the vault as "${vaultName(st, field)}" and the config refers to it by name.`
      : '';
    const callback = `${base}/aperture/auth/${st.id || '<connector-id>'}/callback`;
    if (st.auth.type === 'oauth2_authorization_code') {
      callbackField.replaceChildren(h('span', { class: 'label', text: 'Callback URL to register at the provider' }), copyBox('callback URL', callback),
        h('p', { class: 'hint', text: 'Register this exact URL as the redirect URI of your OAuth application. It follows the connector ID.' }));
    } else if (st.auth.type === 'oauth2_dcr') {
      callbackField.replaceChildren(h('span', { class: 'label', text: 'Callback URL' }), copyBox('callback URL', callback),
        publicUrl ? h('p', { class: 'hint', text: 'Registered with the provider automatically (dynamic client registration).' })
          : notice('warning', h('p', { text: 'Dynamic registration needs a fixed callback URL: set public_url in the config (Config file) so users can connect from any address.' })));
    } else {
      callbackField.replaceChildren();
    }
    scheduleValidation();
  };

  // Live validation: the whole config with this connector, as a save would check it.
  let timer = null; let seq = 0;
  const scheduleValidation = () => { clearTimeout(timer); timer = setTimeout(validate, 400); };
  /** The connector as the save will send it: a typed secret inline (the host moves it). */
  const outgoing = () => {
    const server = connectorJson(st);
    const field = SECRET_FIELD[st.auth.type];
    if (field && st.secretValue) server.auth[field] = st.secretValue;
    return server;
  };
  const candidate = () => {
    const config = structuredClone(cfg.config);
    config.connectors = config.connectors || {};
    config.connectors.servers = { ...(config.connectors.servers || {}), [st.id]: outgoing() };
    return config;
  };
  const localProblems = () => {
    const p = [];
    if (!st.id) p.push(['id', 'Enter a connector ID: it starts with a letter and has letters and digits only.']);
    else if (!existing && servers[st.id]) p.push(['id', `A connector "${st.id}" exists already; choose another ID or edit that one.`]);
    if (fields['auth.auth_params'] && !fields['auth.auth_params'].valid()) p.push(['auth.auth_params', 'Fix the parameter names.']);
    return p;
  };
  const validate = async () => {
    const mine = ++seq;
    const problems = localProblems();
    if (problems.length) {
      showProblems(problems.map(([path, message]) => ({ severity: 'error', path: path === 'id' ? 'id' : `connectors.servers.${st.id}.${path}`, message })));
      return false;
    }
    try {
      const { data } = await api('POST', '/api/config:validate', { config: candidate() });
      if (mine === seq) showProblems(data.diagnostics);
      return data.valid;
    } catch (e) {
      if (mine === seq) general.replaceChildren(errorNotice(e, 'Validation failed'));
      return false;
    }
  };
  const showProblems = (diags) => {
    for (const f of Object.values(fields)) f.setProblem?.('');
    const prefix = `connectors.servers.${st.id}.`;
    const rest = [];
    for (const d of diags) {
      const rel = d.path === 'id' || d.path === prefix.slice(0, -1) ? 'id' : d.path.startsWith(prefix) ? d.path.slice(prefix.length) : null;
      const f = rel && (fields[rel] || fields[rel.replace(/\[\d+\]$/, '')]);
      if (f && f.setProblem && d.severity !== 'notice') f.setProblem(d.message);
      else rest.push(d);
    }
    general.replaceChildren(...diagnosticList(rest));
  };

  const track = (key, el) => { fields[key] = el; return el; };
  const idField = track('id', textField({
    label: 'Connector ID', value: st.id, required: true, name: 'id',
    hint: existing ? 'The ID cannot change once saved.' : 'Letters and digits. Agents use it in /v1/connectors/<id>/ and in tool names.',
    onInput: (v) => { st.id = v.trim(); refresh(); },
  }));
  if (existing) idField.querySelector('input').readOnly = true;

  const authBox = h('div');
  const drawAuth = () => {
    const t = st.auth.type;
    const parts = [];
    const field = SECRET_FIELD[t];
    const text = (key, label, opts = {}) => track(`auth.${key}`, textField({ label, value: st.auth[key], name: `auth.${key}`, onInput: (v) => { st.auth[key] = v.trim(); refresh(); }, ...opts }));
    if (t === 'api_key') {
      parts.push(text('name', 'Header or query parameter name', { required: true, hint: 'For example X-Api-Key.' }),
        selectField({ label: 'Sent in', value: st.auth.in, name: 'auth.in', options: { header: 'A header', query: 'The query string' }, onChange: (v) => { st.auth.in = v; refresh(); } }));
    }
    const own = provider && provider.static_auth;
    if (own && own.type !== t) parts.push(h('p', { class: 'hint', 'data-testid': 'static-auth-hint', text: `${provider.name} also takes a token pasted here instead of each user's OAuth: choose "${AUTH_TYPES[own.type]}" as the auth type.` }));
    if (t === 'bearer_token') parts.push(text('scheme', 'Scheme', { placeholder: 'Bearer', hint: 'Sent as "Authorization: <scheme> <token>"; empty means Bearer.' }));
    if (t === 'basic') parts.push(text('username', 'Username', { required: true }));
    if (WITH_CLIENT.includes(t)) parts.push(text('client_id', 'Client ID', { required: true }));
    if (field) {
      const optional = t === 'oauth2_authorization_code';
      const label = { secret: t === 'api_key' ? 'API key' : 'Token', password: 'Password', client_secret: 'Client secret' }[field];
      const keptHint = st.kept ? 'Leave empty to keep the saved one. ' : '';
      parts.push(track(`auth.${field}`, textField({
        label, type: 'password', name: `auth.${field}`, required: !optional && !st.kept,
        hint: keptHint + (optional ? 'PKCE-only applications can leave it empty.' : 'Stored sealed in the vault; never shown again.'),
        onInput: (v) => { st.secretValue = v; refresh(); },
      })), secretNote);
    }
    if (t === 'oauth2_authorization_code') parts.push(text('authorization_url', 'Authorization URL', { type: 'url', required: true }));
    if (WITH_CLIENT.includes(t)) parts.push(text('token_url', 'Token URL', { type: 'url', required: true }));
    if (t === 'oauth2_authorization_code') parts.push(text('revocation_url', 'Revocation URL', { type: 'url', hint: 'Optional: tokens are revoked here when a user disconnects.' }));
    if (t === 'oauth2_authorization_code') parts.push(text('refresh_url', 'Refresh URL', { type: 'url', hint: 'Optional: where refresh grants go when not the token URL (the provider\'s plugin knows Figma\'s).' }));
    if (WITH_SCOPES.includes(t)) {
      parts.push(track('auth.scopes', chips({ label: 'Scopes', name: 'scopes', values: st.auth.scopes, placeholder: 'Add a scope', onChange: refresh, hint: provider ? 'Pre-filled with the provider\'s defaults; add or remove what your users need.' : null })));
    }
    if (t === 'oauth2_authorization_code') parts.push(track('auth.auth_params', keyValues('Extra authorization parameters (auth_params)', st.auth.auth_params, refresh)));
    else delete fields['auth.auth_params'];
    authBox.replaceChildren(...parts);
  };

  const vars = provider && provider.inputs.length
    ? h('fieldset', {}, h('legend', { text: `${provider.name} settings` }), ...provider.inputs.map((i) => track(`provider_vars.${i.name}`, textField({
      label: i.name, value: st.provider_vars[i.name] ?? '', placeholder: i.default || '', hint: i.description, name: `provider_vars.${i.name}`,
      onInput: (v) => { if (v) st.provider_vars[i.name] = v; else delete st.provider_vars[i.name]; fillUrls(); refresh(); },
    }))))
    : null;
  // A provider variable that goes into the sign-in URLs (Microsoft's tenant) fills them
  // as it is typed; a value that is not one URL segment leaves the placeholder showing.
  const urlInputs = (provider && provider.oauth && provider.oauth.url_inputs) || [];
  const fillUrls = () => {
    if (!urlInputs.length || st.auth.type !== 'oauth2_authorization_code') return;
    for (const key of ['authorization_url', 'token_url']) {
      let url = provider.oauth[key];
      for (const n of urlInputs) {
        const v = st.provider_vars[n] ?? (provider.inputs.find((i) => i.name === n) || {}).default;
        if (v && /^[A-Za-z0-9._-]{1,128}$/.test(v)) url = url.split(`{${n}}`).join(v);
      }
      st.auth[key] = url;
      const input = fields[`auth.${key}`] && fields[`auth.${key}`].querySelector('input');
      if (input) input.value = url;
    }
  };

  const protocols = provider && !provider.mcp_url && st.protocol === 'http' ? { http: 'HTTP API' } : { http: 'HTTP API', mcp: 'MCP server' };
  const urlField = track('url', textField({ label: 'URL', type: 'url', value: st.url, name: 'url', required: true, onInput: (v) => { st.url = v.trim(); refresh(); } }));
  const form = h('form', { novalidate: true, 'aria-label': title, 'data-edits': true, 'data-version': existing ? existing.etag : 'new', onsubmit: async (e) => { e.preventDefault(); await save(); } },
    h('fieldset', {}, h('legend', { text: 'Connector' }), idField,
      selectField({
        label: 'Protocol', value: st.protocol, options: protocols, name: 'protocol',
        onChange: (v) => {
          st.protocol = v;
          if (provider) st.url = (v === 'mcp' ? provider.mcp_url : provider.url) || st.url;
          urlField.querySelector('input').value = st.url;
          refresh();
        },
      }),
      urlField,
      track('description', textField({ label: 'Description', value: st.description, name: 'description', hint: 'Shown to users and to agents listing connectors.', onInput: (v) => { st.description = v; refresh(); } }))),
    vars,
    h('fieldset', {}, h('legend', { text: 'Authentication' }),
      selectField({
        label: 'Auth type', value: st.auth.type, options: AUTH_TYPES, name: 'auth.type',
        onChange: (v) => {
          st.auth.type = v;
          // A provider's own static credential (a Discord bot token) goes its way.
          const own = provider && provider.static_auth;
          if (own && own.type === v) {
            if (v === 'api_key') { st.auth.name = own.name; st.auth.in = own.in; }
            if (v === 'bearer_token') st.auth.scheme = own.scheme || '';
          }
          // A secret typed for another field must not be saved into this one.
          st.secretValue = '';
          st.kept = st.kept && SECRET_FIELD[v] === st.kept.field ? st.kept : null;
          drawAuth();
          refresh();
        },
      }),
      authBox, callbackField),
    general,
    h('div', { class: 'actions' }, saveButton, h('a', { class: 'button', href: '#/settings/connectors' }, 'Cancel')));

  const save = async () => {
    saveButton.disabled = true;
    try {
      clearTimeout(timer);
      if (!(await validate())) {
        (main.querySelector('[aria-invalid=true]') || general).focus?.();
        flash(notice('error', h('p', { text: 'Not saved: fix the problems shown at their fields and below the form.' })));
        return;
      }
      const headers = existing ? { 'If-Match': `"${existing.etag}"` } : { 'If-None-Match': '*' };
      await api('PUT', `/api/config/connectors/${encodeURIComponent(st.id)}`, outgoing(), headers);
      dirty = false;
      toast(`${st.id} saved`);
      // Shown again as saved, with its new version for the next edit.
      const target = `#/settings/connectors/edit/${encodeURIComponent(st.id)}?saved=1`;
      if (location.hash === target) await route(); else location.hash = target;
    } catch (e) {
      const explain = e.code === 'stale_connector'
        ? 'Someone else changed this connector since you opened it. Your form is kept: open the connector again in another tab to see their version, then reapply your change here or there.'
        : e.code === 'connector_exists' ? `A connector "${st.id}" was added meanwhile; choose another ID.` : null;
      general.replaceChildren(errorNotice(e, 'Not saved'), explain ? notice('warning', h('p', { text: explain })) : '', ...diagnosticList(e.body.diagnostics || []));
    } finally {
      saveButton.disabled = false;
    }
  };

  drawAuth();
  const docs = provider && webUrl(provider.docs_url || '');
  render(title,
    /[?&]saved=1/.test(location.hash) ? notice('ok', h('p', {}, 'Saved. This is the connector as the config now holds it. ', h('a', { href: '#/connectors' }, 'See it on the Connectors page'), '.')) : null,
    provider ? h('p', { class: 'lead' }, `Pre-filled from the ${provider.name} provider (version ${provider.version}). `, docs ? h('a', { href: docs, rel: 'noreferrer noopener', target: '_blank' }, 'Provider API docs') : null) : null,
    h('div', { class: 'layout' }, form,
      h('aside', { class: 'preview', 'aria-label': 'Preview' }, h('h2', { text: 'What will be saved' }),
        h('p', { class: 'hint' }, 'connectors.servers.', previewId, ' — secrets never appear here.'), preview)));
  refresh();
}

// ---------- Grants (admins) ----------

/** A grant as the editor shows it; anything it does not edit is kept as it was. */
function grantModel(g) {
  const caps = [g.app && g.app[APERTURE_CAP]].flat().filter((c) => c && typeof c === 'object');
  const m = { src: [g.src || []].flat().map(String), connectors: [], admin: false, metrics: false, other: [], original: g, changed: false };
  for (const c of caps) {
    const rest = { ...c };
    if (rest.role === 'admin') { m.admin = true; delete rest.role; }
    if (Array.isArray(rest.connectors) || typeof rest.connectors === 'string') { m.connectors.push(...[rest.connectors].flat()); delete rest.connectors; }
    if (rest.read_metrics === true) { m.metrics = true; delete rest.read_metrics; }
    if (Object.keys(rest).length) m.other.push(rest);
  }
  return m;
}

function grantJson(m) {
  if (!m.changed) return m.original;
  const g = structuredClone(m.original || {});
  g.src = m.src.slice();
  const caps = [];
  if (m.admin) caps.push({ role: 'admin' });
  if (m.connectors.length) caps.push({ connectors: m.connectors.slice() });
  if (m.metrics) caps.push({ read_metrics: true });
  caps.push(...m.other);
  g.app = { ...(g.app || {}), [APERTURE_CAP]: caps };
  return g;
}

async function grantsPage(render) {
  if (notAdmin(render)) return;
  const cfg = await loadOr(render, 'Grants', 'The config could not be read', '/api/config');
  if (!cfg) return;
  let hash = cfg.hash;
  const models = (cfg.config.grants || []).map(grantModel);
  const list = h('div', { 'data-edits': true });
  const status = h('div');
  const addButton = h('button', { type: 'button', onclick: () => { models.push({ src: [], connectors: [], admin: false, metrics: false, other: [], original: null, changed: true }); markDirty(); draw(); list.lastElementChild?.querySelector('input')?.focus(); } }, 'Add grant');
  const draw = () => list.replaceChildren(...models.map((m, i) => grantEditor(m, i, () => { models.splice(i, 1); markDirty(); draw(); addButton.focus(); })));
  const save = async (overHash) => {
    const config = structuredClone(cfg.config);
    config.grants = models.map(grantJson);
    try {
      const { data } = await api('PUT', '/api/config', { hash: overHash || hash, config });
      hash = data.hash;
      cfg.config = config;
      dirty = false;
      status.replaceChildren(notice('ok', h('p', { text: 'Grants saved and in force.' })));
    } catch (e) {
      if (e.code === 'stale_config') {
        const reapply = async () => {
          try {
            const { data: fresh } = await api('GET', '/api/config');
            cfg.config = fresh.config;
            await save(fresh.hash);
          } catch (err) { status.replaceChildren(errorNotice(err, 'The current config could not be read')); }
        };
        status.replaceChildren(notice('warning',
          h('p', { text: 'Someone else saved the config after you opened this page, so your grants were not saved. Your edits are still here.' }),
          h('p', { text: 'Apply them to the current config (their other changes are kept, the grants become yours), or discard yours and load theirs.' }),
          h('div', { class: 'actions' },
            h('button', { type: 'button', class: 'primary', onclick: reapply }, 'Apply my grants to the current config'),
            h('button', { type: 'button', onclick: () => { dirty = false; route(); } }, 'Discard mine, load theirs'))));
      } else {
        // Each problem under the grant it names (`grants[2].src`), the rest below.
        const diags = e.body.diagnostics || [];
        for (const el of list.querySelectorAll('.grant-problems')) el.replaceChildren();
        const rest = [];
        for (const d of diags) {
          const m = /^grants\[(\d+)\]/.exec(d.path || '');
          const slot = m && list.querySelector(`[data-grant="${m[1]}"] .grant-problems`);
          if (slot) slot.append(...diagnosticList([d])); else rest.push(d);
        }
        status.replaceChildren(errorNotice(e, 'Grants not saved'), ...diagnosticList(rest));
      }
    }
  };
  draw();
  render('Grants',
    h('p', { class: 'lead', text: 'Who may use which connectors. Deny by default: a caller reaches only what a grant names. Sources are logins, group:, tag: or node names; connector patterns such as github/**, jira/proxy or label:readonly (docs/configuration.md#grants).' }),
    list,
    h('div', { class: 'actions' }, addButton, h('button', { type: 'button', class: 'primary', onclick: () => save() }, 'Save grants')),
    status);
}

function grantEditor(m, i, remove) {
  const adminId = uid('adm'); const metricsId = uid('met');
  const changed = () => { m.changed = true; };
  return h('fieldset', { class: 'grant', 'data-grant': i }, h('legend', { text: `Grant ${i + 1}` }),
    chips({ label: `Sources of grant ${i + 1}`, values: m.src, placeholder: 'alice@example.com, group:eng, tag:agent', onChange: changed }),
    chips({ label: `Connector patterns of grant ${i + 1}`, values: m.connectors, placeholder: 'github/**', onChange: changed }),
    h('div', { class: 'field check' },
      h('input', { type: 'checkbox', id: adminId, checked: m.admin, onchange: (e) => { m.admin = e.target.checked; changed(); } }),
      h('label', { for: adminId, text: 'Admin (config, secrets and settings)' })),
    h('div', { class: 'field check' },
      h('input', { type: 'checkbox', id: metricsId, checked: m.metrics, onchange: (e) => { m.metrics = e.target.checked; changed(); } }),
      h('label', { for: metricsId, text: 'May read /metrics' })),
    m.other.length ? h('div', { class: 'field' }, h('span', { class: 'label', text: 'Other capabilities (kept as they are; edit them in the config file)' }),
      h('pre', { text: JSON.stringify(m.other, null, 2) })) : null,
    h('div', { class: 'grant-problems' }),
    h('button', { type: 'button', class: 'small danger', onclick: remove }, `Remove grant ${i + 1}`));
}

// ---------- Secrets (admins) ----------

async function secretsPage(render) {
  if (notAdmin(render)) return;
  const listing = await loadOr(render, 'Secrets', 'The secrets could not be listed', '/api/secrets');
  if (!listing) return;
  const status = h('div');
  const rows = listing.secrets.map((s) => h('tr', { 'data-secret': s.name },
    h('th', { scope: 'row' }, h('code', { text: s.name })),
    h('td', { text: s.set_at ? new Date(s.set_at * 1000).toLocaleString() : 'unknown' }),
    h('td', {}, s.used_by.length ? h('ul', { class: 'plain' }, ...s.used_by.map((u) => h('li', {}, h('code', { text: u })))) : 'nothing (safe to delete once you no longer need the previous config)'),
    h('td', {}, h('button', {
      type: 'button', class: 'small danger', disabled: s.used_by.length > 0, 'aria-label': `Delete ${s.name}`,
      title: s.used_by.length ? 'In use: change the connectors that refer to it first' : null,
      onclick: async () => {
        if (!window.confirm(`Delete the secret ${s.name}? This cannot be undone.`)) return;
        try {
          await api('DELETE', `/api/secrets/${encodeURIComponent(s.name)}`);
          toast(`${s.name} deleted`);
          await secretsPage(render);
        } catch (e) { status.replaceChildren(errorNotice(e, `${s.name} was not deleted`)); }
      },
    }, 'Delete'))));
  const name = { value: '' }; const value = { value: '' };
  const form = h('form', {
    'aria-label': 'Set a secret', 'data-edits': true,
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api('PUT', `/api/secrets/${encodeURIComponent(name.value.trim())}`, { value: value.value });
        dirty = false;
        toast(`${name.value.trim()} set`);
        await secretsPage(render);
      } catch (err) { status.replaceChildren(errorNotice(err, 'The secret was not set')); }
    },
  },
  h('fieldset', {}, h('legend', { text: 'Set a secret' }),
    textField({ label: 'Name', name: 'secret-name', required: true, value: listing.missing[0] || '', hint: 'Letters, digits, _, - and .; the config refers to it as {"vault": "<name>"}. Setting one that is in use puts the new value in force at once.', onInput: (v) => { name.value = v; } }),
    textField({ label: 'Value', name: 'secret-value', type: 'password', required: true, hint: 'Sealed in the vault; never shown again.', onInput: (v) => { value.value = v; } }),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Set secret'))));
  name.value = listing.missing[0] || '';
  render('Secrets',
    h('p', { class: 'lead', text: 'Named secrets sealed in the vault. Only names are listed; no value ever comes back.' }),
    listing.missing.length ? notice('warning', h('p', {}, 'The config refers to secrets the vault does not hold: ', ...listing.missing.map((m, i) => [i ? ', ' : '', h('code', { text: m })]).flat(), '. Set them below.')) : null,
    listing.secrets.length ? h('table', {}, h('caption', { class: 'sr-only', text: 'Vault secrets' }),
      h('thead', {}, h('tr', {}, ...['Name', 'Set', 'Used by', 'Actions'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, ...rows)) : notice('info', h('p', { text: 'The vault holds no named secrets yet.' })),
    status, form);
}

// ---------- Config file (admins) ----------

/**
 * The validator's path of an object key (`config::diag`): plain keys joined with a dot,
 * others quoted in brackets.
 */
const keyPath = (base, k) => (/^[A-Za-z0-9_-]+$/.test(k) ? (base ? `${base}.${k}` : k) : `${base}[${JSON.stringify(k)}]`);

/**
 * Parses JSON text and records the line of every value's JSON path (`grants[0].src`,
 * `connectors.servers.github.url`), the form the validator's diagnostics use, so a
 * message can be shown at its line. Throws a SyntaxError with `line` on bad JSON.
 */
function pathLines(text) {
  const lines = new Map();
  let i = 0; let line = 1;
  const fail = (what) => { const e = new SyntaxError(`${what} at line ${line}`); e.line = line; throw e; };
  const ws = () => { while (i < text.length && /\s/.test(text[i])) { if (text[i] === '\n') line++; i++; } };
  const str = () => {
    i++; let out = '';
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\n') fail('a line break inside a string');
      if (text[i] === '\\') {
        const len = text[i + 1] === 'u' ? 6 : 2;
        try { out += JSON.parse(`"${text.slice(i, i + len)}"`); } catch { fail('a bad escape in a string'); }
        i += len;
      } else out += text[i++];
    }
    if (i >= text.length) fail('an unterminated string');
    i++;
    return out;
  };
  const value = (path) => {
    ws();
    if (!lines.has(path)) lines.set(path, line);
    const c = text[i];
    if (c === '{') {
      i++; ws();
      if (text[i] === '}') { i++; return; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a quoted key');
        const keyLine = line;
        const p = keyPath(path, str());
        lines.set(p, keyLine);
        ws();
        if (text[i] !== ':') fail('expected ":" after a key');
        i++;
        value(p);
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return; }
        fail('expected "," or "}"');
      }
    } else if (c === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return; }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`);
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return; }
        fail('expected "," or "]"');
      }
    } else if (c === '"') str();
    else {
      const m = /^(-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 64));
      if (!m) fail('expected a value');
      i += m[0].length;
    }
  };
  value('');
  ws();
  if (i < text.length) fail('unexpected text after the config');
  return lines;
}

/** The line of `path`, or of its nearest ancestor the text has; line 1 for none. */
function lineOfPath(lines, path) {
  let p = path || '';
  for (;;) {
    if (lines.has(p)) return lines.get(p);
    const up = p.replace(/(\.[^.[\]]+|\[[^\]]*\])$/, '');
    if (up === p) return lines.has('') ? lines.get('') : 1;
    p = up;
  }
}

async function configPage(render) {
  if (notAdmin(render)) return;
  const cfg = await loadOr(render, 'Config file', 'The config could not be read', '/api/config');
  if (!cfg) return;
  let hash = cfg.hash;
  const taId = uid('cfg');
  const gutter = h('pre', { class: 'gutter', 'aria-hidden': 'true' });
  const ta = h('textarea', { id: taId, class: 'code', spellcheck: 'false', autocomplete: 'off', 'data-testid': 'config-text', 'data-edits': true, 'aria-describedby': `${taId}-help` });
  ta.value = JSON.stringify(cfg.config, null, 2);
  const status = h('div');
  let marks = new Map();
  const drawGutter = () => {
    const n = ta.value.split('\n').length;
    const out = [];
    for (let l = 1; l <= n; l++) {
      const sev = marks.get(l);
      out.push(sev ? h('span', { class: `mark-${sev}`, title: sev, 'data-mark-line': l }, `● ${l}`) : String(l), '\n');
    }
    gutter.replaceChildren(...out);
    gutter.scrollTop = ta.scrollTop;
  };
  const goLine = (l) => {
    const lines = ta.value.split('\n');
    const start = lines.slice(0, l - 1).reduce((a, s) => a + s.length + 1, 0);
    ta.focus();
    ta.setSelectionRange(start, start + (lines[l - 1] || '').length);
    ta.scrollTop = Math.max(0, (l - 5) * (parseFloat(getComputedStyle(ta).lineHeight) || 20));
  };
  const load = (config, newHash) => {
    ta.value = JSON.stringify(config, null, 2);
    hash = newHash;
    marks = new Map();
    dirty = false;
    drawGutter();
  };
  const parse = () => {
    try {
      const config = JSON.parse(ta.value);
      return { config, lines: pathLines(ta.value) };
    } catch (e) {
      let line = 1;
      try { pathLines(ta.value); } catch (pe) { line = pe.line || 1; }
      marks = new Map([[line, 'error']]);
      drawGutter();
      ta.setAttribute('aria-invalid', 'true');
      status.replaceChildren(notice('error', h('p', {}, h('strong', { text: `Line ${line}: ` }), `the text is not valid JSON (${e.message}).`),
        h('div', { class: 'actions' }, h('button', { type: 'button', onclick: () => goLine(line) }, `Go to line ${line}`))));
      return null;
    }
  };
  const show = (diags, lines, heading) => {
    const lineOf = (path) => lineOfPath(lines, path);
    lineOf.go = goLine;
    marks = new Map();
    const rank = { error: 3, warning: 2, notice: 1 };
    for (const d of diags) {
      const l = lineOf(d.path);
      if (!marks.has(l) || rank[d.severity] > rank[marks.get(l)]) marks.set(l, d.severity);
    }
    drawGutter();
    ta.setAttribute('aria-invalid', diags.some((d) => d.severity !== 'notice') ? 'true' : 'false');
    status.replaceChildren(heading, ...diagnosticList(diags, lineOf));
  };
  const validate = async () => {
    const parsed = parse();
    if (!parsed) return;
    try {
      const { data } = await api('POST', '/api/config:validate', { config: parsed.config });
      show(data.diagnostics, parsed.lines, data.valid
        ? notice('ok', h('p', { text: data.diagnostics.length ? 'Valid, with the notices below.' : 'Valid: a save would be accepted.' }))
        : notice('error', h('p', { text: 'Not valid: a save would be refused for the problems below (each at its line).' })));
    } catch (e) { status.replaceChildren(errorNotice(e, 'Validation failed')); }
  };
  const loadTheirs = async () => {
    try {
      const { data } = await api('GET', '/api/config');
      load(data.config, data.hash);
      status.replaceChildren(notice('info', h('p', { text: 'Loaded the current config.' })));
    } catch (e) { status.replaceChildren(errorNotice(e, 'The current config could not be read')); }
  };
  const save = async (overHash) => {
    const parsed = parse();
    if (!parsed) return;
    let data;
    try {
      ({ data } = await api('PUT', '/api/config', { hash: overHash || hash, config: parsed.config }));
    } catch (e) {
      if (e.code === 'stale_config') {
        status.replaceChildren(notice('warning',
          h('p', { text: 'Someone else saved the config after you loaded it, so yours was not saved. Your text is still in the editor.' }),
          h('p', { text: 'Load theirs to start again from the current config (your text is replaced), or save yours over theirs (their changes are lost).' }),
          h('div', { class: 'actions' },
            h('button', { type: 'button', onclick: loadTheirs }, 'Load theirs'),
            h('button', { type: 'button', class: 'danger', onclick: () => save(e.body.hash) }, 'Save mine over theirs'))));
      } else if (e.body.diagnostics) {
        show(e.body.diagnostics, parsed.lines, errorNotice(e, 'Not saved'));
      } else {
        status.replaceChildren(errorNotice(e, 'Not saved'));
      }
      return;
    }
    hash = data.hash;
    dirty = false;
    show([], parsed.lines, notice('ok', h('p', { text: `Saved and in force.${data.secrets.length ? ` Inline secrets moved into the vault: ${data.secrets.join(', ')}.` : ''}` })));
    if (data.secrets.length) {
      // The file now refers to the vault instead: show that, not the typed values.
      try {
        const { data: fresh } = await api('GET', '/api/config');
        load(fresh.config, fresh.hash);
      } catch (e) { status.append(errorNotice(e, 'Saved, but the new version could not be shown; reload the page')); }
    }
  };
  ta.addEventListener('input', drawGutter);
  ta.addEventListener('scroll', () => { gutter.scrollTop = ta.scrollTop; });
  render('Config file',
    h('p', { class: 'lead', id: `${taId}-help` }, `The whole config as JSON (${cfg.path}${cfg.saved ? '' : ', not saved yet: the embedded default serves'}). The file's comments are not shown here but are kept where the values they sit by are unchanged. Secrets read ${MASK}: leave them so to keep them; a secret typed here moves into the vault on save.`),
    cfg.in_force ? null : notice('warning', h('p', { text: 'The file on disk did not load; the previous config keeps serving. Fix it here and save.' })),
    h('label', { for: taId, class: 'sr-only', text: 'Config (JSON)' }),
    h('div', { class: 'editor' }, gutter, ta),
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: validate }, 'Validate'),
      h('button', { type: 'button', class: 'primary', onclick: () => save() }, 'Save'),
      h('button', { type: 'button', onclick: () => { if (leaveOk()) { dirty = false; route(); } } }, 'Reload')),
    status);
  drawGutter();
  if (cfg.diagnostics.length) show(cfg.diagnostics, pathLines(ta.value), notice('info', h('p', { text: 'The config in force has these notices and warnings:' })));
}

// ---------- routing ----------

const routes = [
  [/^#\/connectors$/, (r) => connectorsPage(r)],
  [/^#\/settings\/connectors$/, (r) => settingsConnectors(r)],
  [/^#\/settings\/connectors\/new$/, (r) => picker(r)],
  [/^#\/settings\/connectors\/new\/([^/?]+)$/, (r, m) => connectorForm(r, m[1], null)],
  [/^#\/settings\/connectors\/edit\/([^/?]+)$/, (r, m) => connectorForm(r, null, m[1])],
  [/^#\/settings\/grants$/, (r) => grantsPage(r)],
  [/^#\/settings\/secrets$/, (r) => secretsPage(r)],
  [/^#\/settings\/config$/, (r) => configPage(r)],
];

let routeSeq = 0;
let shownHash = null;
let navigated = false;

/**
 * Shows the page for the current hash. Each call gets its own `render`, which does
 * nothing once a later navigation started, so a slow page never paints over the one
 * the viewer moved on to.
 */
async function route() {
  const mine = ++routeSeq;
  const render = (title, ...children) => {
    if (mine !== routeSeq) return;
    document.title = `${title} · Portcullis`;
    main.replaceChildren(h('h1', { text: title }), ...present(children));
  };
  const full = location.hash || '#/connectors';
  const hash = full.split('?')[0];
  shownHash = location.hash;
  try {
    await whoami();
  } catch (e) {
    render('Portcullis', errorNotice(e, 'You could not be identified'),
      notice('info', h('p', { text: 'The dashboard uses your tailnet identity, like every other route of this host. Open it from a device on the tailnet.' })));
    return;
  }
  for (const a of document.querySelectorAll('#nav a')) {
    const r = a.dataset.route;
    const current = hash === `#/${r}` || (r === 'settings/connectors' && hash.startsWith('#/settings/connectors'));
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const found = routes.find(([re]) => re.test(hash));
  if (!found) { location.replace('#/connectors'); return; }
  try {
    const m = found[0].exec(hash).map((part, i) => (i ? decodeURIComponent(part) : part));
    await found[1](render, m);
  } catch (e) {
    render('Something went wrong', notice('error', h('p', { text: `This page failed: ${e.message}. Reload to try again; if it persists, the host's log may say more.` })));
  }
  // After a navigation inside the page, a screen reader starts at the new content; on
  // the first load, focus stays at the top so "Skip to content" comes first.
  if (navigated && mine === routeSeq) main.focus({ preventScroll: true });
  navigated = true;
}

window.addEventListener('hashchange', () => {
  // Only app routes navigate; anything else (an in-page anchor) is not a page change.
  if (!location.hash.startsWith('#/')) return;
  if (dirty && !leaveOk()) {
    // Stay: put the address back without showing the page again.
    history.replaceState(null, '', shownHash || '#/connectors');
    return;
  }
  dirty = false;
  route();
});
document.querySelector('.skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
route();
