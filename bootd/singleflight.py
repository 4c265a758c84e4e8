"""One piece of work per key, however many callers wait for it (as Go's singleflight)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Callers asking for the same key while its work runs share that work's result.

    The work runs as a task of its own and is shielded from its waiters: a caller that
    is cancelled (a client that left) does not cancel the work the others wait for.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of work() for key, started now unless it is already running."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work())
            self._running[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter has left

    def cancel_all(self) -> None:
        """Cancel the work in flight (its waiters get CancelledError)."""
        for task in self._running.values():
            task.cancel()
