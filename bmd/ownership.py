"""Node ownership: a consistent hash ring over the live services (``service.ownership = "ring"``).

Each service host is placed on a ring of 64-bit positions at ``POINTS`` virtual points (the BLAKE2b hash of
``"<host>#<i>"``); a node belongs to the first point at or after the hash of its uuid, wrapping round. With
a few hundred points per host the nodes spread evenly, and when a host joins or leaves only the nodes on
the arcs it gains or loses change owner — about 1/N of them — instead of nearly all, as ``hash % N`` would.

Our own ~40 lines rather than a library (``uhashring``): the whole need is one sorted list and a bisect,
and every service must compute the same owners from the same hosts, so the hash is fixed here (BLAKE2b,
never Python's per-process salted ``hash()``) instead of being a library default that could change under
an upgrade and move every node at once.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping

__all__ = ["POINTS", "HashRing", "assign_owners"]

POINTS = 512  # per host: 10,000 nodes over 3 hosts, each share within ~7% of a third (256: up to 10%)


def _position(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """The ring of ``hosts`` (at least one); ``owner(key)`` is the same in every process for the same hosts."""

    def __init__(self, hosts: Iterable[str], points: int = POINTS) -> None:
        self.hosts = frozenset(hosts)
        if not self.hosts:
            raise ValueError("a hash ring needs at least one host")
        ring = sorted((_position(f"{host}#{i}"), host) for host in self.hosts for i in range(points))
        self._positions = [p for p, _ in ring]
        self._owners = [h for _, h in ring]

    def owner(self, key: str) -> str:
        i = bisect.bisect_left(self._positions, _position(key))
        return self._owners[i % len(self._owners)]


def assign_owners(ring: HashRing, nodes: Mapping[int, tuple[str, str]]) -> dict[int, str]:
    """The nodes (id -> (uuid, current owner)) whose owner on ``ring`` differs from the current one: id -> new
    owner. Keyed on the uuid, which never changes, so an id reused or renumbered cannot move a node."""
    moves: dict[int, str] = {}
    for node_id, (uuid, current) in nodes.items():
        owner = ring.owner(uuid)
        if owner != current:
            moves[node_id] = owner
    return moves
