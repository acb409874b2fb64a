"""Which URLs peerprog accepts for peers and web seeds (from the config or from peers)."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_URL = 256
URL_SCHEMES = ("http://", "https://")


def valid_url(url: object) -> bool:
    """An http(s) base URL a client can use: printable ASCII, a host whose every label has
    1–63 characters (idna refuses longer ones), a valid port if any."""
    if not isinstance(url, str) or len(url) > MAX_URL or not url.startswith(URL_SCHEMES):
        return False
    if not all(33 <= ord(c) < 127 for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        return False
    host = parts.hostname or ""
    if host.startswith("[") or ":" in host:  # an IPv6 literal (urlsplit checked it)
        return True
    return bool(host) and all(0 < len(label) <= 63 for label in host.rstrip(".").split("."))
