"""Tunables of the swarm scheduler. Times are in seconds, sizes in bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """Settings of one :class:`~peerprog.swarm.Scheduler`; the defaults suit 256 KiB chunks."""

    min_in_flight_per_peer: int = 2
    """
    Requests a peer may have in flight before its rate is measured, and the least it gets
    afterwards.
    """

    min_queue_bytes: int = 2 * 1024 * 1024
    """
    Lowers the floor above for big chunks: the least a peer gets is
    ``ceil(min_queue_bytes / mean chunk size)`` requests, at most ``min_in_flight_per_peer``
    and at least 1. With chunks up to 1 MiB the floor is ``min_in_flight_per_peer`` (2);
    with chunks of a few MiB it is 1, so that a peer whose upload is shared by many
    requesters sends each of them one chunk at a time (the first arrives in half the time)
    instead of two at half speed.
    """

    refill_bytes: int = 2 * 1024 * 1024
    """
    A peer with requests in flight is asked for more once its free places hold this many
    bytes (at most half its budget): with small chunks, requests then come in runs of
    adjacent chunks, one range request each, rather than one request per chunk (the
    per-request cost dominates a fast link's 256 KiB chunk); with chunks this big or
    bigger, each free place is filled at once (``peers.takes_more``).
    """

    max_in_flight_per_peer: int = 16
    """
    Most requests in flight to one peer, however fast it is.
    """

    max_in_flight_total: int = 64
    """
    Most requests in flight to all peers together (for this model).
    """

    target_queue_seconds: float = 1.0
    """
    How much work to queue at a peer: its budget of requests in flight is
    ``ceil(rate × target_queue_seconds / mean chunk size)``, clamped to
    ``[floor, max_in_flight_per_peer]`` (the floor: see ``min_queue_bytes``).
    """

    request_timeout_min: float = 2.0
    """
    Floor of the adaptive request timeout.
    """

    request_timeout_max: float = 60.0
    """
    Ceiling of the adaptive request timeout.
    """

    timeout_factor: float = 4.0
    """
    A request times out after ``timeout_factor × queued bytes / rate + latency`` (clamped to
    the two bounds above), where *queued bytes* are the bytes of this peer's requests in
    flight including this one, *rate* the peer's measured throughput and *latency* the
    shortest request it has served.
    """

    stall_timeout: float = 5.0
    """
    A request whose bytes are arriving (``Scheduler.on_progress``) times out only once no
    byte has arrived for this long (or at its first deadline, whichever is later): a slow
    but moving transfer is not thrown away, a stalled one is.
    """

    initial_timeout: float = 15.0
    """
    Timeout of requests to a peer whose rate has not been measured yet (clamped to the two
    bounds above). Generous, so that a slow link is measured rather than timed out.
    """

    endgame_chunks: int = 4
    """
    End game: once every fetchable missing chunk of the current level is in flight and at
    most this many are, each may also be requested from a second, different peer.
    """

    lookahead_levels: int = 5
    """
    Soft level barrier (the picker's rule 1): a free peer with nothing of the active level
    to give and no active-level request in flight is asked for chunks of this many
    following levels. 0: a strict barrier. Simulated at 1,000 edges (``bench/SIM_NOTES.md``,
    defaults study), 5 against 0: exact 27% sooner, the origin's upload 1.08 instead of
    1.44 times the model, level 0 11% later.
    """

    busy_backoff: float = 0.5
    """
    After a peer declined a request because its upload slots are full (``on_busy``), no
    request to it for this long. Not a failure.
    """

    failure_backoff: float = 1.0
    """
    Backoff after a transient failure: no request to the peer for
    ``failure_backoff × 2 ** (consecutive failures - 1)`` seconds, capped at
    ``failure_backoff_max``.
    """

    failure_backoff_max: float = 30.0
    """
    Cap of the failure backoff.
    """

    def __post_init__(self) -> None:
        if not 1 <= self.min_in_flight_per_peer <= self.max_in_flight_per_peer:
            raise ValueError("need 1 <= min_in_flight_per_peer <= max_in_flight_per_peer")
        if self.min_queue_bytes < 0 or self.refill_bytes < 0:
            raise ValueError("min_queue_bytes and refill_bytes must be >= 0")
        if self.max_in_flight_total < 1:
            raise ValueError("max_in_flight_total must be >= 1")
        if not 0 < self.request_timeout_min <= self.request_timeout_max:
            raise ValueError("need 0 < request_timeout_min <= request_timeout_max")
        if self.target_queue_seconds <= 0 or self.timeout_factor <= 0:
            raise ValueError("target_queue_seconds and timeout_factor must be > 0")
        if self.stall_timeout <= 0:
            raise ValueError("stall_timeout must be > 0")
        if self.initial_timeout <= 0:
            raise ValueError("initial_timeout must be > 0")
        if self.endgame_chunks < 0:
            raise ValueError("endgame_chunks must be >= 0")
        if self.lookahead_levels < 0:
            raise ValueError("lookahead_levels must be >= 0")
        if self.busy_backoff < 0:
            raise ValueError("busy_backoff must be >= 0")
        if self.failure_backoff < 0 or self.failure_backoff_max < self.failure_backoff:
            raise ValueError("need 0 <= failure_backoff <= failure_backoff_max")
