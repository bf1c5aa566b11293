// Portcullis dashboard. Every action here is an admin-API call (docs/admin-api.md) made
// from this origin; the page has no endpoints of its own and never receives a secret.
// Text from the host or an upstream is only ever set as text (never as HTML), and the
// page's Content-Security-Policy allows no inline code.

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
const MASK = '********';

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
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let fieldSeq = 0;
const uid = (p) => `${p}-${++fieldSeq}`;

/** An API failure, with the host's error code and message. */
class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : {};
    super(err.message || `the host answered ${status}`);
    this.status = status;
    this.code = err.code || 'http_' + status;
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

function render(title, ...children) {
  document.title = `${title} · Portcullis`;
  main.replaceChildren(h('h1', { text: title }), ...children.filter((c) => c !== null && c !== undefined && c !== false && c !== ''));
}

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied');
  } catch {
    // Not a secure context (plain HTTP on a tailnet address): select it for the user.
    if (input) { input.focus(); window.getSelection().selectAllChildren(input); }
    toast('Selected: press Ctrl+C (⌘C) to copy');
  }
}

function copyBox(label, value) {
  const code = h('code', { text: value, 'data-testid': 'copy-value' });
  return h('div', { class: 'copy' }, code,
    h('button', { type: 'button', class: 'small', 'aria-label': `Copy ${label}`, onclick: () => copyText(code.textContent, code) }, 'Copy'));
}

/** Editable chips (scopes, sources, patterns): remove with ×, add with Enter, comma or the button. */
function chips({ label, values, onChange, placeholder, hint, name }) {
  const id = uid('chip');
  const list = h('ul', { class: 'chips', 'aria-label': label });
  const input = h('input', { type: 'text', id, placeholder: placeholder || '', autocomplete: 'off', 'data-chips': name || label });
  const draw = () => {
    list.replaceChildren(...values.map((v, i) => h('li', { class: 'chip' }, h('span', { text: v }),
      h('button', {
        type: 'button', 'aria-label': `Remove ${v}`, title: `Remove ${v}`,
        onclick: () => { values.splice(i, 1); draw(); onChange(values); input.focus(); },
      }, '×'))));
  };
  const add = () => {
    const parts = input.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
    let changed = false;
    for (const p of parts) if (!values.includes(p)) { values.push(p); changed = true; }
    input.value = '';
    if (changed) { draw(); onChange(values); }
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ',') { e.preventDefault(); add(); }
    else if (e.key === 'Backspace' && !input.value && values.length) { values.pop(); draw(); onChange(values); }
  });
  input.addEventListener('blur', add);
  draw();
  return h('div', { class: 'field' },
    h('label', { for: id, text: label }), list,
    h('div', { class: 'row' }, input, h('button', { type: 'button', class: 'small', onclick: add, 'aria-label': `Add to ${label}` }, 'Add')),
    hint ? h('p', { class: 'hint', text: hint }) : null);
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

function adminOnly() {
  if (me && me.role === 'admin') return false;
  render('Settings', notice('warning', h('p', {}, `${me ? me.login : 'You'} is not an admin. Settings need a grant with {"role": "admin"}; ask an admin of this host.`)));
  return true;
}

// ---------- Connectors (every user) ----------

const STATUS_BADGE = { Ready: 'ok', 'Needs auth': 'warn', Misconfigured: 'bad', 'No access': 'info' };

async function connectorsPage() {
  let list;
  try {
    ({ data: list } = await api('GET', '/api/connectors'));
  } catch (e) {
    render('Connectors', errorNotice(e, 'The connectors could not be loaded'));
    return;
  }
  const connectors = list.connectors;
  const intro = h('p', { class: 'lead' }, 'Every connector of this host with your status on it. Agents reach HTTP connectors at /v1/connectors/<id>/ and MCP tools at /v1/mcp.');
  if (!connectors.length) {
    render('Connectors', intro, notice('info', h('p', {}, 'No connectors are configured yet.'),
      me && me.role === 'admin' ? h('p', {}, h('a', { href: '#/settings/connectors/new' }, 'Add a connector')) : null));
    return;
  }
  const cards = h('ul', { class: 'cards' }, ...connectors.map(connectorCard));
  render('Connectors', intro, cards);
}

function connectorCard(c) {
  const healthState = c.health ? c.health.state : 'unknown';
  const checks = c.health ? Object.entries(c.health.checks) : [];
  const capsBox = h('div', { class: 'caps', 'aria-live': 'polite' });
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
    capsBox, actions);
  if (c.status === 'Misconfigured') {
    card.insertBefore(notice('warning', h('p', {}, 'Connected without offline access: the connection ends when the access token expires. Ask an admin to enable offline access (scopes or auth_params), then Reconnect.')), capsBox);
  }
  if (c.per_user && c.status !== 'No access') {
    if (c.status === 'Needs auth') {
      actions.append(h('button', { type: 'button', class: 'primary', onclick: (e) => connect(c, e.target) }, `Connect ${c.id}`));
    } else {
      actions.append(
        h('button', { type: 'button', onclick: (e) => connect(c, e.target) }, `Reconnect ${c.id}`),
        h('button', { type: 'button', class: 'danger', onclick: (e) => disconnect(c, e.target) }, `Disconnect ${c.id}`));
    }
  }
  loadCapabilities(c, capsBox);
  return card;
}

