"""Follow a running swarm from outside: print each level as each edge reaches it, then a
table of the times and where the bytes came from. ``daemon/testbed.sh`` uses it::

    python -m peerprog_demo.follow --name digits-cnn seed=/run/seed.sock \\
        edge-1=/run/edge-1.sock edge-2=/run/edge-2.sock

The first node given is taken as the seed. Exits 0 once every edge holds every level,
1 on ``--timeout``. ``--want`` first asks every edge to fetch the model.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peerprog import AsyncClient
from peerprog.cli.output import human_bytes
from peerprog.errors import PeerprogError
from peerprog_demo.monitor import Event, Monitor
from peerprog_demo.view import sources_text


@dataclass(frozen=True)
class Node:
    """A node to follow."""

    name: str
    role: str
    socket: Path


def parse_nodes(items: Sequence[str]) -> list[Node]:
    """``name=socket`` items; the first is the seed."""
    nodes = []
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"follow: expected name=socket, not {item!r}")
        nodes.append(Node(name, "seed" if i == 0 else "edge", Path(path)))
    return nodes


async def follow(nodes: list[Node], name: str, timeout: float, *, want: bool = False) -> int:
    """Poll until every edge is complete; print events and the final table. With ``want``,
    first ask every edge to fetch the model (the clock starts then)."""
    t0 = time.monotonic()
    if want:
        clients = [AsyncClient(n.socket, timeout=5.0) for n in nodes if n.role == "edge"]
        try:
            await asyncio.gather(*(c.want(name) for c in clients))
        finally:
            for c in clients:
                await c.close()

    def clock() -> float:
        return time.monotonic() - t0

    def on_event(ev: Event) -> None:
        what = "holds every level" if ev.kind == "complete" else f"reached level {ev.level}"
        print(f"[{ev.t:6.1f} s] {ev.node} {what} ({human_bytes(ev.bytes)})", flush=True)

    monitor = Monitor(nodes, name, clock, on_event)
    task = asyncio.create_task(monitor.run())
    try:
        while not monitor.all_complete:
            if clock() > timeout:
                print(f"follow: not complete after {timeout:.0f} s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.2)
        await monitor.poll_metrics()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await monitor.close()
    edges = monitor.edges
    levels = max((t.levels_total for t in edges), default=0)
    print("\nlevel  " + "  ".join(f"{t.name:>10}" for t in edges))
    for n in range(levels):
        cells = [
            f"{t.level_times[n]:8.1f} s" if n in t.level_times else f"{'–':>10}" for t in edges
        ]
        print(f"{n:>5}  " + "  ".join(cells))
    for t in edges:
        print(f"{t.name}: {human_bytes(t.bytes_received)} from {sources_text(t) or '?'}")
    seed = monitor.tracks[nodes[0].name]
    print(f"{nodes[0].name} uploaded {human_bytes(seed.uploaded)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peerprog_demo.follow``."""
    parser = argparse.ArgumentParser(prog="python -m peerprog_demo.follow", description=__doc__)
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--want", action="store_true", help="first ask every edge to fetch it")
    parser.add_argument("nodes", nargs="+", help="name=socket, the seed first")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(follow(parse_nodes(args.nodes), args.name, args.timeout, want=args.want))
    except PeerprogError as e:
        print(f"follow: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
