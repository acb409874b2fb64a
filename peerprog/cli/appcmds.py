"""The commands that talk to a running daemon's local API: ``fetch``, ``status``, ``remove``.

``fetch`` asks the daemon for a model (``PUT``), shows the download live (a line redrawn
in place on a terminal, a plain line per level otherwise), and when the level asked for
is reached, writes the daemon's ``best`` answer with ``--out``. A name no source knows is
given up on after ``--find-timeout`` (and not left wanted). ``status`` shows the node as a
table, or its status JSON with ``--json``; ``remove`` stops fetching a model and deletes it.

Levels are shown as a count, ``3/5 levels`` (levels 0, 1 and 2 of five), the API's
``level`` being the index of the best complete one.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from peerprog.api.client import BestDir, BestModel, Client
from peerprog.api.errors import LevelTimeout
from peerprog.api.query import MAX_WAIT
from peerprog.api.wire import Level
from peerprog.cli.output import human_bytes, human_seconds, print_json
from peerprog.errors import InputError

POLL = 0.25  # seconds between status polls of the progress display
PLAIN_EVERY = 5.0  # seconds between plain progress lines when nothing else changes
FIND_TIMEOUT = 30.0  # seconds before a name no source knows is given up on


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


def levels_text(doc: dict[str, Any]) -> str:
    """``3/5 levels`` from a model's status JSON."""
    return f"{int(doc['level']) + 1}/{int(doc['levels_total'])} levels"


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
        self.result: BestModel | BestDir | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _repository(self) -> bool:
        """Whether the model is a repository (written as a folder), once a source offers
        it (the main thread gives up on a name no source knows)."""
        while True:
            doc = self.client.status(self.name)
            if doc.get("model_id") is not None:
                return bool(doc.get("files"))
            time.sleep(0.2)

    def _run(self) -> None:
        try:
            wait = MAX_WAIT if self.wait is None else self.wait
            while True:
                try:
                    if self.out and self._repository():
                        self.result = self.client.best_dir(
                            self.name, self.out, self.min_level, wait
                        )
                    elif self.out:
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
    """One line of progress from a model's status JSON (with the rate and an ETA)."""
    name = doc["name"]
    problem = doc.get("problem")
    if doc.get("model_id") is None:
        return f"{name}: {problem}" if problem else f"{name}: looking for sources…"
    total = int(doc["bytes_total"] or 0)
    got = int(doc["bytes_received"])
    frac = got / total if total else 0.0
    if doc.get("complete"):
        eta = "complete"
    elif rate > 0:
        eta = f"ETA {human_seconds((total - got) / rate)}"
    else:
        eta = "ETA ?"
    line = (
        f"{name} v{doc['version']}: {levels_text(doc)}, "
        f"{human_bytes(got)} of {human_bytes(total)} ({frac:.0%}), "
        f"{human_bytes(rate)}/s, {eta}, {plural(int(doc['peers']), 'peer')}"
    )
    return f"{line} — {problem}" if problem else line


def follow(client: Client, fetch: Fetch, out: TextIO, find_timeout: float) -> None:
    """Show the model's progress until ``fetch`` is done: redrawn in place on a terminal,
    a line per level (and every few seconds) otherwise. Gives up — raises
    :class:`InputError` — when no source knows the name after ``find_timeout`` s."""
    live = out.isatty()
    rate = Rate()
    last_level: object = None
    last_print = 0.0
    started = time.monotonic()
    width = 0
    while not fetch.done.wait(POLL):
        doc = client.status(fetch.name)
        now = time.monotonic()
        if doc.get("model_id") is None and doc.get("problem") and now - started > find_timeout:
            if live:
                out.write("\n")
            raise InputError(f"{fetch.name}: {doc['problem']}")
        line = progress_line(doc, rate.add(now, int(doc["bytes_received"])))
        if live:
            out.write("\r" + line.ljust(width))
            width = len(line)
        elif doc["level"] != last_level or now - last_print >= PLAIN_EVERY:
            out.write(line + "\n")
            last_level, last_print = doc["level"], now
        out.flush()
    if fetch.error is None:  # the last state: on a terminal the line ends with it
        doc = client.status(fetch.name)
        line = progress_line(doc, 0.0)
        out.write("\r" + line.ljust(width) + "\n" if live else line + "\n")
    elif live:
        out.write("\n")  # the error goes on a line of its own
    out.flush()


