// The upstream for the official MCP conformance suite's server scenarios, built on the
// official TypeScript SDK (`@modelcontextprotocol/sdk`, low-level `Server`, so every
// result has exactly the shape a scenario describes). The suite runs against
// Portcullis' `/v1/mcp/<id>`, which relays to this server: what the suite checks is
// the gateway's relay, with this server standing for any upstream that implements the
// scenarios' reference tools, resources and prompts (`conformance list` names them;
// each handler below says which scenario it serves).
//
// Usage: node server.mjs [--port N]
// Serves streamable HTTP at http://127.0.0.1:N/mcp (sessions, resumable streams) and
// prints `CONFORMANCE_UPSTREAM_READY http://127.0.0.1:N/mcp` on stdout once it
// listens. Exits when stdin closes, so a crashed test never leaves it behind.

import { randomUUID } from "node:crypto";
import http from "node:http";

import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  ElicitResultSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from "@modelcontextprotocol/sdk/types.js";

// A 1x1 red PNG and a 1-sample silent WAV: the smallest valid media the scenarios ask for.
const PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQIAAACAgA==";

const LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ content: [{ type: "text", text: t }] });
const noArgs = { type: "object", properties: {} };

const TOOLS = [
  { name: "test_simple_text", description: "Returns simple text (tools-call-simple-text)", inputSchema: noArgs },
  { name: "test_image_content", description: "Returns an image (tools-call-image)", inputSchema: noArgs },
  { name: "test_audio_content", description: "Returns audio (tools-call-audio)", inputSchema: noArgs },
  {
    name: "test_embedded_resource",
    description: "Returns an embedded resource (tools-call-embedded-resource)",
    inputSchema: noArgs,
  },
  {
    name: "test_multiple_content_types",
    description: "Returns text, image and a resource (tools-call-mixed-content)",
    inputSchema: noArgs,
  },
  {
    name: "test_tool_with_logging",
    description: "Logs three messages while it runs (tools-call-with-logging)",
    inputSchema: noArgs,
  },
  {
    name: "test_tool_with_progress",
    description: "Reports progress 0, 50, 100 (tools-call-with-progress)",
    inputSchema: noArgs,
  },
  { name: "test_error_handling", description: "Always fails (tools-call-error)", inputSchema: noArgs },
  {
    name: "test_sampling",
    description: "Asks the client's model (tools-call-sampling)",
    inputSchema: {
      type: "object",
      properties: { prompt: { type: "string", description: "The prompt to send to the LLM" } },
      required: ["prompt"],
    },
  },
  {
    name: "test_elicitation",
    description: "Asks the user (tools-call-elicitation)",
    inputSchema: {
      type: "object",
      properties: { message: { type: "string", description: "The message to show the user" } },
      required: ["message"],
    },
  },
  {
    name: "test_elicitation_sep1034_defaults",
    description: "Asks with defaults for every primitive type (elicitation-sep1034-defaults)",
    inputSchema: noArgs,
  },
  {
    name: "test_elicitation_sep1330_enums",
    description: "Asks with all five enum forms (elicitation-sep1330-enums)",
    inputSchema: noArgs,
  },
  {
    name: "test_reconnection",
    description: "Closes its SSE stream before answering, so the client resumes (server-sse-polling)",
    inputSchema: noArgs,
  },
  {
    name: "json_schema_2020_12_tool",
    description: "Tool with JSON Schema 2020-12 features (json-schema-2020-12)",
    inputSchema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      $defs: {
        address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } },
      },
      properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
      additionalProperties: false,
    },
  },
];

const RESOURCES = [
  {
    uri: "test://static-text",
    name: "static-text",
    description: "A static text resource",
    mimeType: "text/plain",
  },
  {
    uri: "test://static-binary",
    name: "static-binary",
    description: "A static binary resource",
    mimeType: "image/png",
  },
  {
    uri: "test://watched-resource",
    name: "watched-resource",
    description: "A resource clients may subscribe to",
    mimeType: "text/plain",
  },
];

const PROMPTS = [
  { name: "test_simple_prompt", description: "A prompt without arguments" },
  {
    name: "test_prompt_with_arguments",
    description: "A prompt with two arguments",
    arguments: [
      { name: "arg1", description: "First test argument", required: true },
      { name: "arg2", description: "Second test argument", required: true },
    ],
  },
  {
    name: "test_prompt_with_embedded_resource",
    description: "A prompt embedding a resource",
    arguments: [{ name: "resourceUri", description: "URI of the resource to embed", required: true }],
  },
  { name: "test_prompt_with_image", description: "A prompt with an image" },
];

