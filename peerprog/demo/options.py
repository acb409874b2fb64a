"""The demo's settings, with the defaults that make the whole delivery take about 25 s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_RATE = 64_000
"""Bytes per second of the seed's upload cap and of each edge's download cap: the bundled
1.1 MB model then takes about 18 s as a plain download and about 25-30 s to reach every edge
(measured: see the README)."""
DEFAULT_EDGES = 3
DEFAULT_CHUNK_SIZE = 16 * 1024
DEFAULT_OUT = Path("demo-report")
DEFAULT_CODEC = "rowplane"
"""The demo's codec. On the small bundled model the default ``bitplane`` codec's level 0
(24% of the bytes) already scores the full model's accuracy, so nothing visibly improves;
``rowplane`` (lossless too) is usable at 3% of the bytes and improves level by level."""


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
    out: Path = DEFAULT_OUT
    """Report folder: ``report.json``, ``demo.png``, and the run's work folder ``work/``."""
    live: bool | None = None
    """Live terminal view; ``None``: when stdout is a terminal, else plain log lines."""
    timeout: float = 300.0
    """Seconds before the run is given up as failed."""
