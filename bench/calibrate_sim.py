"""Calibration of the swarm simulator against real daemons on the same scenarios.

One seed with its upload capped and N = 1, 4, 8 edges, each with its own upload and
download caps, fetch the same published model (a synthetic float32 model, 256 KiB chunks):
once as real daemons on loopback (``tests.integration.cluster.Cluster``, as
``bench/swarm.py`` runs them; medians of ``--repeat`` runs), once in ``bench/simulate.py``
for each real run, with the same level sizes, chunk size, caps and number of edges, each
edge joining when its real counterpart sent its first chunk request (every edge knows
every other, loopback latencies). The caps are low enough that the
daemons are not CPU-bound on this 2-core machine. For each N it tabulates each edge's time
to level 0 and to exact (from its first chunk request, daemon metrics; in the simulator
from its join), the median edge and the slowest, simulated against real and their ratio;
the target is agreement within 15%.

Prints JSON; ``--write`` also updates the "Simulation calibration" section of BENCHMARKS.md.

    .venv/bin/python -m bench.calibrate_sim --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import simulate
from bench.codec import synthetic
from bench.report import machine, table, write_section
from bench.swarm import NAME, transfers, wait_complete
from peerprog.formats import write_safetensors
from tests.integration.cluster import Cluster

TARGET = 0.15
"""Simulated within this fraction of real."""


def real_run(
    root: Path, model: Path, edges: int, seed_cap: int, edge_cap: int, chunk_size: int
) -> dict[str, Any]:
    """Real daemons: the seed capped at ``seed_cap`` bytes/s upload, ``edges`` edges capped
    at ``edge_cap`` up and down, started together and wanting the model."""
    with Cluster(root) as c:
        pub = c.publish(model, name=NAME, chunk_size=chunk_size)
        seed = c.start(c.seed(upload_bytes_per_s=seed_cap))
        nodes = [
            c.start(
                c.node(
                    f"edge{i}",
                    want=[NAME],
                    bootstrap=[seed],
                    upload_bytes_per_s=edge_cap,
                    download_bytes_per_s=edge_cap,
                ),
                wait=False,
            )
            for i in range(edges)
        ]
        for n in nodes:
            c.wait_ready(n)
        for n in nodes:
            wait_complete(n, 120)
        last = str(len(pub["levels"]) - 1)
        level0, exact, starts = [], [], []
        for n in nodes:
            t = transfers(n, pub["model_id"])
            start = t["first_request_at"]["0"]
            starts.append(start)
            level0.append(t["level_complete_at"]["0"] - start)
            exact.append(t["level_complete_at"][last] - start)
        seed_up = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
        return {
            "levels_bytes": [lv["bytes"] for lv in pub["levels"]],
            "total_bytes": pub["total_bytes"],
            "starts_s": sorted(x - min(starts) for x in starts),
            "level0_s": sorted(level0),
            "exact_s": sorted(exact),
            "seed_upload_over_model": seed_up / pub["total_bytes"],
        }


def sim_run(
    levels_bytes: list[int],
    starts: list[float],
    seed_cap: int,
    edge_cap: int,
    chunk_size: int,
) -> dict[str, Any]:
    """The simulator on the same scenario, with the daemon's defaults: edges that send their
    first chunk request at ``starts`` (a real run's, from the first edge's)."""
    edges = len(starts)
    cumulative, total = [], 0
    for nbytes in levels_bytes:
        total += nbytes
        cumulative.append(total / simulate.MB)
    args = simulate.parser().parse_args(
        [
            "--levels-mb",
            ",".join(repr(x) for x in cumulative),
            "--chunk-mib",
            repr(chunk_size / simulate.MIB),
            "--seed-up",
            repr(seed_cap / simulate.MB),
            "--classes",
            json.dumps([["edge", 1.0, edge_cap, edge_cap]]),
            "--degree",
            str(edges),
            "--joins",
            ",".join(repr(x) for x in starts),
            "--lat-min",
            "0.0002",
            "--lat-max",
            "0.0002",
            "--upload-cap",
            "--max-time",
            "600",
        ]
    )
    sim = simulate.Sim(args, edges)
    sim.run()
    res = sim.results()
    level0, exact = [], []
    for e in sim.nodes[1:]:  # from its first chunk request, as the daemon's metrics
        assert e.first_fetch is not None and e.done_at is not None
        level0.append(e.level_at[0] - e.first_fetch)
        exact.append(e.done_at - e.first_fetch)
    return {
        "level0_s": sorted(level0),
        "exact_s": sorted(exact),
        "seed_upload_over_model": res["seed_upload_over_stream"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over runs of the median edge's and the slowest edge's times."""
    med = statistics.median
    return {
        "level0_p50_s": med(med(r["level0_s"]) for r in runs),
        "level0_max_s": med(max(r["level0_s"]) for r in runs),
        "exact_p50_s": med(med(r["exact_s"]) for r in runs),
        "exact_max_s": med(max(r["exact_s"]) for r in runs),
        "seed_upload_over_model": med(r["seed_upload_over_model"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=int, default=8_000_000, help="synthetic model size")
    ap.add_argument("--seed-cap", type=int, default=8_000_000, help="seed upload, bytes/s")
    ap.add_argument("--edge-cap", type=int, default=4_000_000, help="edge up and down, bytes/s")
    ap.add_argument("--edges", default="1,4,8")
    ap.add_argument("--repeat", type=int, default=3, help="real runs of each N")
    ap.add_argument("--chunk-kib", type=int, default=256)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", default="", help="also write the JSON here")
    ap.add_argument("--from-json", default="", help="no runs: render this JSON's section")
    ap.add_argument(
        "--real-json", default="", help="take the real runs from this JSON, run the simulator"
    )
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        opts = argparse.Namespace(**saved["options"])
        print(markdown(saved, opts))
        if args.write:
            write_section("sim-calibration", markdown(saved, opts))
        return
    chunk = args.chunk_kib * 1024
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="pp-calib-") as tmp:
        root = Path(tmp)
        model = root / "model.safetensors"
        write_safetensors(model, synthetic(args.weights))
        reused: dict[int, list[dict[str, Any]]] = {}
        if args.real_json:
            before = json.loads(Path(args.real_json).read_text())
            reused = {row["edges"]: row["real_runs"] for row in before["rows"]}
            started = before["started_utc"]
        for n in (int(x) for x in args.edges.split(",")):
            real = reused.get(n, [])
            for i in range(args.repeat - len(real)):
                t0 = time.perf_counter()
                run = real_run(root / f"n{n}-{i}", model, n, args.seed_cap, args.edge_cap, chunk)
                run["wall_s"] = round(time.perf_counter() - t0, 1)
                real.append(run)
            sims = [
                sim_run(
                    run["levels_bytes"],
                    run.get("starts_s", [0.0] * n),
                    args.seed_cap,
                    args.edge_cap,
                    chunk,
                )
                for run in real
            ]
            r, s = summary(real), summary(sims)
            rows.append(
                {
                    "edges": n,
                    "real": r,
                    "sim": s,
                    "sim_over_real": {k: s[k] / r[k] for k in r},
                    "real_runs": real,
                    "sim_runs": sims,
                }
            )
    doc = {
        "machine": machine(),
        "started_utc": started,
        "options": vars(args),
        "target": TARGET,
        "rows": rows,
    }
    text = json.dumps(doc, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    if args.write:
        write_section("sim-calibration", markdown(doc, args))


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section."""
    total = doc["rows"][0]["real_runs"][0]["total_bytes"]
    out = [
        "## Simulation calibration\n",
        "Reproduce: `.venv/bin/python -m bench.calibrate_sim --write` (machine: "
        f"{doc['machine']}; started {doc['started_utc']}). The same scenario run by real "
        "daemons on loopback (medians of "
        f"{args.repeat} runs) and by `bench/simulate.py` (the daemon's own driver with its "
        "defaults; one simulation per real run, each edge joining when its real counterpart "
        "sent its first chunk request): a synthetic model of "
        f"{args.weights:,} float32 weights "
        f"({total / 1e6:.1f} MB encoded, chunks of {args.chunk_kib} KiB), the seed's upload "
        f"capped at {args.seed_cap / 1e6:g} MB/s, each edge's upload and download at "
        f"{args.edge_cap / 1e6:g} MB/s, the edges' daemons started together. Per edge: "
        "seconds from its first chunk request to level 0 and to exact; the median "
        "edge and the slowest; sim / real within "
        f"{doc['target']:.0%} is the target.\n",
    ]
    rows = []
    for row in doc["rows"]:
        for key, label in (
            ("level0_p50_s", "level 0, median edge"),
            ("level0_max_s", "level 0, slowest edge"),
            ("exact_p50_s", "exact, median edge"),
            ("exact_max_s", "exact, slowest edge"),
            ("seed_upload_over_model", "seed upload / model"),
        ):
            ratio = row["sim_over_real"][key]
            ok = abs(ratio - 1) <= doc["target"]
            rows.append(
                [
                    row["edges"],
                    label,
                    f"{row['real'][key]:.2f}",
                    f"{row['sim'][key]:.2f}",
                    f"{ratio:.2f}" if ok else f"**{ratio:.2f}**",
                ]
            )
    out.append(table(["edges", "measure", "real", "simulated", "sim / real"], rows))
    out.append(
        "\nA ratio in bold is outside the target. Real runs took "
        + ", ".join(
            f"N = {row['edges']}: " + "/".join(f"{r['wall_s']:g}" for r in row["real_runs"])
            for row in doc["rows"]
        )
        + " s wall each (start to every edge exact).\n"
    )
    return "\n".join(out)


if __name__ == "__main__":
    main()