async function loadCapabilities(c, box) {
  if (c.status === 'No access') {
    box.append(h('p', { class: 'meta', text: 'You have no grant on this connector; ask an admin for one.' }));
    return;
  }
  if (c.status === 'Needs auth') {
    box.append(h('p', { class: 'meta', text: 'Connect to see what you can use.' }));
    return;
  }
  box.append(h('p', { class: 'meta', text: 'Loading capabilities…' }));
  try {
    const { data } = await api('GET', `/api/connectors/${encodeURIComponent(c.id)}/capabilities`);
    const groups = [
      ['Tools', data.tools.map((t) => [t.name, t.description])],
      ['Resources', data.resources.map((r) => [r.uri, r.name])],
      ['Resource templates', data.templates.map((t) => [t.uri_template, t.name])],
    ].filter(([, items]) => items.length);
    const parts = [h('p', { class: 'meta' }, 'Endpoint: ', h('code', { text: data.endpoint }))];
    if (!groups.length) {
      parts.push(h('p', { class: 'meta', text: c.protocol === 'mcp'
        ? 'No tools, resources or templates you may use (the upstream lists none, or it could not be reached: see Health).'
        : 'An HTTP API: agents call it through the endpoint above.' }));
    }
    for (const [title, items] of groups) {
      parts.push(h('h3', { text: `${title} (${items.length})` }),
        h('ul', { 'aria-label': `${title} of ${c.id}` }, ...items.map(([name, d]) => h('li', {}, h('code', { text: name }), d ? ` — ${d}` : ''))));
    }
    box.replaceChildren(...parts);
  } catch (e) {
    box.replaceChildren(h('p', { class: 'meta', text: `Capabilities could not be loaded: ${e.message}` }));
  }
}

async function connect(c, button) {
  button.disabled = true;
  try {
    const { data } = await api('POST', `/api/connectors/${encodeURIComponent(c.id)}/connect`, {});
    // The provider sends the browser back to the callback page, which says how it went.
    window.location.assign(data.auth_url);
  } catch (e) {
    button.disabled = false;
    main.prepend(errorNotice(e, `${c.id} could not start connecting`));
  }
}

async function disconnect(c, button) {
  if (!window.confirm(`Disconnect ${c.id}? Your agents lose access until you connect again; the provider is asked to revoke the tokens.`)) return;
  button.disabled = true;
  try {
    await api('DELETE', `/api/connectors/${encodeURIComponent(c.id)}/connection`);
    toast(`${c.id} disconnected`);
    await connectorsPage();
  } catch (e) {
    button.disabled = false;
    main.prepend(errorNotice(e, `${c.id} could not be disconnected`));
  }
}

// ---------- Settings → Connectors (admins) ----------

async function settingsConnectors() {
  if (adminOnly()) return;
  let cfg;
  try {
    ({ data: cfg } = await api('GET', '/api/config'));
  } catch (e) {
    render('Settings: connectors', errorNotice(e, 'The config could not be read'));
    return;
  }
  const servers = (cfg.config.connectors && cfg.config.connectors.servers) || {};
  const ids = Object.keys(servers).sort();
  const add = h('a', { class: 'button primary', href: '#/settings/connectors/new' }, 'Add connector');
  if (!ids.length) {
    render('Settings: connectors', add, notice('info', h('p', {}, 'No connectors yet. Add one from a verified provider or as a custom connector.')));
    return;
  }
  const rows = ids.map((id) => {
    const s = servers[id];
    return h('tr', { 'data-connector': id },
      h('th', { scope: 'row' }, h('a', { href: `#/settings/connectors/edit/${encodeURIComponent(id)}`, text: id })),
      h('td', { text: s.provider || 'Custom' }),
      h('td', { text: s.protocol || '' }),
      h('td', { text: (s.auth && s.auth.type) || 'none' }),
      h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: () => removeConnector(id) }, `Delete ${id}`)));
  });
  render('Settings: connectors', add,
    h('table', {}, h('caption', { class: 'sr-only', text: 'Configured connectors' }),
      h('thead', {}, h('tr', {}, ...['ID', 'Provider', 'Protocol', 'Auth', ''].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, ...rows)));
}

async function removeConnector(id) {
  if (!window.confirm(`Delete connector ${id}? Users' tokens for it are revoked. Grants that name it must go too.`)) return;
  try {
    const { headers } = await api('GET', `/api/config/connectors/${encodeURIComponent(id)}`);
    await api('DELETE', `/api/config/connectors/${encodeURIComponent(id)}`, undefined, { 'If-Match': headers.get('ETag') || '*' });
    toast(`${id} deleted`);
    await settingsConnectors();
  } catch (e) {
    main.prepend(errorNotice(e, `${id} was not deleted`), ...diagnosticList(e.body.diagnostics || []));
  }
}

