"""The asyncio shell of a node: peer server and client, discovery, resolving names, fetch
loops, rate limits. :class:`Node` composes them; the decisions live in :mod:`peerprog.swarm`."""

from __future__ import annotations

from peerprog.node.node import Node

__all__ = ["Node"]
