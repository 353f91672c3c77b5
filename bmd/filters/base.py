"""The filter contract, and the facets that let an index answer a filter without visiting every host.

A filter is a pure synchronous predicate, ``host_passes(host_state, spec) -> bool``, configured through its
constructor. That is all a third-party filter has to write.

A filter may also describe itself as ``constraints(spec)``: a list of ``Constraint`` objects, each a
``Facet`` (a projection of a host state onto a small hashable key, e.g. ``(total_ram, free_ram)`` or the
value at ``capabilities:gpu``) and a predicate on that key. The host passes when every constraint accepts its
key. The index groups hosts by facet key, tests each distinct key once and unions the groups that pass, so a
filter costs the number of distinct keys rather than the number of hosts. ``constraints`` must agree with
``host_passes`` on every host; the test suite checks this for the built-in filters against the brute force.
"""

from __future__ import annotations

import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = [
    "CORES",
    "DEPLOY_READY",
    "DISK",
    "HEALTH",
    "MISSING",
    "RAM",
    "SUPPORTED_INSTANCES",
    "AttributeFacet",
    "BaseHostFilter",
    "CapabilityFacet",
    "CapabilityValue",
    "Constraint",
    "Facet",
    "capability_facet",
    "capability_path",
    "lookup_capability",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""The key of a host that lacks a capability (absent, ``None``, or a path through a non-dict)."""


class Facet(ABC):
    """A projection of a host state onto a hashable key. Facets with the same ``name`` must project the
    same way: the index keeps one grouping per name and shares it between filters and weighers."""

    name: str
    aliased: ClassVar[bool] = False

    @abstractmethod
    def key(self, host: BaremetalNodeState) -> Hashable: ...

    def alias(self, key: Hashable) -> str | None:
        """A secondary string key for lookups (only when ``aliased``)."""
        return None


class AttributeFacet(Facet):
    """The tuple of some attributes of the host state."""

    def __init__(self, name: str, attributes: Sequence[str]) -> None:
        self.name = name
        self._get = operator.attrgetter(*attributes)
        self._single = len(attributes) == 1

    def key(self, host: BaremetalNodeState) -> Hashable:
        value: Hashable = self._get(host)
        return (value,) if self._single else value


HEALTH: Final = AttributeFacet("health", ("maintenance", "power_fault", "service_up"))
DEPLOY_READY: Final = AttributeFacet("deploy_ready", ("deploy_ready",))
RAM: Final = AttributeFacet("ram", ("total_usable_ram_mb", "free_ram_mb"))
DISK: Final = AttributeFacet("disk", ("total_usable_disk_gb", "free_disk_mb"))
CORES: Final = AttributeFacet("cores", ("vcpus_total", "vcpus_used"))
SUPPORTED_INSTANCES: Final = AttributeFacet("supported_instances", ("supported_instances",))


def capability_path(key: str) -> tuple[str, ...] | None:
    """Where an extra-spec key points in the capabilities, or ``None`` when the filter must ignore it.

    ``capabilities:a:b`` walks nested dicts ``a`` then ``b``; an unscoped key (no ``:``) is looked up at the
    top level; a key with any other scope (``trust:trusted_host``, ``hw:cpu_policy``) is not ours.
    """
    scope = key.split(":")
    if len(scope) == 1:
        return (key,)
    if scope[0] != "capabilities":
        return None
    return tuple(scope[1:])


def lookup_capability(capabilities: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path``, or ``None`` when it is absent, ``None``, or the walk meets a non-dict."""
    value: Any = capabilities
    for step in path:
        if type(value) is not dict and not isinstance(value, Mapping):  # the ABC check is slow
            return None
        value = value.get(step)
        if value is None:
            return None
    return value


class CapabilityValue:
    """A capability value as an index key: equal when type and ``repr`` are equal, which makes every
    ``match`` answer the same for all values grouped under one key (``1`` and ``1.0`` stay apart, lists and
    dicts become hashable)."""

    __slots__ = ("_hash", "_identity", "value")

    def __init__(self, value: Any, identity: tuple[type, str] | None = None) -> None:
        self.value = value
        self._identity = identity or (type(value), repr(value))
        self._hash = hash(self._identity)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CapabilityValue) and self._identity == other._identity

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"CapabilityValue({self.value!r})"


class CapabilityFacet(Facet):
    """The value at one capability path; aliased by ``str(value)`` for equality look-ups."""

    aliased = True
    _INTERNED_MAX = 65536

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.name = "capabilities:" + ":".join(path)
        # Equal values share one key object, so dict look-ups of keys stop at the identity check instead
        # of calling CapabilityValue.__eq__; only a speed-up, emptied when it grows large.
        self._interned: dict[tuple[type, str], CapabilityValue] = {}

    def key(self, host: BaremetalNodeState) -> Hashable:
        value = lookup_capability(host.capabilities, self.path)
        if value is None:
            return MISSING
        identity = (type(value), repr(value))
        interned = self._interned.get(identity)
        if interned is None:
            if len(self._interned) >= self._INTERNED_MAX:
                self._interned.clear()
            interned = self._interned[identity] = CapabilityValue(value, identity)
        return interned

    def alias(self, key: Hashable) -> str | None:
        return str(key.value) if isinstance(key, CapabilityValue) else None


@functools.lru_cache(maxsize=1024)
def capability_facet(path: tuple[str, ...]) -> CapabilityFacet:
    return CapabilityFacet(path)


@dataclass(frozen=True)
class Constraint:
    """Hosts whose ``facet`` key is accepted pass. With ``aliases``, ``accepts`` may only be true for keys
    whose facet alias is one of them, so an aliased index need only look those keys up."""

    facet: Facet
    accepts: Callable[[Hashable], bool]
    aliases: frozenset[str] | None = None


class BaseHostFilter(ABC):
    """Base of every host filter. ``name`` (the class name unless set) is what configuration, entry points
    and the chain's reason use."""

    name: ClassVar[str] = "BaseHostFilter"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @abstractmethod
    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        """True when ``host_state`` can take one instance of ``spec``. Pure: no I/O, no mutation."""

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint] | None:
        """The same verdict as facet constraints (all must accept), or ``None`` when the filter cannot be
        indexed; then the selector calls ``host_passes`` on the hosts that survived the filters before it."""
        return None