/** One `Server` per session: the SDK binds a server to one transport. */
function newServer() {
  const server = new Server(
    { name: "portcullis-conformance-upstream", version: "1.0.0" },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );
  let minLevel = "debug";
  const subscribed = new Set();

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const args = request.params.arguments ?? {};
    const log = async (data) => {
      if (LEVELS.indexOf("info") >= LEVELS.indexOf(minLevel)) {
        await extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
      }
    };
    switch (request.params.name) {
      case "test_simple_text":
        return text("This is a simple text response for testing.");
      case "test_image_content":
        return { content: [{ type: "image", data: PNG, mimeType: "image/png" }] };
      case "test_audio_content":
        return { content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] };
      case "test_embedded_resource":
        return {
          content: [
            {
              type: "resource",
              resource: {
                uri: "test://embedded-resource",
                mimeType: "text/plain",
                text: "This is an embedded resource content.",
              },
            },
          ],
        };
      case "test_multiple_content_types":
        return {
          content: [
            { type: "text", text: "Multiple content types test:" },
            { type: "image", data: PNG, mimeType: "image/png" },
            {
              type: "resource",
              resource: {
                uri: "test://mixed-content-resource",
                mimeType: "application/json",
                text: JSON.stringify({ test: "data", value: 123 }),
              },
            },
          ],
        };
      case "test_tool_with_logging":
        await log("Tool execution started");
        await sleep(50);
        await log("Tool processing data");
        await sleep(50);
        await log("Tool execution completed");
        return text("Tool with logging executed successfully");
      case "test_tool_with_progress": {
        const token = request.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (token !== undefined) {
            await extra.sendNotification({
              method: "notifications/progress",
              params: { progressToken: token, progress, total: 100 },
            });
          }
          if (progress < 100) await sleep(50);
        }
        return text("Tool with progress executed successfully");
      }
      case "test_error_handling":
        return { isError: true, ...text("This tool intentionally returns an error for testing") };
      case "test_sampling": {
        if (!server.getClientCapabilities()?.sampling) {
          return { isError: true, ...text("The client does not support sampling") };
        }
        const result = await server.createMessage(
          {
            messages: [{ role: "user", content: { type: "text", text: String(args.prompt ?? "") } }],
            maxTokens: 100,
          },
          { relatedRequestId: extra.requestId },
        );
        const answer = result.content?.type === "text" ? result.content.text : JSON.stringify(result.content);
        return text(`LLM response: ${answer}`);
      }
      case "test_elicitation": {
        if (!server.getClientCapabilities()?.elicitation) {
          return { isError: true, ...text("The client does not support elicitation") };
        }
        const result = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: String(args.message ?? ""),
              requestedSchema: {
                type: "object",
                properties: {
                  username: { type: "string", description: "User's response" },
                  email: { type: "string", description: "User's email address" },
                },
                required: ["username", "email"],
              },
            },
          },
          ElicitResultSchema,
        );
        return text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
      }
      case "test_elicitation_sep1034_defaults":
        return elicited(
          await extra.sendRequest(
            {
              method: "elicitation/create",
              params: {
                message: "Please review your details (defaults filled in)",
                requestedSchema: {
                  type: "object",
                  properties: {
                    name: { type: "string", description: "User name", default: "John Doe" },
                    age: { type: "integer", description: "User age", default: 30 },
                    score: { type: "number", description: "User score", default: 95.5 },
                    status: {
                      type: "string",
                      description: "User status",
                      enum: ["active", "inactive", "pending"],
                      default: "active",
                    },
                    verified: { type: "boolean", description: "Verification status", default: true },
                  },
                },
              },
            },
            ElicitResultSchema,
          ),
        );
      case "test_elicitation_sep1330_enums":
        return elicited(
          await extra.sendRequest(
            {
              method: "elicitation/create",
              params: {
                message: "Please pick options",
                requestedSchema: {
                  type: "object",
                  properties: {
                    untitledSingle: { type: "string", enum: ["option1", "option2", "option3"] },
                    titledSingle: {
                      type: "string",
                      oneOf: [
                        { const: "value1", title: "First Option" },
                        { const: "value2", title: "Second Option" },
                        { const: "value3", title: "Third Option" },
                      ],
                    },
                    legacyEnum: {
                      type: "string",
                      enum: ["opt1", "opt2", "opt3"],
                      enumNames: ["Option One", "Option Two", "Option Three"],
                    },
                    untitledMulti: {
                      type: "array",
                      items: { type: "string", enum: ["option1", "option2", "option3"] },
                    },
                    titledMulti: {
                      type: "array",
                      items: {
                        anyOf: [
                          { const: "value1", title: "First Choice" },
                          { const: "value2", title: "Second Choice" },
                          { const: "value3", title: "Third Choice" },
                        ],
                      },
                    },
                  },
                },
              },
            },
            ElicitResultSchema,
          ),
        );
      case "test_reconnection":
        // Closing the request's SSE stream mid-call (SEP-1699): the client resumes with a
        // GET carrying Last-Event-ID and gets the answer from the event store.
        await sleep(50);
        extra.closeSSEStream?.();
        await sleep(200);
        return text("Reconnection test completed successfully");
      default:
        return { isError: true, ...text(`Unknown tool: ${request.params.name}`) };
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: "test://template/{id}/data",
        name: "template-data",
        description: "Data for an id",
        mimeType: "application/json",
      },
    ],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const uri = request.params.uri;
    if (uri === "test://static-text") {
      return {
        contents: [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }],
      };
    }
    if (uri === "test://static-binary") {
      return { contents: [{ uri, mimeType: "image/png", blob: PNG }] };
    }
    if (uri === "test://watched-resource") {
      return { contents: [{ uri, mimeType: "text/plain", text: "Watched resource content." }] };
    }
    const templated = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (templated) {
      const id = templated[1];
      return {
        contents: [
          {
            uri,
            mimeType: "application/json",
            text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
          },
        ],
      };
    }
    throw new Error(`Resource not found: ${uri}`);
  });
  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscribed.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscribed.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const args = request.params.arguments ?? {};
    switch (request.params.name) {
      case "test_simple_prompt":
        return { messages: [{ role: "user", content: { type: "text", text: "This is a simple prompt for testing." } }] };
      case "test_prompt_with_arguments":
        return {
          messages: [
            {
              role: "user",
              content: { type: "text", text: `Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'` },
            },
          ],
        };
      case "test_prompt_with_embedded_resource":
        return {
          messages: [
            {
              role: "user",
              content: {
                type: "resource",
                resource: {
                  uri: args.resourceUri,
                  mimeType: "text/plain",
                  text: "Embedded resource content for testing.",
                },
              },
            },
            { role: "user", content: { type: "text", text: "Please process the embedded resource above." } },
          ],
        };
      case "test_prompt_with_image":
        return {
          messages: [
            { role: "user", content: { type: "image", data: PNG, mimeType: "image/png" } },
            { role: "user", content: { type: "text", text: "Please analyze the image above." } },
          ],
        };
      default:
        throw new Error(`Unknown prompt: ${request.params.name}`);
    }
  });
  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const value = request.params.argument.value ?? "";
    const words = ["paris", "park", "party", "test", "testing"].filter((w) => w.startsWith(value));
    return { completion: { values: words, total: words.length, hasMore: false } };
  });
  server.setRequestHandler(SetLevelRequestSchema, async (request) => {
    minLevel = request.params.level;
    return {};
  });
  return server;
}

