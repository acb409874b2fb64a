"""Task scopes: every task of the node is started inside the scope that will await it.

A scope is trio's nursery in the small: :meth:`TaskScope.spawn` starts a task that belongs
to it; :meth:`TaskScope.aclose` cancels every task still running and waits for them all, so
nothing a scope started outlives it. A task that fails is logged as our bug (its siblings
go on: one model's fetch failing must not stop the node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("peerprog.node")


class ScopeClosed(RuntimeError):
    """A task was spawned in a scope that is closed (our bug)."""


class TaskScope:
    """The owner of a set of tasks. Use ``async with`` or call :meth:`aclose`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this scope."""
        if self._closed:
            coro.close()
            raise ScopeClosed(f"task scope {self.name!r} is closed")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks still running."""
        return [t for t in self._tasks if not t.done()]

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=task.exception())

    async def aclose(self) -> None:
        """Cancel every task of the scope and wait until all have ended. Idempotent."""
        self._closed = True
        while tasks := self.tasks():
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> TaskScope:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
