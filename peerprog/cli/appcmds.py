"""The commands that talk to a running daemon's local API: ``fetch`` and ``status``.

``fetch`` asks the daemon for a model (``PUT``), shows the download live (a progress bar on
a terminal, a plain line per level otherwise), and when the level asked for is reached,
writes the daemon's ``best`` answer with ``--out``. ``status`` shows the node as a table,
or its status JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerprog.api.client import BestModel, Client
from peerprog.api.errors import LevelTimeout
from peerprog.api.query import MAX_WAIT
from peerprog.api.wire import Level
from peerprog.cli.output import human_bytes, print_json

POLL = 0.25  # seconds between status polls of the progress display
PLAIN_EVERY = 5.0  # seconds between plain progress lines when nothing else changes


def level_arg(text: str) -> int | str:
    """``--min-level``: a level number or ``max``."""
    if text == "max":
        return "max"
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a level number or 'max', not {text!r}")
    return int(text)


def seconds_arg(text: str) -> float:
    """``--wait``: seconds ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, not {text!r}")
    return value


def plural(n: int, word: str) -> str:
    """``1 peer``, ``2 peers``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- fetch -----------------------------------------------------------------------------------


@dataclass
class Rate:
    """Bytes per second over the last few seconds."""

    window: float = 3.0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: float, nbytes: int) -> float:
        self.samples.append((now, nbytes))
        while len(self.samples) > 2 and self.samples[0][0] < now - self.window:
            self.samples.pop(0)
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class Fetch:
    """A ``best`` request running in a thread while the main thread shows progress."""

    def __init__(
        self,
        client: Client,
        name: str,
        min_level: Level,
        wait: float | None,
        out: str | None = None,
    ) -> None:
        self.client = client
        self.out = out
        self.name = name
        self.min_level = min_level
        self.wait = wait
        self.result: BestModel | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            wait = MAX_WAIT if self.wait is None else self.wait
            while True:
                try:
                    if self.out:
                        self.result = self.client.best_path(
                            self.name, self.out, self.min_level, wait
                        )
                    else:
                        self.result = self.client.best(self.name, self.min_level, wait)
                    return
                except LevelTimeout:
                    if self.wait is not None:  # else: keep waiting
                        raise
        except BaseException as e:  # handed to the main thread
            self.error = e
        finally:
            self.done.set()


def progress_line(doc: dict[str, Any], rate: float) -> str:
    """One line of progress from a model's status JSON."""
    name = doc["name"]
    if doc.get("model_id") is None:
        return f"{name}: looking for sources…"
    total = int(doc["bytes_total"] or 0)
    got = int(doc["bytes_received"])
    frac = got / total if total else 0.0
    return (
        f"{name} v{doc['version']}: level {doc['level']}/{int(doc['levels_total']) - 1}, "
        f"{human_bytes(got)} of {human_bytes(total)} ({frac:.0%}), "
        f"{human_bytes(rate)}/s, {plural(int(doc['peers']), 'peer')}"
    )


def show_progress(client: Client, fetch: Fetch) -> None:
    """Follow the model's status until ``fetch`` is done (a bar on a terminal)."""
    if sys.stderr.isatty():
        _live(client, fetch)
    else:
        _plain(client, fetch)


def _plain(client: Client, fetch: Fetch) -> None:
    rate = Rate()
    last_level: object = None
    last_print = 0.0
    while not fetch.done.wait(POLL):
        doc = client.status(fetch.name)
        now = time.monotonic()
        r = rate.add(now, int(doc["bytes_received"]))
        if doc["level"] != last_level or now - last_print >= PLAIN_EVERY:
            sys.stderr.write(progress_line(doc, r) + "\n")
            sys.stderr.flush()
            last_level, last_print = doc["level"], now


def _live(client: Client, fetch: Fetch) -> None:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[peers]}"),
        TimeElapsedColumn(),
    )
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(fetch.name, total=None, peers="")
        while not fetch.done.wait(POLL):
            doc = client.status(fetch.name)
            if doc.get("model_id") is None:
                bar.update(task, description=f"{fetch.name}: looking for sources…")
                continue
            last = int(doc["levels_total"]) - 1
            bar.update(
                task,
                description=f"{doc['name']} v{doc['version']} level {doc['level']}/{last}",
                completed=int(doc["bytes_received"]),
                total=int(doc["bytes_total"]),
                peers=plural(int(doc["peers"]), "peer"),
            )


def cmd_fetch(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    client.want(args.name)
    fetch = Fetch(client, args.name, args.min_level, args.wait, args.out)
    fetch.start()
    show_progress(client, fetch)
    if fetch.error is not None:
        raise fetch.error
    model = fetch.result
    assert model is not None
    written = len(memoryview(model.raw)) if args.out else None
    doc = {
        "name": model.name,
        "model_id": model.model_id,
        "version": model.version,
        "level": model.level,
        "levels_total": model.levels_total,
        "exact": model.exact,
        "bytes_received": model.bytes_received,
        "bytes_total": model.bytes_total,
        "out": str(Path(args.out)) if args.out else None,
        "bytes": written,
    }
    if args.json:
        print_json(doc)
        return 0
    what = (
        "exact" if model.exact else f"{model.bytes_received / model.bytes_total:.0%} of the bytes"
    )
    line = f"{model.name} v{model.version} level {model.level}/{model.levels_total - 1} ({what})"
    if args.out:
        line += f": wrote {args.out} ({human_bytes(len(memoryview(model.raw)))})"
    print(line)
    return 0


# --- status ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    doc = Client(args.socket).node_status()
    if args.json:
        print_json(doc)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(
        f"node [bold]{doc['node']}[/] at {doc['url']}, up {doc['uptime_s']:.0f} s, "
        f"{plural(doc['peers'], 'peer')}, uploaded {human_bytes(doc['bytes_uploaded'])}",
        highlight=False,
    )
    if not doc["models"]:
        console.print("no models")
        return 0
    table = Table(box=None)
    for col in ("model", "version", "level", "received", "", "peers", "id"):
        table.add_column(col, justify="left" if col in ("model", "id") else "right")
    for m in doc["models"]:
        if m["model_id"] is None:
            table.add_row(m["name"], "-", "-", "looking for sources", "", "0", "")
            continue
        total = int(m["bytes_total"])
        got = int(m["bytes_received"])
        state = "complete" if m["complete"] else f"{got / total:.0%}" if total else "-"
        table.add_row(
            m["name"],
            str(m["version"]),
            f"{m['level']}/{int(m['levels_total']) - 1}",
            f"{human_bytes(got)} / {human_bytes(total)}",
            state,
            str(m["peers"]),
            str(m["model_id"])[:12],
        )
    console.print(table)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fetch`` and ``status`` to the ``peerprog`` command."""
    socket_help = "the daemon's api.socket (default: $PEERPROG_SOCKET, else /run/peerprog/api.sock)"
    p = sub.add_parser("fetch", help="get a model from the local daemon, showing progress")
    p.add_argument("name", help="model name")
    p.add_argument("--socket", default=None, help=socket_help)
    p.add_argument(
        "--min-level",
        type=level_arg,
        default="max",
        help="the level to wait for: a number, or 'max' for the exact model (default)",
    )
    p.add_argument(
        "--wait", type=seconds_arg, default=None, help="give up after S seconds (default: never)"
    )
    p.add_argument("--out", help="write the model there (safetensors)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("status", help="show what the local daemon holds and fetches")
    p.add_argument("--socket", default=None, help=socket_help)
    p.add_argument("--json", action="store_true", help="print the node's status JSON")
    p.set_defaults(func=cmd_status)
