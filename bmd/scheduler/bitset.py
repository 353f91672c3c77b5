"""Sets of host slots as Python ints: bit ``i`` set means slot ``i`` is in the set.

Union, intersection and counting run in C over machine words (``|``, ``&``, ``int.bit_count``), so a set of
100,000 hosts costs about 12 KB and microseconds per operation; only turning a set back into slot numbers
walks it in Python, a byte at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["bit_positions", "lowest_bit", "lowest_bits", "mask_of"]

_BITS_OF_BYTE: tuple[tuple[int, ...], ...] = tuple(
    tuple(bit for bit in range(8) if byte >> bit & 1) for byte in range(256)
)


def mask_of(slots: Iterable[int]) -> int:
    """The set holding ``slots``."""
    positions = list(slots)
    if not positions:
        return 0
    buffer = bytearray((max(positions) >> 3) + 1)
    for slot in positions:
        buffer[slot >> 3] |= 1 << (slot & 7)
    return int.from_bytes(buffer, "little")


def bit_positions(mask: int) -> list[int]:
    """Every slot in the set, ascending."""
    result: list[int] = []
    data = mask.to_bytes((mask.bit_length() + 7) >> 3, "little")
    for index, byte in enumerate(data):
        if byte:
            base = index << 3
            result.extend([base + bit for bit in _BITS_OF_BYTE[byte]])
    return result


def lowest_bit(mask: int) -> int:
    """The smallest slot in a non-empty set."""
    return (mask & -mask).bit_length() - 1


def lowest_bits(mask: int, count: int) -> list[int]:
    """The ``count`` smallest slots in the set, ascending."""
    result: list[int] = []
    while mask and len(result) < count:
        low = mask & -mask
        result.append(low.bit_length() - 1)
        mask ^= low
    return result
