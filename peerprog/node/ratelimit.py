"""Token-bucket rate limits (upload and download caps).

:class:`TokenBucket` is pure (time is an argument). Callers reserve bytes and sleep for the
delay it returns; tokens may go negative, so concurrent senders queue in order of arrival
and the long-run rate never exceeds the cap.
"""

from __future__ import annotations

import asyncio


class TokenBucket:
    """``rate`` bytes per second with a small burst; ``rate`` 0 means no limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(16384.0, min(rate * 0.05, 262144.0)))
        self._tokens = self.burst
        self._last: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; returns how long to wait before sending them (0 if at once)."""
        if self.unlimited:
            return 0.0
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def throttle(bucket: TokenBucket, nbytes: int) -> None:
    """Wait until ``bucket`` lets ``nbytes`` pass."""
    if bucket.unlimited:
        return
    delay = bucket.reserve(nbytes, asyncio.get_running_loop().time())
    if delay > 0:
        await asyncio.sleep(delay)
