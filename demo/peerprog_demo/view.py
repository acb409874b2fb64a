"""What the demo shows while it runs: a live rich view on a terminal, plain lines otherwise.

The live view has one bar per node (level, bytes, rate, where the bytes came from), one for
the plain download, and the app's score per level as it arrives. The plain view prints one
line per event and a progress line every few seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from peerprog.cli.output import human_bytes
from peerprog_demo.monitor import NodeTrack, window_rate
from peerprog_demo.state import DemoState, Observation

PLAIN_TICK = 5.0


class View(Protocol):
    """How the orchestrator reports progress."""

    def start(self) -> None:
        """Begin showing."""

    def note(self, t: float, text: str) -> None:
        """A one-line event at ``t`` seconds."""

    def tick(self, t: float) -> None:
        """Called a few times a second while the swarm runs."""

    def stop(self) -> None:
        """Stop showing (the summary comes next)."""


def rate_text(rate: float) -> str:
    """``48.0 kB/s``."""
    return f"{rate / 1000:.1f} kB/s"


def sources_text(track: NodeTrack) -> str:
    """``seed 40% · peers 60%`` for an edge."""
    total = sum(track.by_source.values())
    if total <= 0:
        return ""
    names = {"seed": "seed", "peer": "peers", "web_seed": "web seeds"}
    parts = [
        f"{names.get(k, k)} {v / total:.0%}" for k, v in sorted(track.by_source.items()) if v > 0
    ]
    return " · ".join(parts)


def quality_text(obs: Observation) -> str:
    """``accuracy 97.2% · agreement 98.9% · weights' error 1.2e-03``."""
    error = f"weights' error {obs.rel_rms_error:.1e}" if obs.rel_rms_error else "exact weights"
    if obs.accuracy is not None and obs.agreement is not None:
        return f"accuracy {obs.accuracy:.1%} · agreement {obs.agreement:.1%} · {error}"
    return error


