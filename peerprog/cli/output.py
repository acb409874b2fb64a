"""Small helpers for CLI output: JSON, byte sizes."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def human_bytes(n: float) -> str:
    """``1.5 MiB`` style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
