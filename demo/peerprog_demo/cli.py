"""``peerprog demo``: its options, and the exit codes and last words of a run."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from peerprog.cli.local import codec_param
from peerprog.errors import InputError
from peerprog_demo.options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CODEC,
    DEFAULT_CODEC_PARAMS,
    DEFAULT_EDGES,
    DEFAULT_OUT,
    DEFAULT_RATE,
    DemoOptions,
)

MAX_EDGES = 16


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def options(args: argparse.Namespace) -> DemoOptions:
    """The :class:`DemoOptions` of parsed arguments; :class:`InputError` if out of range."""
    if args.edges > MAX_EDGES:
        raise InputError(f"--edges must be at most {MAX_EDGES}")
    return DemoOptions(
        model=args.model,
        key=args.key,
        name=args.name,
        edges=args.edges,
        rate=args.rate,
        chunk_size=args.chunk_size,
        codec=args.codec,
        codec_params=dict(args.codec_param) if args.codec_param else None,
        keep_running=args.keep_running,
        out=args.out,
        live=args.live,
        timeout=args.timeout,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it ran to the end, 1 on failure, 130 on Ctrl-C."""
    from peerprog_demo.run import DemoFailed, run_demo, work_dir

    opts = options(args)
    logs = work_dir(opts.out.resolve()) / "logs"
    try:
        doc = asyncio.run(run_demo(opts))
    except DemoFailed as e:
        sys.stderr.write(
            f"peerprog demo: failed: {e}\nevery process it started is stopped; logs in {logs}\n"
        )
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.stderr.write(
            f"peerprog demo: interrupted; every process it started is stopped; logs in {logs}\n"
        )
        return 130
    files = doc["files"]
    print(f"\nreport: {files['report']}")
    if files["chart"]:
        print(f"chart:  {files['chart']}")
    print(f"logs:   {files['logs']}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command to the ``peerprog`` command's sub-parsers."""
    p = sub.add_parser(
        "demo",
        help="watch a model become useful long before its download ends",
        description=(
            "Publish a model into a temporary seed store, start a seed and edge daemons on "
            "loopback with capped links, run an app that scores each level as it arrives, "
            "time a plain HTTP download over the same cap, and write a report with a chart."
        ),
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model file to publish (default: the bundled digits CNN)",
    )
    p.add_argument(
        "--key",
        type=Path,
        default=None,
        help="publisher key from 'peerprog keygen' (default: a fresh one)",
    )
    p.add_argument("--name", default=None, help="model name (default: from the file)")
    p.add_argument(
        "--edges",
        type=_positive,
        default=DEFAULT_EDGES,
        help=f"edge daemons (default {DEFAULT_EDGES})",
    )
    p.add_argument(
        "--rate",
        type=_positive,
        default=DEFAULT_RATE,
        help="bytes/s of the seed's upload cap, each edge's download cap and the "
        f"plain download's (default {DEFAULT_RATE})",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive,
        default=DEFAULT_CHUNK_SIZE,
        help=f"chunk size at publish (default {DEFAULT_CHUNK_SIZE})",
    )
    p.add_argument(
        "--codec", default=DEFAULT_CODEC, help=f"codec at publish (default: {DEFAULT_CODEC})"
    )
    p.add_argument(
        "--codec-param",
        action="append",
        default=[],
        type=codec_param,
        metavar="KEY=VALUE",
        help="a codec setting at publish, as for 'peerprog publish' (default for "
        f"{DEFAULT_CODEC}: targets_mbpw={DEFAULT_CODEC_PARAMS['targets_mbpw']!r})",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the swarm up after the report, until Ctrl-C, to look at the web UI",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default ./{DEFAULT_OUT})"
    )
    view = p.add_mutually_exclusive_group()
    view.add_argument(
        "--live",
        dest="live",
        action="store_true",
        default=None,
        help="live view even if stdout is not a terminal",
    )
    view.add_argument(
        "--plain", dest="live", action="store_false", help="plain log lines even on a terminal"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds before giving up (default 300)"
    )
    p.set_defaults(func=cmd_demo)
