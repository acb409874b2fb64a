"""Per-peer bookkeeping: requests in flight, throughput and latency estimates, failures.

Rate estimation (per peer) is a *delivery rate*, as in BBR: when a request is sent, it
remembers how many bytes the peer had delivered so far and since when we have been
measuring (the time of the peer's last delivery, or the send time if nothing was in flight).
When it completes, the sample is

    (bytes delivered now − bytes delivered at send) / (now − that start time)

For a lone request this is ``chunk bytes / (now − sent_at)``; with several requests in
flight it measures the peer's aggregate throughput rather than the per-request share, so
that a fast peer earns a deeper queue. Samples are smoothed by an EWMA. The latency
estimate is the shortest request (``now − sent_at``) the peer has served.

On a penalty (a transient failure or a timeout) the consecutive-failure count grows and the
peer backs off exponentially; a timeout also lowers its rate (to at most half). Failures of
requests sent before the peer's last penalty are the same episode and count once (a peer
that goes away fails all its requests at once: that is one failure, not sixteen). Whether
so many failures make the peer unhealthy is the peer table's call (``peertable.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.config import SchedulerConfig
from peerprog.swarm.request import Request

RATE_SMOOTHING = 0.3
"""EWMA weight of a new rate sample."""


@dataclass(frozen=True)
class PeerStats:
    """A snapshot of one peer's bookkeeping (:meth:`~peerprog.swarm.Scheduler.peer_stats`)."""

    rate_bytes_per_s: float | None
    """Estimated throughput from this peer; ``None`` before the first measurement."""

    bytes_received: int
    """Bytes of verified chunks received from this peer (for requests we made)."""

    chunks: int
    """Verified chunks received from this peer (for requests we made)."""

    failures: int
    """Consecutive failures (transient errors and timeouts) since its last good chunk."""

    in_flight: int
    """Requests to this peer in flight now."""

    budget: int
    """How many requests it may have in flight, from its rate."""

    latency: float | None
    """Shortest request it has served, in seconds; ``None`` before the first."""

    backoff_until: float | None
    """No new request to it before this time (after a failure); ``None`` if not backing off."""


