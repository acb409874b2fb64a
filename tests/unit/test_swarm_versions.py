"""The version policy: which versions win, are served and dropped, what is looked up and
what is not asked for again, with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from peerprog.swarm import ModelRef, VersionConfig, VersionPolicy
from peerprog.swarm.versions import named, newest_first, served, superseded


@dataclass(frozen=True)
class V:
    model_id: str
    version: int
    best_level: int = -1
    complete: bool = False
    created: float = 0.0
    servable_level: int = -1


def mid(n: int) -> str:
    return f"{n:064x}"


def test_newest_wins_ties_by_creation_time() -> None:
    a, b, c = V("a", 1), V("b", 2, created=1.0), V("c", 2, created=2.0)
    assert newest_first([a, b, c]) == [c, b, a]


def test_apps_get_the_newest_version_with_a_servable_level() -> None:
    old, new = V("old", 1, 3, servable_level=3), V("new", 2)
    assert served([old, new]) is old
    held = V("new", 2, best_level=0)  # level 0 held, its record not yet written
    assert served([old, held]) is old and named([old, held]) is held
    recorded = V("new", 2, best_level=0, servable_level=0)
    assert served([old, recorded]) is recorded and named([old, recorded]) is recorded
    assert served([new]) is None and named([new]) is None


def test_older_versions_are_dropped_once_a_newer_one_is_exact() -> None:
    v1, v2, v3 = V("1", 1, 4, True), V("2", 2, 4, True), V("3", 3, 2, False)
    assert superseded([v1, v2, v3], keep=0) == [v1]  # v3 is not exact yet
    assert superseded([v1, v2, V("3", 3, 4, True)], keep=0) == [v2, v1]
    assert superseded([v1, v2, V("3", 3, 4, True)], keep=1) == [v1]
    assert superseded([v3], keep=0) == []


def policy(**kw: object) -> VersionPolicy:
    return VersionPolicy(VersionConfig(**kw))  # type: ignore[arg-type]


def announced(root: str, *versions: int) -> list[tuple[str, ModelRef]]:
    return [(root, ModelRef("m", mid(v), v)) for v in versions]


def test_lookups_take_the_newest_few_per_peer_and_ask_the_name_roots() -> None:
    p = policy(max_candidates_per_peer=2, max_candidates_per_name=16)
    jobs = p.lookups(
        "m",
        newest=1,
        known={mid(1)},
        announced=announced("r1", 1, 2, 3, 4) + announced("r2", 4, 9),
        name_roots=["boot"],
        now=0.0,
    )
    assert [(j.model_id and int(j.model_id, 16), j.roots) for j in jobs] == [
        (9, ("r2",)),
        (4, ("r1", "r2")),
        (3, ("r1",)),
        (None, ("boot",)),
    ]
    # pending look-ups are not started twice
    again = p.lookups(
        "m", newest=1, known=set(), announced=announced("r1", 4), name_roots=["boot"], now=1.0
    )
    assert again == []
    for j in jobs:
        p.done(j)
    assert (
        len(p.lookups("m", newest=1, known=set(), announced=[], name_roots=["boot"], now=2.0)) == 1
    )


def test_a_flood_of_fake_versions_cannot_crowd_out_the_name_roots() -> None:
    p = policy(max_candidates_per_peer=2, max_candidates_per_name=4)
    flood = [(f"r{k}", ModelRef("m", mid(1000 + k), 1000 + k)) for k in range(200)]
    jobs = p.lookups("m", newest=0, known=set(), announced=flood, name_roots=["boot"], now=0.0)
    assert sum(1 for j in jobs if j.model_id) == 4
    assert any(j.model_id is None and j.roots == ("boot",) for j in jobs)


def test_refusals_expire_and_are_per_source_or_for_everyone() -> None:
    p = policy(refuse_manifest_for=600.0, manifest_retry_after=60.0)
    p.missing("r1", mid(2), 0.0)
    assert not p.open(mid(2), "r1", set(), 59.0) and p.open(mid(2), "r2", set(), 59.0)
    assert p.open(mid(2), "r1", set(), 60.0)
    p.refused_from("r1", mid(3), 0.0)
    assert not p.open(mid(3), "r1", set(), 599.0) and p.open(mid(3), "r2", set(), 1.0)
    p.refused(mid(4), 0.0)
    assert not p.open(mid(4), "r2", set(), 599.0) and p.open(mid(4), "r2", set(), 600.0)
    assert not p.open(mid(5), "r1", {mid(5)}, 0.0)  # held already
    jobs = p.lookups(
        "m", newest=0, known=set(), announced=announced("r1", 4), name_roots=[], now=1.0
    )
    assert jobs == []  # refused from everyone


def test_only_a_newer_version_is_taken_up() -> None:
    p = policy()
    assert p.takes(3, 2) and not p.takes(2, 2) and not p.takes(1, 2)
