"""The scheduler's rules, one by one, with a fake clock (``now`` is just a float)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from peerprog.swarm import Bitfield, Request, Scheduler
from tests.unit.swarmkit import KIB, bits, make


def indices(requests: Sequence[Request]) -> list[int]:
    return sorted(r.index for r in requests)


def deliver_all(s: Scheduler, requests: Sequence[Request], now: float) -> None:
    for r in requests:
        s.on_chunk(r.peer, r.index, now)


# -- level order --------------------------------------------------------------------------


def test_no_level_1_request_while_level_0_missing_and_fetchable() -> None:
    s = make([4, 4], max_in_flight_per_peer=8, min_in_flight_per_peer=8, endgame_chunks=0)
    s.add_peer("seed", None, 0.0)
    first = s.next_requests(0.0)
    assert indices(first) == [0, 1, 2, 3]
    # Level 0 all in flight: still nothing from level 1.
    assert s.next_requests(0.1) == []
    deliver_all(s, first[:3], 0.5)
    assert s.next_requests(0.5) == []
    s.on_chunk("seed", first[3].index, 0.6)
    assert s.best_level == 0
    assert indices(s.next_requests(0.6)) == [4, 5, 6, 7]


def test_waits_for_a_backing_off_holder_of_a_level_0_chunk() -> None:
    s = make([4, 4], endgame_chunks=0, lookahead_levels=0)  # a strict barrier
    s.add_peer("a", bits(8, [0]), 0.0)
    s.add_peer("b", bits(8, [1, 2, 3, 4, 5, 6, 7]), 0.0)
    reqs = s.next_requests(0.0)
    assert {(r.peer, r.index) for r in reqs if r.peer == "a"} == {("a", 0)}
    s.on_failed("a", 0, 0.1)  # a backs off for failure_backoff = 1 s
    deliver_all(s, s.in_flight("b"), 0.2)
    more = s.next_requests(0.2)
    deliver_all(s, more, 0.3)
    assert s.have.indices() == [1, 2, 3]
    # Chunk 0 is held only by "a", which is backing off: b must not start level 1.
    assert s.next_requests(0.4) == []
    assert s.next_deadline() == pytest.approx(1.1)
    assert s.handle_timer(1.1) == []
    assert [(r.peer, r.index) for r in s.next_requests(1.1)] == [("a", 0)]


def test_level_with_no_holder_does_not_block_the_next() -> None:
    s = make([4, 4], endgame_chunks=0, min_in_flight_per_peer=8, max_in_flight_per_peer=8)
    s.add_peer("b", bits(8, [1, 2, 3, 4, 5, 6, 7]), 0.0)  # nobody has chunk 0
    first = s.next_requests(0.0)
    assert indices(first) == [1, 2, 3]  # level 0 first, as far as it is fetchable
    deliver_all(s, first, 1.0)
    assert s.active_level == 1
    assert indices(s.next_requests(1.0)) == [4, 5, 6, 7]
    # A holder of chunk 0 shows up: back to level 0 at once.
    s.add_peer("a", bits(8, [0, 4, 5, 6, 7]), 1.5)
    assert s.active_level == 0
    assert [(r.peer, r.index) for r in s.next_requests(1.5)] == [("a", 0)]


# -- rarest first -------------------------------------------------------------------------


def test_rarest_first_and_peer_choice() -> None:
    s = make([6], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("a", Bitfield.full(6), 0.0)
    s.add_peer("b", bits(6, [0, 1, 2]), 0.0)
    s.add_peer("c", bits(6, [0, 1]), 0.0)
    got = {r.peer: r.index for r in s.next_requests(0.0)}
    assert got["a"] in (3, 4, 5)  # rarity 1: only "a" has them
    assert got["b"] == 2  # rarity 2
    assert got["c"] in (0, 1)  # rarity 3


def test_rarity_follows_peers_coming_and_going() -> None:
    s = make([6], min_in_flight_per_peer=3, max_in_flight_per_peer=3, endgame_chunks=0)
    s.add_peer("b", bits(6, [0, 1, 2]), 0.0)
    s.add_peer("a", Bitfield.full(6), 0.0)
    s.add_peer("x", bits(6, [0, 1, 2]), 0.0)
    s.remove_peer("b", 0.0)
    s.remove_peer("x", 0.0)
    s.add_peer("b", bits(6, [0, 1, 2]), 0.0)
    s.add_peer("c", bits(6, [0, 1, 2]), 0.0)
    # Rarity: 0..2 held by three peers, 3..5 by "a" only.
    got = s.next_requests(0.0)
    assert indices([r for r in got if r.peer == "a"]) == [3, 4, 5]


def test_ties_broken_per_seed() -> None:
    def first_picks(seed: int) -> list[int]:
        s = make([64], seed=seed, min_in_flight_per_peer=4, max_in_flight_per_peer=4)
        s.add_peer("seed", None, 0.0)
        return [r.index for r in s.next_requests(0.0)]

    assert first_picks(7) == first_picks(7)
    assert len({tuple(first_picks(seed)) for seed in range(5)}) > 1


# -- more in flight to faster peers, adaptive timeouts -------------------------------------


def test_more_in_flight_to_a_faster_peer() -> None:
    s = make([200], endgame_chunks=0)
    s.add_peer("fast", None, 0.0)
    s.add_peer("slow", None, 0.0)
    first = s.next_requests(0.0)
    assert len(s.in_flight("fast")) == len(s.in_flight("slow")) == 2
    deliver_all(s, [r for r in first if r.peer == "fast"], 0.05)  # ~10 MB/s
    deliver_all(s, [r for r in first if r.peer == "slow"], 2.5)  # ~200 KB/s
    s.next_requests(2.5)
    fast, slow = s.peer_stats("fast"), s.peer_stats("slow")
    assert fast.rate_bytes_per_s is not None and slow.rate_bytes_per_s is not None
    assert fast.rate_bytes_per_s > 20 * slow.rate_bytes_per_s
    assert fast.budget == 16 and slow.budget == 2
    assert len(s.in_flight("fast")) == 16 and len(s.in_flight("slow")) == 2
    assert fast.chunks == 2 and fast.bytes_received == 2 * 256 * KIB


def test_total_in_flight_is_capped() -> None:
    s = make([200], min_in_flight_per_peer=16, max_in_flight_per_peer=16, max_in_flight_total=20)
    for p in "abc":
        s.add_peer(p, None, 0.0)
    assert len(s.next_requests(0.0)) == 20
    assert s.next_requests(0.1) == []


def test_stalled_request_goes_to_another_peer() -> None:
    s = make([1], endgame_chunks=0)
    s.add_peer("a", None, 0.0)
    s.add_peer("b", None, 0.0)
    (first,) = s.next_requests(0.0)
    assert first.deadline == pytest.approx(15.0)  # initial_timeout: not measured yet
    assert s.next_deadline() == first.deadline
    assert s.handle_timer(first.deadline - 0.01) == []
    assert s.handle_timer(first.deadline) == [first]
    assert s.in_flight() == []
    assert s.peer_stats(first.peer).failures == 1
    (second,) = s.next_requests(first.deadline)
    assert second.index == first.index and second.peer != first.peer
    # Late arrival from the first peer still counts, and cancels the second request.
    assert s.on_chunk(first.peer, first.index, 16.0) == [second]
    assert s.complete


def test_timeout_adapts_to_the_peer_rate() -> None:
    s = make([3], size=100_000, min_in_flight_per_peer=1, max_in_flight_per_peer=1,
             request_timeout_min=0.01)  # fmt: skip
    s.add_peer("a", None, 0.0)
    s.add_peer("b", None, 0.0)
    by_peer = {r.peer: r for r in s.next_requests(0.0)}
    s.on_chunk("a", by_peer["a"].index, 0.1)  # 1 MB/s
    (last,) = s.next_requests(0.1)
    assert last.peer == "a"
    s.on_chunk("b", by_peer["b"].index, 0.5)  # 200 KB/s
    (dup,) = s.next_requests(0.5)  # end game: the same chunk from b
    assert dup.index == last.index and dup.peer == "b"
    fast_wait = last.deadline - last.sent_at
    slow_wait = dup.deadline - dup.sent_at
    assert fast_wait == pytest.approx(4 * 0.1 + 0.1)
    assert slow_wait == pytest.approx(4 * 0.5 + 0.5)
    assert slow_wait > fast_wait


def test_timeout_lowers_the_rate_and_lengthens_the_next_deadline() -> None:
    s = make([10], size=100_000, min_in_flight_per_peer=1, max_in_flight_per_peer=1)
    s.add_peer("a", None, 0.0)
    (r,) = s.next_requests(0.0)
    s.on_chunk("a", r.index, 0.1)  # 1 MB/s
    (r,) = s.next_requests(0.1)
    assert r.deadline - r.sent_at == pytest.approx(2.0)  # 0.5 s, raised to the floor
    assert s.handle_timer(r.deadline) == [r]
    rate = s.peer_stats("a").rate_bytes_per_s
    assert rate is not None and rate <= 50_000  # at most what it showed: 100 KB in 2 s
    (again,) = s.next_requests(r.deadline + 1.0)  # after the backoff
    assert again.deadline - again.sent_at > 4.0


# -- end game -----------------------------------------------------------------------------


def test_end_game_duplicates_and_cancels() -> None:
    s = make([6], min_in_flight_per_peer=4, max_in_flight_per_peer=4)
    s.add_peer("a", None, 0.0)
    s.add_peer("b", None, 0.0)
    first = s.next_requests(0.0)
    assert len(first) == 6  # all six in flight, three each: too many for the end game
    a_reqs = [r for r in first if r.peer == "a"]
    b_reqs = [r for r in first if r.peer == "b"]
    assert len(a_reqs) == len(b_reqs) == 3
    deliver_all(s, a_reqs[:2], 1.0)
    # Four left, all in flight: each may go to the other peer too.
    dups = s.next_requests(1.0)
    assert len(dups) == 4  # a has three free slots, b one
    assert {r.index for r in dups if r.peer == "a"} == {r.index for r in b_reqs}
    assert [r.index for r in dups if r.peer == "b"] == [a_reqs[2].index]
    per_chunk: dict[int, set[str]] = {}
    for r in s.in_flight():
        per_chunk.setdefault(r.index, set()).add(r.peer)
    assert all(len(peers) <= 2 for peers in per_chunk.values())
    # The first copy to arrive wins; the other is returned for cancelling.
    dup = next(r for r in dups if r.peer == "a")
    original = next(r for r in b_reqs if r.index == dup.index)
    assert s.on_chunk("b", dup.index, 1.2) == [dup]
    assert dup not in s.in_flight() and original not in s.in_flight()
    assert s.on_chunk("a", dup.index, 1.3) == []  # late copy: harmless
    assert s.peer_stats("a").chunks == 2


def test_no_end_game_with_one_peer() -> None:
    s = make([2])
    s.add_peer("a", None, 0.0)
    assert len(s.next_requests(0.0)) == 2
    assert s.next_requests(0.1) == []


# -- bans, removal, failures --------------------------------------------------------------


def test_bad_chunk_bans_the_peer_for_good() -> None:
    s = make([8], endgame_chunks=0)
    s.add_peer("evil", None, 0.0)
    s.add_peer("good", None, 0.0)
    reqs = s.next_requests(0.0)
    evil = [r for r in reqs if r.peer == "evil"]
    cancelled = s.on_bad_chunk("evil", evil[0].index, 0.5)
    assert cancelled == evil[1:]
    assert s.banned == frozenset({"evil"})
    assert s.peers() == ["good"]
    assert s.in_flight("evil") == []
    s.add_peer("evil", None, 1.0)  # ignored
    s.set_have("evil", Bitfield.full(8), 1.0)  # ignored
    assert s.peers() == ["good"]
    t = 1.0
    for _ in range(20):
        assert all(r.peer == "good" for r in s.next_requests(t))
        deliver_all(s, s.in_flight(), t + 0.1)
        t += 0.2
    assert s.complete
    assert s.peer_stats("good").chunks == 8


def test_remove_peer_reschedules_its_chunks() -> None:
    s = make([4], endgame_chunks=0)
    s.add_peer("a", None, 0.0)
    a_reqs = s.next_requests(0.0)
    assert len(a_reqs) == 2
    s.add_peer("b", None, 0.1)
    b_reqs = s.next_requests(0.1)
    assert len(b_reqs) == 2
    deliver_all(s, b_reqs, 0.5)
    assert s.remove_peer("a", 0.6) == a_reqs
    assert s.peers() == ["b"]
    assert indices(s.next_requests(0.6)) == indices(a_reqs)
    assert s.remove_peer("nobody", 0.7) == []


def test_failure_backoff_then_retry() -> None:
    s = make([2], min_in_flight_per_peer=1, max_in_flight_per_peer=1)
    s.add_peer("a", None, 0.0)
    (r,) = s.next_requests(0.0)
    s.on_failed("a", r.index, 0.0)
    assert s.peer_stats("a").backoff_until == 1.0
    assert s.next_requests(0.5) == []
    assert s.next_deadline() == 1.0
    s.handle_timer(1.0)
    (r,) = s.next_requests(1.0)
    assert r.index == 0 or r.index == 1
    s.on_failed("a", r.index, 1.0)  # second failure: backoff 2 s
    assert s.peer_stats("a").backoff_until == 3.0
    assert s.next_requests(2.9) == []
    (r,) = s.next_requests(3.0)
    s.on_failed("a", r.index, 3.0)
    assert s.failures("a") == 3  # the peer table's to judge; the scheduler keeps it
    assert s.peers() == ["a"]
    s.remove_peer("a", 3.5)  # the shell let it go; later it comes back: a fresh start
    s.add_peer("a", None, 20.0)
    assert s.failures("a") == 0
    (r,) = s.next_requests(20.0)
    s.on_chunk("a", r.index, 20.5)
    assert s.have.indices() == [r.index]


def test_success_resets_the_failure_count() -> None:
    s = make([4], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("a", None, 0.0)
    (r,) = s.next_requests(0.0)
    s.on_failed("a", r.index, 0.0)
    (r,) = s.next_requests(1.0)
    s.on_chunk("a", r.index, 1.5)
    assert s.peer_stats("a").failures == 0


def test_failures_of_one_episode_count_once() -> None:
    s = make([8], min_in_flight_per_peer=4, max_in_flight_per_peer=4)
    s.add_peer("a", None, 0.0)
    reqs = s.next_requests(0.0)
    assert len(reqs) == 4
    for r in reqs:  # the peer went away: all four fail together
        s.on_failed("a", r.index, 0.2)
    assert s.peer_stats("a").failures == 1 == s.failures("a")


def test_a_peer_that_failed_a_chunk_is_not_asked_again_while_another_holder_is_left() -> None:
    s = make([2], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0,
             failure_backoff=0.0)  # fmt: skip
    s.add_peer("a", None, 0.0)
    s.add_peer("b", None, 0.0)
    reqs = {r.peer: r.index for r in s.next_requests(0.0)}
    s.on_failed("a", reqs["a"], 0.1)
    s.on_chunk("b", reqs["b"], 0.2)
    (r,) = s.next_requests(0.2)  # a is free, but failed the only chunk left: b gets it
    assert (r.peer, r.index) == ("b", reqs["a"])
    s.on_failed("b", r.index, 0.3)  # now every holder failed it: both may be asked again
    again = s.next_requests(0.3)
    assert [x.index for x in again] == [reqs["a"]]


# -- held chunks, completion --------------------------------------------------------------


def test_completion_and_best_level() -> None:
    s = make([2, 2, 2], have=[0, 1, 4])
    assert s.best_level == 0 and not s.complete
    assert s.level_complete(0) and not s.level_complete(1) and not s.level_complete(2)
    assert s.have.indices() == [0, 1, 4]
    s.add_peer("a", None, 0.0)
    reqs = s.next_requests(0.0)
    assert indices(reqs) == [2, 3]
    s.on_chunk("a", 2, 0.1)
    assert s.best_level == 0
    s.on_chunk("a", 3, 0.2)
    assert s.best_level == 1
    assert s.mark_have(5, 0.3) == []
    assert s.best_level == 2 and s.complete
    assert s.next_requests(0.4) == [] and s.next_deadline() is None


def test_empty_model_is_complete() -> None:
    s = Scheduler([], [])
    assert s.complete and s.best_level == -1


def test_mark_have_cancels_requests_in_flight() -> None:
    s = make([4])
    s.add_peer("a", None, 0.0)
    reqs = s.next_requests(0.0)
    assert s.mark_have(reqs[0].index, 0.1) == [reqs[0]]
    assert s.in_flight() == reqs[1:]


def test_on_chunk_is_harmless_when_held_or_unrequested() -> None:
    s = make([4], endgame_chunks=0)
    s.add_peer("a", None, 0.0)
    (r1, r2) = s.next_requests(0.0)
    s.on_chunk("a", r1.index, 0.5)
    assert s.on_chunk("a", r1.index, 0.6) == []  # already held
    assert s.peer_stats("a").chunks == 1
    spare = next(i for i in range(4) if i not in (r1.index, r2.index))
    assert s.on_chunk("a", spare, 0.7) == []  # verified but never asked: taken, not credited
    assert spare in s.have and s.peer_stats("a").chunks == 1
    assert s.on_chunk("stranger", r2.index, 0.8) == [r2]
    s.on_failed("a", 99, 0.9)  # no such request: ignored
    assert s.peer_stats("a").failures == 0


def test_set_have_updates_rarity_and_bad_sizes_are_refused() -> None:
    s = make([4], min_in_flight_per_peer=1, max_in_flight_per_peer=1)
    s.add_peer("a", bits(4, []), 0.0)
    assert s.next_requests(0.0) == []
    s.set_have("a", bits(4, [2]), 0.5)
    assert [r.index for r in s.next_requests(0.5)] == [2]
    with pytest.raises(ValueError):
        s.set_have("a", Bitfield(5), 0.6)
    with pytest.raises(ValueError):
        Scheduler([range(0, 2), range(3, 4)], [1, 1, 1, 1])
