"""The demo's settings, with the defaults that make the whole delivery take about 25 s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peerprog.codec.layout import ParamValue

DEFAULT_RATE = 64_000
"""Bytes per second of the seed's upload cap and of each edge's download cap: the bundled
1.1 MB model then takes about 18 s as a plain download and about 25-30 s to reach every edge
(measured: see the README)."""
DEFAULT_EDGES = 3
DEFAULT_CHUNK_SIZE = 16 * 1024
DEFAULT_OUT = Path("demo-report")
DEFAULT_CODEC = "groupplane"
DEFAULT_CODEC_PARAMS: dict[str, ParamValue] = {"targets_mbpw": [300, 600, 1000, 2000, 4000]}
"""The demo's ladder: its levels at about 0.3, 0.6, 1, 2 and 4 bits per weight, then the
rest to exact. The bundled model is small and easy: with the codec's own ladder its level
0 already scores the full model's accuracy, so nothing would visibly improve; with this
one level 0 scores about 90% at 2% of the bytes and the accuracy rises level by level."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``peerprog demo`` runs."""

    model: Path | None = None
    """Model file to publish; ``None``: the bundled digits CNN."""
    key: Path | None = None
    """Publisher key (from ``peerprog keygen``); ``None``: a fresh one in the work folder."""
    name: str | None = None
    """Model name; default ``digits-cnn`` for the bundled model, else the file's stem."""
    edges: int = DEFAULT_EDGES
    """Number of edge daemons; the app runs on the first."""
    rate: int = DEFAULT_RATE
    """Bytes/s: the seed's upload cap, each edge's download cap and the plain download's."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Chunk size at publish; small, so that progress is visible."""
    codec: str | None = DEFAULT_CODEC
    """Codec at publish; ``None``: the package's default codec."""
    codec_params: dict[str, ParamValue] | None = None
    """Codec params at publish; ``None``: :data:`DEFAULT_CODEC_PARAMS` for the default codec,
    else the codec's own."""
    keep_running: bool = False
    """Keep the swarm up after the report, until Ctrl-C (to look at the web UI)."""
    out: Path = DEFAULT_OUT
    """Report folder: ``report.json``, ``demo.png``, and the run's work folder ``work/``."""
    live: bool | None = None
    """Live terminal view; ``None``: when stdout is a terminal, else plain log lines."""
    timeout: float = 300.0
    """Seconds before the run is given up as failed."""
