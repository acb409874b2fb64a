"""The rules that spread a model through a large swarm, with a fake clock: the origin as
the last resort, the shell's hints (``add_have``'s answer, a declined run), and the seed's
spreaders first (``seeding.py``, rule 6)."""

from __future__ import annotations

from typing import Any

from peerprog.swarm import Bitfield
from peerprog.swarm.seeding import SeedingConfig, SuperSeeder
from tests.unit.swarmkit import MIB, bits, make, pairs

# -- rule 3: the origin is the last resort, a finished peer is not -------------------------


def test_a_finished_peer_is_asked_like_any_other() -> None:
    s = make([4], min_in_flight_per_peer=2, max_in_flight_per_peer=2, endgame_chunks=0)
    s.add_peer("seed", Bitfield.full(4), 0.0, origin=True)
    s.add_peer("done", Bitfield.full(4), 0.0)  # an edge that finished
    s.add_peer("half", bits(4, [0, 1]), 0.0)
    got = s.next_requests(0.0)
    # 2 and 3, rarest, go to the finished edge; 0 and 1 to the other: the origin waits.
    assert pairs(got) == {("done", 2), ("done", 3), ("half", 0), ("half", 1)}


def test_the_origin_serves_what_no_free_peer_can() -> None:
    s = make([4], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("seed", Bitfield.full(4), 0.0, origin=True)
    s.add_peer("half", bits(4, [0, 1]), 0.0)
    got = s.next_requests(0.0)
    assert {r.peer for r in got} == {"seed", "half"}
    assert next(r.index for r in got if r.peer == "seed") in (0, 1, 2, 3)


def test_the_origin_gets_a_shallow_queue_in_a_swarm_only() -> None:
    s = make([40], endgame_chunks=0)
    s.add_peer("seed", Bitfield.full(40), 0.0, origin=True)
    first = s.next_requests(0.0)
    assert len(first) == 2  # not measured yet: the floor
    for r in first:
        s.on_chunk("seed", r.index, 0.01)  # fast: a deep queue
    assert len(s.next_requests(0.01)) == 16  # alone: its whole budget
    t = make([40], endgame_chunks=0)
    t.add_peer("seed", Bitfield.full(40), 0.0, origin=True)
    for r in t.next_requests(0.0):
        t.on_chunk("seed", r.index, 0.01)
    t.add_peer("done", Bitfield.full(40), 0.01)  # a finished edge: a swarm
    got = t.next_requests(0.01)
    assert sum(r.peer == "seed" for r in got) == 2  # the floor, not 16
    assert sum(r.peer == "done" for r in got) == 2


# -- add_have says whether next_requests may change ----------------------------------------


def test_add_have_answers_whether_to_ask_again() -> None:
    s = make([4], min_in_flight_per_peer=1, max_in_flight_per_peer=1, endgame_chunks=0)
    s.add_peer("a", bits(4, [0]), 0.0)
    s.add_peer("b", bits(4, []), 0.0)
    (r,) = s.next_requests(0.0)
    assert r.peer == "a"
    assert s.add_have("a", 1, 0.1) is False  # a is at its budget: nothing new to send
    assert s.add_have("b", 1, 0.1) is True  # b is free and holds a chunk we miss
    assert pairs(s.next_requests(0.1)) == {("b", 1)}
    assert s.add_have("b", 1, 0.2) is False  # known already
    assert s.add_have("nobody", 2, 0.2) is False
    s.on_chunk("a", 0, 0.3)
    assert s.add_have("a", 0, 0.3) is False  # known
    s.add_peer("c", bits(4, []), 0.3)
    s.on_chunk("b", 1, 0.4)
    assert s.add_have("c", 1, 0.4) is False  # we hold it
    s.on_failed("a", 2, 0.5)  # not in flight: ignored
    assert s.add_have("c", 2, 0.5) is True


def test_add_have_true_when_a_peer_becomes_complete() -> None:
    s = make([2], min_in_flight_per_peer=1, max_in_flight_per_peer=1)
    s.add_peer("a", bits(2, [0]), 0.0)
    assert len(s.next_requests(0.0)) == 1  # a is busy now
    assert s.add_have("a", 1, 0.1) is True  # complete: the shallow-queue rule may change


def test_add_have_false_while_backing_off() -> None:
    s = make([3], min_in_flight_per_peer=1, max_in_flight_per_peer=1, busy_backoff=1.0)
    s.add_peer("a", bits(3, [0]), 0.0)
    (r,) = s.next_requests(0.0)
    s.on_busy("a", r.index, 0.1)
    assert s.add_have("a", 1, 0.2) is False
    assert s.add_have("a", 2, 1.2) is True


# -- on_busy for a run of chunks declined together ------------------------------------------


def test_a_declined_run_is_one_decline() -> None:
    s = make([8], size=4 * MIB, min_in_flight_per_peer=4, max_in_flight_per_peer=4,
             min_queue_bytes=16 * MIB, endgame_chunks=0)  # fmt: skip
    s.add_peer("a", Bitfield.full(8), 0.0)
    reqs = s.next_requests(0.0)
    assert len(reqs) == 4  # the shell sends them as one request for a run
    s.on_busy("a", [r.index for r in reqs], 0.1, retry_after=2.0)
    stats = s.peer_stats("a")
    assert stats.in_flight == 0 and stats.failures == 0
    assert stats.backoff_until == 2.1  # nothing else in flight there: wait
    assert s.next_requests(2.0) == [] and len(s.next_requests(2.1)) == 1


def test_a_declined_run_beside_one_served_caps_the_peer() -> None:
    s = make([8], size=4 * MIB, min_in_flight_per_peer=4, max_in_flight_per_peer=4,
             min_queue_bytes=16 * MIB, endgame_chunks=0)  # fmt: skip
    s.add_peer("a", Bitfield.full(8), 0.0)
    reqs = s.next_requests(0.0)
    served, declined = reqs[:2], reqs[2:]  # two runs: the first got a slot
    s.on_busy("a", [r.index for r in declined], 0.1, retry_after=2.0)
    assert s.peer_stats("a").backoff_until is None
    assert s.peer_stats("a").budget == 2  # what it serves at once
    assert s.next_requests(0.2) == []
    s.on_chunk("a", served[0].index, 0.5)
    assert len(s.next_requests(0.5)) == 2  # one more than before: probing


# -- the seed: spreaders first (rule 6) ------------------------------------------------------

LEVELS = [range(0, 8), range(8, 16)]
N = 16


def seeder(**config: Any) -> SuperSeeder:
    base: dict[str, Any] = {"depth": 1, "slots": 1, "ahead": 1, "offer_ttl": 100.0}
    base.update(config)
    return SuperSeeder(LEVELS, SeedingConfig(starve_after=100.0, **base), seed=3)


def only(offers: list[tuple[str, int]]) -> tuple[str, int]:
    (offer,) = offers
    return offer


def serve(s: SuperSeeder, peer: str, index: int, sent: float) -> None:
    """The seed serves ``index`` to ``peer`` (offered or not); the upload ends at ``sent``
    and the edge's push arrives at once."""
    s.on_request(peer, index, sent - 0.1)
    s.on_sent(peer, index, sent)
    s.add_have(peer, index, sent)


def measured(spreaders_first: bool = True, slots: int = 1) -> SuperSeeder:
    """Three edges that got a first copy each at 0.2 s: a passes it on 0.1 s later, b 2 s
    later, c not at all."""
    s = seeder(slots=slots, spreaders_first=spreaders_first)
    for name in ("a", "b", "c"):
        s.add_peer(name, Bitfield(N), 0.0)
    for name, index in (("a", 0), ("b", 1), ("c", 2)):
        serve(s, name, index, 0.2)
    s.add_have("b", 0, 0.3)  # from a: a's spread delay 0.1 s
    s.add_have("c", 1, 2.2)  # from b: 2 s
    return s


def test_spread_delay_orders_the_edges() -> None:
    s = measured(slots=2)
    # At 3.2 s c has sat on its chunk for 3 s: a (0.1 s) and b (2 s) come first.
    assert {p for p, _ in s.offers(3.2)} == {"a", "b"}


def test_a_fast_spreader_keeps_getting_first_copies() -> None:
    s = measured(slots=1)
    now = 3.2
    for _ in range(3):
        peer, index = only(s.offers(now))
        assert peer == "a"
        serve(s, peer, index, now + 0.2)
        s.add_have("b", index, now + 0.3)  # passed on in 0.1 s again
        now += 0.3


def test_a_sitting_edge_falls_behind() -> None:
    s = measured(slots=1)
    now = 3.2
    peer, index = only(s.offers(now))
    assert peer == "a"
    serve(s, peer, index, now + 0.2)  # a sits on this one
    now += 5.0  # its age, 4.8 s, is now above b's 2 s and below c's 5 s
    peer, _ = only(s.offers(now))
    assert peer == "b"


def test_an_unmeasured_edge_ranks_as_the_median() -> None:
    s = measured(slots=3)
    s.add_have("a", 2, 5.2)  # c passed its chunk on after 5 s
    s.add_peer("new", Bitfield(N), 5.2)  # not measured: as the median, b's 2 s
    assert {p for p, _ in s.offers(5.2)} == {"a", "b", "new"}


def test_a_chunk_the_seed_served_twice_measures_nothing() -> None:
    for seed in range(6):
        s = SuperSeeder(LEVELS, SeedingConfig(depth=1, slots=1, ahead=1, offer_ttl=100.0,
                                              starve_after=100.0), seed=seed)  # fmt: skip
        s.add_peer("a", Bitfield(N), 0.0)
        s.add_peer("b", Bitfield(N), 0.0)
        serve(s, "a", 0, 0.2)
        serve(s, "b", 0, 0.4)  # b got it from the seed too: a did not pass it on
        # a still sits on its first copy (rank: its age), b has none: b first.
        assert only(s.offers(10.0))[0] == "b"


def test_spreaders_first_can_be_switched_off() -> None:
    fresh = seeder(spreaders_first=False)
    for name in ("a", "b", "c"):
        fresh.add_peer(name, Bitfield(N), 0.0)
    first, _ = only(fresh.offers(3.2))
    s = measured(spreaders_first=False)
    assert only(s.offers(3.2))[0] == first  # the seeded order, whatever the delays