def takes_more(in_flight: int, budget: int, config: SchedulerConfig, mean_chunk: float) -> bool:
    """Whether a peer with ``in_flight`` requests and ``budget`` is asked for more now: when
    it has none in flight, or when its free places hold ``refill_bytes`` (at most half its
    budget, at least one chunk). With small chunks a fast peer is then refilled in batches
    of adjacent chunks, which the driver sends as one range request each, instead of one
    chunk each time one lands; its queue never drops below half the budget, so its link
    stays busy. Chunks of ``refill_bytes`` or more are asked for as soon as a place is free."""
    batch = min(budget // 2, math.ceil(config.refill_bytes / max(1.0, mean_chunk)))
    return in_flight == 0 or budget - in_flight >= max(1, batch)


def min_budget(config: SchedulerConfig, mean_chunk: float) -> int:
    """The least number of requests a peer may have in flight (``min_queue_bytes``)."""
    want = math.ceil(config.min_queue_bytes / max(1.0, mean_chunk))
    return max(1, min(config.min_in_flight_per_peer, want))


@dataclass
class Flight:
    """A request in flight, with what the rate estimate needs when it completes."""

    request: Request
    size: int
    delivered: int
    since: float
    deadline: float = 0.0
    """When it times out: ``request.deadline``, pushed back by progress (``on_progress``)."""


class PeerState:
    """One peer as the scheduler sees it. Mutated only by the scheduler."""

    def __init__(self, name: str, have: Bitfield | None) -> None:
        self.name = name
        self.have = have
        """The chunks it announced (``None``: it has them all)."""
        self.in_flight: dict[int, Flight] = {}
        self.queued_bytes = 0
        self.rate: float | None = None
        self.latency: float | None = None
        self.bytes_received = 0
        self.chunks = 0
        self.failures = 0
        self.backoff_until: float | None = None
        self.origin = False
        """The model's origin (``Scheduler.add_peer``): with web seeds, the last resort."""
        self.slot_cap: int | None = None
        """Most requests it takes at once, learnt from its 503s (``Scheduler.on_busy``)."""
        self.mask = -1 if have is None else have.mask()
        """``have`` as an integer (``Bitfield.mask``; -1: every chunk), kept up to date by
        the scheduler."""
        self._budget_for: tuple[object, ...] = ()
        self._budget = 0
        self._since = -math.inf  # start of the current delivery-rate measurement
        self._penalised_at = -math.inf

    # -- queries ---------------------------------------------------------------------------

    def usable(self, now: float) -> bool:
        """May get new requests now (not backing off)."""
        return self.backoff_until is None or self.backoff_until <= now

    def has(self, index: int) -> bool:
        return self.have is None or index in self.have

    def budget(self, config: SchedulerConfig, mean_chunk: float) -> int:
        """How many requests it may have in flight: about ``target_queue_seconds`` of work."""
        key = (self.rate, self.slot_cap, mean_chunk, config)
        if key == self._budget_for:
            return self._budget
        self._budget_for, self._budget = key, self._compute_budget(config, mean_chunk)
        return self._budget

    def _compute_budget(self, config: SchedulerConfig, mean_chunk: float) -> int:
        floor = min_budget(config, mean_chunk)
        if self.rate is None:
            want = floor
        else:
            want = math.ceil(self.rate * config.target_queue_seconds / mean_chunk)
            want = max(floor, min(config.max_in_flight_per_peer, want))
        return want if self.slot_cap is None else max(1, min(want, self.slot_cap))

    def timeout(self, config: SchedulerConfig, queued_bytes: int) -> float:
        """How long to wait for a request that has ``queued_bytes`` (itself included) ahead."""
        if self.rate is None or self.rate <= 0:
            t = config.initial_timeout
        else:
            t = config.timeout_factor * queued_bytes / self.rate + (self.latency or 0.0)
        return max(config.request_timeout_min, min(config.request_timeout_max, t))

    def stats(self, config: SchedulerConfig, mean_chunk: float) -> PeerStats:
        return PeerStats(
            rate_bytes_per_s=self.rate,
            bytes_received=self.bytes_received,
            chunks=self.chunks,
            failures=self.failures,
            in_flight=len(self.in_flight),
            budget=self.budget(config, mean_chunk),
            latency=self.latency,
            backoff_until=self.backoff_until,
        )

    # -- events ----------------------------------------------------------------------------

    def send(self, index: int, size: int, now: float, config: SchedulerConfig) -> Request:
        """Record a new request in flight and return it (its deadline adapts to the rate)."""
        if index in self.in_flight:
            raise AssertionError(f"chunk {index} already in flight to {self.name}")
        if not self.in_flight:
            self._since = now  # idle until now: measure from here
        self.queued_bytes += size
        deadline = now + self.timeout(config, self.queued_bytes)
        request = Request(peer=self.name, index=index, sent_at=now, deadline=deadline)
        self.in_flight[index] = Flight(request, size, self.bytes_received, self._since, deadline)
        return request

    def finish(self, index: int) -> Flight | None:
        """Forget the request for ``index`` (any outcome); ``None`` if there is none."""
        flight = self.in_flight.pop(index, None)
        if flight is not None:
            self.queued_bytes -= flight.size
        return flight

    def delivered(self, flight: Flight, now: float) -> None:
        """A request completed with a good chunk: credit it and take a rate sample."""
        self.bytes_received += flight.size
        self.chunks += 1
        self.failures = 0
        if self.slot_cap is not None:
            self.slot_cap += 1  # probe for a free slot again, one request at a time
        elapsed = now - flight.since
        if elapsed > 0:
            sample = (self.bytes_received - flight.delivered) / elapsed
            if self.rate is None:
                self.rate = sample
            else:
                self.rate += RATE_SMOOTHING * (sample - self.rate)
        self._since = now
        duration = now - flight.request.sent_at
        if duration > 0 and (self.latency is None or duration < self.latency):
            self.latency = duration

    def penalise(
        self, flight: Flight, now: float, config: SchedulerConfig, *, timed_out: bool
    ) -> None:
        """A request failed or timed out: count it (once per episode) and back off."""
        if flight.request.sent_at < self._penalised_at:
            return  # same episode as the last penalty
        self._penalised_at = now
        self.failures += 1
        if timed_out:
            elapsed = now - flight.request.sent_at
            ceiling = flight.size / elapsed if elapsed > 0 else math.inf
            lowered = ceiling if self.rate is None else min(self.rate / 2, ceiling)
            if lowered < math.inf:
                self.rate = lowered
        backoff = config.failure_backoff * 2.0 ** (self.failures - 1)
        self.backoff_until = now + min(backoff, config.failure_backoff_max)
