"""What the clients send and read: paths, error answers, server-sent events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from peerprog.api import errors
from peerprog.api.events import format_event, parse_event_id
from peerprog.api.model import BestSink
from peerprog.api.wire import (
    SOCKET_ENV,
    EventParser,
    best_path,
    default_socket,
    error_of,
    model_path,
    not_running,
)
from peerprog.codec.base import RawTensor
from peerprog.errors import PeerprogError
from peerprog.formats.safetensors import encode_safetensors


def test_paths() -> None:
    assert model_path("digits-cnn") == "/v1/models/digits-cnn"
    assert model_path("a b/c", "best") == "/v1/models/a%20b%2Fc/best"
    assert best_path("m") == "/v1/models/m/best"
    assert best_path("m", 2, 1.5) == "/v1/models/m/best?min_level=2&wait=1.5"
    assert best_path("m", "max") == "/v1/models/m/best?min_level=max"
    for bad in (-1, "top", 1.5):
        with pytest.raises(errors.BadRequest):
            best_path("m", bad)  # type: ignore[arg-type]
    with pytest.raises(errors.BadRequest):
        best_path("m", None, -1)


def test_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    assert default_socket() == "/run/peerprog/api.sock"
    monkeypatch.setenv(SOCKET_ENV, "/tmp/x.sock")
    assert default_socket() == "/tmp/x.sock"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad request", errors.BadRequest),
        (401, "unauthorized", errors.Unauthorized),
        (403, "origin not allowed", errors.OriginNotAllowed),
        (404, "unknown model", errors.UnknownModel),
        (503, "level not reached", errors.LevelTimeout),
        (404, "not found", errors.ApiError),
        (500, "internal error", errors.ApiError),
    ],
)
def test_error_answers_become_typed_errors(status: int, code: str, cls: type) -> None:
    body = json.dumps({"error": code, "detail": "what went wrong"}).encode()
    err = error_of(status, body, "7")
    assert type(err) is cls and isinstance(err, PeerprogError)
    assert err.status == status and "what went wrong" in str(err)
    if cls is errors.LevelTimeout:
        assert isinstance(err, errors.LevelTimeout) and err.retry_after == 7


def test_garbage_error_answer() -> None:
    err = error_of(502, b"<html>bad gateway", None)
    assert type(err) is errors.ApiError and "502" in str(err)


def test_server_errors_round_trip_through_json() -> None:
    for err in (
        errors.BadRequest("x"),
        errors.UnknownModel("y"),
        errors.LevelTimeout("z", retry_after=3),
    ):
        back = error_of(
            err.status, json.dumps(err.to_json()).encode(), err.headers().get("Retry-After")
        )
        assert type(back) is type(err) and back.detail == err.detail
    assert errors.LevelTimeout("z", retry_after=3).headers() == {"Retry-After": "3"}
    assert "Bearer" in errors.Unauthorized("u").headers()["WWW-Authenticate"]


def test_not_running_names_the_socket() -> None:
    err = not_running("/run/x.sock", FileNotFoundError(2, "No such file or directory"))
    assert isinstance(err, errors.DaemonNotRunning) and "/run/x.sock" in str(err)
    err = not_running("/run/x.sock", ConnectionRefusedError(111, "Connection refused"))
    assert isinstance(err, errors.DaemonNotRunning)
    err = not_running("/run/x.sock", PermissionError(13, "Permission denied"))
    assert not isinstance(err, errors.DaemonNotRunning) and "api.socket_group" in str(err)


def test_event_stream_round_trip() -> None:
    wire = (
        b"retry: 1000\n\n"
        + format_event("level", {"level": 0, "name": "m"}, "abc.0")
        + b": keepalive\n\n"
        + format_event("complete", {"level": 1}, "abc.complete")
    )
    parser = EventParser()
    events = [e for line in wire.decode().split("\n") if (e := parser.feed(line))]
    assert [(e.event, e.data, e.id) for e in events] == [
        ("level", {"level": 0, "name": "m"}, "abc.0"),
        ("complete", {"level": 1}, "abc.complete"),
    ]
    assert parse_event_id("abc.3") == ("abc", 3)
    assert parse_event_id("abc.complete") == ("abc", None) and parse_event_id(None) is None


def test_a_best_file_is_durable_before_it_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``best_path``'s file is fsynced before it is renamed into place, and its folder after
    (a crash leaves the old file or the whole new one, never an empty one)."""
    meta = {
        "peerprog.level": "1", "peerprog.levels_total": "2", "peerprog.name": "m",
        "peerprog.model_id": "ab", "peerprog.version": "1", "peerprog.exact": "true",
        "peerprog.bytes_received": "8", "peerprog.bytes_total": "8",
    }  # fmt: skip
    body = b"".join(encode_safetensors({"w": RawTensor("float32", np.ones(2, np.float32))}, meta))
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(a: Path, b: Path) -> None:
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with BestSink(dest) as sink:
        sink.file.write(body)
        model = sink.finish({"content-length": str(len(body))})
    assert calls == ["fsync", "replace", "fsync"]
    assert model.path == dest and dest.read_bytes() == body
