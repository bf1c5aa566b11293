// The client under test in the conformance suite's `client` auth scenarios is Portcullis
// itself: for a per-user MCP connector it is the upstream server's OAuth client. The
// suite runs this driver as `node client.mjs <server-url>` (scenario name and context in
// MCP_CONFORMANCE_SCENARIO and MCP_CONFORMANCE_CONTEXT) and checks what reaches the
// scenario's servers. The driver does what an operator and a user would:
//
// 1. the operator adds a connector for the server through the admin API
//    (`oauth2_dcr`: only the URL; a client registered in advance when the scenario
//    gives one; a client ID metadata document URL hosted for Portcullis; for the
//    machine-to-machine scenarios `oauth2_client_credentials` with only the client);
// 2. the user connects it (POST /api/connectors/<id>/connect, then the browser's part:
//    the authorization URL, whose redirect lands on Portcullis's callback);
// 3. an MCP client lists and calls the server's tools through /v1/mcp/<id>; when the
//    server wants wider scopes, Portcullis asks the client to open an authorization
//    URL (URL-mode elicitation) and the driver follows it like a browser.
//
// Exit status 0 when the tool call returned a result; the suite decides the rest.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const serverUrl = process.argv[2];
const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? '';
const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || '{}');
const gateway = process.env.PORTCULLIS_URL;
// What an operator hosts for Portcullis when the authorization servers cannot reach its
// own document: the URL the suite's servers expect.
const metadataDocument = process.env.PORTCULLIS_CLIENT_METADATA_URL;

function fail(message) {
  console.error(`driver: ${message}`);
  process.exit(1);
}

if (!serverUrl || !gateway) fail('usage: PORTCULLIS_URL=... node client.mjs <server-url>');

// Connector IDs are alphanumeric, at most 32 characters.
const id = `s${scenario.replace(/^auth\//, '').replace(/[^A-Za-z0-9]/g, '')}`.slice(0, 32);

async function api(method, path, body) {
  const resp = await fetch(`${gateway}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
    redirect: 'manual',
  });
  const text = await resp.text();
  if (!resp.ok) fail(`${method} ${path}: HTTP ${resp.status} ${text}`);
  return text ? JSON.parse(text) : {};
}

// The browser's part of an authorization: the authorization server redirects to
// Portcullis's callback, which completes the connection.
async function authorize(authUrl) {
  const atServer = await fetch(authUrl, { redirect: 'manual' });
  const callback = atServer.headers.get('location');
  if (!callback) fail(`the authorization URL answered HTTP ${atServer.status} without a redirect`);
  const done = await fetch(callback, { redirect: 'manual' });
  const page = await done.text();
  if (!done.ok) fail(`the callback answered HTTP ${done.status}: ${page.slice(0, 500)}`);
  console.log(`driver: connected through ${new URL(authUrl).origin}`);
}

// Machine-to-machine scenarios (SEP-1046) get a shared client-credentials connector,
// its token endpoint discovered; the others a per-user one the user connects.
const machine = scenario.startsWith('auth/client-credentials');
const auth = machine ? { type: 'oauth2_client_credentials' } : { type: 'oauth2_dcr' };
if (context.client_id) auth.client_id = context.client_id;
if (context.client_secret) auth.client_secret = context.client_secret;
if (context.private_key_pem) auth.private_key = context.private_key_pem;
if (metadataDocument && !machine) auth.client_metadata_url = metadataDocument;
await api('PUT', `/api/config/connectors/${id}`, { protocol: 'mcp', url: serverUrl, auth });

if (!machine) {
  const { auth_url: authUrl } = await api('POST', `/api/connectors/${id}/connect`);
  await authorize(authUrl);
}

const client = new Client(
  { name: 'portcullis-conformance-driver', version: '1.0.0' },
  { capabilities: { elicitation: { form: {}, url: {} } } },
);
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  if (request.params.mode !== 'url') return { action: 'decline' };
  console.log(`driver: asked to authorize again: ${request.params.message}`);
  await authorize(request.params.url);
  return { action: 'accept' };
});
await client.connect(new StreamableHTTPClientTransport(new URL(`${gateway}/v1/mcp/${id}`)));
// The gateway opens the upstream session once the user is connected, and says so with
// tools/list_changed; a client that lists before that sees none yet.
let tools = [];
for (let tries = 0; tools.length === 0 && tries < 50; tries++) {
  if (tries > 0) await new Promise((r) => setTimeout(r, 200));
  ({ tools } = await client.listTools());
}
console.log(`driver: tools ${tools.map((t) => t.name).join(', ')}`);
if (tools.length === 0) fail('the connector lists no tools');
const result = await client.callTool({ name: tools[0].name, arguments: {} });
console.log(`driver: ${tools[0].name} → ${JSON.stringify(result.content)}`);
await client.close();
if (result.isError) fail('the tool call failed');
