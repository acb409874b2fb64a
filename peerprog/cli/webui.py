"""``peerprog ui``: print (or open) the web UI's address, with the token in its fragment.

The token rides after ``#``, as Jupyter does: a fragment is never sent to a server, nor in
a ``Referer``; the page keeps it for the tab and takes it out of the visible URL. The
address comes from the node's config (``api.listen_tcp`` and ``api.token``), so nobody
types a token.
"""

from __future__ import annotations

import argparse
import os
import webbrowser
from pathlib import Path
from urllib.parse import quote

from peerprog.config import Config, load_config, split_host_port
from peerprog.errors import InputError

CONFIG_ENV = "PEERPROG_CONFIG"
DEFAULT_CONFIG = Path("/etc/peerprog/node.toml")
"""The config the systemd unit runs the daemon with (``daemon/peerprog.service``)."""


def default_config() -> Path:
    """``$PEERPROG_CONFIG`` if set, else :data:`DEFAULT_CONFIG`."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def ui_url(config: Config, where: str = "the config") -> str:
    """``http://<api.listen_tcp>/ui/#token=<api.token>``; :class:`InputError` if the
    config has no TCP listener."""
    api = config.api
    if not api.listen_tcp:
        raise InputError(
            f"{where}: api.listen_tcp is not set, so the daemon serves no web UI "
            '(set e.g. listen_tcp = "127.0.0.1:7080" and a token in [api])'
        )
    host, port = split_host_port(api.listen_tcp, "api.listen_tcp")
    if port == 0:
        raise InputError(f"{where}: api.listen_tcp has port 0; give the port the UI listens on")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/ui/#token={quote(api.token, safe='')}"


def cmd_ui(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config()
    url = ui_url(load_config(path), str(path))
    print(url)
    if args.open and not webbrowser.open(url):
        raise InputError("no web browser could be started here; open the address above")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ui`` to the ``peerprog`` command."""
    p = sub.add_parser("ui", help="print the web UI's address (with the token); --open opens it")
    p.add_argument(
        "--config",
        default=None,
        help=f"node config (TOML; default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    p.add_argument("--open", action="store_true", help="open the address in a web browser")
    p.set_defaults(func=cmd_ui)
