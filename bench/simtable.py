"""Markdown tables of ``bench/simulate.py`` results (its ``--json`` files), for SIM_NOTES.md.

.venv/bin/python -m bench.simtable bench/results/sim-*.json
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
                str(r["timeouts"]),
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
    "timeouts",
    "run (s)",
]


def main(paths: list[str]) -> None:
    table = [HEADER, ["---"] * len(HEADER)]
    for path in paths:
        with open(path) as f:
            table.extend(rows(json.load(f)))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
