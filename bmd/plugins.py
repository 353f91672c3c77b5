"""The one plugin loader: filters, weighers and every driver slot, found by short name through entry points.

A third party adds one by installing a package that declares, e.g.::

    [project.entry-points."bmd.drivers.power"]
    acme = "acme_bmd.power:AcmePower"

bmd's own plugins are declared the same way in its ``pyproject.toml``, and also listed in :data:`BUILTIN`
so that a source checkout that is not pip-installed finds them (a test keeps both lists equal).

One set of rules for every group:

- ``load_plugin(group, name)``: an unknown name, a name two packages claim differently, an entry point that
  does not import or is not a subclass of the group's base class fail with ``ConfigError`` saying which
  (an unknown name lists the known ones). Callers load at start-up, so a bad name stops the service.
- ``build_plugin(cls, settings, options)``: one construction protocol. A class with a
  ``from_settings(settings, **options)`` classmethod is built with it (bmd's own drivers read their config
  section there), any other with ``cls(**options)``. Settings are passed in, never read from a global.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from bmd.errors import ConfigError

if TYPE_CHECKING:
    from bmd.config import Settings

T = TypeVar("T")

POWER_GROUP = "bmd.drivers.power"
DEPLOY_GROUP = "bmd.drivers.deploy"
VIF_GROUP = "bmd.drivers.vif"
CONSOLE_GROUP = "bmd.drivers.console"
FILTER_GROUP = "bmd.filters"
WEIGHER_GROUP = "bmd.weighers"

KINDS: Mapping[str, str] = {
    POWER_GROUP: "power driver",
    DEPLOY_GROUP: "deploy driver",
    VIF_GROUP: "vif driver",
    CONSOLE_GROUP: "console interface",
    FILTER_GROUP: "filter",
    WEIGHER_GROUP: "weigher",
}

BUILTIN: Mapping[str, Mapping[str, str]] = {
    POWER_GROUP: {
        "fake": "bmd.drivers.power.fake:FakePower",
        "ipmi": "bmd.drivers.power.ipmi:IPMIPower",
        "ipmi-pyghmi": "bmd.drivers.power.ipmi_pyghmi:PyghmiPower",
        "redfish": "bmd.drivers.power.redfish:RedfishPower",
    },
    DEPLOY_GROUP: {
        "pxe": "bmd.drivers.deploy.driver:PXEDriver",
    },
    VIF_GROUP: {
        "generic": "bmd.drivers.vif.generic:GenericVif",
        "openflow": "bmd.drivers.vif.openflow:OpenFlowVif",
        "ovs": "bmd.drivers.vif.ovs:OVSVif",
    },
    CONSOLE_GROUP: {
        "none": "bmd.drivers.base:NoConsole",
        "tcp": "bmd.drivers.console.tcp:TcpConsole",
    },
    FILTER_GROUP: {
        "DeployReadyFilter": "bmd.filters.deploy_ready:DeployReadyFilter",
        "ComputeFilter": "bmd.filters.compute:ComputeFilter",
        "ComputeCapabilitiesFilter": "bmd.filters.compute_capabilities:ComputeCapabilitiesFilter",
        "ImagePropertiesFilter": "bmd.filters.image_props:ImagePropertiesFilter",
        "RamFilter": "bmd.filters.resources:RamFilter",
        "DiskFilter": "bmd.filters.resources:DiskFilter",
        "CoreFilter": "bmd.filters.resources:CoreFilter",
        "ExactRamFilter": "bmd.filters.resources:ExactRamFilter",
        "ExactDiskFilter": "bmd.filters.resources:ExactDiskFilter",
        "ExactCoreFilter": "bmd.filters.resources:ExactCoreFilter",
        "SameCapabilityFilter": "bmd.filters.grouping:SameCapabilityFilter",
        "DifferentCapabilityFilter": "bmd.filters.grouping:DifferentCapabilityFilter",
    },
    WEIGHER_GROUP: {
        "RAMWeigher": "bmd.scheduler.weighers:RAMWeigher",
        "LeastWasteWeigher": "bmd.scheduler.weighers:LeastWasteWeigher",
    },
}


def available(group: str) -> dict[str, list[EntryPoint]]:
    """Name -> the distinct entry points claiming it (more than one is a conflict), read afresh."""
    found: dict[str, list[EntryPoint]] = {
        name: [EntryPoint(name, value, group)] for name, value in BUILTIN.get(group, {}).items()
    }
    for entry in entry_points(group=group):
        claims = found.setdefault(entry.name, [])
        if all(entry.value != claim.value for claim in claims):
            claims.append(entry)
    return found


def known_names(group: str) -> list[str]:
    return sorted(available(group))


@cache
def _known(group: str) -> frozenset[str]:
    return frozenset(available(group))


def is_known(group: str, name: str) -> bool:
    """Cheap (cached) membership for per-request checks; a miss reads the entry points again, since a package
    may have been installed since."""
    if name in _known(group):
        return True
    _known.cache_clear()
    return name in _known(group)


def load_plugin(group: str, name: str, base: type[T] | None = None, *, what: str | None = None) -> type[T]:
    """The class ``name`` names in ``group``; ConfigError, prefixed with ``what`` (the config key, e.g.
    ``driver.deploy_driver``; the group's kind by default), when it cannot be had."""
    kind = KINDS.get(group, group)
    label = what or kind
    known = available(group)
    claims = known.get(name)
    if not claims:
        names = ", ".join(sorted(known)) or "(none installed)"
        raise ConfigError(f"{label}: unknown name {name!r}; known {kind}s: {names}")
    if len(claims) > 1:
        raise ConfigError(f"{label}: {kind} {name!r} is registered twice: {', '.join(c.value for c in claims)}")
    try:
        loaded = claims[0].load()
    except Exception as err:
        raise ConfigError(f"{label}: {kind} {name!r}: cannot load {claims[0].value}: {err}") from err
    if base is not None and not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise ConfigError(f"{label}: {kind} {name!r}: {claims[0].value} is not a {base.__name__}")
    return loaded  # type: ignore[no-any-return]


def build_plugin(cls: type[T], settings: Settings | None = None, options: Mapping[str, Any] | None = None) -> T:
    """The one construction protocol: ``cls.from_settings(settings, **options)`` if the class has it, else
    ``cls(**options)``. A TypeError (an option the class does not take) propagates for the caller to name."""
    from_settings = getattr(cls, "from_settings", None)
    if from_settings is not None:
        return from_settings(settings, **(options or {}))  # type: ignore[no-any-return]
    return cls(**(options or {}))
