"""An MCP tool server for the examples and ``lattice demo`` (the official ``mcp`` SDK, over stdio): a glossary of
the lattice's terms. Run by a station: ``python -m station_runtime.examples.mcp_glossary``."""

from __future__ import annotations

import logging

from mcp.server.mcpserver import MCPServer

GLOSSARY = {
    "station": "a long-running runtime that hosts agents and bids for work",
    "auction": "how work is placed: stations that fit bid, the least loaded wins",
    "witness": "the control plane's watcher: it requeues work whose station died and escalates what keeps failing",
    "jetstream": "NATS persistence: every work record lives in a JetStream key-value bucket",
    "delegation": "an agent handing part of its work to other agents through the lattice",
}


def build() -> MCPServer:
    server = MCPServer("lattice-glossary", instructions="Definitions of Station Lattice terms.",
                       log_level="WARNING")

    @server.tool()
    def define(term: str) -> str:
        """Define a Station Lattice term (station, auction, witness, jetstream, delegation)."""
        return GLOSSARY.get(term.strip().lower(), f"no definition of {term!r}; known: {', '.join(GLOSSARY)}")

    @server.tool()
    def terms() -> list[str]:
        """Every term the glossary defines."""
        return sorted(GLOSSARY)

    return server


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    build().run("stdio")
