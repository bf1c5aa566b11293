#!/usr/bin/env node
// Portcullis test peer: a real OAuth 2.0 / OpenID Connect authorization server
// (npm `oidc-provider`, see ../package.json for the pinned version) that the
// Rust end-to-end tests spawn as a child process. TEST USE ONLY: in-memory
// storage, throw-away signing keys, any username logs in, open dynamic
// registration, unauthenticated /__test admin endpoints.
//
// Usage:
//   node tests/peers/oidc/server.mjs [--port N] [--clients FILE] [--ignore-stdin]
//
//   --port N        TCP port on 127.0.0.1 (default 0 = ephemeral). Never binds
//                   anything but 127.0.0.1.
//   --clients FILE  JSON file with an array of oidc-provider client metadata
//                   objects (snake_case, e.g. {"client_id", "client_secret",
//                   "grant_types", "redirect_uris", "scope", ...}), or
//                   {"clients": [...]}. Replaces the default clients below.
//   --ignore-stdin  Do not exit when stdin reaches EOF (for manual runs with
//                   </dev/null). By default the server exits on stdin EOF so
//                   that a crashed parent never leaves it behind: spawn it with
//                   a piped stdin and keep the write end open.
//
// Environment:
//   OIDC_ACCESS_TTL           access-token lifetime in seconds (default 3600);
//                             used for client_credentials and auth-code tokens.
//   OIDC_REDIRECT_URIS        comma-separated redirect URIs for portcullis-web
//                             and portcullis-pkce (default
//                             http://127.0.0.1:8080/aperture/auth/test/callback).
//   OIDC_ACCESS_TOKEN_FORMAT  "opaque" (default) or "jwt" (RS256, verifiable
//                             with <issuer>/jwks) for resource-server tokens.
//   OIDC_ROTATE_REFRESH_TOKENS "1" (default): every refresh retires the refresh token
//                             it used; "0": refresh tokens stay valid until revoked.
//   OIDC_VERBOSE=1            show oidc-provider's development notices too.
//   DEBUG=oidc-provider:*     oidc-provider's own debug tracing (to stderr).
//
// Protocol with the parent:
//   * Exactly one line is written to stdout, once listening:
//       OIDC_READY http://127.0.0.1:<port>
//     (the URL is also the issuer). Everything else goes to stderr.
//   * Exits 0 on SIGTERM, SIGINT or stdin EOF.
//
// Default clients (all scopes: read:data write:data; auth-code clients may also
// ask for openid offline_access):
//   portcullis-cc       secret cc-secret-value-1234567890   client_credentials, client_secret_basic
//   portcullis-cc-post  secret cc-post-secret-0987654321    client_credentials, client_secret_post
//   portcullis-web      secret web-secret-abcdef123456      authorization_code+refresh_token, client_secret_basic
//   portcullis-pkce     public (token_endpoint_auth_method none)  authorization_code+refresh_token
// Every access token is issued for the resource server `urn:portcullis:test`
// (the default when the request has no `resource` parameter) or for the
// `http://127.0.0.1:<port>/...` resource a request names; any other `resource`
// value is rejected with invalid_target.
//
// Endpoints (routes are oidc-provider defaults): /auth, /token,
// /token/introspection, /token/revocation, /reg (open dynamic registration),
// /me, /jwks, /session/end, /.well-known/openid-configuration.
//
// ---------------------------------------------------------------------------
// NON-INTERACTIVE LOGIN + CONSENT (devInteractions), plain HTTP, keep a cookie
// jar across steps 1-5 and do NOT follow redirects automatically:
//   1. GET  /auth?response_type=code&client_id=portcullis-pkce
//             &redirect_uri=<one of OIDC_REDIRECT_URIS>
//             &scope=openid%20offline_access%20read:data
//             &code_challenge=<BASE64URL(SHA256(verifier))>&code_challenge_method=S256
//             &state=<s>
//      -> 303, Location: /interaction/<uid>; sets _interaction (path
//         /interaction/<uid>) and _interaction_resume (path /auth/<uid>) cookies.
//   2. POST /interaction/<uid>
//        Content-Type: application/x-www-form-urlencoded
//        body: prompt=login&login=<any account id>&password=<anything>
//      -> 303, Location: http://127.0.0.1:<port>/auth/<uid> (absolute)
//   3. GET  /auth/<uid>
//      -> 303, Location: /interaction/<uid2> (consent); sets _session and new
//         _interaction cookies. <uid2> is a new uid: always follow Location.
//   4. POST /interaction/<uid2>   body: prompt=consent
//      -> 303, Location: http://127.0.0.1:<port>/auth/<uid2> (absolute)
//   5. GET  /auth/<uid2>
//      -> 303, Location: <redirect_uri>?code=<code>&state=<s>&iss=<issuer>
//   6. POST /token  grant_type=authorization_code&code=<code>
//        &redirect_uri=<same>&code_verifier=<verifier>  (+ client_id for the
//        public client, or HTTP Basic for portcullis-web)
//      -> 200 {access_token, expires_in, refresh_token, id_token?, scope, token_type}
// The GET /interaction/<uid> HTML page is optional (it only renders the form).
// Steps 2-3 are skipped when the cookie jar already holds a _session for the
// account, and 4-5 when that account already consented for the client.
// Refresh tokens rotate on every use; replaying a rotated (old) refresh token
// returns invalid_grant AND revokes the whole grant (replay detection).
// ---------------------------------------------------------------------------
//
// Test-only admin endpoints (no authentication, 127.0.0.1 only):
//   GET  /__test/token-requests -> 200 {"total": N,
//          "by_grant_type": {"client_credentials": N, ...},
//          "by_client_id": {"portcullis-cc": N, ...},
//          "by_status": {"200": N, "401": N, ...},
//          "requests": [{"grant_type", "client_id", "status", "error"}, ...]}
//        Counts every POST to the token endpoint (successful or not) since start
//        or the last reset. `client_id` is the authenticated client, else the
//        one claimed in the request, else null; `error` is the OAuth error code
//        or null. `requests` keeps the newest 1000 entries, oldest first.
//   GET  /__test/requests -> 200 {"<route name>": N, ...} for every
//        oidc-provider route hit (token, introspection, revocation, userinfo,
//        authorization, registration, jwks, discovery, ...).
//   POST /__test/reset    -> 204; zeroes both counters.
//   POST /__test/clients  JSON body: one client metadata object -> 201
//        {"client_id": ...} after validation (400 {"error","error_description"}
//        if invalid, 409 if it would shadow a static client). Adds/replaces a
//        non-static client at runtime, e.g. once the gateway's callback URL is
//        known.