async function picker() {
  if (adminOnly()) return;
  let reg;
  try {
    ({ data: reg } = await api('GET', '/api/registry'));
  } catch (e) {
    render('Add connector', errorNotice(e, 'The provider registry could not be read'));
    return;
  }
  const items = reg.providers.slice().sort((a, b) => a.name.localeCompare(b.name)).map((p) =>
    h('li', {}, h('button', { type: 'button', 'data-provider': p.id, onclick: () => { location.hash = `#/settings/connectors/new/${encodeURIComponent(p.id)}`; } },
      h('strong', { text: p.name }), h('span', { class: 'meta', text: p.description }))));
  const broken = (reg.errors || []).map((err) => h('li', {}, h('button', { type: 'button', class: 'broken', disabled: true },
    h('strong', { text: err.entry }), h('span', { class: 'meta', text: `Did not load: ${err.message}` }))));
  items.push(h('li', {}, h('button', { type: 'button', 'data-provider': 'custom', onclick: () => { location.hash = '#/settings/connectors/new/custom'; } },
    h('strong', { text: 'Custom connector' }), h('span', { class: 'meta', text: 'Any HTTP API or MCP server not in the registry.' }))));
  render('Add connector',
    h('p', { class: 'lead', text: 'Choose a verified provider to start from its URLs, scopes and parameters, or a custom connector.' }),
    reg.dir ? null : notice('info', h('p', {}, 'No provider registry is loaded (start the host with --registry); only custom connectors can be added.')),
    h('ul', { class: 'picker', 'aria-label': 'Providers' }, ...items, ...broken));
}

/** The form's state → the connector exactly as it will be saved. */
function connectorJson(st) {
  const server = { protocol: st.protocol };
  if (st.url) server.url = st.url;
  if (st.description) server.description = st.description;
  if (st.provider) server.provider = st.provider;
  if (Object.keys(st.provider_vars).length) server.provider_vars = { ...st.provider_vars };
  const a = { type: st.auth.type };
  const t = st.auth.type;
  const field = SECRET_FIELD[t];
  if (t === 'api_key') { a.name = st.auth.name; a.in = st.auth.in; }
  if (t === 'basic') a.username = st.auth.username;
  if (t === 'oauth2_client_credentials' || t === 'oauth2_authorization_code') a.client_id = st.auth.client_id;
  if (field) {
    const ref = secretRef(st, field);
    if (ref !== undefined) a[field] = ref;
  }
  if (t === 'oauth2_client_credentials') a.token_url = st.auth.token_url;
  if (t === 'oauth2_authorization_code') {
    a.authorization_url = st.auth.authorization_url;
    a.token_url = st.auth.token_url;
    if (st.auth.revocation_url) a.revocation_url = st.auth.revocation_url;
  }
  if (['oauth2_client_credentials', 'oauth2_authorization_code', 'oauth2_dcr'].includes(t)) a.scopes = st.auth.scopes.slice();
  if (t === 'oauth2_authorization_code' && Object.keys(st.auth.auth_params).length) a.auth_params = { ...st.auth.auth_params };
  for (const [k, v] of Object.entries(st.extra)) if (!(k in server)) server[k] = v;
  if (t !== 'none') server.auth = a;
  return server;
}

/**
 * What the config holds for the secret: a typed secret goes into the vault under a name
 * the vault does not hold yet, `<id>_<field>` or the next free `_2`, `_3`…, and the
 * config names it; untouched, the saved reference stays. A fresh name means a save that
 * fails changes nothing in use (the page removes the new secret again), and a new value
 * takes effect exactly when the connector that names it is saved. The value itself is
 * never shown.
 */
function secretRef(st, field) {
  if (st.secretValue) return { vault: vaultName(st, field) };
  if (st.kept && st.kept.field === field) return st.kept.value;
  return undefined;
}

function vaultName(st, field) {
  const base = `${st.id}_${field}`;
  const taken = (name) => st.secrets.some((s) => s.name === name);
  let name = base;
  for (let n = 2; taken(name); n++) name = `${base}_${n}`;
  return name;
}

function fromServer(id, server, provider) {
  const auth = server.auth || { type: 'none' };
  const field = SECRET_FIELD[auth.type];
  const known = ['protocol', 'url', 'description', 'provider', 'provider_vars', 'auth'];
  const extra = Object.fromEntries(Object.entries(server).filter(([k]) => !known.includes(k)));
  const keptValue = field ? auth[field] : undefined;
  return {
    id, protocol: server.protocol || 'http', url: server.url || '', description: server.description || '',
    provider: server.provider || (provider ? provider.id : ''), provider_vars: { ...(server.provider_vars || {}) }, extra,
    auth: {
      type: auth.type || 'none', client_id: auth.client_id || '', username: auth.username || '', name: auth.name || '', in: auth.in || 'header',
      authorization_url: auth.authorization_url || '', token_url: auth.token_url || '', revocation_url: auth.revocation_url || '',
      scopes: (auth.scopes || []).slice(), auth_params: { ...(auth.auth_params || {}) },
    },
    // A template's empty placeholder is no secret to keep.
    kept: keptValue !== undefined && keptValue !== '' ? { field, value: keptValue } : null,
    secretValue: '',
    secrets: [],
  };
}

