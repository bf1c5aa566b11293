"""An MCP server on fastmcp, as an upstream for the Portcullis end-to-end tests: the same
tools, resources, prompt and completion as `server.py` (the official SDK's MCPServer),
built the way fastmcp users build them. fastmcp 4 has no sampling helper, so there is
no `summarize`.

Usage:
    python fastmcp_server.py PORT

Serves streamable HTTP at http://127.0.0.1:PORT/mcp. Exits when stdin closes, so a
crashed test never leaves it behind.
"""

import os
import sys
import threading
from dataclasses import dataclass

import anyio
from fastmcp import Context, FastMCP
from fastmcp.prompts import Message
from mcp import types

server = FastMCP("portcullis-e2e-fastmcp")

README = "The Python SDK upstream of the Portcullis tests."
NAMES = ["Ada", "Alan", "Barbara", "Grace"]


@server.tool
def echo(text: str) -> str:
    """Echoes the text."""
    return f"echo: {text}"


@server.tool
async def count(steps: int, ctx: Context) -> str:
    """Counts to `steps`, reporting progress at each."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps)
        await anyio.sleep(0.05)
    return f"counted to {steps}"


@dataclass
class Name:
    name: str


@server.tool
async def ask_name(ctx: Context) -> str:
    """Asks the user for their name (form elicitation)."""
    result = await ctx.elicit("What is your name?", response_type=Name)
    if result.action == "accept":
        return f"hello {result.data.name}"
    return f"no name: {result.action}"


@server.tool
async def log_and_echo(text: str, ctx: Context) -> str:
    """Logs a message about this call, then echoes."""
    await ctx.info(f"echoing {text}")
    return f"echo: {text}"


@server.tool
def readme_link() -> list[types.ResourceLink]:
    """Returns a link to the readme resource."""
    return [types.ResourceLink(type="resource_link", uri="py://readme", name="readme", mime_type="text/plain")]


@server.resource("py://readme", mime_type="text/plain")
def readme() -> str:
    return README


@server.resource("py://notes/{id}", mime_type="text/plain")
def note(id: str) -> str:
    return f"note {id}"


@server.prompt
def greet(name: str) -> list[Message]:
    """Greets someone, with the readme attached."""
    return [
        Message(f"Greet {name}."),
        Message(
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(uri="py://readme", mime_type="text/plain", text=README),
            )
        ),
    ]


@server.completion
def complete(ref, argument, context):
    if isinstance(ref, types.PromptReference) and ref.name == "greet" and argument.name == "name":
        return [n for n in NAMES if n.startswith(argument.value)]
    return None


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    port = int(sys.argv[1])

    def exit_on_stdin_eof() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
    server.run("http", host="127.0.0.1", port=port, path="/mcp", show_banner=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
