"""docs/config.md is generated from the config dataclasses: it must match them."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path
from types import ModuleType

from peerprog.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"
COMMAND = "python scripts/gen_config_docs.py > docs/config.md"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_doc_is_generated_from_the_dataclasses() -> None:
    expected = generator().generate()
    actual = DOC.read_text() if DOC.exists() else ""
    assert actual == expected, (
        f"docs/config.md is out of date with peerprog/config.py: run {COMMAND}"
    )


def test_every_config_key_is_documented() -> None:
    gen = generator()
    hints = typing.get_type_hints(Config)
    text = DOC.read_text()
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        docs = gen.attribute_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{section.name}.{f.name} has no docstring"
            assert f"### `{section.name}.{f.name}`" in text


def test_no_config_docstring_points_at_internal_documents() -> None:
    gen = generator()
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        for key, doc in gen.attribute_docs(hints[section.name]).items():
            assert "DESIGN" not in doc, f"{section.name}.{key}: {doc}"
