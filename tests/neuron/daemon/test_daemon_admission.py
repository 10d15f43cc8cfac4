"""Admission as a unit: slots, FIFO queue, depth and wait limits, pause, failures."""

from __future__ import annotations

import asyncio

import pytest

from helexa.neuron.admission import Admission
from helexa.wire.errors import ApiError


async def test_queue_full_is_429_with_the_exact_message() -> None:
    rejected: list[str] = []
    adm = Admission("org/m", 1, 1, 10, on_reject=rejected.append)
    await adm.acquire()
    waiter = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    assert (adm.in_flight, adm.queue_depth) == (1, 1)
    with pytest.raises(ApiError) as ei:
        await adm.acquire()
    e = ei.value
    assert (e.status, e.code, e.type, e.retry_after) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
        2,
    )
    assert e.message == "model 'org/m' is at capacity (1 running, 1 queued); retry shortly"
    assert rejected == ["queue_full"]
    adm.release()
    await waiter
    assert (adm.in_flight, adm.queue_depth) == (1, 0)
    adm.release()
    assert adm.in_flight == 0


async def test_wait_timeout_is_503() -> None:
    rejected: list[str] = []
    adm = Admission("org/m", 1, 4, 0.1, on_reject=rejected.append)
    await adm.acquire()
    with pytest.raises(ApiError) as ei:
        await adm.acquire()
    e = ei.value
    assert (e.status, e.code, e.type, e.retry_after) == (
        503,
        "service_unavailable",
        "api_error",
        5,
    )
    assert e.message == "request for model 'org/m' waited 0.1s in the queue without starting"
    assert adm.queue_depth == 0 and rejected == ["wait_timeout"]


async def test_fifo_and_no_barging() -> None:
    adm = Admission("m", 1, 10, 10)
    await adm.acquire()
    order: list[int] = []

    async def req(i: int) -> None:
        await adm.acquire()
        order.append(i)
        await asyncio.sleep(0.01)
        adm.release()

    tasks = [asyncio.create_task(req(i)) for i in range(5)]
    await asyncio.sleep(0)
    adm.release()
    # a newcomer arriving after the release must queue behind the five
    late = asyncio.create_task(req(99))
    await asyncio.gather(*tasks, late)
    assert order == [0, 1, 2, 3, 4, 99]


async def test_pause_keeps_the_queue_and_resume_admits() -> None:
    adm = Admission("m", 1, 4, 10)
    await adm.acquire()
    waiter = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    adm.pause()
    adm.release()  # the crashed request's slot is freed, but nobody starts while paused
    await asyncio.sleep(0.01)
    assert not waiter.done() and adm.in_flight == 0 and adm.queue_depth == 1
    adm.resume()
    await waiter
    assert adm.in_flight == 1


async def test_fail_waiters() -> None:
    adm = Admission("m", 1, 4, 10)
    await adm.acquire()
    waiters = [asyncio.create_task(adm.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    adm.fail_waiters(ApiError(503, "model_not_ready", "gone", retry_after=2))
    for w in waiters:
        with pytest.raises(ApiError) as ei:
            await w
        assert ei.value.code == "model_not_ready"
    assert adm.queue_depth == 0 and adm.in_flight == 1


async def test_cancelled_waiter_passes_its_slot_on() -> None:
    adm = Admission("m", 1, 4, 10)
    await adm.acquire()
    first = asyncio.create_task(adm.acquire())
    second = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    adm.release()
    await second
    assert adm.in_flight == 1 and adm.queue_depth == 0


async def test_zero_queue_depth_and_wait_idle() -> None:
    adm = Admission("m", 2, 0, 10)
    async with adm.slot(), adm.slot():
        with pytest.raises(ApiError):
            await adm.acquire()
        assert not await adm.wait_idle(0.01)
    assert adm.in_flight == 0
    assert await adm.wait_idle(0.01)
