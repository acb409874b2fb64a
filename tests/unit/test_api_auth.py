"""The TCP listener's token and CORS rules (pure parts)."""

from __future__ import annotations

from peerprog.api.auth import TicketBook, bearer_ok, cors_headers, origin_allowed, same_origin


def test_bearer_token() -> None:
    assert bearer_ok("Bearer s3cret", "s3cret")
    assert bearer_ok("bearer  s3cret ", "s3cret")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2"):
        assert not bearer_ok(header, "s3cret")
    assert not bearer_ok("Bearer ", "")


def test_origins() -> None:
    allowed = ["http://localhost:3000", "https://app.example/"]
    assert origin_allowed("http://localhost:3000", allowed)
    assert origin_allowed("https://app.example", allowed)
    assert not origin_allowed("http://localhost:3001", allowed)
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("http://x", [])
    assert origin_allowed("http://x", ["*"])


def test_cors_headers() -> None:
    simple = cors_headers("http://a", preflight=False)
    assert simple["Access-Control-Allow-Origin"] == "http://a"
    assert "Peerprog-Level" in simple["Access-Control-Expose-Headers"]
    pre = cors_headers("http://a", preflight=True)
    assert "Authorization" in pre["Access-Control-Allow-Headers"]
    assert "PUT" in pre["Access-Control-Allow-Methods"]


def test_same_origin_is_the_listeners_own_address() -> None:
    assert same_origin("http://127.0.0.1:7080", "127.0.0.1:7080")
    assert same_origin("http://localhost:7080/", "localhost:7080")
    assert same_origin("http://[::1]:7080", "[::1]:7080")
    assert not same_origin("http://127.0.0.1:7081", "127.0.0.1:7080")
    assert not same_origin("https://127.0.0.1:7080", "127.0.0.1:7080")
    assert not same_origin("http://127.0.0.1:7080", None)
    assert not same_origin("null", "127.0.0.1:7080")
    # a name that merely resolves to the loopback address: maybe DNS rebinding
    assert not same_origin("http://evil.example:7080", "evil.example:7080")
    assert not same_origin("http://127.0.0.1", "127.0.0.1")


def test_tickets_are_single_use_and_short_lived() -> None:
    book = TicketBook(ttl=60)
    a = book.issue(now=100.0)
    b = book.issue(now=100.0)
    assert a != b and len(a) >= 32 and len(book) == 2
    assert book.redeem(a, now=101.0)
    assert not book.redeem(a, now=101.0)  # used up
    assert not book.redeem("x" + b[1:], now=101.0)
    assert not book.redeem("", now=101.0)
    assert not book.redeem(b, now=160.0)  # expired
    assert len(book) == 0


def test_tickets_are_bounded() -> None:
    book = TicketBook(ttl=60, limit=3)
    first = book.issue(now=0.0)
    for _ in range(5):
        last = book.issue(now=1.0)
    assert len(book) == 3
    assert not book.redeem(first, now=2.0)  # the oldest went first
    assert book.redeem(last, now=2.0)
