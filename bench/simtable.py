"""Markdown tables of ``bench/simulate.py`` results (its ``--json`` files), for SIM_NOTES.md.

.venv/bin/python -m bench.simtable bench/results/sim-*.json
.venv/bin/python -m bench.simtable --targets19 bench/results/issue19/driver-1000.json
.venv/bin/python -m bench.simtable --reach bench/results/issue20/reach-1000-70.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def cell(v: Any, unit: str = "") -> str:
    return "—" if v is None else f"{v:g}{unit}"


def rows(doc: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in doc["runs"]:
        x, x_lb, x_node = r["exact_s"], r["exact_over_lb"], r["exact_over_node_lb"]
        done = f"{r['completed']}/{r['nodes']}"
        out.append(
            [
                doc["label"],
                str(r["nodes"]),
                done,
                f"{cell(r['level0_s']['p50'])} / {cell(r['level0_s']['p99'])}",
                f"{cell(x['p50'])} / {cell(x['p90'])} / {cell(x['p99'])}",
                f"{cell(r['lower_bound_s'])}",
                f"{cell(x_lb['p50'])} / {cell(x_lb['p99'])}",
                f"{cell(x_node['p50'])} / {cell(x_node['p99'])}",
                cell(r["level0_p50_over_exact_p50"]),
                cell(r["seed_upload_over_stream"], "×"),
                cell(r["uploaded_over_needed"], "×"),
                str(r.get("timeouts", r.get("cancelled"))),
                f"{r['declined_busy']} / {r['requests']}",
                cell(r["run_seconds"]),
            ]
        )
    return out


HEADER = [
    "variant",
    "N",
    "exact",
    "level 0 p50 / p99 (s)",
    "exact p50 / p90 / p99 (s)",
    "bound (s)",
    "exact / bound p50 / p99",
    "exact / own bound p50 / p99",
    "L0 p50 / exact p50",
    "seed upload / stream",
    "uploaded / needed",
    "timeouts (before issue 19) / cancelled",
    "503s / requests",
    "run (s)",
]


def run(path: str, n: int) -> dict[str, Any]:
    with open(path) as f:
        runs: list[dict[str, Any]] = json.load(f)["runs"]
    return next(r for r in runs if r["nodes"] == n)


def targets(big: str, small: str, base: str, bench_base: str, bench_final: str) -> None:
    """Issue 12's targets, each with the measured value and whether it is met."""
    r = run(big, 1000)
    one_now, one_new = run(base, 1), run(small, 1)
    b1, b8 = run(bench_base, 1), run(bench_final, 8)
    b1_new = run(bench_final, 1)
    checks = [
        ("N=1000 p50 exact / bound", r["exact_over_lb"]["p50"], 1.3),
        ("N=1000 p99 exact / bound", r["exact_over_lb"]["p99"], 2.0),
        ("N=1000 p50 exact / own bound", r["exact_over_node_lb"]["p50"], 1.3),
        ("N=1000 p99 exact / own bound", r["exact_over_node_lb"]["p99"], 2.0),
        ("N=1000 seed upload / stream", r["seed_upload_over_stream"], 1.2),
        ("N=1000 p50 level 0 / p50 exact", r["level0_p50_over_exact_p50"], 0.3),
        (
            "1 GB, one edge: level 0 (s), today's as target",
            one_new["level0_s"]["p50"],
            one_now["level0_s"]["p50"],
        ),
        (
            "bench setup, one edge: level 0 (s), today's as target",
            b1_new["level0_s"]["p50"],
            b1["level0_s"]["p50"],
        ),
        ("bench setup N=8: seed upload / stream", b8["seed_upload_over_stream"], 1.2),
        (
            "bench setup N=8: last exact / one edge today",
            None
            if b8["exact_s"]["p99"] is None
            else round(b8["exact_s"]["p99"] / b1["exact_s"]["p50"], 3),
            2.0,
        ),
    ]
    # An edge not exact when the run stopped took longer than (stop - last join); its own
    # bound is at most the swarm's (its download is at least d_min), so both ratios exceed it.
    with open(big) as f:
        window = float(json.load(f)["options"]["join_window"])
    floor = {"bound": (r["sim_seconds"] - window) / r["lower_bound_s"]}
    print("| target | measured | at most | met |")
    print("| --- | --- | --- | --- |")
    for name, value, limit in checks:
        if value is None:
            low = floor["bound"] if "exact / " in name and "bound" in name else None
            if low is None:
                text, met = "not reached when the run stopped", "unknown"
            else:
                text = f"> {low:.2f} (not reached when the run stopped)"
                met = "**no**" if low > limit else "unknown"
        else:
            text, met = cell(value), "yes" if value <= limit else "**no**"
        print(f"| {name} | {text} | {cell(limit)} | {met} |")