def seed_text(state: DemoState, track: NodeTrack) -> str:
    """The seed's upload so far against the model's size."""
    size = state.published.total_bytes
    return (
        f"uploaded {human_bytes(track.uploaded)} = {track.uploaded / max(1, size):.2f}× the model"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class PlainView:
    """One line per event on ``out``; a progress line every :data:`PLAIN_TICK` seconds."""

    def __init__(self, state: DemoState, out: TextIO | None = None) -> None:
        self.state = state
        self.out = out or sys.stdout
        self._next_tick = PLAIN_TICK

    def start(self) -> None:
        """Print what is about to race."""
        p = self.state.published
        n = len(self.state.monitor.edges)
        self._line(
            0.0,
            f"racing: {_count(n, 'edge')} fetch {p.name} ({human_bytes(p.total_bytes)} in "
            f"{p.levels_total} levels) from the seed{' and from each other' if n > 1 else ''}, "
            f"while a plain HTTP download fetches the {human_bytes(p.file_bytes)} file; every "
            f"link capped at {rate_text(self.state.rate)}",
        )

    def note(self, t: float, text: str) -> None:
        """Print one event line."""
        self._line(t, text)

    def tick(self, t: float) -> None:
        """Print a progress line every :data:`PLAIN_TICK` seconds."""
        if t < self._next_tick:
            return
        self._next_tick = t + PLAIN_TICK
        parts = []
        for track in self.state.monitor.edges:
            frac = track.bytes_received / max(1, track.bytes_total)
            parts.append(f"{track.name} L{track.level} {frac:.0%}")
        plain = self.state.plain
        parts.append(f"plain {plain.received / max(1, plain.total):.0%}")
        self._line(t, "progress: " + ", ".join(parts))

    def stop(self) -> None:
        """Flush the output."""
        self.out.flush()

    def _line(self, t: float, text: str) -> None:
        self.out.write(f"[{t:6.1f} s] {Text.from_markup(text).plain}\n")
        self.out.flush()


class LiveView:
    """A rich live view, redrawn several times a second, with events printed above it."""

    def __init__(self, state: DemoState, console: Console, clock: Callable[[], float]) -> None:
        self.state = state
        self.console = console
        self.clock = clock
        self.live = Live(console=console, get_renderable=self.render, auto_refresh=False)

    def start(self) -> None:
        """Show the live view."""
        self.live.start()

    def note(self, t: float, text: str) -> None:
        """Print one event line above the live view."""
        self.live.console.print(Text(f"{t:6.1f} s  ", style="dim") + Text.from_markup(text))

    def tick(self, t: float) -> None:
        """Redraw. Done here, in the event loop, rather than by rich's refresh thread: the
        view reads the state without locks."""
        self.live.refresh()

    def stop(self) -> None:
        """Draw the final state and leave it on the screen."""
        self.live.refresh()
        self.live.stop()

    def render(self) -> RenderableType:
        """The whole view as it is now."""
        s = self.state
        p = s.published
        now = self.clock()
        nodes = Table(
            title=(
                f"[b]{p.name}[/b]: {human_bytes(p.total_bytes)} in {p.levels_total} levels · "
                f"links capped at {rate_text(s.rate)} · t = {now:.1f} s"
            ),
            title_justify="left",
            expand=False,
            show_edge=False,
        )
        for col in ("node", "", "level", "bytes", "rate", "from / note"):
            nodes.add_column(col, no_wrap=True)
        for track in s.monitor.tracks.values():
            if track.role == "seed":
                bar = ProgressBar(
                    total=max(1, p.total_bytes),
                    completed=min(track.uploaded, p.total_bytes),
                    width=28,
                )
                nodes.add_row(
                    "seed",
                    bar,
                    "all",
                    human_bytes(p.total_bytes),
                    rate_text(track.upload_rate(now)) + " ↑",
                    seed_text(s, track),
                )
                continue
            total = max(1, track.bytes_total or p.total_bytes)
            done = "✓" if track.complete_at is not None else ""
            level = f"{track.level}/{p.levels_total - 1}" if track.level >= 0 else "–"
            app = " (app)" if track.name == s.app_edge else ""
            nodes.add_row(
                f"{track.name}{app}",
                ProgressBar(total=total, completed=track.bytes_received, width=28),
                f"{level} {done}",
                f"{human_bytes(track.bytes_received)}",
                rate_text(track.rate(now)),
                sources_text(track),
            )
        plain = s.plain
        note = (
            f"done in {plain.seconds:.1f} s"
            if plain.seconds is not None
            else "no model until the last byte"
        )
        nodes.add_row(
            "plain HTTP",
            ProgressBar(
                total=max(1, plain.total),
                completed=plain.received,
                width=28,
                complete_style="yellow",
            ),
            "–",
            human_bytes(plain.received),
            rate_text(window_rate(plain.history, now)) if plain.seconds is None else "",
            note,
        )
        scores = Table(
            title=f"app on {s.app_edge}: each level as it arrives",
            title_justify="left",
            show_edge=False,
        )
        scores.add_column("level", justify="right")
        scores.add_column("t", justify="right")
        if p.metric == "accuracy":
            scores.add_column("accuracy", justify="right")
            scores.add_column("agreement", justify="right")
        scores.add_column("weights' error", justify="right")
        for obs in s.observations:
            cells = [str(obs.level), f"{obs.t:.1f} s"]
            if p.metric == "accuracy":
                cells += [f"{obs.accuracy or 0:.1%}", f"{obs.agreement or 0:.1%}"]
            cells.append(f"{obs.rel_rms_error:.1e}" if obs.rel_rms_error else "0 (exact)")
            scores.add_row(*cells)
        return Group(nodes, Text(""), scores)


def make_view(state: DemoState, live: bool | None, clock: Callable[[], float]) -> View:
    """A live view if ``live`` (default: if stdout is a terminal), else a plain one."""
    if live is None:
        live = sys.stdout.isatty()
    if live:
        return LiveView(state, Console(), clock)
    return PlainView(state)
