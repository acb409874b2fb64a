"""A request for one chunk from one peer, as the scheduler hands it to the shell."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """Ask ``peer`` for chunk ``index``; the scheduler gives up on it at ``deadline``."""

    peer: str
    """The peer (the shell's name for it, e.g. its base URL)."""

    index: int
    """The chunk index (in the manifest's order)."""

    sent_at: float
    """The ``now`` at which the scheduler issued it."""

    deadline: float
    """When :meth:`~peerprog.swarm.Scheduler.handle_timer` times it out."""
