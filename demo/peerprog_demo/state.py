"""What the demo knows while it runs, shared by the orchestrator, the view and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from peerprog_demo.baseline import PlainDownload
from peerprog_demo.monitor import Monitor
from peerprog_demo.prepare import Published


@dataclass(frozen=True)
class Observation:
    """One model the app scored: seen ``t`` seconds after the start."""

    t: float
    level: int
    levels_total: int
    exact: bool
    accuracy: float | None
    agreement: float | None
    rel_rms_error: float

    @classmethod
    def from_line(cls, t: float, line: str) -> Observation | None:
        """Parse one line the app printed; None if it is not one of its JSON lines."""
        try:
            d = json.loads(line)
            return cls(
                t=t,
                level=int(d["level"]),
                levels_total=int(d["levels_total"]),
                exact=bool(d["exact"]),
                accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
                agreement=None if d.get("agreement") is None else float(d["agreement"]),
                rel_rms_error=float(d["rel_rms_error"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class DemoState:
    """Everything measured so far."""

    published: Published
    monitor: Monitor
    plain: PlainDownload
    rate: int
    app_edge: str
    observations: list[Observation] = field(default_factory=list)
    app_done: bool = False
