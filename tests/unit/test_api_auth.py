"""The TCP listener's token and CORS rules (pure parts)."""

from __future__ import annotations

from peerprog.api.auth import bearer_ok, cors_headers, origin_allowed


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
