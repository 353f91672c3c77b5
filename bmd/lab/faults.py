"""The lab's fault grammar and how faults are dealt to BMCs.

Grammar (``bmd lab --faults``)::

    faults  := "" | item ("," item)*
    item    := kind "=" amount [":" seconds]
    kind    := "dead" | "slow" | "badpass" | "flap" | "stuck"
    amount  := INT            a number of BMCs
             | NUMBER "%"     a share of the fleet, rounded to the nearest BMC (at least 1 when > 0 %)
    seconds := NUMBER >= 0

- ``dead``: never answers (no seconds).
- ``slow:S``: answers every datagram S seconds late (default 2.0).
- ``badpass``: configured with another password than the inventory's (no seconds).
- ``flap:S``: dead for S seconds, alive for S seconds, and so on, starting dead (default 10.0);
  ``flap:0`` only changes phase when told to (``Lab.flap_step``), which tests use to drive it.
- ``stuck``: accepts power commands but the power state never changes (a host that will not boot).

Example: ``dead=10%,slow=2:1.5,badpass=1,flap=3:5``. Each BMC gets at most one fault; which BMCs get
which fault is a seeded random draw, so a given (count, spec, seed) always yields the same fleet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from bmd.errors import InvalidInput

FaultKind = Literal["dead", "slow", "badpass", "flap", "stuck"]
KINDS: tuple[FaultKind, ...] = ("dead", "slow", "badpass", "flap", "stuck")
DEFAULT_SECONDS: dict[str, float] = {"slow": 2.0, "flap": 10.0}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    seconds: float = 0.0  # slow: reply delay; flap: length of each phase (0 = stepped by hand)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fault:
        kind = str(data["kind"])
        if kind not in KINDS:
            raise InvalidInput(f"unknown fault kind {kind!r}", field="fault")
        seconds = data.get("seconds", 0.0)
        assert isinstance(seconds, int | float)
        return cls(kind, float(seconds))


def _error(item: str, why: str) -> InvalidInput:
    return InvalidInput(f"bad fault {item!r}: {why}", field="faults")


def _amount(item: str, text: str, count: int) -> int:
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise _error(item, "a percentage must be between 0 and 100")
            n = round(count * share / 100)
            return max(n, 1) if share > 0 and count else n
        n = int(text)
    except ValueError:
        raise _error(item, f"amount {text!r} is neither a count nor a percentage") from None
    if n < 0:
        raise _error(item, "the amount cannot be negative")
    return n


def parse_faults(spec: str, count: int) -> list[tuple[Fault, int]]:
    """Parse ``spec`` for a fleet of ``count`` BMCs into (fault, number of BMCs) pairs."""
    result: list[tuple[Fault, int]] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            if spec.strip():
                raise _error(raw, "empty item")
            continue
        kind, sep, rest = item.partition("=")
        kind = kind.strip()
        if not sep:
            raise _error(item, "expected kind=amount, e.g. dead=10%")
        if kind not in KINDS:
            raise _error(item, f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        if kind in seen:
            raise _error(item, f"{kind} is given twice")
        seen.add(kind)
        amount_text, colon, seconds_text = rest.partition(":")
        n = _amount(item, amount_text.strip(), count)
        seconds = DEFAULT_SECONDS.get(kind, 0.0)
        if colon:
            if kind not in DEFAULT_SECONDS:
                raise _error(item, f"{kind} takes no seconds")
            try:
                seconds = float(seconds_text)
            except ValueError:
                raise _error(item, f"seconds {seconds_text!r} is not a number") from None
            if not seconds >= 0:
                raise _error(item, "seconds must be >= 0")
        result.append((Fault(kind, seconds), n))
    total = sum(n for _, n in result)
    if total > count:
        raise InvalidInput(f"faults ask for {total} BMCs but the lab has {count}", field="faults")
    return result


def deal_faults(spec: str, count: int, seed: int = 0) -> dict[int, Fault]:
    """Which BMC index gets which fault: a seeded draw, stable for a given (spec, count, seed)."""
    plan = parse_faults(spec, count)
    chosen = random.Random(seed).sample(range(count), sum(n for _, n in plan))
    faults: dict[int, Fault] = {}
    for fault, n in plan:
        for index in chosen[:n]:
            faults[index] = fault
        chosen = chosen[n:]
    return faults
