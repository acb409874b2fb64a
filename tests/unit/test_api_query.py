"""The ``best`` query: min_level (a number or max) and wait, checked strictly."""

from __future__ import annotations

import pytest

from peerprog.api.errors import BadRequest
from peerprog.api.query import MAX_WAIT, BestQuery, parse_best_query


def q(**kw: str) -> BestQuery:
    return parse_best_query(kw.items())


def test_defaults_and_values() -> None:
    assert q() == BestQuery(None, False, 0.0)
    assert q(min_level="2", wait="1.5") == BestQuery(2, False, 1.5)
    assert q(min_level="max") == BestQuery(None, True, 0.0)
    assert q(wait="1e9").wait == MAX_WAIT
    assert q(wait="inf").wait == MAX_WAIT


@pytest.mark.parametrize(
    "items",
    [
        [("min_level", "-1")],
        [("min_level", "1.5")],
        [("min_level", "")],
        [("min_level", "MAX")],
        [("min_level", "٣")],  # a digit, but not ASCII
        [("min_level", "99999999")],
        [("wait", "-1")],
        [("wait", "nan")],
        [("wait", "soon")],
        [("min-level", "1")],
        [("wait", "1"), ("wait", "2")],
    ],
)
def test_bad_queries_are_bad_requests(items: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest) as e:
        parse_best_query(items)
    assert e.value.status == 400 and e.value.to_json()["error"] == "bad request"


def test_target_level() -> None:
    assert q().target(4) == 0
    assert q(min_level="3").target(4) == 3
    assert q(min_level="max").target(4) == 3
    with pytest.raises(BadRequest, match="levels 0–3"):
        q(min_level="4").target(4)
