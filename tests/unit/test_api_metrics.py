"""``/metrics`` in the Prometheus text format, on a fake node."""

from __future__ import annotations

import re
from pathlib import Path

from peerprog.api.context import ApiStats
from peerprog.api.metrics import escape_label, family, render_metrics
from tests.unit.test_api_support import FakeNode, publish_sample

SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def test_every_line_is_valid_text_format(tmp_path: Path) -> None:
    store, signed = publish_sample(tmp_path / "s")
    node = FakeNode(store)
    state = node.add(signed, levels=2)
    state.metrics.bytes_by_source["peer"] = 1234
    state.metrics.chunks_verified = 5
    state.metrics.chunks_failed = 1
    node.peers["http://x"] = object()
    text = render_metrics(node, ApiStats(best_answers=3), now=node.started_at + 10)
    assert text.endswith("\n")
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in typed
            typed.add(name)
        elif not line.startswith("# HELP"):
            assert SAMPLE.match(line), line
    labels = f'name="tiny",version="1",model_id="{state.model_id}"'
    assert f"peerprog_model_level{{{labels}}} 1" in text
    assert f'peerprog_received_bytes_total{{{labels},source="peer"}} 1234' in text
    assert f'peerprog_received_bytes_total{{{labels},source="web_seed"}} 0' in text
    assert f"peerprog_chunks_failed_total{{{labels}}} 1" in text
    assert "peerprog_peers 1\n" in text and "peerprog_uptime_seconds 10.0\n" in text
    assert "peerprog_api_best_answers_total 3\n" in text


def test_label_escaping() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    lines = family("x", "gauge", "help", [({"k": 'q"'}, 1), ({}, 2.5)])
    assert lines[2:] == ['x{k="q\\""} 1', "x 2.5"]
