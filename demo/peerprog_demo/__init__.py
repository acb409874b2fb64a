"""``peerprog demo``: a model becoming useful long before its download ends, delivered by
peers rather than by the server alone.

One command publishes a model into a temporary seed store, starts a seed and a few edge
daemons as real processes on loopback with capped links, runs an app on one edge that
evaluates every level as it arrives (:mod:`peerprog_demo.app`), times a plain HTTP download
of the same file over the same cap (:mod:`peerprog_demo.baseline`), shows it all live
(:mod:`peerprog_demo.view`) and writes a report with a chart (:mod:`peerprog_demo.report`).

The modules, one job each:

* :mod:`~peerprog_demo.cli` — the ``demo`` sub-command's options;
* :mod:`~peerprog_demo.run` — the orchestration, and clean shutdown on Ctrl-C or failure;
* :mod:`~peerprog_demo.prepare` — key, publish, per-level quality of the published model;
* :mod:`~peerprog_demo.swarm` — node configs and daemon processes;
* :mod:`~peerprog_demo.monitor` — polling the nodes' local APIs into timelines;
* :mod:`~peerprog_demo.baseline`, :mod:`~peerprog_demo.app`, :mod:`~peerprog_demo.view`,
  :mod:`~peerprog_demo.report` — as above; :mod:`~peerprog_demo.follow` — the same timelines
  for ``daemon/testbed.sh``;
* :mod:`~peerprog_demo.quality` — accuracy / agreement, or relative RMS error of weights;
* :mod:`~peerprog_demo.options`, :mod:`~peerprog_demo.state`, :mod:`~peerprog_demo.localapi`
  — the settings, what a run has measured so far, the ``/metrics`` reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peerprog_demo.options import DemoOptions
    from peerprog_demo.run import DemoFailed, run_demo

__all__ = ["DemoFailed", "DemoOptions", "run_demo"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``peerprog --help`` (which imports :mod:`peerprog_demo.cli`) stays quick.
    if name == "DemoOptions":
        from peerprog_demo.options import DemoOptions

        return DemoOptions
    if name in ("DemoFailed", "run_demo"):
        from peerprog_demo import run

        return getattr(run, name)
    raise AttributeError(f"module 'peerprog_demo' has no attribute {name!r}")
