"""The collector pause of the fleet-wide scans: shared by overlapping scans, the collector back after the last."""

from __future__ import annotations

import asyncio
import gc

from bmd.gcpause import collector_paused


async def test_overlapping_pauses_give_the_collector_back_after_the_last() -> None:
    assert gc.isenabled()
    first_in, second_out = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        with collector_paused():
            first_in.set()
            await second_out.wait()  # the second scan starts and ends inside this one
            assert not gc.isenabled()
        assert gc.isenabled()

    async def second() -> None:
        await first_in.wait()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first is still scanning
        second_out.set()

    await asyncio.wait_for(asyncio.gather(first(), second()), 5)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