// oidc-provider prints notices with console.info (stdout). stdout is reserved
// for the single ready line, so every console method goes to stderr. This must
// happen before oidc-provider is imported, hence the dynamic import below.
import { format } from 'node:util';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

const toStderr = (...args) => { process.stderr.write(`${format(...args)}\n`); };
const VERBOSE = /^(1|true|yes)$/i.test(process.env.OIDC_VERBOSE ?? '');
// Development-only notices that are expected for a test peer. Anything else
// oidc-provider warns about is still shown.
const EXPECTED_WARNINGS = [
  'Unsupported runtime', // v9 asks for Node >= 22 LTS; works on Node 20.19+.
  'quick start development-only in-memory adapter',
  'quick start development-only feature devInteractions',
];
console.log = toStderr;
console.info = (...args) => {
  if (!VERBOSE && String(args[0]).startsWith('oidc-provider NOTICE:')) return;
  toStderr(...args);
};
console.debug = toStderr;
console.warn = (...args) => {
  const msg = String(args[0]);
  if (!VERBOSE && msg.includes('oidc-provider WARNING:') && EXPECTED_WARNINGS.some((w) => msg.includes(w))) return;
  toStderr(...args);
};

const { default: Provider, errors } = await import('oidc-provider');

// ----------------------------------------------------------------- options --
function parseArgs(argv) {
  const opts = { port: 0, clients: undefined, ignoreStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      i += 1;
      if (i >= argv.length) fail(`missing value for ${arg}`);
      return argv[i];
    };
    switch (arg) {
      case '--port': {
        const raw = next();
        const port = Number(raw);
        if (!/^\d+$/.test(raw) || port > 65535) fail(`invalid --port ${raw}`);
        opts.port = port;
        break;
      }
      case '--clients':
        opts.clients = next();
        break;
      case '--ignore-stdin':
        opts.ignoreStdin = true;
        break;
      case '-h':
      case '--help':
        process.stderr.write('usage: node server.mjs [--port N] [--clients FILE] [--ignore-stdin]\n');
        process.exit(0);
        break;
      default:
        fail(`unknown argument ${arg}`);
    }
  }
  return opts;
}

