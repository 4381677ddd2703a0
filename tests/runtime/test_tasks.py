"""Stopping a background task ends the task, even one that swallows a cancellation (as Python 3.11's
``asyncio.wait_for`` does when the cancel lands in the same pass as the awaited result), and never hangs the stop."""

from __future__ import annotations

import asyncio

from station_runtime.tasks import stop_task


async def test_a_task_that_swallows_one_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def beat() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed < 2:  # the race: the cancel is lost and the loop goes on
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(beat())
    await asyncio.sleep(0)
    assert await stop_task(task, timeout_s=5.0)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_never_ends_is_given_up_on_after_the_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert not await stop_task(task, timeout_s=0.3)
    assert 0.25 <= loop.time() - t0 < 2.0 and not task.done()
    release.set()
    assert await stop_task(task, timeout_s=5.0)


async def test_an_ended_task_s_exception_is_retrieved_and_a_missing_task_is_fine() -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(boom())
    await asyncio.wait({task})
    assert await stop_task(task) and await stop_task(None)