def targets19(paths: list[str]) -> None:
    """Issue 19's simulation targets for each run of these files, measured against each
    limit (a run stopped short says how far it got)."""
    limits = (
        ("p50 exact / bound", 1.3),
        ("p99 exact / bound", 2.0),
        ("seed upload / stream", 1.2),
        ("p50 level 0 / p50 exact", 0.3),
        ("run (s)", 900.0),
    )
    print("| run | N | " + " | ".join(f"{name} (≤ {lim:g})" for name, lim in limits) + " |")
    print("| --- | --- |" + " --- |" * len(limits))
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for r in doc["runs"]:
            values = (
                r["exact_over_lb"]["p50"],
                r["exact_over_lb"]["p99"],
                r["seed_upload_over_stream"],
                r["level0_p50_over_exact_p50"],
                r["run_seconds"],
            )
            cells = []
            for (_, lim), v in zip(limits, values, strict=True):
                if v is None:
                    cells.append("not reached")
                else:
                    cells.append(cell(v) if v <= lim else f"**{cell(v)}**")
            if r["stopped_by_wall_limit"]:
                cells[-1] += f" (stopped at {r['sim_seconds']:g} simulated s)"
            print(f"| {doc['label']} | {r['nodes']} | " + " | ".join(cells) + " |")


def reach(paths: list[str]) -> None:
    """Issue 20's table: each run with its fraction of edges that cannot be dialled, against
    the issue's targets (seed upload ≤ 1.2× the stream, p50 exact ≤ 1.5× the bound; bold:
    missed), and the edges that can and cannot be dialled apart."""
    print(
        "| run | N | cannot be dialled | exact | level 0 p50 / p99 (s) | level 0 / bound p50 / p99"
        " | exact p50 / p99 (s) | exact / bound p50 / p99 (p50 ≤ 1.5) | bound counting reach (s)"
        " | exact / that bound p50 / p99 | exact p50, can / cannot be dialled (s)"
        " | seed upload / stream (≤ 1.2) | run (s) |"
    )
    print("| --- " * 13 + "|")
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for r in doc["runs"]:
            x, x0 = r["exact_s"], r["level0_s"]
            lb, lb0, lbr = r["exact_over_lb"], r["level0_over_lb"], r["exact_over_reach_lb"]
            p50 = cell(lb["p50"])
            if lb["p50"] is None or lb["p50"] > 1.5:
                p50 = f"**{p50}**"
            seed = cell(r["seed_upload_over_stream"], "×")
            if r["seed_upload_over_stream"] > 1.2:
                seed = f"**{seed}**"
            groups = r["by_reach"]
            run_s = cell(r["run_seconds"])
            if r["stopped_by_wall_limit"]:
                run_s += f" (stopped at {r['sim_seconds']:g} simulated s)"
            cells = [
                doc["label"],
                str(r["nodes"]),
                f"{r['unreachable_edges']} ({r['unreachable']:.0%})",
                f"{r['completed']}/{r['nodes']}",
                f"{cell(x0['p50'])} / {cell(x0['p99'])}",
                f"{cell(lb0['p50'])} / {cell(lb0['p99'])}",
                f"{cell(x['p50'])} / {cell(x['p99'])}",
                f"{p50} / {cell(lb['p99'])}",
                cell(r["lower_bound_reach_s"]),
                f"{cell(lbr['p50'])} / {cell(lbr['p99'])}",
                f"{cell(groups['dialable']['exact_s']['p50'])}"
                f" / {cell(groups['undialable']['exact_s']['p50'])}",
                seed,
                run_s,
            ]
            print("| " + " | ".join(cells) + " |")


def main(paths: list[str]) -> None:
    if paths and paths[0] == "--targets":
        targets(*paths[1:6])
        return
    if paths and paths[0] == "--targets19":
        targets19(paths[1:])
        return
    if paths and paths[0] == "--reach":
        reach(paths[1:])
        return
    table = [HEADER, ["---"] * len(HEADER)]
    for path in paths:
        with open(path) as f:
            table.extend(rows(json.load(f)))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