def cmd_fetch(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    known = {m["name"] for m in client.models()}
    client.want(args.name)
    fetch = Fetch(client, args.name, args.min_level, args.wait, args.out)
    fetch.start()
    try:
        follow(client, fetch, sys.stderr, args.find_timeout)
    except InputError:
        if args.name not in known:  # asked for by this command alone: not left wanted
            client.remove(args.name, keep_data=True)
        raise
    if fetch.error is not None:
        raise fetch.error
    model = fetch.result
    assert model is not None
    if isinstance(model, BestDir):
        written: int | None = sum(f.size for f in model.files)
    else:
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
    line = f"{model.name} v{model.version}: {model.level + 1}/{model.levels_total} levels ({what})"
    if args.out and isinstance(model, BestDir):
        line += f": wrote {args.out}/ ({len(model.files)} files, {human_bytes(written or 0)})"
    elif args.out:
        line += f": wrote {args.out} ({human_bytes(written or 0)})"
    print(line)
    return 0


# --- status and remove -------------------------------------------------------------------------


def status_table(doc: dict[str, Any]) -> list[str]:
    """The node's status as lines of text: a header line, then a table of models."""
    lines = [
        f"node {doc['node']} at {doc['url']}, up {human_seconds(doc['uptime_s'])}, "
        f"{plural(doc['peers'], 'peer')}, uploaded {human_bytes(doc['bytes_uploaded'])}"
    ]
    reach = doc.get("reachable")
    if reach is False:
        held = (doc.get("channels") or {}).get("to_peers", 0)
        lines.append(
            f"not reachable at {doc['url']}: peers cannot dial it; it uploads over "
            f"{plural(held, 'reverse channel')}"
        )
    if doc.get("store_error"):
        lines.append(f"store: {doc['store_error']}")
    if not doc["models"]:
        return [*lines, "no models"]
    rows = [["model", "version", "levels", "received", "", "peers", "id"]]
    notes = []
    for m in doc["models"]:
        if m.get("problem"):
            notes.append(f"  {m['name']}: {m['problem']}")
        if m["model_id"] is None:
            rows.append([m["name"], "-", "-", "looking for sources", "", "0", ""])
            continue
        total, got = int(m["bytes_total"]), int(m["bytes_received"])
        state = "complete" if m["complete"] else f"{got / total:.0%}" if total else "-"
        rows.append(
            [
                m["name"],
                str(m["version"]),
                f"{int(m['level']) + 1}/{m['levels_total']}",
                f"{human_bytes(got)} / {human_bytes(total)}",
                state,
                str(m["peers"]),
                str(m["model_id"])[:12],
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.ljust(w) if i in (0, 6) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return [*lines, *notes]


def cmd_status(args: argparse.Namespace) -> int:
    doc = Client(args.socket).node_status()
    if args.json:
        print_json(doc)
    else:
        print("\n".join(status_table(doc)))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    doc = Client(args.socket).remove(args.name, keep_data=args.keep_data)
    if args.json:
        print_json(doc)
    elif doc["kept_data"]:
        print(f"{args.name}: no longer fetched; what is held stays")
    else:
        print(f"{args.name}: removed ({plural(len(doc['removed']), 'version')} deleted)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fetch``, ``status`` and ``remove`` to the ``peerprog`` command."""
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
    p.add_argument(
        "--find-timeout",
        type=seconds_arg,
        default=FIND_TIMEOUT,
        help=f"give up after S seconds if no source knows the name (default {FIND_TIMEOUT:g})",
    )
    p.add_argument(
        "--out",
        help="write the model there: a safetensors file, or for a repository a directory "
        "(new, empty, or one peerprog wrote; swapped into place whole)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("status", help="show what the local daemon holds and fetches")
    p.add_argument("--socket", default=None, help=socket_help)
    p.add_argument("--json", action="store_true", help="print the node's status JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("remove", help="stop fetching a model and delete it from the store")
    p.add_argument("name", help="model name")
    p.add_argument("--socket", default=None, help=socket_help)
    p.add_argument("--keep-data", action="store_true", help="only stop fetching: keep what is held")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_remove)
