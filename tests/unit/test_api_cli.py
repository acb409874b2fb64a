"""The pure parts of ``peerprog fetch`` / ``status``: arguments and progress lines."""

from __future__ import annotations

import argparse

import pytest

from peerprog.cli.appcmds import Rate, level_arg, plural, progress_line, seconds_arg


def test_arguments() -> None:
    assert level_arg("max") == "max" and level_arg("3") == 3
    assert seconds_arg("0") == 0.0 and seconds_arg("2.5") == 2.5
    for bad in ("-1", "x", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            level_arg(bad)
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds_arg(bad)


def test_rate_over_a_window() -> None:
    rate = Rate(window=3.0)
    assert rate.add(0.0, 0) == 0.0
    assert rate.add(1.0, 1000) == 1000.0
    assert rate.add(2.0, 3000) == 1500.0
    assert rate.add(10.0, 3000) == 0.0  # old samples dropped: nothing arrived lately


def test_progress_line() -> None:
    doc = {
        "name": "m", "model_id": "ab" * 32, "version": 2, "level": 1, "levels_total": 4,
        "bytes_received": 512 * 1024, "bytes_total": 1024 * 1024, "peers": 1,
    }  # fmt: skip
    line = progress_line(doc, 2048.0)
    assert line == "m v2: 2/4 levels, 512.0 KiB of 1.0 MiB (50%), 2.0 KiB/s, ETA 4 min 16 s, 1 peer"
    assert "ETA ?" in progress_line(doc, 0.0)
    assert "complete" in progress_line({**doc, "complete": True}, 0.0)
    assert "looking for sources" in progress_line({"name": "m", "model_id": None}, 0.0)
    stuck = {"name": "m", "model_id": None, "problem": "no source knows it (a does not know it)"}
    assert progress_line(stuck, 0.0) == "m: no source knows it (a does not know it)"
    assert progress_line({**doc, "problem": "disk full"}, 1.0).endswith(" — disk full")
    assert plural(2, "peer") == "2 peers" and plural(1, "peer") == "1 peer"
