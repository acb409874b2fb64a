"""The peer table's state machine, driven with a fake clock (times are plain floats)."""

from __future__ import annotations

from peerprog.swarm import ModelRef, PeerHealth, PeerTable, PeerTableConfig, SourceState

MID = "a" * 64
OTHER = "b" * 64


def table(**kw: object) -> PeerTable:
    config = PeerTableConfig(**{"absent_recheck": 5.0, "revive_after": 30.0, **kw})  # type: ignore[arg-type]
    return PeerTable(
        config,
        bootstrap=["http://boot/"],
        web_seeds=["http://cdn/store/"],
        prefix="/p2p/v1",
    )


def ref(origin: bool = False, model_id: str = MID) -> ModelRef:
    return ModelRef("m", model_id, 1, complete=origin, origin=origin)


def test_bootstrap_peers_and_web_seeds_are_sources_from_the_start() -> None:
    t = table()
    assert [p.url for p in t.peers()] == ["http://boot"]
    assert t.name_roots() == ["http://boot/p2p/v1", "http://cdn/store"]
    srcs = t.sources(MID)
    assert [(s.key, s.root, s.kind) for s in srcs] == [
        ("http://boot", "http://boot/p2p/v1", "peer"),
        ("webseed:http://cdn/store", "http://cdn/store", "web_seed"),
    ]


def test_heard_from_adds_a_peer_once_and_records_what_it_holds() -> None:
    t = table()
    assert t.heard_from("http://a/", "edge-a", [ref(origin=True)], 1.0) is not None
    assert t.heard_from("http://a", "edge-a", [ref(origin=True)], 2.0) is None  # known
    p = t.get("http://a")
    assert p is not None and p.node == "edge-a" and p.last_seen == 2.0
    assert {s.key: s.kind for s in t.sources(MID)}["http://a"] == "seed"
    assert {s.key: s.kind for s in t.sources(OTHER)}["http://a"] == "peer"
    assert [(q.url, r.model_id) for q, r in t.announced("m")] == [("http://a", MID)]


def test_a_bootstrap_peer_is_known_as_the_origin_once_its_announce_says_so() -> None:
    t = table()
    assert t.source_kind("http://boot", MID) == "peer"  # nothing heard yet
    t.heard_from("http://boot", "seed", [ref(origin=True)], 1.0)
    assert t.source_kind("http://boot", MID) == "seed"
    assert t.source_kind("http://boot", OTHER) == "peer"
    assert t.source_kind("webseed:http://cdn/store", MID) == "web_seed"
    assert t.source_kind("http://unknown", MID) == "peer"


def test_this_node_is_never_its_own_peer() -> None:
    t = PeerTable(PeerTableConfig(), bootstrap=["http://me"])
    t.set_self("http://me/")
    assert t.peers() == []
    assert t.heard_from("http://me", "me", [], 0.0) is None
    assert t.learned_of("http://me", "me", 0.0) is None


def test_failed_contacts_back_off_then_drop_but_never_a_bootstrap_peer() -> None:
    t = table(max_failures=3)
    t.heard_from("http://a", "a", [], 0.0)
    for n in range(1, 3):
        assert t.contact_failed("http://a", float(n)) is PeerHealth.BACKING_OFF
        assert t.get("http://a") is not None
    assert t.contact_failed("http://a", 3.0) is PeerHealth.DROPPED
    assert t.get("http://a") is None and "http://a" not in [s.key for s in t.sources(MID)]
    for n in range(10):
        t.contact_failed("http://boot", float(n))
    boot = t.get("http://boot")
    assert boot is not None and boot.state is PeerHealth.BACKING_OFF and boot.failures == 10
    t.heard_from("http://boot", "boot", [], 20.0)  # back: the failures are forgiven
    assert boot.state is PeerHealth.KNOWN and boot.failures == 0


