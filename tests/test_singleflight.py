"""SingleFlight: one piece of work per key, shared by every caller waiting for it."""

from __future__ import annotations

import asyncio

import pytest

from bootd.singleflight import SingleFlight


async def test_callers_share_one_run_and_a_leaving_caller_cancels_nothing() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    waiters = [asyncio.ensure_future(flight.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # a client that left
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [42] * 4 and runs == 1
    assert await flight.run("k", work) == 42 and runs == 2  # done: the next call runs again


async def test_failure_reaches_every_waiter_and_cancel_all() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def boom() -> int:
        await asyncio.sleep(0.01)
        raise OSError("stale")

    got = await asyncio.gather(*(flight.run("k", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(g, OSError) for g in got)

    async def forever() -> int:
        await asyncio.Event().wait()
        return 0

    w = asyncio.ensure_future(flight.run("j", forever))
    await asyncio.sleep(0)
    flight.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await w
