"""The query of ``GET /v1/models/<name>/best``, parsed and checked (pure).

``min_level`` is a level number or ``max`` (the model's last level); ``wait`` is seconds
(a number ≥ 0, capped at :data:`MAX_WAIT`). Anything else is a :class:`BadRequest`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from peerprog.api.errors import BadRequest

MAX_WAIT = 3600.0
"""Longest long-poll, in seconds; a larger ``wait`` is cut to it."""

BEST_PARAMS = ("min_level", "wait")


@dataclass(frozen=True)
class BestQuery:
    """What a ``best`` request asks for."""

    min_level: int | None = None
    """The lowest level acceptable (None: any level; see :attr:`max_level`)."""
    max_level: bool = False
    """``min_level=max``: only the model's last level will do."""
    wait: float = 0.0
    """Seconds to wait for that level before answering 503."""

    def target(self, levels_total: int) -> int:
        """The lowest acceptable level of a model with ``levels_total`` levels."""
        if self.max_level:
            return levels_total - 1
        level = self.min_level or 0
        if level >= levels_total:
            raise BadRequest(
                f"min_level {level} is not a level of this model (it has levels "
                f"0–{levels_total - 1}; use min_level=max for the last)"
            )
        return level


def parse_best_query(items: Iterable[tuple[str, str]]) -> BestQuery:
    """Parse the query's (key, value) pairs; :class:`BadRequest` naming what is wrong."""
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in BEST_PARAMS:
            raise BadRequest(f"unknown parameter {key!r} (known: {', '.join(BEST_PARAMS)})")
        if key in seen:
            raise BadRequest(f"parameter {key!r} given twice")
        seen[key] = value
    min_level: int | None = None
    max_level = False
    if "min_level" in seen:
        text = seen["min_level"].strip()
        if text == "max":
            max_level = True
        else:
            min_level = parse_level(text)
    wait = parse_wait(seen["wait"]) if "wait" in seen else 0.0
    return BestQuery(min_level, max_level, wait)


def parse_level(text: str) -> int:
    """A level number ≥ 0; :class:`BadRequest` otherwise."""
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise BadRequest(f"min_level must be a level number or 'max', not {text[:40]!r}")
    return int(text)


def parse_wait(text: str) -> float:
    """Seconds ≥ 0, cut to :data:`MAX_WAIT`; :class:`BadRequest` otherwise."""
    try:
        wait = float(text)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, not {text[:40]!r}") from None
    if math.isnan(wait) or wait < 0:
        raise BadRequest(f"wait must be a number of seconds ≥ 0, not {text[:40]!r}")
    return min(wait, MAX_WAIT)
