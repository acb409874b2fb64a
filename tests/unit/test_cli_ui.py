"""``peerprog ui``: the web UI's address from the config, with the token in the fragment."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerprog.cli.main import main
from peerprog.config import parse_config


def write_config(path: Path, **api: object) -> Path:
    doc = {"api": {"socket": str(path.parent / "api.sock"), **api}}
    path.write_text(parse_config(doc).to_toml("test"))
    return path


def test_prints_the_address_with_the_token_in_the_fragment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "node.toml", listen_tcp="127.0.0.1:7080", token="s3cret")
    assert main(["ui", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:7080/ui/#token=s3cret\n"
    odd = write_config(tmp_path / "odd.toml", listen_tcp="[::1]:7081", token="a b/c+d&e")
    assert main(["ui", "--config", str(odd)]) == 0
    assert capsys.readouterr().out == "http://[::1]:7081/ui/#token=a%20b%2Fc%2Bd%26e\n"


def test_default_config_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path / "node.toml", listen_tcp="localhost:7082", token="t")
    monkeypatch.setenv("PEERPROG_CONFIG", str(cfg))
    assert main(["ui"]) == 0
    assert capsys.readouterr().out == "http://localhost:7082/ui/#token=t\n"


def test_open_starts_a_browser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path / "node.toml", listen_tcp="127.0.0.1:7080", token="t")
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert main(["ui", "--config", str(cfg), "--open"]) == 0
    assert opened == ["http://127.0.0.1:7080/ui/#token=t"]
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    assert main(["ui", "--config", str(cfg), "--open"]) == 1
    assert "no web browser" in capsys.readouterr().err


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "node.toml")
    assert main(["ui", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "api.listen_tcp is not set" in err and str(cfg) in err
    assert main(["ui", "--config", str(tmp_path / "none.toml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such config file" in err
    zero = write_config(tmp_path / "zero.toml", listen_tcp="127.0.0.1:0", token="t")
    assert main(["ui", "--config", str(zero)]) == 1
    assert "port 0" in capsys.readouterr().err
