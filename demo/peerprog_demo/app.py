"""The demo's app: what an application on an edge node looks like.

It asks the local daemon for each new best model as it arrives (``AsyncClient.watch``),
scores it, and prints one JSON line per model, until the exact model is in::

    python -m peerprog_demo.app --socket edge-1.sock --name digits-cnn --full model.safetensors

(``--want`` first asks the node to fetch the model, as ``PUT /v1/models/<name>`` does.)

Each line: ``{"level", "levels_total", "exact", "model_id", "accuracy", "agreement",
"rel_rms_error", "eval_s"}`` (accuracy and agreement are null unless the model is the
bundled digits CNN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from peerprog import AsyncClient
from peerprog.errors import PeerprogError
from peerprog_demo.quality import Judge, as_float


async def watch(socket: Path, name: str, judge: Judge, *, want: bool = False) -> None:
    """Score every new best model of ``name``, the first as soon as level 0 is in, the
    last when the node holds every level (``watch`` ends there). With ``want``, first ask
    the node to fetch the model."""
    async with AsyncClient(socket) as client:
        if want:
            await client.want(name)
        async for best in client.watch(name):
            started = time.perf_counter()
            quality = judge(as_float(best.tensors, best.dtypes))
            line = {
                "level": best.level,
                "levels_total": best.levels_total,
                "exact": best.exact,
                "model_id": best.model_id,
                **quality.to_json(),
                "eval_s": round(time.perf_counter() - started, 4),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peerprog_demo.app``."""
    parser = argparse.ArgumentParser(prog="python -m peerprog_demo.app", description=__doc__)
    parser.add_argument("--socket", required=True, type=Path, help="the node's API socket")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--full", required=True, type=Path, help="the full model, to compare")
    parser.add_argument("--want", action="store_true", help="ask the node to fetch the model")
    args = parser.parse_args(argv)
    try:
        asyncio.run(watch(args.socket, args.name, Judge(args.full), want=args.want))
    except PeerprogError as e:
        sys.stderr.write(f"app: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
