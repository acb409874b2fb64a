"""Where an edge's exact-level build spends its time: ``Store.decode`` of a stored model's
last level from scratch, in one thread, under cProfile (the store of an edge kept by
``python -m bench.size --keep --dir DIR``). Prints wall and CPU seconds and the functions
that took the most, as JSON.

    python -m bench.build_profile DIR/pp-size-*/cluster/edge/store
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import cProfile
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peerprog.store.assemble as assemble
from peerprog.store.disk import Store


class Inline(cf.Executor):
    """Runs each job in the caller's thread (cProfile sees only its own thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        f: cf.Future[Any] = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:
            f.set_exception(e)
        return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    store = Store(args.store)
    model_id = sorted(store.model_ids())[0]
    signed = store.load_manifest(model_id, None)
    level = signed.manifest.levels_total - 1
    assemble.ThreadPoolExecutor = Inline  # type: ignore[misc,assignment]
    with tempfile.TemporaryDirectory(dir=args.store) as tmp:
        out = Path(tmp) / "exact.safetensors"
        prof = cProfile.Profile()
        t0, c0 = time.perf_counter(), time.process_time()
        prof.runcall(store.decode, signed, level, out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[: args.top]
    print(
        json.dumps(
            {
                "model_bytes": signed.manifest.source_bytes,
                "wall_s": wall,
                "cpu_s": cpu,
                "top_self_s": {f"{f[0]}:{f[1]}({f[2]})": round(v[2], 3) for f, v in top},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
