"""``GET /metrics``: the node's counters in the Prometheus text format (version 0.0.4).

Names follow Prometheus' conventions as ``promtool check metrics`` checks them: counters
end in ``_total``, nothing else does, units are base units at the end (``_bytes``,
``_seconds``). The metrics are documented in ``docs/metrics.md``; renames go in
``CHANGELOG.md``.

Per model (labels ``name``, ``version``, ``model_id``): the level reached, bytes received by
source kind (seed, peer, web seed), chunks verified and failed, peers banned. Per node:
peers known, bytes uploaded, uptime, and the API's own counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from peerprog.api.context import ApiStats
from peerprog.api.view import ModelView, NodeView
from peerprog.swarm import SOURCE_KINDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]

# name, type, help, value of one model
MODEL_FAMILIES: tuple[tuple[str, str, str, Callable[[ModelView], float]], ...] = (
    (
        "peerprog_model_level",
        "gauge",
        "Best complete level (-1: none).",
        lambda s: s.servable_level,
    ),
    (
        "peerprog_model_levels",
        "gauge",
        "Levels the model has.",
        lambda s: s.manifest.levels_total,
    ),
    ("peerprog_model_bytes_received", "gauge", "Verified bytes held.", lambda s: s.bytes_held),
    (
        "peerprog_model_size_bytes",
        "gauge",
        "Bytes of all levels.",
        lambda s: s.manifest.total_bytes,
    ),
    ("peerprog_model_complete", "gauge", "1 once every chunk is held.", lambda s: int(s.complete)),
    (
        "peerprog_model_files",
        "gauge",
        "Files of a repository (0 for a single model file).",
        lambda s: len(s.manifest.files),
    ),
    (
        "peerprog_chunks_verified_total",
        "counter",
        "Chunks received that passed verification.",
        lambda s: s.metrics.chunks_verified,
    ),
    (
        "peerprog_chunks_failed_total",
        "counter",
        "Chunks received that failed verification.",
        lambda s: s.metrics.chunks_failed,
    ),
    (
        "peerprog_chunks_from_disk",
        "gauge",
        "Chunks found in the store at start.",
        lambda s: s.metrics.chunks_from_disk,
    ),
    (
        "peerprog_model_peers_banned",
        "gauge",
        "Peers banned for a bad chunk of this model.",
        lambda s: len(s.metrics.peers_banned),
    ),
    (
        "peerprog_model_sources",
        "gauge",
        "Peers and web seeds offering this model.",
        lambda s: len(s.sources),
    ),
    (
        "peerprog_model_uploaded_bytes_total",
        "counter",
        "Bytes of this model served to peers.",
        lambda s: s.metrics.bytes_uploaded,
    ),
    (
        "peerprog_model_uploads_declined_total",
        "counter",
        "Chunk requests of this model answered 503: every upload slot taken.",
        lambda s: s.metrics.uploads_declined,
    ),
)


def escape_label(value: str) -> str:
    """A label value escaped as the text format wants (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    """The lines of one metric family: ``# HELP``, ``# TYPE``, then its samples."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
        number = str(value) if isinstance(value, int) else repr(float(value))
        lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")
    return lines


def model_labels(state: ModelView) -> dict[str, str]:
    """The labels naming one model."""
    m = state.manifest
    return {"name": m.name, "version": str(m.version), "model_id": state.model_id}


def render_metrics(node: NodeView, stats: ApiStats, now: float | None = None) -> str:
    """The whole ``/metrics`` page."""
    now = time.time() if now is None else now
    states = sorted(node.models.values(), key=lambda s: (s.manifest.name, s.manifest.version))
    lines: list[str] = []
    for name, kind, help_text, value in MODEL_FAMILIES:
        lines += family(name, kind, help_text, ((model_labels(s), value(s)) for s in states))
    lines += family(
        "peerprog_received_bytes_total",
        "counter",
        "Verified bytes received, by source kind (seed, peer, web_seed, bittorrent).",
        (
            ({**model_labels(s), "source": kind}, s.metrics.bytes_by_source.get(kind, 0))
            for s in states
            for kind in SOURCE_KINDS
        ),
    )
    node_families: tuple[tuple[str, str, str, float], ...] = (
        ("peerprog_peers", "gauge", "Peers known.", len(node.peers)),
        ("peerprog_uploaded_bytes_total", "counter", "Bytes served to peers.", node.bytes_uploaded),
        (
            "peerprog_start_time_seconds",
            "gauge",
            "When the node started (Unix time).",
            float(node.started_at),
        ),
        (
            "peerprog_uptime_seconds",
            "gauge",
            "Seconds since the node started.",
            round(max(0.0, now - node.started_at), 3),
        ),
        (
            "peerprog_api_best_answers_total",
            "counter",
            "best answers with a model (200).",
            stats.best_answers,
        ),
        (
            "peerprog_api_best_not_modified_total",
            "counter",
            "best answers 304.",
            stats.best_not_modified,
        ),
        ("peerprog_api_best_timeouts_total", "counter", "best answers 503.", stats.best_timeouts),
        (
            "peerprog_api_best_in_flight",
            "gauge",
            "best requests being answered.",
            stats.best_in_flight,
        ),
        ("peerprog_api_sent_bytes_total", "counter", "Model bytes sent to apps.", stats.bytes_sent),
        ("peerprog_api_event_streams", "gauge", "Open event streams.", stats.event_streams),
    )
    for name, kind, help_text, number in node_families:
        lines += family(name, kind, help_text, [({}, number)])
    reach = {True: 1, False: 0, None: -1}[node.reachable]
    channels = node.channels
    lines += family(
        "peerprog_reachable",
        "gauge",
        "Can peers dial this node: 1 yes, 0 no (it uploads over reverse channels), -1 not known.",
        [({}, reach)],
    )
    lines += family(
        "peerprog_reverse_channels",
        "gauge",
        "Reverse channels open: to peers that cannot dial this node, from peers it cannot dial.",
        [
            ({"direction": "to_peers"}, channels.to_peers),
            ({"direction": "from_peers"}, channels.from_peers),
        ],
    )
    bt = node.bittorrent_report
    if bt is not None:
        lines += family(
            "peerprog_bittorrent_torrents", "gauge", "Models seeded into BitTorrent.",
            [({}, bt.torrents)],
        )  # fmt: skip
        lines += family(
            "peerprog_bittorrent_peers", "gauge", "BitTorrent peers connected, over all torrents.",
            [({}, bt.peers)],
        )  # fmt: skip
        lines += family(
            "peerprog_bittorrent_uploaded_bytes_total", "counter",
            "Payload bytes uploaded to BitTorrent peers.", [({}, bt.bytes_uploaded)],
        )  # fmt: skip
    lines += family(
        "peerprog_reverse_channel_bytes_total",
        "counter",
        "Stream bytes (HTTP included) carried by reverse channels, sent and received.",
        [
            ({"direction": "sent"}, channels.bytes_sent),
            ({"direction": "received"}, channels.bytes_received),
        ],
    )
    return "\n".join(lines) + "\n"
