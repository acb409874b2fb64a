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
    from peerprog.demo.cli import add_parser as add_demo_parser

    appcmds.add_parsers(sub)
    webui.add_parser(sub)
    add_demo_parser(sub)
