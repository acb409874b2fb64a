"""The asyncio shell: peer server and client, discovery, fetch loops, rate limits."""

from __future__ import annotations

from peerprog.node.config import Config, load_config, parse_config
from peerprog.node.daemon import Node

__all__ = ["Config", "Node", "load_config", "parse_config"]