function fail(msg) {
  process.stderr.write(`oidc peer: ${msg}\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));

const ACCESS_TTL = (() => {
  const raw = process.env.OIDC_ACCESS_TTL ?? '3600';
  const n = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || n < 1) fail(`invalid OIDC_ACCESS_TTL ${raw}`);
  return n;
})();

const ACCESS_TOKEN_FORMAT = (process.env.OIDC_ACCESS_TOKEN_FORMAT || 'opaque').toLowerCase();
if (!['opaque', 'jwt'].includes(ACCESS_TOKEN_FORMAT)) fail(`invalid OIDC_ACCESS_TOKEN_FORMAT ${ACCESS_TOKEN_FORMAT}`);

const REDIRECT_URIS = (process.env.OIDC_REDIRECT_URIS || 'http://127.0.0.1:8080/aperture/auth/test/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);

const RESOURCE = 'urn:portcullis:test';
// A test's own resource server on loopback, named by its URL (RFC 9728 metadata names
// the server itself as the resource), is a resource too.
function isLoopbackResource(indicator) {
  try {
    const u = new URL(indicator);
    return u.protocol === 'http:' && u.hostname === '127.0.0.1';
  } catch {
    return false;
  }
}
const RESOURCE_SCOPES = ['read:data', 'write:data'];

function defaultClients() {
  const cc = {
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES.join(' '),
  };
  const code = {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: REDIRECT_URIS,
    scope: ['openid', 'offline_access', ...RESOURCE_SCOPES].join(' '),
  };
  return [
    {
      ...cc,
      client_id: 'portcullis-cc',
      client_secret: 'cc-secret-value-1234567890',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...cc,
      client_id: 'portcullis-cc-post',
      client_secret: 'cc-post-secret-0987654321',
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      ...code,
      client_id: 'portcullis-web',
      client_secret: 'web-secret-abcdef123456',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...code,
      client_id: 'portcullis-pkce',
      token_endpoint_auth_method: 'none',
    },
  ];
}

function loadClients(file) {
  if (!file) return defaultClients();
  let parsed;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`cannot read --clients ${file}: ${err.message}`);
  }
  const list = Array.isArray(parsed) ? parsed : parsed?.clients;
  if (!Array.isArray(list)) fail(`--clients ${file}: expected an array or {"clients": [...]}`);
  return list;
}

const clients = loadClients(opts.clients);

// Fresh throw-away signing key per process (avoids oidc-provider's shared
// well-known development keys).
function signingKeys() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: `test-rs256-${crypto.randomUUID()}`, alg: 'RS256', use: 'sig' }] };
}

// ------------------------------------------------------------ test counters --
const MAX_LOG = 1000;
let tokenStats;
let routeStats;
function resetStats() {
  tokenStats = { total: 0, by_grant_type: {}, by_client_id: {}, by_status: {}, requests: [] };
  routeStats = {};
}
resetStats();
const bump = (obj, key) => { obj[key] = (obj[key] ?? 0) + 1; };

function claimedClientId(ctx) {
  const fromBody = ctx.oidc?.params?.client_id ?? ctx.oidc?.body?.client_id;
  if (typeof fromBody === 'string' && fromBody) return fromBody;
  const auth = ctx.get('authorization');
  const m = /^basic\s+(\S+)$/i.exec(auth);
  if (m) {
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const idx = decoded.indexOf(':');
    if (idx > 0) {
      try { return decodeURIComponent(decoded.slice(0, idx)); } catch { return decoded.slice(0, idx); }
    }
  }
  return null;
}

function recordTokenRequest(ctx) {
  const grantType = ctx.oidc?.params?.grant_type ?? ctx.oidc?.body?.grant_type ?? 'unknown';
  const clientId = ctx.oidc?.client?.clientId ?? claimedClientId(ctx);
  let error = null;
  if (ctx.status >= 400 && ctx.body && typeof ctx.body === 'object') error = ctx.body.error ?? null;
  tokenStats.total += 1;
  bump(tokenStats.by_grant_type, grantType);
  bump(tokenStats.by_client_id, clientId ?? 'unknown');
  bump(tokenStats.by_status, String(ctx.status));
  tokenStats.requests.push({ grant_type: grantType, client_id: clientId, status: ctx.status, error });
  if (tokenStats.requests.length > MAX_LOG) tokenStats.requests.shift();
}

async function readJsonBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) throw new Error('body too large');
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
}

// ------------------------------------------------------------------ server --
// Bind first so the issuer can carry the real (possibly ephemeral) port.
let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
server.on('clientError', (err, socket) => { socket.destroy(err); });
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(opts.port, '127.0.0.1', () => { server.off('error', reject); resolve(); });
}).catch((err) => fail(`cannot listen on 127.0.0.1:${opts.port}: ${err.message}`));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: signingKeys(),
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES],
  claims: { openid: ['sub'] },
  async findAccount(_ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  pkce: { required: () => true }, // v9 supports S256 only
  rotateRefreshToken: (process.env.OIDC_ROTATE_REFRESH_TOKENS ?? '1') !== '0',
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    registration: { enabled: true, initialAccessToken: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE && !isLoopbackResource(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: RESOURCE_SCOPES.join(' '),
          audience: resourceIndicator,
          accessTokenTTL: ACCESS_TTL,
          accessTokenFormat: ACCESS_TOKEN_FORMAT,
          ...(ACCESS_TOKEN_FORMAT === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  async renderError(ctx, out, error) {
    ctx.type = 'json';
    ctx.body = out;
    if (!(error instanceof errors.OIDCProviderError)) toStderr('oidc peer: renderError:', error);
  },
});

// Test admin endpoints + request counters. Registered before oidc-provider's
// routes; the counters read ctx.oidc after the route has run.
provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) {
    ctx.set('cache-control', 'no-store');
    const route = `${ctx.method} ${ctx.path}`;
    if (route === 'GET /__test/token-requests') {
      ctx.body = tokenStats;
    } else if (route === 'GET /__test/requests') {
      ctx.body = routeStats;
    } else if (route === 'POST /__test/reset') {
      resetStats();
      ctx.status = 204;
    } else if (route === 'POST /__test/clients') {
      let metadata;
      try {
        metadata = await readJsonBody(ctx.req);
      } catch (err) {
        ctx.status = 400;
        ctx.body = { error: 'invalid_request', error_description: err.message };
        return;
      }
      if (!metadata || typeof metadata.client_id !== 'string') {
        ctx.status = 400;
        ctx.body = { error: 'invalid_client_metadata', error_description: 'client_id is required' };
        return;
      }
      if (clients.some((c) => c.client_id === metadata.client_id)) {
        ctx.status = 409;
        ctx.body = { error: 'invalid_client_metadata', error_description: 'static clients cannot be replaced' };
        return;
      }
      try {
        await provider.Client.validate(metadata);
      } catch (err) {
        ctx.status = 400;
        ctx.body = { error: err.error ?? 'invalid_client_metadata', error_description: err.error_description ?? err.message };
        return;
      }
      await provider.Client.adapter.upsert(metadata.client_id, metadata);
      ctx.status = 201;
      ctx.body = { client_id: metadata.client_id };
    } else {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
    }
    return;
  }

  await next();

  const routeName = ctx.oidc?.route;
  if (routeName) bump(routeStats, routeName);
  if (routeName === 'token') recordTokenRequest(ctx);
});

// Errors: always to stderr. Expected client errors (4xx) are one line each.
provider.on('server_error', (ctx, err) => {
  toStderr(`oidc peer: server_error on ${ctx?.method} ${ctx?.path}:`, err);
});
for (const event of [
  'authorization.error', 'grant.error', 'introspection.error', 'revocation.error',
  'registration_create.error', 'registration_read.error', 'registration_update.error',
  'registration_delete.error', 'userinfo.error', 'end_session.error', 'jwks.error',
  'discovery.error', 'pushed_authorization_request.error',
]) {
  provider.on(event, (ctx, err) => {
    toStderr(`oidc peer: ${event} ${err?.error ?? err?.name}: ${err?.error_description ?? err?.message}${err?.error_detail ? ` (${err.error_detail})` : ''}`);
  });
}

const app = provider.callback();
handler = (req, res) => app(req, res);

process.stdout.write(`OIDC_READY ${issuer}\n`);

// ---------------------------------------------------------------- shutdown --
let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  if (VERBOSE) toStderr(`oidc peer: shutting down (${reason})`);
  server.close();
  server.closeAllConnections?.();
  // Exit promptly even if a client keeps a connection half-open.
  setTimeout(() => process.exit(0), 200).unref();
  server.once('close', () => process.exit(0));
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (!opts.ignoreStdin) {
  process.stdin.on('end', () => shutdown('stdin EOF'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
