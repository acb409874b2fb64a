"""The end of a run: ``report.json``, a chart of quality against time and bytes for
progressive delivery vs plain download, and the summary printed on the terminal."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from peerprog import __version__
from peerprog.cli.output import human_bytes
from peerprog_demo.quality import Quality
from peerprog_demo.state import DemoState

REPORT = "report.json"
CHART = "demo.png"


def build(
    state: DemoState, plain_quality: Quality | None, files: dict[str, str | None]
) -> dict[str, Any]:
    """The report document (see the README's demo section for the fields)."""
    p = state.published
    edges = state.monitor.edges
    levels: list[dict[str, Any]] = []
    for lv in p.levels:
        reached = {t.name: t.level_times.get(lv.level) for t in edges}
        times = [v for v in reached.values() if v is not None]
        app = next((o for o in state.observations if o.level == lv.level), None)
        levels.append(
            {
                "level": lv.level,
                "bytes": lv.bytes,
                "cumulative_bytes": lv.cumulative_bytes,
                **lv.quality.to_json(),
                "reached_s": {k: _round(v) for k, v in reached.items()},
                "first_reached_s": _round(min(times)) if times else None,
                "last_reached_s": _round(max(times)) if len(times) == len(edges) else None,
                "app": None if app is None else {"t": _round(app.t), **_quality(app)},
            }
        )
    seed = state.monitor.tracks["seed"]
    from_seed = sum(t.by_source.get("seed", 0) for t in edges)
    from_peers = sum(t.by_source.get("peer", 0) for t in edges)
    upload = seed.uploaded or from_seed
    plain = state.plain
    level0: float | None = levels[0]["last_reached_s"] if levels else None
    last: float | None = levels[-1]["last_reached_s"] if levels else None
    return {
        "peerprog_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "edges": len(edges),
            "rate_bytes_per_s": state.rate,
            "app_edge": state.app_edge,
        },
        "model": {
            "name": p.name,
            "model_id": p.model_id,
            "codec": p.codec,
            "source": str(p.source_path),
            "file_bytes": p.file_bytes,
            "source_bytes": p.source_bytes,
            "total_bytes": p.total_bytes,
            "levels_total": p.levels_total,
            "metric": p.metric,
        },
        "full_model": p.full_quality.to_json(),
        "levels": levels,
        "edges": [
            {
                "name": t.name,
                "complete_s": _round(t.complete_at),
                "bytes_received": t.bytes_received,
                "bytes_by_source": dict(t.by_source),
                "uploaded_bytes": t.uploaded,
            }
            for t in edges
        ],
        "app": {
            "edge": state.app_edge,
            "observations": [
                {"t": _round(o.t), "level": o.level, **_quality(o)} for o in state.observations
            ],
        },
        "plain_download": {
            "bytes": plain.total,
            "seconds": _round(plain.seconds),
            "started_s": _round(plain.started_at),
            "finished_s": _round(plain.finished_at),
            "achieved_bytes_per_s": (round(plain.total / plain.seconds) if plain.seconds else None),
            **(plain_quality.to_json() if plain_quality else {}),
        },
        "seed": {
            "upload_bytes": upload,
            "upload_measured_by": "seed" if seed.uploaded else "edges",
            "model_bytes": p.total_bytes,
            "upload_over_model": round(upload / max(1, p.total_bytes), 3),
            "edge_bytes_from_seed": from_seed,
            "edge_bytes_from_peers": from_peers,
        },
        "headline": {
            "level0_all_edges_s": level0,
            "last_level_all_edges_s": last,
            "plain_download_s": _round(plain.seconds),
            "level0_speedup": (
                round(plain.seconds / level0, 1) if plain.seconds and level0 else None
            ),
        },
        "files": files,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _quality(o: Any) -> dict[str, float | None]:
    return {"accuracy": o.accuracy, "agreement": o.agreement, "rel_rms_error": o.rel_rms_error}


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write the report."""
    path.write_text(json.dumps(doc, indent=2) + "\n")


ERROR_FLOOR = 1e-9
"""The exact model's error (0) is drawn at this height on the log scale."""


def _y(metric: str, q: dict[str, Any]) -> float:
    if metric == "accuracy":
        return 100.0 * float(q["accuracy"])
    return max(ERROR_FLOOR, float(q["rel_rms_error"]))


def chart(doc: dict[str, Any], path: Path) -> None:
    """Quality against time and against bytes, progressive delivery vs plain download: test
    accuracy (the digits CNN only) and the weights' relative RMS error, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (
        ["accuracy", "rel_rms_error"] if doc["model"]["metric"] == "accuracy" else ["rel_rms_error"]
    )
    fig, axes = plt.subplots(
        len(metrics),
        2,
        figsize=(12, 3.6 * len(metrics) + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    for row, metric in enumerate(metrics):
        _chart_time(doc, metric, axes[row][0])
        _chart_bytes(doc, metric, axes[row][1])
        for ax in axes[row]:
            if metric == "accuracy":
                ax.set_ylabel("test accuracy (%)")
                ax.set_ylim(-2, 102)
            else:
                ax.set_ylabel("weights' relative RMS error")
                ax.set_yscale("log")
                ax.set_ylim(ERROR_FLOOR / 3, 3)
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right" if metric == "accuracy" else "lower left", fontsize=8)
    axes[0][0].set_title("quality against time")
    axes[0][1].set_title("quality against bytes received")
    axes[-1][0].set_xlabel("seconds since start")
    axes[-1][1].set_xlabel("MB received")
    model, s = doc["model"], doc["settings"]
    fig.suptitle(
        f"{model['name']}: progressive peer-to-peer delivery to {s['edges']} edge"
        f"{'s' if s['edges'] != 1 else ''} vs plain download, links capped at "
        f"{s['rate_bytes_per_s'] / 1000:.0f} kB/s"
        + ("" if len(metrics) == 1 else f"  (exact model's error drawn at {ERROR_FLOOR:g})")
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _none(metric: str) -> float:
    """The value drawn while there is no model: 0 % accuracy, or every weight wrong."""
    return 0.0 if metric == "accuracy" else 1.0


def _chart_time(doc: dict[str, Any], metric: str, ax: Any) -> None:
    levels, plain = doc["levels"], doc["plain_download"]
    none, full = _none(metric), _y(metric, doc["full_model"])
    ends = [plain["finished_s"] or 0.0] + [e["complete_s"] or 0.0 for e in doc["edges"]]
    end = max(ends) * 1.05
    for e in doc["edges"]:
        xs, ys = [0.0], [none]
        for lv in levels:
            t = lv["reached_s"].get(e["name"])
            if t is not None:
                xs.append(t)
                ys.append(_y(metric, lv))
        app = e["name"] == doc["app"]["edge"]
        ax.step(
            [*xs, end],
            [*ys, ys[-1]],
            where="post",
            lw=2.2 if app else 1.0,
            alpha=1.0 if app else 0.6,
            label=f"peerprog, {e['name']}" + (" (app)" if app else ""),
        )
    obs = doc["app"]["observations"]
    if obs:
        ax.plot(
            [o["t"] for o in obs],
            [_y(metric, o) for o in obs],
            "o",
            ms=4,
            color="black",
            label="the app's measurements",
        )
    if plain["finished_s"] is not None:
        ax.step(
            [0.0, plain["finished_s"], end],
            [none, full, full],
            where="post",
            color="tab:red",
            lw=2,
            ls="--",
            label="plain HTTP download",
        )


def _chart_bytes(doc: dict[str, Any], metric: str, ax: Any) -> None:
    levels, model = doc["levels"], doc["model"]
    none, full = _none(metric), _y(metric, doc["full_model"])
    xs = [0.0] + [lv["cumulative_bytes"] / 1e6 for lv in levels]
    ys = [none] + [_y(metric, lv) for lv in levels]
    right = max(model["file_bytes"], model["total_bytes"]) / 1e6 * 1.05
    ax.step([*xs, right], [*ys, ys[-1]], where="post", lw=2.2, label="peerprog, level by level")
    ax.step(
        [0.0, model["file_bytes"] / 1e6, right],
        [none, full, full],
        where="post",
        color="tab:red",
        lw=2,
        ls="--",
        label="plain HTTP download",
    )


def print_summary(doc: dict[str, Any], console: Console) -> None:
    """The per-level table and the comparison with the plain download."""
    edges = [e["name"] for e in doc["edges"]]
    accuracy = doc["model"]["metric"] == "accuracy"
    model = doc["model"]
    table = Table(
        title="summary: when each level was reached, and what it was worth", title_justify="left"
    )
    table.add_column("level", justify="right")
    table.add_column("bytes (cumulative)", justify="right")
    for name in edges:
        table.add_column(name + (" (app)" if name == doc["app"]["edge"] else ""), justify="right")
    if accuracy:
        table.add_column("accuracy", justify="right")
        table.add_column("agreement", justify="right")
    table.add_column("weights' error", justify="right")
    for lv in doc["levels"]:
        frac = lv["cumulative_bytes"] / max(1, model["file_bytes"])
        cells = [str(lv["level"]), f"{human_bytes(lv['cumulative_bytes'])} ({frac:.0%})"]
        for name in edges:
            t = lv["reached_s"].get(name)
            cells.append("–" if t is None else f"{t:.1f} s")
        if accuracy:
            cells += [f"{lv['accuracy']:.1%}", f"{lv['agreement']:.1%}"]
        cells.append(f"{lv['rel_rms_error']:.1e}" if lv["rel_rms_error"] else "0 (exact)")
        table.add_row(*cells)
    plain = doc["plain_download"]
    row = ["plain HTTP", f"{human_bytes(plain['bytes'])} (100%)"]
    row.append("–" if plain["seconds"] is None else f"{plain['seconds']:.1f} s")
    row += [""] * (len(edges) - 1)
    if accuracy:
        acc = plain.get("accuracy")
        row += ["–" if acc is None else f"{acc:.1%}", "–"]
    row.append("0 (exact)")
    table.add_row(*row, style="yellow")
    console.print(table)

    h = doc["headline"]
    seed = doc["seed"]
    rate = doc["settings"]["rate_bytes_per_s"] / 1000
    last = doc["levels"][-1]
    if last["rel_rms_error"] == 0:
        final = "the exact model"
    else:
        final = (
            f"the last level (codec {model['codec']}: not exact, weights' error "
            f"{last['rel_rms_error']:.1e})"
        )
    first = doc["levels"][0]
    if first.get("accuracy") is not None:
        level0 = f"a usable model (level 0, {first['accuracy']:.1%} accuracy on the test split)"
    else:  # a model of the user's: no task known to score it on, only its weights' error
        level0 = f"level 0 (weights' relative RMS error {first['rel_rms_error']:.1e})"
    if h["level0_all_edges_s"] is not None and h["plain_download_s"] is not None:
        console.print(
            f"Every edge had {level0} after [b]{h['level0_all_edges_s']:.1f} s"
            f"[/b] and {final} after [b]{h['last_level_all_edges_s'] or float('nan'):.1f} s"
            f"[/b]. A plain HTTP download of the same {human_bytes(plain['bytes'])} file by one "
            f"client over the same {rate:.0f} kB/s link took [b]{h['plain_download_s']:.1f} s"
            f"[/b] (measured in this run), with no model before its last byte."
        )
    n = len(edges)
    console.print(
        f"The seed uploaded [b]{human_bytes(seed['upload_bytes'])}[/b] = "
        f"{seed['upload_over_model']:.2f}× the model ({human_bytes(seed['model_bytes'])}) for "
        f"{n} edge{'s' if n != 1 else ''}; the edges got "
        f"{human_bytes(seed['edge_bytes_from_peers'])} from each other."
    )
