"""Real-SDK MCP agent for the Portcullis end-to-end tests.

The e2e tests use this script as a genuine MCP client: it talks to the gateway through
the official Python SDK's high-level client (``mcp.Client`` over streamable HTTP, or on
the SDK's 1.x line ``ClientSession`` over ``streamablehttp_client``: the script runs on
both, in whichever venv it is started from), so
the gateway is checked against what a real agent sends and expects, not only against
hand-written JSON-RPC. The same operations can be run against an upstream directly, so
a test compares the call through the gateway with the call made without it.

Usage:
    python agent.py URL OPS_JSON [MODE]

MODE is how the client negotiates, as ``mcp.Client`` takes it: ``legacy`` (the
``initialize`` handshake and a session, MCP up to 2025-11-25; the default) or ``auto``
(``server/discover`` first, so 2026-07-28 against a server that offers it).

OPS_JSON is a JSON list of operations, or {"client": CLIENT, "ops": [...]} where CLIENT
says what the client offers the server (each key declares the capability):
    {"elicitation": {"action": "accept", "content": {...}},
     "sampling": {"text": "the model's answer"},
     "roots": [{"uri": "file:///work", "name": "work"}]}
The requests the server made are listed in the output's "asked" (method and params).

Operations, run in order on one client:
    {"op": "protocol_version"}
    {"op": "list_tools"}
    {"op": "call_tool", "name": "echo", "arguments": {"message": "hi"}, "progress": true}
        with "progress", the result has "progress": [[progress, total, message], ...]
        for the progress notifications that came during the call
    {"op": "list_resources"}
    {"op": "list_templates"}
    {"op": "read_resource", "uri": "demo://resource/static/document/features.md"}
    {"op": "list_prompts"}
    {"op": "get_prompt", "name": "simple-prompt", "arguments": {}}
    {"op": "complete_prompt", "name": "p", "argument": {"name": "a", "value": "E"},
     "context": {"other": "value"}}
    {"op": "complete_template", "uri": "demo://{id}", "argument": {...}}
    {"op": "subscribe", "uri": "demo://resource/static/document/features.md"}
    {"op": "unsubscribe", "uri": "..."}
    {"op": "wait_updated", "uri": "...", "timeout": 10}
        waits for notifications/resources/updated for that URI; the result is
        {"updated": [every URI heard of so far]}
    {"op": "set_level", "level": "warning"}
    {"op": "wait_logs", "count": 1, "timeout": 10}
        waits up to the timeout for that many log messages (notifications/message);
        the result is {"logs": [[level, data], ...]}, every one heard so far
    {"op": "sleep", "seconds": 1}
    {"op": "wait_tools_changed", "timeout": 10}
        waits for a notifications/tools/list_changed that arrived after the previous
        wait (or the client's start); the result is {"count": <how many so far>}

Prints one JSON object on stdout: {"results": [...], "asked": [...]}, one result per
operation,
either {"ok": <result>} or {"error": "<message>"} (plus "code" for MCP errors);
a failing operation does not stop the ones after it. Exits 0, or prints
{"fatal": "<message>"} and exits 2 if connecting or negotiating fails.
"""

import json
import sys
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
from mcp import types

try:  # The SDK's 2.x line: mcp.Client, MCPError.
    from mcp import Client
    from mcp.shared.exceptions import MCPError
except ImportError:  # The 1.x line: ClientSession over streamablehttp_client, McpError.
    Client = None
    from mcp.shared.exceptions import McpError as MCPError

TIMEOUT_SECONDS = 30  # per request; a hung gateway must not hang the test


def leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) anyio exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    exc = leaf(exc)
    return str(exc) or type(exc).__name__


class Notices:
    """Counts the notifications the gateway sends to this client."""

    def __init__(self) -> None:
        self.tools_changed = 0
        self.waited_for = 0
        self.updated: list[str] = []
        self.logs: list[list] = []

    async def log(self, params) -> None:
        self.logs.append([params.level, params.data])

    async def wait_logs(self, count: int, timeout: float) -> dict:
        """Waits up to `timeout` for `count` log messages; returns those heard so far."""
        with anyio.move_on_after(timeout):
            while len(self.logs) < count:
                await anyio.sleep(0.05)
        return {"logs": self.logs}

    async def handler(self, message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.tools_changed += 1
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))

    async def wait_updated(self, uri: str, timeout: float) -> dict:
        with anyio.fail_after(timeout):
            while uri not in self.updated:
                await anyio.sleep(0.05)
        return {"updated": sorted(set(self.updated))}

    async def wait_tools_changed(self, timeout: float) -> dict:
        with anyio.fail_after(timeout):
            while self.tools_changed <= self.waited_for:
                await anyio.sleep(0.05)
        self.waited_for = self.tools_changed
        return {"count": self.tools_changed}


