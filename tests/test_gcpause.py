"""The collector pause of the fleet-wide scans: nested pauses share one, the collector back after the outermost."""

from __future__ import annotations

import gc

from bmd.gcpause import collector_paused


def test_nested_pauses_give_the_collector_back_after_the_outermost() -> None:
    assert gc.isenabled()
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