function elicited(result) {
  return text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
}

/** Keeps every event per stream so a client that resumes with Last-Event-ID gets the rest. */
class MemoryEventStore {
  constructor() {
    this.events = new Map();
  }
  async storeEvent(streamId, message) {
    const id = `${streamId}_${Date.now()}_${randomUUID()}`;
    this.events.set(id, { streamId, message });
    return id;
  }
  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return "";
    let after = false;
    for (const [id, { streamId, message }] of this.events) {
      if (id === lastEventId) {
        after = true;
      } else if (after && streamId === last.streamId) {
        await send(id, message);
      }
    }
    return last.streamId;
  }
}

const sessions = new Map();

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : undefined;
}

async function handle(req, res) {
  if (new URL(req.url, "http://x").pathname !== "/mcp") {
    res.writeHead(404).end();
    return;
  }
  const id = req.headers["mcp-session-id"];
  const body = req.method === "POST" ? await readJson(req) : undefined;
  let transport = id ? sessions.get(id) : undefined;
  if (!transport) {
    if (id || req.method !== "POST" || !isInitializeRequest(body)) {
      res.writeHead(id ? 404 : 400, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message: "Unknown or missing session" }, id: null }));
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new MemoryEventStore(),
      retryInterval: 100,
      onsessioninitialized: (sid) => sessions.set(sid, transport),
    });
    transport.onclose = () => transport.sessionId && sessions.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

function main() {
  const at = process.argv.indexOf("--port");
  const port = at > 0 ? Number(process.argv[at + 1]) : 0;
  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch((error) => {
      console.error(error);
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`CONFORMANCE_UPSTREAM_READY http://127.0.0.1:${httpServer.address().port}/mcp`);
  });
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

main();
