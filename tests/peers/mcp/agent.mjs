// Real-SDK MCP agent for the Portcullis end-to-end tests, on the official TypeScript SDK
// (`@modelcontextprotocol/client`, v2). It takes the same arguments and operations and
// prints the same output as `agent.py` (see its docstring), so a test runs one list of
// operations through both SDKs:
//
//     node agent.mjs URL OPS_JSON [MODE]
//
// MODE is the SDK's `versionNegotiation.mode`: `legacy` (the initialize handshake, the
// default) or `auto` (`server/discover` first: 2026-07-28 where it is offered).

import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const TIMEOUT_MS = 30_000; // per request; a hung gateway must not hang the test

function describe(e) {
    return (e && (e.message || String(e))) || 'error';
}

/** The request handlers for what `offer` declares; each records what it was asked. */
function offerTo(client, offer, asked) {
    if (offer.elicitation) {
        client.setRequestHandler('elicitation/create', async request => {
            asked.push({ method: 'elicitation/create', params: request.params });
            return { action: offer.elicitation.action, content: offer.elicitation.content };
        });
    }
    if (offer.sampling) {
        client.setRequestHandler('sampling/createMessage', async request => {
            asked.push({ method: 'sampling/createMessage', params: request.params });
            return {
                role: 'assistant',
                model: 'e2e-model',
                content: { type: 'text', text: offer.sampling.text }
            };
        });
    }
    if (offer.roots) {
        client.setRequestHandler('roots/list', async () => {
            asked.push({ method: 'roots/list' });
            return { roots: offer.roots };
        });
    }
}

/** What the server told this client outside answers: log messages and resource updates. */
class Notices {
    constructor(client) {
        this.logs = [];
        this.updated = [];
        client.setNotificationHandler('notifications/message', n => {
            this.logs.push([n.params.level, n.params.data]);
        });
        client.setNotificationHandler('notifications/resources/updated', n => {
            this.updated.push(n.params.uri);
        });
    }

    /** Waits until `done()` or `timeoutMs`; `fail` says whether running out is an error. */
    async until(done, timeoutMs, fail) {
        const end = Date.now() + timeoutMs;
        while (!done()) {
            if (Date.now() > end) {
                if (fail) throw new Error('timed out');
                return;
            }
            await new Promise(r => setTimeout(r, 50));
        }
    }
}

async function perform(client, notices, op) {
    const options = { timeout: TIMEOUT_MS };
    const seconds = (op.timeout ?? 10) * 1000;
    switch (op.op) {
        case 'set_level':
            return client.setLoggingLevel(op.level, options);
        case 'wait_logs':
            await notices.until(() => notices.logs.length >= (op.count ?? 1), seconds, false);
            return { logs: notices.logs };
        case 'subscribe':
            return client.subscribeResource({ uri: op.uri }, options);
        case 'unsubscribe':
            return client.unsubscribeResource({ uri: op.uri }, options);
        case 'wait_updated':
            await notices.until(() => notices.updated.includes(op.uri), seconds, true);
            return { updated: [...new Set(notices.updated)].sort() };
        case 'protocol_version':
            return { version: client.getNegotiatedProtocolVersion() };
        case 'list_tools':
            return client.listTools(undefined, options);
        case 'call_tool': {
            const progress = [];
            const opts = op.progress
                ? { ...options, onprogress: p => progress.push([p.progress, p.total ?? null, p.message ?? null]) }
                : options;
            const result = await client.callTool({ name: op.name, arguments: op.arguments ?? {} }, opts);
            return op.progress ? { ...result, progress } : result;
        }
        case 'list_resources':
            return client.listResources(undefined, options);
        case 'list_templates':
            return client.listResourceTemplates(undefined, options);
        case 'read_resource':
            return client.readResource({ uri: op.uri }, options);
        case 'list_prompts':
            return client.listPrompts(undefined, options);
        case 'get_prompt':
            return client.getPrompt({ name: op.name, arguments: op.arguments ?? {} }, options);
        case 'complete_prompt':
        case 'complete_template': {
            const ref =
                op.op === 'complete_prompt' ? { type: 'ref/prompt', name: op.name } : { type: 'ref/resource', uri: op.uri };
            const params = { ref, argument: op.argument };
            if (op.context) params.context = { arguments: op.context };
            return client.complete(params, options);
        }
        default:
            throw new Error(`unknown op: ${op.op}`);
    }
}

async function main() {
    const [url, opsJson, mode = 'legacy'] = process.argv.slice(2);
    if (!url || !opsJson) {
        console.error('usage: node agent.mjs URL OPS_JSON [MODE]');
        return 64;
    }
    let ops = JSON.parse(opsJson);
    let offer = {};
    if (!Array.isArray(ops)) {
        offer = ops.client ?? {};
        ops = ops.ops;
    }
    const capabilities = {};
    if (offer.elicitation) capabilities.elicitation = { form: {}, url: {} };
    if (offer.sampling) capabilities.sampling = {};
    if (offer.roots) capabilities.roots = {};
    const client = new Client(
        { name: 'portcullis-e2e-ts', version: '0' },
        { capabilities, versionNegotiation: { mode } }
    );
    const asked = [];
    offerTo(client, offer, asked);
    const notices = new Notices(client);
    try {
        await client.connect(new StreamableHTTPClientTransport(new URL(url)));
    } catch (e) {
        console.log(JSON.stringify({ fatal: describe(e) }));
        return 2;
    }
    const results = [];
    for (const op of ops) {
        try {
            results.push({ ok: await perform(client, notices, op) });
        } catch (e) {
            const entry = { error: describe(e) };
            if (typeof e?.code === 'number') entry.code = e.code;
            results.push(entry);
        }
    }
    await client.close().catch(() => {});
    console.log(JSON.stringify({ results, asked }));
    return 0;
}

process.exitCode = await main();
