"""The ``peerprog`` command: bad input exits 1 with one line on stderr, usage errors exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from peerprog._version import __version__
from peerprog.errors import PeerprogError

LEVELS = ("debug", "info", "warning", "error", "none")


def setup_logging(level: str) -> None:
    """Log records at ``level`` and above to stderr (``none``: nothing)."""
    logging.basicConfig(
        level=logging.CRITICAL + 1 if level == "none" else getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerprog",
        description="Progressive peer-to-peer delivery of deep-learning models.",
    )
    parser.add_argument("--version", action="version", version=f"peerprog {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        help="log messages at this level and above on stderr (default: info for the "
        "daemon, nothing but the final error for other commands)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="same as --log-level info")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from peerprog.cli import calibrate, local

    local.add_parsers(sub)
    calibrate.add_parsers(sub)
    try:
        from peerprog.cli import network
    except ImportError:  # pragma: no cover - the network commands land with the daemon
        pass
    else:
        network.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.verbose else None)
    if level is None:
        level = "info" if args.command in ("daemon", "demo") else "none"
    setup_logging(level)
    try:
        code: int = args.func(args)
        return code
    except PeerprogError as e:
        sys.stderr.write(f"peerprog: error: {e}\n")
        return 1
    except BrokenPipeError:  # e.g. `peerprog inspect … | head`: the reader is done
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when stdout is flushed
        return 0
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"peerprog: error: {where}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("peerprog: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