def test_news_of_a_dropped_peer_is_ignored_for_a_while_but_it_may_come_back_itself() -> None:
    t = table(max_failures=1, forget_for=600.0)
    t.heard_from("http://a", "a", [], 0.0)
    t.contact_failed("http://a", 1.0)
    assert t.learned_of("http://a", "a", 2.0) is None  # a stale entry passed on by others
    assert t.learned_of("http://a", "a", 599.0) is None
    assert t.learned_of("http://a", "a", 602.0) is not None  # long enough: try it again
    t.contact_failed("http://a", 603.0)
    assert t.heard_from("http://a", "a", [], 604.0) is not None  # it announced to us: alive
    assert t.get("http://a") is not None


def test_the_table_holds_at_most_max_peers() -> None:
    t = table(max_peers=3)
    added = [t.learned_of(f"http://p{i}", "", 0.0) for i in range(5)]
    assert [p is not None for p in added] == [True, True, False, False, False]
    assert t.heard_from("http://q", "", [], 0.0) is None
    assert len(t) == 3


def test_peer_exchange_passes_on_only_peers_heard_from_lately_and_skips_the_asker() -> None:
    t = table(pex_fresh=60.0)
    t.heard_from("http://a", "a", [], 0.0)
    t.heard_from("http://b", "b", [], 50.0)
    t.heard_from("http://c", "c", [], 50.0)
    t.learned_of("http://d", "d", 50.0)  # only heard of: not seen alive by us
    t.contact_failed("http://c", 55.0)  # its last contact failed
    assert [p.url for p in t.exchange(70.0, "http://b/")] == []  # a: too long ago
    assert [p.url for p in t.exchange(59.0, "http://b/")] == ["http://a"]
    assert [p.url for p in t.exchange(59.0, "", limit=1)] == ["http://a"]
    assert [p.url for p in t.exchange(70.0)] == ["http://b"]


def test_a_banned_source_is_gone_for_good_and_news_of_it_is_ignored() -> None:
    t = table()
    t.heard_from("http://bad", "bad", [ref()], 0.0)
    t.source_absent("http://bad", MID, 0.0)
    t.ban("http://bad", 1.0)
    assert t.is_banned("http://bad") and t.get("http://bad") is None
    assert t.heard_from("http://bad", "bad", [ref()], 2.0) is None
    assert t.learned_of("http://bad", "bad", 2.0) is None
    assert t.next_expiry(MID) is None  # its source states went with it
    t.ban("webseed:http://cdn/store", 3.0)
    assert [s.kind for s in t.sources(MID)] == ["peer"]


def test_an_absent_source_is_asked_again_after_absent_recheck() -> None:
    t = table()
    t.source_absent("http://boot", MID, 10.0)
    assert t.source_state("http://boot", MID, 14.9) is SourceState.ABSENT
    assert t.source_state("http://boot", OTHER, 11.0) is SourceState.ACTIVE  # per model
    assert t.next_expiry(MID) == 15.0
    assert t.source_state("http://boot", MID, 15.0) is SourceState.ACTIVE
    assert t.next_expiry(MID) is None


def test_an_absent_source_that_announces_the_model_is_asked_at_once() -> None:
    """An edge asked before it took the model up answers 404; once it announces the model
    it is a source again, without waiting for ``absent_recheck``."""
    t = table()
    t.heard_from("http://edge", "edge", [], 0.0)
    t.source_absent("http://edge", MID, 1.0)
    t.heard_from("http://edge", "edge", [ref(model_id=OTHER)], 1.5)  # not this model
    assert t.source_state("http://edge", MID, 2.0) is SourceState.ABSENT
    t.heard_from("http://edge", "edge", [ref(model_id=OTHER), ref()], 2.0)
    assert t.source_state("http://edge", MID, 2.0) is SourceState.ACTIVE
    t.source_absent("http://edge", MID, 3.0)  # announced before: absent stays absent
    t.heard_from("http://edge", "edge", [ref(model_id=OTHER), ref()], 3.5)
    assert t.source_state("http://edge", MID, 3.5) is SourceState.ABSENT


