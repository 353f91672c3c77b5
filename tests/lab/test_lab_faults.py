"""The lab's fault grammar: what parses, what is refused and why, how faults are dealt."""

from __future__ import annotations

import pytest

from bmd.errors import InvalidInput
from bmd.lab import Fault, LabSpec, deal_faults, parse_faults


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("", 10, []),
        ("dead=1", 10, [(Fault("dead"), 1)]),
        ("dead=10%", 1000, [(Fault("dead"), 100)]),
        ("dead=10%", 8, [(Fault("dead"), 1)]),  # rounds to the nearest BMC, at least one
        ("dead=0%", 8, [(Fault("dead"), 0)]),
        ("slow=2", 10, [(Fault("slow", 2.0), 2)]),  # default delay
        ("slow=2:1.5", 10, [(Fault("slow", 1.5), 2)]),
        ("flap=3", 10, [(Fault("flap", 10.0), 3)]),
        ("flap=3:0", 10, [(Fault("flap", 0.0), 3)]),
        (
            " dead=10% , slow=2:1.5,badpass=1,flap=3:5,stuck=1 ",
            100,
            [
                (Fault("dead"), 10),
                (Fault("slow", 1.5), 2),
                (Fault("badpass"), 1),
                (Fault("flap", 5.0), 3),
                (Fault("stuck"), 1),
            ],
        ),
    ],
)
def test_valid_specs(spec: str, count: int, expected: list[tuple[Fault, int]]) -> None:
    assert parse_faults(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dead", "expected kind=amount"),
        ("zombie=1", "unknown kind 'zombie'"),
        ("dead=x", "neither a count nor a percentage"),
        ("dead=-1", "cannot be negative"),
        ("dead=150%", "between 0 and 100"),
        ("dead=1:2", "dead takes no seconds"),
        ("badpass=1:2", "badpass takes no seconds"),
        ("slow=1:fast", "is not a number"),
        ("slow=1:-2", "must be >= 0"),
        ("dead=1,dead=2", "dead is given twice"),
        ("dead=1,,slow=1", "empty item"),
        ("dead=6,slow=5", "ask for 11 BMCs but the lab has 10"),
    ],
)
def test_invalid_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_faults(spec, 10)
    assert info.value.field == "faults"


def test_dealing_is_deterministic_and_disjoint() -> None:
    spec = "dead=10%,slow=5,badpass=2,flap=3"
    first = deal_faults(spec, 100, seed=7)
    assert first == deal_faults(spec, 100, seed=7)
    assert first != deal_faults(spec, 100, seed=8)
    kinds = [f.kind for f in first.values()]
    assert (kinds.count("dead"), kinds.count("slow"), kinds.count("badpass"), kinds.count("flap")) == (
        10,
        5,
        2,
        3,
    )
    assert all(0 <= i < 100 for i in first)


def test_lab_spec_checks_its_input() -> None:
    with pytest.raises(InvalidInput) as info:
        LabSpec(count=10, faults="dead=11")
    assert info.value.field == "faults"
    with pytest.raises(InvalidInput, match="loopback"):
        LabSpec(first_address="10.0.0.1")
    with pytest.raises(InvalidInput):
        LabSpec(count=0)
