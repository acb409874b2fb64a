"""Wake-ups by model name: long-polls and event streams wait here for a level to complete.

The node calls its level listeners each time a model gains a level; the API's listener
calls :meth:`LevelNotifier.fire` with the model's name. Waiting by name (not by model id)
also wakes a waiter when a new version of the name reaches its first level.
"""

from __future__ import annotations

import asyncio


class LevelNotifier:
    """One event per name with waiters; :meth:`fire` wakes them all."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False

    def fire(self, name: str) -> None:
        """Wake everyone waiting on ``name``."""
        event = self._events.pop(name, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Wake every waiter, for good: later waits return at once."""
        self.closed = True
        for name in list(self._events):
            self.fire(name)

    async def wait(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next :meth:`fire` of ``name``.

        Returns False on timeout. Check what you wait for *before* calling: a fire that
        happened earlier is not remembered.
        """
        if self.closed:
            return True
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            return False
        return True
