"""MCP agent on fastmcp's client, for the Portcullis end-to-end tests: the same arguments,
operations and output as `agent.py` (see its docstring), for the operations a fastmcp
user's agent performs: protocol_version, list_tools, call_tool (with progress),
read_resource, list_prompts, get_prompt, complete_prompt, complete_template, wait_logs.
A client offer may hold "elicitation", "sampling" and "roots" (roots are answered by
fastmcp itself, so they are not listed in "asked").

Usage:
    python fastmcp_agent.py URL OPS_JSON [MODE]
"""

import json
import sys

import anyio
from fastmcp import Client
from mcp import types
from mcp.shared.exceptions import MCPError

TIMEOUT_SECONDS = 30  # per request; a hung gateway must not hang the test


def dump(result) -> dict:
    if isinstance(result, dict):
        return result
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def run(url: str, ops: list, offer: dict, mode: str, state: dict) -> None:
    asked, logs, results = state["asked"], [], state["results"]
    handlers = {}
    if "elicitation" in offer:
        answer = offer["elicitation"]

        async def elicit(message, _response_type, params, _context):
            asked.append({"method": "elicitation/create", "params": dump(params)})
            return types.ElicitResult(action=answer["action"], content=answer.get("content"))

        handlers["elicitation_handler"] = elicit
    if "sampling" in offer:
        text = offer["sampling"]["text"]

        async def sample(messages, params, _context):
            asked.append({"method": "sampling/createMessage", "params": dump(params)})
            return text

        handlers["sampling_handler"] = sample

    if "roots" in offer:
        handlers["roots"] = [r["uri"] for r in offer["roots"]]

    async def log(message) -> None:
        logs.append([message.level, message.data])

    async with Client(url, mode=mode, timeout=TIMEOUT_SECONDS, log_handler=log, **handlers) as client:
        state["initialized"] = True
        for op in ops:
            try:
                results.append({"ok": dump(await perform(client, op, logs))})
            except MCPError as exc:
                results.append({"error": exc.message, "code": exc.code})
            except Exception as exc:
                results.append({"error": str(leaf(exc)) or type(exc).__name__})


async def perform(client: Client, op: dict, logs: list):
    kind = op.get("op")
    if kind == "protocol_version":
        return {"version": client.protocol_version}
    if kind == "list_tools":
        return await client.list_tools_mcp()
    if kind == "call_tool":
        seen = []

        async def progress(value, total, message) -> None:
            seen.append([value, total, message])

        handler = progress if op.get("progress") else None
        result = dump(await client.call_tool_mcp(op["name"], op.get("arguments") or {}, progress_handler=handler))
        if handler:
            result["progress"] = seen
        return result
    if kind == "read_resource":
        return await client.read_resource_mcp(op["uri"])
    if kind == "list_prompts":
        return await client.list_prompts_mcp()
    if kind == "get_prompt":
        return await client.get_prompt_mcp(op["name"], op.get("arguments") or {})
    if kind in ("complete_prompt", "complete_template"):
        ref = (
            types.PromptReference(type="ref/prompt", name=op["name"])
            if kind == "complete_prompt"
            else types.ResourceTemplateReference(type="ref/resource", uri=op["uri"])
        )
        return await client.complete_mcp(ref, op["argument"], op.get("context"))
    if kind == "wait_logs":
        with anyio.move_on_after(float(op.get("timeout", 10))):
            while len(logs) < int(op.get("count", 1)):
                await anyio.sleep(0.05)
        return {"logs": logs}
    raise ValueError(f"unknown op: {kind!r}")


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
    try:
        anyio.run(run, url, ops, offer, mode, state)
    except BaseException as exc:
        if not state["initialized"]:
            print(json.dumps({"fatal": str(leaf(exc)) or type(leaf(exc)).__name__}))
            return 2
        state["results"] += [{"error": f"aborted: {leaf(exc)}"}] * (len(ops) - len(state["results"]))
    print(json.dumps({"results": state["results"], "asked": state["asked"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
