"""A notes MCP server, made with the official ``mcp`` Python SDK, for the ``notes_mcp``
example agent: tools to add, list and search notes, and each note as a resource.

Run it on its own (Streamable HTTP at ``http://127.0.0.1:8472/mcp``)::

    python examples/notes_mcp/server.py --port 8472

Notes are kept per MCP session when the client has one (servers of the handshake era
assign ``Mcp-Session-Id``), else in one shared notebook: a session that goes on after the
agent hibernated finds its notes.
"""

from __future__ import annotations

import argparse
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

SHARED = "shared"


def build_server() -> tuple[MCPServer, dict[str, list[str]]]:
    """The server, and its notebooks (by session id) for tests to look at."""
    server = MCPServer(
        "notes",
        instructions="A notebook: add notes, list them, search them.",
        log_level="WARNING",
    )
    notebooks: dict[str, list[str]] = {}

    def notebook(ctx: Context[Any, Any]) -> list[str]:
        headers = ctx.headers or {}
        return notebooks.setdefault(headers.get("mcp-session-id") or SHARED, [])

    @server.tool()
    def add_note(text: str, ctx: Context[Any, Any]) -> str:
        """Add a note to the notebook.

        Args:
            text: What to write down.
        """
        notes = notebook(ctx)
        notes.append(text)
        return f"note {len(notes)} added"

    @server.tool()
    def list_notes(ctx: Context[Any, Any]) -> list[str]:
        """Every note in the notebook, oldest first."""
        return list(notebook(ctx))

    @server.tool()
    def search_notes(query: str, ctx: Context[Any, Any]) -> list[str]:
        """The notes that contain a word.

        Args:
            query: The word to look for (case does not matter).
        """
        return [n for n in notebook(ctx) if query.lower() in n.lower()]

    @server.resource("notes://readme", mime_type="text/plain")
    def readme() -> str:
        """How this notebook works."""
        return "Notes are kept per session. Use add_note, list_notes and search_notes."

    return server, notebooks


def main() -> None:
    parser = argparse.ArgumentParser(description="A notes MCP server (Streamable HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8472)
    args = parser.parse_args()
    import uvicorn

    server, _ = build_server()
    uvicorn.run(server.streamable_http_app(host=args.host), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
