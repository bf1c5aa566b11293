"""An MCP server on the official Python SDK (`mcp`, MCPServer), as an upstream for the
Portcullis end-to-end tests: what an operator's own server written with the SDK offers,
one of each feature the gateway relays.

Usage:
    python server.py PORT

Serves streamable HTTP at http://127.0.0.1:PORT/mcp and prints "READY" on stdout once
it listens. Exits when stdin closes, so a crashed test never leaves it behind.

Tools: `echo` (text), `count` (progress notifications), `ask_name` (a form
elicitation), `summarize` (sampling), `log_and_echo` (a log message about the call),
`readme_link` (a resource_link). Resources: `py://readme`, template `py://notes/{id}`.
Prompt: `greet` (completable argument `name`, an embedded resource in its messages).
"""

import sys
import threading

import anyio
from pydantic import BaseModel

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage

server = MCPServer("portcullis-e2e-python")

README = "The Python SDK upstream of the Portcullis tests."
NAMES = ["Ada", "Alan", "Barbara", "Grace"]


@server.tool()
def echo(text: str) -> str:
    """Echoes the text."""
    return f"echo: {text}"


@server.tool()
async def count(steps: int, ctx: Context) -> str:
    """Counts to `steps`, reporting progress at each."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps)
        await anyio.sleep(0.05)
    return f"counted to {steps}"


class Name(BaseModel):
    name: str


@server.tool()
async def ask_name(ctx: Context) -> str:
    """Asks the user for their name (form elicitation)."""
    result = await ctx.elicit("What is your name?", Name)
    if result.action == "accept" and result.data is not None:
        return f"hello {result.data.name}"
    return f"no name: {result.action}"


@server.tool()
async def summarize(text: str, ctx: Context) -> str:
    """Asks the client's model to summarize (sampling)."""
    result = await ctx.session.create_message(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))],
        max_tokens=50,
        related_request_id=ctx.request_id,
    )
    content = result.content
    return f"summary: {content.text if isinstance(content, types.TextContent) else content}"


@server.tool()
async def log_and_echo(text: str, ctx: Context) -> str:
    """Logs a message about this call, then echoes."""
    await ctx.info(f"echoing {text}")
    return f"echo: {text}"


@server.tool()
def readme_link() -> list[types.ResourceLink]:
    """Returns a link to the readme resource."""
    return [types.ResourceLink(type="resource_link", uri="py://readme", name="readme", mime_type="text/plain")]


@server.resource("py://readme", mime_type="text/plain")
def readme() -> str:
    return README


@server.resource("py://notes/{id}", mime_type="text/plain")
def note(id: str) -> str:
    return f"note {id}"


@server.prompt()
def greet(name: str) -> list[UserMessage]:
    """Greets someone, with the readme attached."""
    return [
        UserMessage(f"Greet {name}."),
        UserMessage(
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(uri="py://readme", mime_type="text/plain", text=README),
            )
        ),
    ]


@server.completion()
async def complete(ref, argument, context):
    if isinstance(ref, types.PromptReference) and ref.name == "greet" and argument.name == "name":
        return types.Completion(values=[n for n in NAMES if n.startswith(argument.value)])
    return None


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    port = int(sys.argv[1])

    def exit_on_stdin_eof() -> None:
        sys.stdin.read()
        import os

        os._exit(0)

    threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
    print("READY", flush=True)
    server.run("streamable-http", host="127.0.0.1", port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
