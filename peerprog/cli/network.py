"""The commands that run or talk to daemons: ``daemon``, ``fetch``, ``status``, ``ui``,
``demo``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


def cmd_daemon(args: argparse.Namespace) -> int:
    from peerprog.app import serve
    from peerprog.config import load_config

    config = load_config(Path(args.config))
    asyncio.run(serve(config))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("daemon", help="run a node")
    p.add_argument("--config", required=True, help="node config (TOML)")
    p.set_defaults(func=cmd_daemon)

    from peerprog.cli import appcmds, webui

    appcmds.add_parsers(sub)
    webui.add_parser(sub)
    add_plugin_parsers(sub)


PLUGINS = "peerprog.commands"
"""Entry-point group of commands other packages add (``peerprog-demo`` adds ``demo``)."""
MISSING = {"demo": "the demo is a package of its own: pip install ./demo (make demo does it)"}


def add_plugin_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands of installed plugin packages; a known one that is missing still has a
    parser, which says how to install it."""
    from importlib.metadata import entry_points

    found = set()
    for ep in entry_points(group=PLUGINS):
        ep.load()(sub)
        found.add(ep.name)
    for name, hint in MISSING.items():
        if name not in found:
            p = sub.add_parser(name, help=f"(not installed) {hint}")
            p.set_defaults(func=lambda _args, hint=hint: _missing(hint))


def _missing(hint: str) -> int:
    from peerprog.errors import InputError

    raise InputError(hint)
