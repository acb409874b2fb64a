"""Issue 12's edge-side rules, with a fake clock: pushed haves, the resumable have stream,
the soft level barrier, progress-based timeouts and the byte floor of a peer's budget."""

from __future__ import annotations

import pytest

from peerprog.swarm import Scheduler
from peerprog.swarm.havelog import HaveLog, apply
from tests.unit.swarmkit import KIB, MIB, bits, make, pairs

# -- pushed have deltas --------------------------------------------------------------------


def test_push_arriving_mid_request_is_used_at_once() -> None:
    s = make([4], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("seed", None, 0.0)
    s.add_peer("a", bits(4, []), 0.0)
    (first,) = s.next_requests(0.0)
    assert first.peer == "seed"
    assert s.next_requests(0.1) == []  # the seed is busy, a holds nothing
    s.add_have("a", first.index, 0.2)  # a got the chunk in flight: no second request
    assert s.next_requests(0.2) == []
    other = next(i for i in range(4) if i != first.index)
    s.add_have("a", other, 0.3)  # the push makes a chunk fetchable from a, mid-request
    assert pairs(s.next_requests(0.3)) == {("a", other)}


def test_push_counts_towards_rarity() -> None:
    s = make([3], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("a", bits(3, [0, 1, 2]), 0.0)
    s.add_peer("b", bits(3, [0, 1]), 0.0)
    s.add_have("b", 2, 0.0)
    s.add_have("c", 2, 0.0)  # unknown: ignored
    s.add_peer("c", bits(3, [0]), 0.0)
    # 0 is held by three peers, 1 and 2 by two: a and b are asked for the rarer 1 and 2.
    got = pairs(s.next_requests(0.0))
    assert ("c", 0) in got and {i for p, i in got if p != "c"} == {1, 2}


def test_push_ignored_for_seeds_and_checked() -> None:
    s = make([2])
    s.add_peer("seed", None, 0.0)
    s.add_have("seed", 1, 0.0)  # it holds every chunk already
    s.add_peer("a", bits(2, []), 0.0)
    with pytest.raises(ValueError):
        s.add_have("a", 2, 0.0)


# -- the have stream resumes ---------------------------------------------------------------


def test_reconnect_resumes_from_sequence_number() -> None:
    log = HaveLog(8, [3], epoch="e1")
    assert log.seq == 1
    assert log.add(5) == 2 and log.add(5) is None
    first = log.since("e1", 0)
    assert first.added == (3, 5) and first.seq == 2 and first.full is None
    s = make([8], min_in_flight_per_peer=8, max_in_flight_per_peer=8)
    s.add_peer("a", bits(8, []), 0.0)
    apply(s, "a", first, 0.0)
    # The stream breaks; a verifies two more chunks; the reconnect asks since=e1:2.
    log.add(1)
    log.add(7)
    resumed = log.since("e1", first.seq)
    assert resumed.added == (1, 7) and resumed.seq == 4
    apply(s, "a", resumed, 1.0)
    assert sorted(r.index for r in s.next_requests(1.0)) == [1, 3, 5, 7]
    # A since from another life of the log (the node restarted), or ahead of it: all of it.
    for epoch, seq in (("e0", 2), ("e1", 9)):
        reset = log.since(epoch, seq)
        assert reset.added == () and reset.full == bits(8, [1, 3, 5, 7])


# -- soft level barrier --------------------------------------------------------------------


def soft(lookahead: int) -> Scheduler:
    s = make(
        [2, 3],
        min_in_flight_per_peer=2,
        max_in_flight_per_peer=2,
        endgame_chunks=0,
        lookahead_levels=lookahead,
    )
    s.add_peer("a", bits(5, [0, 1]), 0.0)  # busy with level 0
    s.add_peer("b", bits(5, [2, 3, 4]), 0.0)  # holds only level 1
    return s


def test_soft_barrier_starts_next_level_on_idle_peers() -> None:
    s = soft(1)
    first = s.next_requests(0.0)
    level0 = {("a", 0), ("a", 1)}
    assert pairs(first) >= level0
    ahead = pairs(first) - level0
    assert len(ahead) == 2 and all(p == "b" and i in (2, 3, 4) for p, i in ahead)


def test_soft_barrier_uses_a_peer_with_nothing_of_the_active_level() -> None:
    s = make(
        [3, 2],
        min_in_flight_per_peer=1,
        max_in_flight_per_peer=1,
        endgame_chunks=0,
        lookahead_levels=1,
    )
    s.add_peer("a", bits(5, [0, 1, 2]), 0.0)  # one request at a time: 2 of level 0 wait
    s.add_peer("b", bits(5, [3, 4]), 0.0)  # nothing of level 0
    got = pairs(s.next_requests(0.0))
    assert {p for p, _ in got} == {"a", "b"}
    assert all(i < 3 for p, i in got if p == "a") and all(i >= 3 for p, i in got if p == "b")


def test_strict_barrier_without_lookahead() -> None:
    s = soft(0)
    assert pairs(s.next_requests(0.0)) == {("a", 0), ("a", 1)}


def test_soft_barrier_never_shares_a_link_with_the_active_level() -> None:
    s = make(
        [2, 2],
        min_in_flight_per_peer=4,
        max_in_flight_per_peer=4,
        endgame_chunks=0,
        lookahead_levels=1,
    )
    s.add_peer("seed", None, 0.0)
    # The seed has room for four, but carries level 0: level 1 waits for it.
    assert sorted(r.index for r in s.next_requests(0.0)) == [0, 1]
    s.on_chunk("seed", 0, 0.5)
    assert s.next_requests(0.5) == []
    s.on_chunk("seed", 1, 0.6)
    assert sorted(r.index for r in s.next_requests(0.6)) == [2, 3]


def test_soft_barrier_level_order_still_first() -> None:
    s = soft(1)
    first = s.next_requests(0.0)
    s.on_failed("a", 0, 0.1)  # chunk 0 is back in the pool, a backs off
    s.add_peer("c", bits(5, [0]), 0.1)
    assert pairs(s.next_requests(0.1)) == {("c", 0)}
    assert len(first) == 4


# -- progress keeps a moving transfer alive ------------------------------------------------


def test_progress_defers_the_timeout_until_a_stall() -> None:
    s = make([2], initial_timeout=15.0, stall_timeout=5.0)
    s.add_peer("a", bits(2, [0, 1]), 0.0)
    reqs = s.next_requests(0.0)
    assert {r.deadline for r in reqs} == {15.0}
    s.on_progress("a", reqs[0].index, 14.0)
    assert [r.index for r in s.handle_timer(15.0)] == [reqs[1].index]
    assert s.handle_timer(18.9) == []  # progress at 14: alive until 19
    s.on_progress("a", reqs[0].index, 18.0)
    assert s.handle_timer(19.0) == []
    assert [r.index for r in s.handle_timer(23.0)] == [reqs[0].index]  # stalled 5 s


def test_progress_never_shortens_a_deadline() -> None:
    s = make([1], initial_timeout=15.0, stall_timeout=5.0)
    s.add_peer("a", bits(1, [0]), 0.0)
    assert len(s.next_requests(0.0)) == 1
    s.on_progress("a", 0, 1.0)
    s.on_progress("b", 0, 1.0)  # unknown: ignored
    assert s.next_deadline() == 15.0


# -- the floor of a peer's budget is counted in bytes --------------------------------------


@pytest.mark.parametrize(("size", "floor"), [(256 * KIB, 2), (1 * MIB, 2), (4 * MIB, 1)])
def test_budget_floor_by_chunk_size(size: int, floor: int) -> None:
    s = make([8], size=size)
    s.add_peer("a", bits(8, range(8)), 0.0)
    assert len(s.next_requests(0.0)) == floor
    assert s.peer_stats("a").budget == floor


# -- a peer whose upload slots are full declines ---------------------------------------------


def test_busy_peer_is_not_judged_and_the_chunk_goes_elsewhere() -> None:
    s = make([2], min_in_flight_per_peer=1, max_in_flight_per_peer=1, busy_backoff=0.5)
    s.add_peer("a", bits(2, [0, 1]), 0.0)
    (r,) = s.next_requests(0.0)
    s.on_busy("a", r.index, 0.1)
    assert s.peer_stats("a").failures == 0 and s.next_requests(0.2) == []  # backing off
    s.add_peer("b", bits(2, [0, 1]), 0.3)
    assert {q.peer for q in s.next_requests(0.3)} == {"b"}
    assert any(q.peer == "a" for q in s.next_requests(0.6))  # a is asked again


def test_busy_peer_retry_after_is_honoured() -> None:
    s = make([2], min_in_flight_per_peer=1, max_in_flight_per_peer=1, busy_backoff=0.5)
    s.add_peer("a", bits(2, [0, 1]), 0.0)
    (r,) = s.next_requests(0.0)
    s.on_busy("a", r.index, 0.0, retry_after=3.0)
    assert s.next_requests(2.9) == [] and len(s.next_requests(3.0)) == 1


def test_busy_peer_with_our_requests_in_flight_is_capped_not_shunned() -> None:
    s = make([8], min_in_flight_per_peer=4, max_in_flight_per_peer=4)
    s.add_peer("a", bits(8, range(8)), 0.0)
    reqs = s.next_requests(0.0)
    assert len(reqs) == 4
    s.on_busy("a", reqs[3].index, 0.1, retry_after=5.0)  # it takes three at once
    assert s.peer_stats("a").backoff_until is None
    assert s.next_requests(0.1) == []  # three in flight: the cap
    s.on_chunk("a", reqs[0].index, 0.2)
    assert len(s.next_requests(0.2)) == 2  # one more than before: probing for a slot