def dump(result) -> dict:
    if isinstance(result, dict):
        return result
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def perform(client, notices: Notices, op: dict):
    kind = op.get("op")
    if kind == "protocol_version":
        return {"version": client.protocol_version}
    if kind == "wait_tools_changed":
        return await notices.wait_tools_changed(float(op.get("timeout", 10)))
    if kind == "list_tools":
        return await client.list_tools()
    if kind == "subscribe":
        return await client.subscribe_resource(op["uri"])
    if kind == "unsubscribe":
        return await client.unsubscribe_resource(op["uri"])
    if kind == "wait_updated":
        return await notices.wait_updated(op["uri"], float(op.get("timeout", 10)))
    if kind == "set_level":
        return await client.set_logging_level(op["level"])
    if kind == "wait_logs":
        return await notices.wait_logs(int(op.get("count", 1)), float(op.get("timeout", 10)))
    if kind == "sleep":
        await anyio.sleep(float(op["seconds"]))
        return {"slept": op["seconds"]}
    if kind == "call_tool":
        seen = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen.append([value, total, message])

        callback = progress if op.get("progress") else None
        result = dump(
            await client.call_tool(op["name"], op.get("arguments") or {}, progress_callback=callback)
        )
        if callback:
            result["progress"] = seen
        return result
    if kind == "list_resources":
        return await client.list_resources()
    if kind == "list_templates":
        return await client.list_resource_templates()
    if kind == "read_resource":
        return await client.read_resource(op["uri"])
    if kind == "list_prompts":
        return await client.list_prompts()
    if kind == "get_prompt":
        return await client.get_prompt(op["name"], op.get("arguments") or {})
    if kind == "complete_prompt":
        ref = types.PromptReference(type="ref/prompt", name=op["name"])
        return await client.complete(ref, op["argument"], op.get("context"))
    if kind == "complete_template":
        ref = types.ResourceTemplateReference(type="ref/resource", uri=op["uri"])
        return await client.complete(ref, op["argument"], op.get("context"))
    raise ValueError(f"unknown op: {kind!r}")


def callbacks(offer: dict, asked: list) -> dict:
    """The client callbacks for what `offer` declares; each records what it was asked."""
    out = {}
    if "elicitation" in offer:
        answer = offer["elicitation"]

        async def elicit(_context, params):
            asked.append({"method": "elicitation/create", "params": dump(params)})
            return types.ElicitResult(action=answer["action"], content=answer.get("content"))

        out["elicitation_callback"] = elicit
    if "sampling" in offer:
        text = offer["sampling"]["text"]

        async def sample(_context, params):
            asked.append({"method": "sampling/createMessage", "params": dump(params)})
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=text), model="e2e-model"
            )

        out["sampling_callback"] = sample
    if "roots" in offer:
        roots = [types.Root(uri=r["uri"], name=r.get("name")) for r in offer["roots"]]

        async def list_roots(_context):
            asked.append({"method": "roots/list"})
            return types.ListRootsResult(roots=roots)

        out["list_roots_callback"] = list_roots
    return out


class V1:
    """The 1.x SDK's ClientSession with the few names the 2.x Client spells otherwise."""

    def __init__(self, session, version: str) -> None:
        self.session = session
        self.protocol_version = version

    def __getattr__(self, name):
        return getattr(self.session, name)


@asynccontextmanager
async def connect(url: str, mode: str, **kwargs):
    """A connected client on whichever SDK line is installed (1.x: `mode` is always the
    initialize handshake)."""
    if Client is not None:
        async with Client(url, mode=mode, read_timeout_seconds=TIMEOUT_SECONDS, **kwargs) as client:
            yield client
        return
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url) as (read, write, _session_id):
        async with ClientSession(
            read, write, read_timeout_seconds=timedelta(seconds=TIMEOUT_SECONDS), **kwargs
        ) as session:
            init = await session.initialize()
            yield V1(session, init.protocolVersion)


def mcp_error(exc: MCPError) -> dict:
    error = getattr(exc, "error", exc)  # 1.x wraps the ErrorData
    return {"error": error.message, "code": error.code}


async def run(url: str, ops: list, offer: dict, mode: str, state: dict) -> None:
    results = state["results"]
    notices = Notices()
    async with connect(
        url,
        mode,
        message_handler=notices.handler,
        logging_callback=notices.log,
        **callbacks(offer, state["asked"]),
    ) as client:
        state["initialized"] = True
        for op in ops:
            try:
                results.append({"ok": dump(await perform(client, notices, op))})
            except MCPError as exc:
                results.append(mcp_error(exc))
            except TimeoutError:
                results.append({"error": "timed out"})
            except Exception as exc:
                results.append({"error": describe(exc)})


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 64
    url, ops = sys.argv[1], json.loads(sys.argv[2])
    offer = {}
    if isinstance(ops, dict):
        offer, ops = ops.get("client") or {}, ops["ops"]
    mode = sys.argv[3] if len(sys.argv) == 4 else "legacy"
    state = {"initialized": False, "results": [], "asked": []}
    results = state["results"]
    try:
        anyio.run(run, url, ops, offer, mode, state)
    except BaseException as exc:  # ExceptionGroup, KeyboardInterrupt, ...
        if not state["initialized"]:
            print(json.dumps({"fatal": describe(exc)}))
            return 2
        # The client broke after negotiating: mark the operations that never ran.
        results += [{"error": f"aborted: {describe(exc)}"}] * (len(ops) - len(results))
    print(json.dumps({"results": results, "asked": state["asked"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