async function connectorForm(providerId, editId) {
  if (adminOnly()) return;
  let cfg; let reg; let secrets; let existing = null;
  try {
    [{ data: cfg }, { data: reg }, { data: secrets }] = await Promise.all([
      api('GET', '/api/config'), api('GET', '/api/registry'), api('GET', '/api/secrets')]);
    if (editId) {
      const got = await api('GET', `/api/config/connectors/${encodeURIComponent(editId)}`);
      existing = got.data;
    }
  } catch (e) {
    render(editId ? `Edit ${editId}` : 'Add connector', errorNotice(e, 'The form could not be prepared'));
    return;
  }
  let provider = null;
  let st;
  if (existing) {
    provider = reg.providers.find((p) => p.id === existing.server.provider) || null;
    st = fromServer(existing.id, existing.server, provider);
  } else if (providerId && providerId !== 'custom') {
    provider = reg.providers.find((p) => p.id === providerId);
    if (!provider) {
      render('Add connector', notice('error', h('p', {}, `No provider "${providerId}" is loaded; `, h('a', { href: '#/settings/connectors/new' }, 'choose another'))));
      return;
    }
    st = fromServer(provider.connector.id, provider.connector.server, provider);
  } else {
    st = fromServer('', { protocol: 'http', auth: { type: 'none' } }, null);
  }
  st.secrets = (secrets && secrets.secrets) || [];
  const servers = (cfg.config.connectors && cfg.config.connectors.servers) || {};
  const base = (cfg.config.public_url || location.origin).replace(/\/+$/, '');
  const title = existing ? `Edit ${existing.id}` : provider ? `Add ${provider.name}` : 'Add a custom connector';

  const preview = h('pre', { 'data-testid': 'preview', tabindex: '0', 'aria-label': 'Connector preview (JSON)' });
  const previewId = h('code', { 'data-testid': 'preview-id' });
  const secretNote = h('p', { class: 'hint' });
  const callbackValue = h('div');
  const callbackField = h('div', { class: 'field' }, h('span', { class: 'label', text: 'Callback URL to register at the provider' }), callbackValue,
    h('p', { class: 'hint', text: 'Register this exact URL as the redirect URI of your OAuth application. It follows the connector ID.' }));
  const general = h('div', { 'aria-live': 'polite' });
  const fields = {};
  const saveButton = h('button', { type: 'submit', class: 'primary' }, existing ? 'Save changes' : 'Save connector');

  const refresh = () => {
    const server = connectorJson(st);
    preview.textContent = JSON.stringify(server, null, 2);
    previewId.textContent = st.id || '<id>';
    const field = SECRET_FIELD[st.auth.type];
    secretNote.textContent = field && st.secretValue
      ? `The ${field} goes into the vault as "${vaultName(st, field)}" when you save; the config refers to it by name.`
      : '';
    const perUser = st.auth.type === 'oauth2_authorization_code' || st.auth.type === 'oauth2_dcr';
    callbackField.hidden = !perUser;
    callbackValue.replaceChildren(copyBox('callback URL', `${base}/aperture/auth/${st.id || '<connector-id>'}/callback`));
    scheduleValidation();
  };

  // Live validation: the whole config with this connector, as a save would check it.
  let timer = null; let seq = 0;
  const scheduleValidation = () => { clearTimeout(timer); timer = setTimeout(validate, 350); };
  const candidate = () => {
    const server = connectorJson(st);
    const field = SECRET_FIELD[st.auth.type];
    // Validation runs before the secret is in the vault: check the typed value itself.
    if (field && st.secretValue) server.auth[field] = st.secretValue;
    const config = structuredClone(cfg.config);
    config.connectors = config.connectors || {};
    config.connectors.servers = { ...(config.connectors.servers || {}) };
    if (existing && existing.id !== st.id) delete config.connectors.servers[existing.id];
    config.connectors.servers[st.id] = server;
    return config;
  };
  const validate = async () => {
    const mine = ++seq;
    const problems = localProblems();
    if (problems.length) { showProblems(problems.map(([path, message]) => ({ severity: 'error', path, message }))); return false; }
    try {
      const { data } = await api('POST', '/api/config:validate', { config: candidate() });
      if (mine !== seq) return data.valid;
      showProblems(data.diagnostics);
      return data.valid;
    } catch (e) {
      if (mine === seq) general.replaceChildren(errorNotice(e, 'Validation failed'));
      return false;
    }
  };
  // The validator judges the ID; only what it cannot see from one candidate config is
  // checked here.
  const localProblems = () => {
    if (!st.id) return [['id', 'Enter a connector ID: it starts with a letter and has letters and digits only.']];
    if (!existing && servers[st.id]) return [['id', `A connector "${st.id}" exists already; choose another ID or edit that one.`]];
    return [];
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
    general.replaceChildren(...(rest.length ? diagnosticList(rest) : []));
    const errors = diags.filter((d) => d.severity !== 'notice').length;
    saveButton.dataset.problems = String(errors);
  };

  const add = (key, el) => { fields[key] = el; return el; };
  const idField = add('id', textField({
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
    const text = (key, label, opts = {}) => add(`auth.${key}`, textField({ label, value: st.auth[key], name: `auth.${key}`, onInput: (v) => { st.auth[key] = v.trim(); refresh(); }, ...opts }));
    if (t === 'api_key') {
      parts.push(text('name', 'Header or query parameter name', { required: true, hint: 'For example X-Api-Key.' }),
        selectField({ label: 'Sent in', value: st.auth.in, name: 'auth.in', options: { header: 'A header', query: 'The query string' }, onChange: (v) => { st.auth.in = v; refresh(); } }));
    }
    if (t === 'basic') parts.push(text('username', 'Username', { required: true }));
    if (t === 'oauth2_client_credentials' || t === 'oauth2_authorization_code') parts.push(text('client_id', 'Client ID', { required: true }));
    if (field) {
      const optional = t === 'oauth2_authorization_code';
      const label = { secret: t === 'api_key' ? 'API key' : 'Token', password: 'Password', client_secret: 'Client secret' }[field];
      const keptHint = st.kept ? 'Leave empty to keep the saved one. ' : '';
      parts.push(add(`auth.${field}`, textField({
        label, type: 'password', name: `auth.${field}`, autocomplete: 'new-password', required: !optional && !st.kept,
        hint: keptHint + (optional ? 'PKCE-only applications can leave it empty.' : 'Stored sealed in the vault; never shown again.'),
        onInput: (v) => { st.secretValue = v; refresh(); },
      })), secretNote);
    }
    if (t === 'oauth2_authorization_code') {
      parts.push(text('authorization_url', 'Authorization URL', { type: 'url', required: true }));
    }
    if (t === 'oauth2_client_credentials' || t === 'oauth2_authorization_code') {
      parts.push(text('token_url', 'Token URL', { type: 'url', required: true }));
    }
    if (t === 'oauth2_authorization_code') {
      parts.push(text('revocation_url', 'Revocation URL', { type: 'url', hint: 'Optional: tokens are revoked here when a user disconnects.' }));
    }
    if (['oauth2_client_credentials', 'oauth2_authorization_code', 'oauth2_dcr'].includes(t)) {
      parts.push(add('auth.scopes', chips({ label: 'Scopes', name: 'scopes', values: st.auth.scopes, placeholder: 'Add a scope', onChange: refresh, hint: provider ? 'Pre-filled with the provider\'s defaults; add or remove what your users need.' : null })));
    }
    if (t === 'oauth2_authorization_code') parts.push(add('auth.auth_params', keyValues('Extra authorization parameters (auth_params)', st.auth.auth_params, refresh)));
    authBox.replaceChildren(...parts);
  };

  const vars = provider && provider.inputs.length
    ? h('fieldset', {}, h('legend', { text: `${provider.name} settings` }), ...provider.inputs.map((i) => add(`provider_vars.${i.name}`, textField({
      label: i.name, value: st.provider_vars[i.name] ?? i.default ?? '', hint: i.description, name: `provider_vars.${i.name}`,
      onInput: (v) => { if (v) st.provider_vars[i.name] = v; else delete st.provider_vars[i.name]; refresh(); },
    }))))
    : null;
  if (provider) for (const i of provider.inputs) if (st.provider_vars[i.name] === undefined && i.default) st.provider_vars[i.name] = i.default;

  const protocols = provider && !provider.mcp_url && st.protocol === 'http' ? { http: 'HTTP API' } : { http: 'HTTP API', mcp: 'MCP server' };
  const form = h('form', { novalidate: true, 'aria-label': title, onsubmit: async (e) => { e.preventDefault(); await save(); } },
    h('fieldset', {}, h('legend', { text: 'Connector' }), idField,
      selectField({
        label: 'Protocol', value: st.protocol, options: protocols, name: 'protocol',
        onChange: (v) => {
          st.protocol = v;
          if (provider) st.url = (v === 'mcp' ? provider.mcp_url : provider.url) || st.url;
          urlField.querySelector('input').value = st.url; refresh();
        },
      }),
      add('url', textField({ label: 'URL', type: 'url', value: st.url, name: 'url', required: true, onInput: (v) => { st.url = v.trim(); refresh(); } })),
      add('description', textField({ label: 'Description', value: st.description, name: 'description', hint: 'Shown to users and to agents listing connectors.', onInput: (v) => { st.description = v; refresh(); } }))),
    vars,
    h('fieldset', {}, h('legend', { text: 'Authentication' }),
      selectField({ label: 'Auth type', value: st.auth.type, options: AUTH_TYPES, name: 'auth.type', onChange: (v) => { st.auth.type = v; st.kept = st.kept && SECRET_FIELD[v] === st.kept.field ? st.kept : null; drawAuth(); refresh(); } }),
      authBox, callbackField),
    general,
    h('div', { class: 'actions' }, saveButton, h('a', { class: 'button', href: '#/settings/connectors' }, 'Cancel')));
  const urlField = fields.url;

  const save = async () => {
    saveButton.disabled = true;
    try {
      if (!(await validate())) {
        const first = main.querySelector('[aria-invalid=true]') || general;
        first.focus?.();
        toast('Not saved: fix the problems shown');
        return;
      }
      const server = connectorJson(st);
      const field = SECRET_FIELD[st.auth.type];
      let wrote = null;
      if (field && st.secretValue) {
        wrote = server.auth[field].vault;
        await api('PUT', `/api/secrets/${encodeURIComponent(wrote)}`, { value: st.secretValue });
      }
      const headers = existing ? { 'If-Match': `"${existing.etag}"` } : { 'If-None-Match': '*' };
      try {
        await api('PUT', `/api/config/connectors/${encodeURIComponent(st.id)}`, server, headers);
      } catch (e) {
        // Leave nothing behind that no config refers to.
        if (wrote) await api('DELETE', `/api/secrets/${encodeURIComponent(wrote)}`).catch(() => {});
        throw e;
      }
      toast(`${st.id} saved`);
      // Shown again as saved (with its new version for the next edit).
      const target = `#/settings/connectors/edit/${encodeURIComponent(st.id)}?saved=1`;
      if (location.hash === target) await route(); else location.hash = target;
    } catch (e) {
      const explain = e.code === 'stale_connector'
        ? 'Someone else changed this connector since you opened it. Your form is kept: open the connector again to see their version, then reapply your change.'
        : e.code === 'connector_exists' ? `A connector "${st.id}" was added meanwhile; choose another ID.` : null;
      general.replaceChildren(errorNotice(e, 'Not saved'), explain ? notice('warning', h('p', { text: explain })) : '', ...diagnosticList(e.body.diagnostics || []));
    } finally {
      saveButton.disabled = false;
    }
  };

  drawAuth();
  const savedNow = /[?&]saved=1/.test(location.hash);
  render(title,
    savedNow ? notice('ok', h('p', {}, 'Saved. This is the connector as the config now holds it. ', h('a', { href: '#/connectors' }, 'See it on the Connectors page'), '.')) : null,
    provider ? h('p', { class: 'lead' }, `Pre-filled from the ${provider.name} provider (version ${provider.version}). `, provider.docs_url ? h('a', { href: provider.docs_url, rel: 'noreferrer noopener', target: '_blank' }, 'Provider API docs') : null) : null,
    h('div', { class: 'layout' }, form,
      h('aside', { class: 'preview', 'aria-label': 'Preview' }, h('h2', { text: 'What will be saved' }),
        h('p', { class: 'hint' }, 'connectors.servers.', previewId, ' — secrets never appear here.'), preview)));
  refresh();
}

function keyValues(label, obj, onChange) {
  const box = h('div');
  const draw = () => {
    box.replaceChildren(...Object.entries(obj).map(([k, v]) => {
      const kid = uid('k'); const vid = uid('v');
      let key = k;
      return h('div', { class: 'kv' },
        h('div', {}, h('label', { for: kid, class: 'sr-only', text: `Name of parameter ${k}` }),
          h('input', { type: 'text', id: kid, value: k, onchange: (e) => { const nk = e.target.value.trim(); const val = obj[key]; delete obj[key]; if (nk) obj[nk] = val; key = nk; draw(); onChange(); } })),
        h('div', {}, h('label', { for: vid, class: 'sr-only', text: `Value of parameter ${k}` }),
          h('input', { type: 'text', id: vid, value: v, oninput: (e) => { obj[key] = e.target.value; onChange(); } })),
        h('button', { type: 'button', class: 'small', 'aria-label': `Remove parameter ${k}`, onclick: () => { delete obj[key]; draw(); onChange(); } }, '×'));
    }));
  };
  draw();
  const wrap = h('div', { class: 'field' }, h('span', { class: 'label', text: label }), box,
    h('button', { type: 'button', class: 'small', onclick: () => { let n = 'param'; let i = 1; while (n in obj) n = `param${++i}`; obj[n] = ''; draw(); onChange(); } }, 'Add parameter'),
    h('p', { class: 'hint', text: 'Sent with the authorization request, e.g. access_type=offline. Providers pre-fill what they need for refresh tokens.' }));
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

// ---------- Grants (admins) ----------

const APERTURE_CAP = 'tailscale.com/cap/aperture';

function grantModel(g) {
  const caps = (g.app && g.app[APERTURE_CAP]) || [];
  const m = { src: (g.src || []).slice(), connectors: [], admin: false, metrics: false, other: [], original: g };
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

async function grantsPage() {
  if (adminOnly()) return;
  let cfg;
  try {
    ({ data: cfg } = await api('GET', '/api/config'));
  } catch (e) {
    render('Grants', errorNotice(e, 'The config could not be read'));
    return;
  }
  let hash = cfg.hash;
  const models = (cfg.config.grants || []).map(grantModel);
  const list = h('div');
  const status = h('div', { 'aria-live': 'polite' });
  const draw = () => list.replaceChildren(...models.map((m, i) => grantEditor(m, i, () => { models.splice(i, 1); draw(); })));
  const current = async () => (await api('GET', '/api/config')).data;
  const save = async (overHash) => {
    const config = structuredClone(cfg.config);
    config.grants = models.map(grantJson);
    try {
      const { data } = await api('PUT', '/api/config', { hash: overHash || hash, config });
      hash = data.hash;
      cfg.config = config;
      status.replaceChildren(notice('ok', h('p', { text: 'Grants saved and in force.' })));
    } catch (e) {
      if (e.code === 'stale_config') {
        status.replaceChildren(notice('warning',
          h('p', { text: 'Someone else saved the config after you opened this page, so your grants were not saved. Your edits are still here.' }),
          h('p', { text: 'Apply them to the current config (their other changes are kept, the grants become yours), or discard yours and load theirs.' }),
          h('div', { class: 'actions' },
            h('button', { type: 'button', class: 'primary', onclick: async () => { const fresh = await current(); cfg.config = fresh.config; await save(fresh.hash); } }, 'Apply my grants to the current config'),
            h('button', { type: 'button', onclick: () => grantsPage() }, 'Discard mine, load theirs'))));
      } else {
        const byGrant = (e.body.diagnostics || []);
        status.replaceChildren(errorNotice(e, 'Grants not saved'), ...diagnosticList(byGrant));
      }
    }
  };
  draw();
  render('Grants',
    h('p', { class: 'lead', text: 'Who may use which connectors. Deny by default: a caller reaches only what a grant names. Sources are logins, group:, tag: or node names; connector patterns such as github/**, jira/proxy or label:readonly (docs/configuration.md#grants).' }),
    list,
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: () => { models.push({ src: [], connectors: [], admin: false, metrics: false, other: [], original: null }); draw(); list.lastElementChild?.querySelector('input')?.focus(); } }, 'Add grant'),
      h('button', { type: 'button', class: 'primary', onclick: () => save() }, 'Save grants')),
    status);
}

function grantEditor(m, i, remove) {
  const adminId = uid('adm'); const metricsId = uid('met');
  return h('fieldset', { class: 'grant', 'data-grant': i }, h('legend', { text: `Grant ${i + 1}` }),
    chips({ label: `Sources of grant ${i + 1}`, values: m.src, placeholder: 'alice@example.com, group:eng, tag:agent', onChange: () => {} }),
    chips({ label: `Connector patterns of grant ${i + 1}`, values: m.connectors, placeholder: 'github/**', onChange: () => {} }),
    h('div', { class: 'field check' },
      h('input', { type: 'checkbox', id: adminId, checked: m.admin, onchange: (e) => { m.admin = e.target.checked; } }),
      h('label', { for: adminId, text: 'Admin (config, secrets and settings)' })),
    h('div', { class: 'field check' },
      h('input', { type: 'checkbox', id: metricsId, checked: m.metrics, onchange: (e) => { m.metrics = e.target.checked; } }),
      h('label', { for: metricsId, text: 'May read /metrics' })),
    m.other.length ? h('div', { class: 'field' }, h('span', { class: 'label', text: 'Other capabilities (kept as they are; edit them in the config file)' }),
      h('pre', { text: JSON.stringify(m.other, null, 2) })) : null,
    h('button', { type: 'button', class: 'small danger', onclick: remove }, `Remove grant ${i + 1}`));
}

// ---------- Config file (admins) ----------

/**
 * Parses JSON text and records the line of every value's JSON path (`grants[0].src`,
 * `connectors.servers.github.url`), the form the validator's diagnostics use, so a
 * message can be shown at its line. Throws a SyntaxError with the line on bad JSON.
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
      if (text[i] === '\\') { out += JSON.parse(`"${text.slice(i, text[i + 1] === 'u' ? i + 6 : i + 2)}"`); i += text[i + 1] === 'u' ? 6 : 2; } else out += text[i++];
    }
    if (i >= text.length) fail('an unterminated string');
    i++; return out;
  };
  const key = (base, k) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? (base ? `${base}.${k}` : k) : `${base}[${JSON.stringify(k)}]`);
  const value = (path) => {
    ws();
    if (!lines.has(path)) lines.set(path, line);
    const c = text[i];
    if (c === '{') {
      i++; ws();
      if (text[i] === '}') { i++; return; }
      for (;;) {
        ws(); if (text[i] !== '"') fail('expected a quoted key');
        const kLine = line; const k = str(); const p = key(path, k);
        lines.set(p, kLine);
        ws(); if (text[i] !== ':') fail('expected ":" after a key'); i++;
        value(p); lines.set(p, kLine); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return; }
        fail('expected "," or "}"');
      }
    } else if (c === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return; }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`); ws();
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

async function configPage() {
  if (adminOnly()) return;
  let cfg;
  try {
    ({ data: cfg } = await api('GET', '/api/config'));
  } catch (e) {
    render('Config file', errorNotice(e, 'The config could not be read'));
    return;
  }
  let hash = cfg.hash;
  const taId = uid('cfg');
  const gutter = h('pre', { class: 'gutter', 'aria-hidden': 'true' });
  const ta = h('textarea', { id: taId, class: 'code', spellcheck: 'false', autocomplete: 'off', 'data-testid': 'config-text', 'aria-describedby': `${taId}-help` });
  ta.value = JSON.stringify(cfg.config, null, 2);
  const status = h('div', { 'aria-live': 'polite' });
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
    ta.scrollTop = Math.max(0, (l - 5) * parseFloat(getComputedStyle(ta).lineHeight || '20'));
  };
  const lineOfFor = (map) => {
    const f = (path) => {
      let p = path || '';
      while (p) {
        if (map.has(p)) return map.get(p);
        p = p.replace(/(\.[^.[\]]+|\[[^\]]*\])$/, '');
        if (!/[.[]/.test(p) && map.has(p)) return map.get(p);
      }
      return 1;
    };
    f.go = goLine;
    return f;
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
    const lineOf = lineOfFor(lines);
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
    const parsed = parse(); if (!parsed) return;
    try {
      const { data } = await api('POST', '/api/config:validate', { config: parsed.config });
      show(data.diagnostics, parsed.lines, data.valid
        ? notice('ok', h('p', { text: data.diagnostics.length ? 'Valid, with the notices below.' : 'Valid: a save would be accepted.' }))
        : notice('error', h('p', { text: 'Not valid: a save would be refused for the problems below (each at its line).' })));
    } catch (e) { status.replaceChildren(errorNotice(e, 'Validation failed')); }
  };
  const save = async (overHash) => {
    const parsed = parse(); if (!parsed) return;
    try {
      const { data } = await api('PUT', '/api/config', { hash: overHash || hash, config: parsed.config });
      hash = data.hash;
      show([], parsed.lines, notice('ok', h('p', { text: `Saved and in force.${data.secrets.length ? ` Inline secrets moved into the vault: ${data.secrets.join(', ')}.` : ''}` })));
      if (data.secrets.length) { const { data: fresh } = await api('GET', '/api/config'); ta.value = JSON.stringify(fresh.config, null, 2); hash = fresh.hash; drawGutter(); }
    } catch (e) {
      if (e.code === 'stale_config') {
        status.replaceChildren(notice('warning',
          h('p', { text: 'Someone else saved the config after you loaded it, so yours was not saved. Your text is still in the editor.' }),
          h('p', { text: 'Load theirs to start again from the current config (your text is replaced), or save yours over theirs (their changes are lost).' }),
          h('div', { class: 'actions' },
            h('button', { type: 'button', onclick: async () => { const { data } = await api('GET', '/api/config'); ta.value = JSON.stringify(data.config, null, 2); hash = data.hash; marks = new Map(); drawGutter(); status.replaceChildren(notice('info', h('p', { text: 'Loaded the current config.' }))); } }, 'Load theirs'),
            h('button', { type: 'button', class: 'danger', onclick: () => save(e.body.hash) }, 'Save mine over theirs'))));
      } else if (e.body.diagnostics) {
        show(e.body.diagnostics, parsed.lines, errorNotice(e, 'Not saved'));
      } else {
        status.replaceChildren(errorNotice(e, 'Not saved'));
      }
    }
  };
  ta.addEventListener('input', drawGutter);
  ta.addEventListener('scroll', () => { gutter.scrollTop = ta.scrollTop; });
  render('Config file',
    h('p', { class: 'lead', id: `${taId}-help` }, `The whole config as JSON (${cfg.path}${cfg.saved ? '' : ', not saved yet: the embedded default serves'}). Secrets read ${MASK}: leave them so to keep them; a secret typed here moves into the vault on save.`),
    cfg.in_force ? null : notice('warning', h('p', { text: 'The file on disk did not load; the previous config keeps serving. Fix it here and save.' })),
    h('label', { for: taId, class: 'sr-only', text: 'Config (JSON)' }),
    h('div', { class: 'editor' }, gutter, ta),
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: validate }, 'Validate'),
      h('button', { type: 'button', class: 'primary', onclick: () => save() }, 'Save'),
      h('button', { type: 'button', onclick: () => configPage() }, 'Reload')),
    status);
  drawGutter();
  if (cfg.diagnostics.length) show(cfg.diagnostics, pathLines(ta.value), notice('info', h('p', { text: 'The config in force has these notices and warnings:' })));
}

// ---------- routing ----------

const routes = [
  [/^#\/connectors$/, () => connectorsPage()],
  [/^#\/settings\/connectors$/, () => settingsConnectors()],
  [/^#\/settings\/connectors\/new$/, () => picker()],
  [/^#\/settings\/connectors\/new\/([^/?]+)$/, (m) => connectorForm(decodeURIComponent(m[1]), null)],
  [/^#\/settings\/connectors\/edit\/([^/?]+)$/, (m) => connectorForm(null, decodeURIComponent(m[1]))],
  [/^#\/settings\/grants$/, () => grantsPage()],
  [/^#\/settings\/config$/, () => configPage()],
];

async function route() {
  const full = location.hash || '#/connectors';
  const hash = full.split('?')[0];
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
  await found[1](found[0].exec(hash));
  // After a navigation inside the page, a screen reader starts at the new content; on
  // the first load, focus stays at the top so "Skip to content" comes first.
  if (navigated) main.focus({ preventScroll: true });
  navigated = true;
}

let navigated = false;

window.addEventListener('hashchange', route);
route();