def test_a_source_failing_requests_is_lost_then_revived_once_it_answers() -> None:
    t = table(fetch_failures=3)
    assert not t.fetch_failed("http://boot", MID, 2, 0.0)
    assert t.fetch_failed("http://boot", MID, 3, 1.0)  # lost: the shell stops asking
    assert not t.fetch_failed("http://boot", MID, 4, 2.0)  # (once)
    assert t.source_state("http://boot", MID, 100.0) is SourceState.LOST  # until it answers
    assert t.source_answered("http://boot", MID, 30.0) is SourceState.LOST
    assert t.source_answered("http://boot", MID, 31.0) is SourceState.ACTIVE  # a fresh start
    assert t.source_state("http://boot", MID, 31.0) is SourceState.ACTIVE


def test_forget_model_clears_its_source_states() -> None:
    t = table()
    t.source_absent("http://boot", MID, 0.0)
    t.source_absent("http://boot", OTHER, 0.0)
    t.forget_model(MID)
    assert t.next_expiry(MID) is None and t.next_expiry(OTHER) == 5.0


# -- reachability ----------------------------------------------------------------------------


def sources_of(t: PeerTable) -> list[str]:
    return [s.key for s in t.sources(MID) if s.kind != "web_seed"]


def test_a_peer_our_dial_back_cannot_reach_is_a_source_only_over_its_channel() -> None:
    t = table(reach_recheck=60.0)
    t.heard_from("http://hidden", "h", [ref()], 1.0)
    assert "http://hidden" in sources_of(t)  # not known yet: we try
    assert t.dial_due("http://hidden", 1.0)
    assert t.dialled("http://hidden", False, 1.0)  # routable → not routable
    assert "http://hidden" not in sources_of(t)
    assert "http://hidden" not in [p.url for p in t.routable()]
    assert not t.dial_due("http://hidden", 30.0) and t.dial_due("http://hidden", 61.0)
    assert t.channel_changed("http://hidden", True)
    assert "http://hidden" in sources_of(t)
    assert not t.channel_changed("http://hidden", True)  # no change
    assert t.channel_changed("http://hidden", False)
    assert "http://hidden" not in sources_of(t)
    # its address starts to answer: the next dial-back finds it
    assert t.dialled("http://hidden", True, 70.0)
    assert "http://hidden" in sources_of(t)


def test_what_a_peer_says_of_itself_counts_until_we_dial_it_ourselves() -> None:
    t = table()
    t.heard_from("http://a", "a", [ref()], 1.0, reachable=False)
    assert "http://a" not in sources_of(t)
    t.dialled("http://a", True, 2.0)
    t.heard_from("http://a", "a", [ref()], 3.0, reachable=False)  # our finding wins
    assert "http://a" in sources_of(t)
    # peer exchange passes on what the passing node found: one it could not dial is not
    # added (it announces to us itself if it can reach us)
    assert t.learned_of("http://b", "b", 4.0, reachable=False) is None
    assert t.learned_of("http://c", "c", 4.0, reachable=True) is not None


def test_we_want_a_channel_to_each_peer_that_could_not_dial_us_and_that_we_can_dial() -> None:
    t = table()
    assert t.reachability() is None
    t.heard_from("http://a", "a", [], 1.0)
    t.heard_from("http://b", "b", [], 1.0)
    t.heard_from("http://c", "c", [], 1.0)
    t.heard_back("http://a", False)
    t.heard_back("http://b", True)
    t.heard_back("http://c", None)  # did not say: nothing changes
    assert t.channels_wanted() == ["http://a"]
    assert t.reachability() is True  # b reached us
    t.heard_back("http://b", False)
    assert t.reachability() is False
    assert sorted(t.channels_wanted()) == ["http://a", "http://b"]
    t.dialled("http://b", False, 2.0)  # two undiallable nodes: no path either way
    assert t.channels_wanted() == ["http://a"]


def test_an_unroutable_peer_that_went_quiet_is_forgotten() -> None:
    t = table(pex_fresh=60.0)
    t.heard_from("http://hidden", "h", [ref()], 1.0)
    t.dialled("http://hidden", False, 1.0)
    t.heard_from("http://quiet", "q", [ref()], 1.0)  # routable: health rules apply
    assert t.prune(30.0) == []
    assert [p.url for p in t.prune(62.0)] == ["http://hidden"]
    assert t.get("http://hidden") is None and t.get("http://quiet") is not None
    assert t.get("http://boot") is not None  # never a bootstrap peer
