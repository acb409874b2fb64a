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
    ``[min_in_flight_per_peer, max_in_flight_per_peer]``.
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
        if self.max_in_flight_total < 1:
            raise ValueError("max_in_flight_total must be >= 1")
        if not 0 < self.request_timeout_min <= self.request_timeout_max:
            raise ValueError("need 0 < request_timeout_min <= request_timeout_max")
        if self.target_queue_seconds <= 0 or self.timeout_factor <= 0:
            raise ValueError("target_queue_seconds and timeout_factor must be > 0")
        if self.initial_timeout <= 0:
            raise ValueError("initial_timeout must be > 0")
        if self.endgame_chunks < 0:
            raise ValueError("endgame_chunks must be >= 0")
        if self.failure_backoff < 0 or self.failure_backoff_max < self.failure_backoff:
            raise ValueError("need 0 <= failure_backoff <= failure_backoff_max")
