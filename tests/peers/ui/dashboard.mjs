#!/usr/bin/env node
// The dashboard as its users meet it: headless Chromium (Debian's, driven by
// playwright-core) against a running Portcullis host. Started by the end-to-end test
// tests/e2e/dashboard.rs, which provides the host (loopback identity, so this browser is
// an admin), the oidc-provider peer behind the `notes` connector, and an MCP upstream
// behind `tools`.
//
// Environment: PORTCULLIS_URL (the host), CHROMIUM (the browser binary), OUT_DIR (where
// screenshots go), DOCS_DIR (optional: where the README's screenshots are refreshed).
//
// Each step says what it checks; the first failure ends the run with exit code 1 and
// the step's name.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = need('PORTCULLIS_URL').replace(/\/$/, '');
const OUT = need('OUT_DIR');
const DOCS = process.env.DOCS_DIR || '';
const SECRET = 'sf-secret-value-0123456789';
fs.mkdirSync(OUT, { recursive: true });

function need(name) {
  const v = process.env[name];
  if (!v) { console.error(`dashboard.mjs: ${name} is not set`); process.exit(2); }
  return v;
}

let step = 'start';
const log = (msg) => process.stderr.write(`[dashboard] ${msg}\n`);
function check(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}
async function api(method, p, body, headers = {}) {
  const resp = await fetch(BASE + p, {
    method,
    headers: { ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  return { status: resp.status, data: text ? JSON.parse(text) : null, headers: resp.headers };
}

/** Polls `probe` (every 100 ms, for at most 10 s) until it returns something truthy. */
async function eventually(probe, what) {
  const until = Date.now() + 10000;
  for (;;) {
    const got = await probe();
    if (got) return got;
    check(Date.now() < until, `${what} (waited 10 s)`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: need('CHROMIUM'),
  headless: true,
  // Debian's Chromium as root in a container, on a machine whose network is closed.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
page.setDefaultTimeout(15000);
const violations = [];
page.on('console', (m) => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
});
page.on('pageerror', (e) => violations.push(`page error: ${e.message}`));
// Confirmations (disconnect, delete, leave with unsaved edits) are accepted unless a step
// says otherwise for the next one.
let nextDialog = 'accept';
const dialogs = [];
page.on('dialog', (d) => { dialogs.push(d.message()); const answer = nextDialog; nextDialog = 'accept'; return answer === 'accept' ? d.accept() : d.dismiss(); });

async function shot(name, { docs = false } = {}) {
  const file = path.join(OUT, `${name}.png`);
  // A window as tall as the page, rather than a stitched full-page capture, so sticky
  // parts (the connector preview) sit where a reader would see them.
  const size = page.viewportSize();
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.setViewportSize({ width: size.width, height: Math.max(size.height, Math.min(height, 4000)) });
  await page.screenshot({ path: file });
  await page.setViewportSize(size);
  if (docs && DOCS) fs.copyFileSync(file, path.join(DOCS, `${name}.png`));
  log(`screenshot ${file}`);
}

/** axe-core on the current page: no serious or critical violation. */
async function accessible(name) {
  await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(!bad.length, `axe found serious violations on ${name}: ${JSON.stringify(bad.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target) })))}`);
  log(`axe: ${name} has no serious violations (${result.violations.length} minor)`);
}

const card = (id) => page.locator(`li.card[data-connector="${id}"]`);

try {
  step = 'connectors page';
  await page.goto(`${BASE}/ui/`);
  await card('notes').waitFor();
  check(await card('notes').getByTestId('status').innerText() === 'Needs auth', 'notes starts as Needs auth');
  check(await card('tools').getByTestId('status').innerText() === 'Ready', 'tools (shared bearer) is Ready');
  // The capability list says whether the upstream works: its tools, by the names agents use.
  await card('tools').getByText('tools_echo').waitFor();
  check(await card('notes').getByRole('button', { name: 'Connect notes' }).isVisible(), 'notes offers Connect');
  await accessible('connectors');
  await shot('connectors');

  step = 'keyboard';
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.className === 'skip'), 'the first Tab reaches "Skip to content"');
  await page.keyboard.press('Enter');
  check(await page.evaluate(() => document.activeElement.id === 'main'), 'the skip link moves focus to the content');

  step = 'picker';
  await page.getByRole('link', { name: 'Settings: connectors' }).click();
  await page.getByRole('link', { name: 'Add connector' }).click();
  await page.locator('button[data-provider="salesforce"]').waitFor();
  check(await page.locator('button[data-provider="custom"]').isVisible(), 'the picker offers Custom');
  for (const p of ['atlassian', 'canva', 'github', 'google', 'linear', 'slack', 'zoom']) check(await page.locator(`button[data-provider="${p}"]`).isVisible(), `the picker lists ${p}`);
  // Filed under the category each plugin names, with initials standing in for an icon.
  const headings = await page.locator('.picker-group h2').allInnerTexts();
  check(JSON.stringify(headings) === JSON.stringify(['Communication', 'CRM', 'Design', 'Developer tools', 'Files', 'Productivity', 'Project management', 'Custom', 'Did not load']), `the picker's groups: ${headings}`);
  const devTools = page.getByRole('list', { name: 'Developer tools' });
  check(await devTools.locator('button[data-provider="github"]').isVisible(), 'GitHub is under Developer tools');
  const projects = await page.getByRole('list', { name: 'Project management' }).locator('button').evaluateAll((bs) => bs.map((b) => b.dataset.provider));
  check(JSON.stringify(projects) === JSON.stringify(['asana', 'atlassian', 'linear', 'trello']), `Project management lists Asana, Atlassian, Linear and Trello: ${projects}`);
  check(await page.locator('button[data-provider="github"] .initials').innerText() === 'GH', 'GitHub shows GH');
  check(await page.locator('button[data-provider="google"] .initials').innerText() === 'GW', 'Google Workspace shows GW');
  // Google's products are entries of their own, next to the whole of Google Workspace.
  const productivity = await page.getByRole('list', { name: 'Productivity' }).locator('button').evaluateAll((bs) => bs.map((b) => b.dataset.provider));
  for (const p of ['google', 'google/gmail', 'google/drive', 'google/calendar', 'google/sheets']) check(productivity.includes(p), `Productivity lists ${p}: ${productivity}`);
  const broken = page.locator('button.broken');
  check(/^broken\s*Did not load: ./.test(await broken.innerText()) && await broken.isDisabled(), `the entry that did not load is listed with its reason: ${await broken.innerText()}`);
  await accessible('picker');
  await shot('picker', { docs: true });
  await page.locator('button[data-provider="salesforce"]').click();

  step = 'pre-filled form';
  const idInput = page.locator('input[data-field="id"]');
  await idInput.waitFor();
  check(await idInput.inputValue() === 'Salesforce', 'the ID defaults to the provider name');
  check(await page.locator('input[data-field="auth.authorization_url"]').inputValue() === 'https://login.salesforce.com/services/oauth2/authorize', 'the authorization URL is pre-filled');
  const scopes = page.getByRole('list', { name: 'Scopes' });
  check((await scopes.locator('li').allInnerTexts()).map((t) => t.replace('×', '').trim()).join(' ') === 'api refresh_token', 'default scopes are chips');
  const callback = page.getByTestId('copy-value');
  check(await callback.innerText() === `${BASE}/aperture/auth/Salesforce/callback`, 'the callback URL uses the ID');

  step = 'the callback URL follows the ID';
  await idInput.fill('SalesforceProd');
  await page.waitForFunction((want) => document.querySelector('[data-testid=copy-value]')?.textContent === want, `${BASE}/aperture/auth/SalesforceProd/callback`);

  step = 'scope chips';
  const scopeInput = page.locator('input[data-chips="scopes"]');
  await scopeInput.focus();
  await page.keyboard.type('chatter_api');
  await page.keyboard.press('Enter');
  await scopeInput.fill('openid');
  await page.getByRole('button', { name: 'Add to Scopes' }).click();
  await page.getByRole('button', { name: 'Remove refresh_token' }).click();
  check((await scopes.locator('li').allInnerTexts()).map((t) => t.replace('×', '').trim()).join(' ') === 'api chatter_api openid', 'chips added and removed');

  step = 'inline validation';
  await page.locator('input[data-field="auth.client_id"]').fill('');
  await page.locator('.problem:not([hidden])').first().waitFor();
  const problem = await page.locator('.problem:not([hidden])').first().innerText();
  check(/client_id/i.test(problem), `an empty client ID is flagged at its field before saving (got "${problem}")`);

  step = 'masked preview';
  await page.locator('input[data-field="auth.client_id"]').fill('3MVG9-test-client');
  await page.locator('input[data-field="auth.client_secret"]').fill(SECRET);
  await page.waitForFunction(() => {
    const t = document.querySelector('[data-testid=preview]')?.textContent || '';
    return t.includes('3MVG9-test-client') && t.includes('SalesforceProd_client_secret') && t.includes('chatter_api');
  });
  await page.waitForFunction(() => !document.querySelector('.problem:not([hidden])'));
  const previewText = await page.getByTestId('preview').innerText();
  const preview = JSON.parse(previewText);
  check(!previewText.includes(SECRET), 'the preview never shows the secret');
  check(JSON.stringify(preview.auth.client_secret) === JSON.stringify({ vault: 'SalesforceProd_client_secret' }), 'the preview names the vault secret');
  check(JSON.stringify(preview.auth.scopes) === JSON.stringify(['api', 'chatter_api', 'openid']), 'the preview has the chips');
  check(preview.provider === 'salesforce' && preview.provider_vars.api_version === '63.0', 'provider and its settings are kept');
  await accessible('connector form');
  await shot('connector-form', { docs: true });
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot('connector-form-dark', { docs: true });
  await page.emulateMedia({ colorScheme: 'light' });

  step = 'save';
  await page.getByRole('button', { name: 'Save connector' }).click();
  await page.getByText('Saved. This is the connector as the config now holds it.').waitFor();
  const saved = await api('GET', '/api/config/connectors/SalesforceProd');
  check(saved.status === 200, `the admin API has the connector (${saved.status})`);
  check(isDeepStrictEqual(saved.data.server, preview), `the preview is exactly what was saved:\npreview ${JSON.stringify(preview)}\nsaved   ${JSON.stringify(saved.data.server)}`);
  const secrets = await api('GET', '/api/secrets');
  check(secrets.data.secrets.some((s) => s.name === 'SalesforceProd_client_secret' && s.used_by.includes('connectors.servers.SalesforceProd.auth.client_secret')), 'the secret is in the vault, used by the connector');
  check(!(await page.content()).includes(SECRET), 'the secret is not left in the page');
  const again = page.locator('input[data-field="auth.client_secret"]');
  check(await again.inputValue() === '', 'the edit form does not bring the secret back');

  // The form shows the version it edits; a save shows the form again with the new one.
  const version = () => page.locator('form[data-version]').getAttribute('data-version');
  const reshown = (before) => page.waitForFunction((v) => { const f = document.querySelector('form[data-version]'); return f && f.dataset.version !== v; }, before);

  step = 'edit keeps the secret';
  let before = await version();
  await page.locator('input[data-field="description"]').fill('Salesforce for the sales team');
  await page.waitForFunction(() => (document.querySelector('[data-testid=preview]')?.textContent || '').includes('for the sales team'));
  await page.getByRole('button', { name: 'Save changes' }).click();
  const edited = await eventually(async () => {
    const server = (await api('GET', '/api/config/connectors/SalesforceProd')).data.server;
    return server.description === 'Salesforce for the sales team' && server;
  }, 'the edit reaches the config');
  await reshown(before);
  check(edited.description === 'Salesforce for the sales team', 'the edit is saved');
  check(isDeepStrictEqual(edited.auth.client_secret, { vault: 'SalesforceProd_client_secret' }), 'an edit that leaves the secret empty keeps it');

  step = 'a new secret on edit takes a fresh vault name';
  before = await version();
  await page.locator('input[data-field="auth.client_secret"]').fill('sf-rotated-0123456789');
  await page.waitForFunction(() => (document.querySelector('[data-testid=preview]')?.textContent || '').includes('SalesforceProd_client_secret_2'));
  await page.getByRole('button', { name: 'Save changes' }).click();
  await eventually(async () => {
    const server = (await api('GET', '/api/config/connectors/SalesforceProd')).data.server;
    return isDeepStrictEqual(server.auth.client_secret, { vault: 'SalesforceProd_client_secret_2' });
  }, 'the connector names the new secret');
  await reshown(before);
  check(!(await page.content()).includes('sf-rotated-0123456789'), 'the new secret is not left in the page');

  step = 'a provider token of its own (Discord bot)';
  await page.goto(`${BASE}/ui/#/settings/connectors/new/discord`);
  const ownHint = page.getByTestId('static-auth-hint');
  await ownHint.waitFor();
  check((await ownHint.innerText()).includes('Discord also takes a token'), `the form says Discord takes a token of its own: ${await ownHint.innerText()}`);
  await page.locator('select[data-field="auth.type"]').selectOption('bearer_token');
  const scheme = page.locator('input[data-field="auth.scheme"]');
  await scheme.waitFor();
  check(await scheme.inputValue() === 'Bot', 'choosing a token pre-fills Discord\'s Bot scheme');
  check(!(await ownHint.isVisible()), 'the hint goes once the token is chosen');
  await page.waitForFunction(() => (document.querySelector('[data-testid=preview]')?.textContent || '').includes('"scheme": "Bot"'));

  step = 'a tenant fills the sign-in URLs (Microsoft)';
  await page.goto(`${BASE}/ui/#/settings/connectors/new/microsoft`);
  const authUrl = page.locator('input[data-field="auth.authorization_url"]');
  await authUrl.waitFor();
  check(await authUrl.inputValue() === 'https://login.microsoftonline.com/common/oauth2/v2.0/authorize', `the tenant defaults to common: ${await authUrl.inputValue()}`);
  await page.locator('input[data-field="provider_vars.tenant"]').fill('contoso.onmicrosoft.com');
  check(await authUrl.inputValue() === 'https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize', `the tenant fills the authorization URL: ${await authUrl.inputValue()}`);
  check((await page.locator('input[data-field="auth.token_url"]').inputValue()).includes('/contoso.onmicrosoft.com/oauth2/v2.0/token'), 'and the token URL');
  await page.waitForFunction(() => (document.querySelector('[data-testid=preview]')?.textContent || '').includes('contoso.onmicrosoft.com/oauth2/v2.0/token'));
  // Leave the unsaved form (the page's handler answers "lose your changes?" with yes).
  await page.goto(`${BASE}/ui/#/settings/connectors`);
  await page.getByRole('link', { name: 'Add connector' }).waitFor();

  step = 'secrets';
  await page.getByRole('link', { name: 'Secrets' }).click();
  const oldRow = page.locator('tr[data-secret="SalesforceProd_client_secret"]');
  await oldRow.waitFor();
  check(/nothing/.test(await oldRow.innerText()), 'the replaced secret is used by nothing now');
  check(/SalesforceProd\.auth\.client_secret/.test(await page.locator('tr[data-secret="SalesforceProd_client_secret_2"]').innerText()), 'the new one is used by the connector');
  check(await page.getByRole('button', { name: 'Delete SalesforceProd_client_secret_2' }).isDisabled(), 'a secret in use cannot be deleted');
  await accessible('secrets');
  await shot('secrets');
  await page.getByRole('button', { name: 'Delete SalesforceProd_client_secret', exact: true }).click();
  await oldRow.waitFor({ state: 'detached' });
  await page.locator('input[data-field="secret-name"]').fill('extra_token');
  await page.locator('input[data-field="secret-value"]').fill('extra-value-0123456789');
  await page.getByRole('button', { name: 'Set secret' }).click();
  await page.locator('tr[data-secret="extra_token"]').waitFor();
  check(!(await page.content()).includes('extra-value-0123456789'), 'the value is not left in the page');

  step = 'connect';
  await page.getByRole('link', { name: 'Connectors', exact: true }).click();
  await card('notes').getByRole('button', { name: 'Connect notes' }).click();
  await page.locator('input[name="login"]').waitFor();
  await page.locator('input[name="login"]').fill('alice');
  await page.locator('input[name="password"]').fill('anything');
  await page.locator('button[type="submit"]').click();
  await page.locator('button.login-submit').click(); // consent
  await page.getByRole('heading', { name: 'Connected' }).waitFor();
  check(page.url().startsWith(`${BASE}/aperture/auth/notes/callback`), `back at the callback (${page.url()})`);
  await shot('connected');
  await page.getByRole('link', { name: 'Back to your connectors' }).click();
  await card('notes').waitFor();
  check(await card('notes').getByTestId('status').innerText() === 'Ready', 'notes is Ready after connecting');
  check(await card('notes').getByRole('button', { name: 'Disconnect notes' }).isVisible(), 'notes offers Disconnect');
  await shot('connectors-ready', { docs: true });

  step = 'disconnect';
  await card('notes').getByRole('button', { name: 'Disconnect notes' }).click();
  await page.waitForFunction(() => document.querySelector('li.card[data-connector="notes"] [data-testid=status]')?.textContent === 'Needs auth');

  step = 'config editor: a mistake shown at its line';
  await page.getByRole('link', { name: 'Config file' }).click();
  const editor = page.getByTestId('config-text');
  await editor.waitFor();
  const config = JSON.parse(await editor.inputValue());
  config.egress.read_timeout_secs = 0;
  const text = JSON.stringify(config, null, 2);
  const badLine = text.split('\n').findIndex((l) => l.includes('"read_timeout_secs": 0')) + 1;
  check(badLine > 0, 'the edited text has the line');
  await editor.fill(text);
  await page.getByRole('button', { name: 'Validate' }).click();
  const item = page.locator(`ul.diags li[data-line="${badLine}"]`);
  await item.waitFor();
  check(/read_timeout_secs/.test(await item.innerText()), `the message at line ${badLine} is about read_timeout_secs: ${await item.innerText()}`);
  check(await page.locator(`.gutter [data-mark-line="${badLine}"]`).count() === 1, 'the gutter marks the line');
  await accessible('config editor');
  await shot('config-editor', { docs: true });

  step = 'unsaved edits are not lost by a stray click';
  nextDialog = 'dismiss';
  // The question may come after the click returns (a loaded machine): wait for it.
  const asked = page.waitForEvent('dialog');
  await page.getByRole('link', { name: 'Grants' }).click();
  await asked;
  check(dialogs.at(-1)?.includes('unsaved changes'), `the page asked before leaving: ${dialogs.at(-1)}`);
  check(await editor.inputValue() === text, 'the edit is still there after staying');
  check(await page.locator('h1').innerText() === 'Config file', 'still on the config page');

  step = 'config editor: bad JSON';
  await editor.fill(text.replace('"read_timeout_secs": 0', '"read_timeout_secs": 0,'));
  await page.getByRole('button', { name: 'Validate' }).click();
  await page.getByText(`Line ${badLine + 1}:`).waitFor();

  step = 'config editor: a stale save is explained, not lost';
  config.egress.read_timeout_secs = 45;
  const mine = JSON.stringify(config, null, 2);
  await editor.fill(mine);
  const current = await api('GET', '/api/config');
  const theirs = structuredClone(current.data.config);
  theirs.connectors.servers.notes.description = 'Edited by someone else';
  const put = await api('PUT', '/api/config', { hash: current.data.hash, config: theirs });
  check(put.status === 200, `the other admin's save went through (${put.status} ${JSON.stringify(put.data)})`);
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.getByText('Someone else saved the config after you loaded it').waitFor();
  check(await editor.inputValue() === mine, 'the text is kept');
  await shot('config-stale');
  await page.getByRole('button', { name: 'Save mine over theirs' }).click();
  await page.getByText('Saved and in force.').waitFor();
  const after = await api('GET', '/api/config');
  check(after.data.config.egress.read_timeout_secs === 45, 'my save is in force');

  step = 'grants';
  await page.getByRole('link', { name: 'Grants' }).click();
  await page.getByRole('button', { name: 'Add grant' }).waitFor();
  // "Skip to content" moves focus, not the page.
  await page.locator('.skip').focus();
  await page.keyboard.press('Enter');
  check(await page.locator('h1').innerText() === 'Grants' && await page.evaluate(() => document.activeElement.id === 'main'), 'the skip link stays on the page');
  await page.getByRole('button', { name: 'Add grant' }).click();
  const n = await page.locator('fieldset.grant').count();
  await page.getByRole('textbox', { name: `Sources of grant ${n}`, exact: true }).fill('bob@example.com');
  await page.getByRole('textbox', { name: `Sources of grant ${n}`, exact: true }).press('Enter');
  await page.getByRole('textbox', { name: `Connector patterns of grant ${n}`, exact: true }).fill('notes/**');
  await page.getByRole('textbox', { name: `Connector patterns of grant ${n}`, exact: true }).press('Enter');
  await accessible('grants');
  await shot('grants');
  await page.getByRole('button', { name: 'Save grants' }).click();
  await page.getByText('Grants saved and in force.').waitFor();
  const grants = (await api('GET', '/api/config')).data.config.grants;
  check(isDeepStrictEqual(grants.at(-1), { src: ['bob@example.com'], app: { 'tailscale.com/cap/aperture': [{ connectors: ['notes/**'] }] } }), `the new grant is saved: ${JSON.stringify(grants.at(-1))}`);

  step = 'delete';
  await page.getByRole('link', { name: 'Settings: connectors' }).click();
  await page.locator('tr[data-connector="SalesforceProd"]').waitFor();
  await accessible('settings');
  await shot('settings-connectors');
  await page.getByRole('button', { name: 'Delete SalesforceProd' }).click();
  await page.locator('tr[data-connector="SalesforceProd"]').waitFor({ state: 'detached' });
  check((await api('GET', '/api/config/connectors/SalesforceProd')).status === 404, 'the connector is gone');

  step = 'phone';
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('link', { name: 'Connectors', exact: true }).click();
  await card('notes').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `nothing scrolls sideways on a phone (${overflow}px too wide)`);
  await shot('connectors-phone');

  step = 'content security policy';
  check(!violations.length, `the page broke its own policy or threw: ${violations.join('; ')}`);
  log('all dashboard checks passed');
  await browser.close();
} catch (e) {
  log(`FAILED: ${e.message}`);
  await shot('failure').catch(() => {});
  await browser.close();
  process.exit(1);
}
