"""Real-SDK MCP agent for the Portcullis end-to-end tests.

The e2e tests use this script as a genuine MCP client: it talks to the gateway
through the official Python SDK's streamable HTTP client
(``mcp.client.streamable_http``), so the gateway is checked against what a real
agent sends and expects, not only against hand-written JSON-RPC.

Usage:
    python agent.py URL OPS_JSON

OPS_JSON is a JSON list of operations, run in order on one session:
    {"op": "list_tools"}
    {"op": "call_tool", "name": "echo", "arguments": {"message": "hi"}}
    {"op": "list_resources"}
    {"op": "list_templates"}
    {"op": "read_resource", "uri": "demo://resource/static/document/features.md"}
    {"op": "wait_tools_changed", "timeout": 10}
        waits for a notifications/tools/list_changed that arrived after the previous
        wait (or the session's start); the result is {"count": <how many so far>}

Prints one JSON object on stdout: {"results": [...]}, one entry per operation,
either {"ok": <result>} or {"error": "<message>"} (plus "code" for MCP errors);
a failing operation does not stop the ones after it. Exits 0, or prints
{"fatal": "<message>"} and exits 2 if connecting or initialize fails.
"""

import json
import sys

import anyio
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

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
    """Counts the notifications the gateway sends on this session."""

    def __init__(self) -> None:
        self.tools_changed = 0
        self.waited_for = 0

    async def handler(self, message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.tools_changed += 1

    async def wait_tools_changed(self, timeout: float) -> dict:
        with anyio.fail_after(timeout):
            while self.tools_changed <= self.waited_for:
                await anyio.sleep(0.05)
        self.waited_for = self.tools_changed
        return {"count": self.tools_changed}


async def perform(session: ClientSession, notices: Notices, op: dict):
    kind = op.get("op")
    if kind == "wait_tools_changed":
        return await notices.wait_tools_changed(float(op.get("timeout", 10)))
    if kind == "list_tools":
        return await session.list_tools()
    if kind == "call_tool":
        return await session.call_tool(op["name"], op.get("arguments") or {})
    if kind == "list_resources":
        return await session.list_resources()
    if kind == "list_templates":
        return await session.list_resource_templates()
    if kind == "read_resource":
        return await session.read_resource(op["uri"])
    raise ValueError(f"unknown op: {kind!r}")


async def run(url: str, ops: list, state: dict) -> None:
    results = state["results"]
    notices = Notices()
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(
            read, write, read_timeout_seconds=TIMEOUT_SECONDS, message_handler=notices.handler
        ) as session:
            await session.initialize()
            state["initialized"] = True
            for op in ops:
                try:
                    result = await perform(session, notices, op)
                    if isinstance(result, dict):
                        results.append({"ok": result})
                    else:
                        results.append({"ok": result.model_dump(mode="json", by_alias=True, exclude_none=True)})
                except MCPError as exc:
                    results.append({"error": exc.message, "code": exc.code})
                except TimeoutError:
                    results.append({"error": "timed out"})
                except Exception as exc:
                    results.append({"error": describe(exc)})


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 64
    url, ops = sys.argv[1], json.loads(sys.argv[2])
    state = {"initialized": False, "results": []}
    results = state["results"]
    try:
        anyio.run(run, url, ops, state)
    except BaseException as exc:  # ExceptionGroup, KeyboardInterrupt, ...
        if not state["initialized"]:
            print(json.dumps({"fatal": describe(exc)}))
            return 2
        # The session broke after initialize: mark the operations that never ran.
        results += [{"error": f"aborted: {describe(exc)}"}] * (len(ops) - len(results))
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
