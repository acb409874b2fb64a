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


def test_metrics_parse_and_pass_promtools_naming_rules(tmp_path: Path) -> None:
    """What ``promtool check metrics`` checks of names, on the families that
    ``prometheus_client``'s own parser reads from the page."""
    from prometheus_client.parser import text_string_to_metric_families

    store, signed = publish_sample(tmp_path / "s")
    node = FakeNode(store)
    node.add(signed, levels=1)
    text = render_metrics(node, ApiStats(), now=node.started_at + 1)
    kinds = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    families = list(text_string_to_metric_families(text))
    assert {f.type for f in families} <= {"gauge", "counter"}
    assert len(families) == len(kinds)
    for name, kind in kinds.items():
        assert name in helped, f"{name} has no HELP"
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{name} is not snake_case"
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total"
        for unit in ("_milliseconds", "_kilobytes", "_megabytes", "_ms", "_kb", "_mb"):
            assert unit not in name, f"{name}: use base units"
    by_name = {f.name: f for f in families}
    assert by_name["peerprog_model_size_bytes"].samples[0].value == signed.manifest.total_bytes
    assert by_name["peerprog_model_levels"].samples[0].value == signed.manifest.levels_total
