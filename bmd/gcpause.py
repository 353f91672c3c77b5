"""``collector_paused()``: the cyclic garbage collector held off while a fleet-wide scan turns its rows
into a dict, or compares two such dicts.

A scan of 100,000 nodes' change keys makes 100,000 rows that live a few milliseconds; each 700 of them
triggers a young collection, and every few of those a full one, which walks every object the service holds
(the fleet's dicts, host states, views: millions) — half a second of a pass spent finding no garbage.
Paused, the rows come and go without a collection (CPython counts a freed object off the allocations that
trigger one); the collector runs again as usual afterwards. Pause only synchronous code: across an
``await`` the other tasks' garbage would wait too. Nested pauses share one: the collector comes back when
the outermost ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()
