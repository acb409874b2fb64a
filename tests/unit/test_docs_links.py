"""The user docs (README.md, docs/*.md): every relative link points at a file that exists,
and none mentions the internal design document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|\b(?:href|src)=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that are paths (not URLs, not anchors), outside
    code blocks."""
    text = FENCE.sub("", text)
    out = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue
        out.append(target)
    return out


def test_the_docs_are_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "config.md", "api.md", "systemd.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(doc: Path) -> None:
    broken = []
    for target in relative_links(doc.read_text()):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_user_doc_mentions_the_design_document(doc: Path) -> None:
    lines = [
        f"{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if "DESIGN.md" in line
    ]
    assert not lines, f"{doc.relative_to(ROOT)} mentions DESIGN.md (internal): {lines}"


def test_the_link_finder() -> None:
    text = (
        "[a](docs/a.md) [b](https://x.org/b.md) [c](#anchor) ![i](img/p.png)\n"
        '<a href="docs/d.md"><img src="docs/e.png"></a> [f](g.md#h)\n'
        "```\n[no](code.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "img/p.png", "docs/d.md", "docs/e.png", "g.md#h"]
