"""ImagePropertiesFilter: the image's architecture, hypervisor type and vm mode against the node's
``supported_instances`` triples ``(cpu_arch, hypervisor_type, vm_mode)``.

Names are compared in canonical form, case-insensitively: ``amd64``/``x64``/``x86-64``/``em64t`` are
``x86_64``; ``i386``/``i486``/``i586``/``x86``/``x86_32`` are ``i686``; ``arm64`` is ``aarch64``;
hypervisor ``xapi`` is ``xen``; vm mode ``pv`` is ``xen`` and ``hv`` is ``hvm``. An absent (or empty) image
property matches anything. Unlike Nova, which only asked whether each wanted name appeared anywhere in a
triple, each property is compared with its own position of the triple.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from bmd.filters.base import SUPPORTED_INSTANCES, BaseHostFilter, Constraint
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = [
    "ImagePropertiesFilter",
    "canonical_arch",
    "canonical_hypervisor_type",
    "canonical_vm_mode",
    "instance_supported",
]

_ARCH = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "em64t": "x86_64",
    "i386": "i686",
    "i486": "i686",
    "i586": "i686",
    "x86": "i686",
    "x86_32": "i686",
    "x86_32p": "i686",
    "arm64": "aarch64",
}
_HYPERVISOR_TYPE = {"xapi": "xen"}
_VM_MODE = {"pv": "xen", "hv": "hvm"}


def _canonical(aliases: Mapping[str, str]) -> Callable[[object], str]:
    def canonicalize(name: object) -> str:
        text = "" if name is None else str(name).strip().lower()
        return aliases.get(text, text)

    return canonicalize


canonical_arch = _canonical(_ARCH)
canonical_hypervisor_type = _canonical(_HYPERVISOR_TYPE)
canonical_vm_mode = _canonical(_VM_MODE)
_CANONICAL = (canonical_arch, canonical_hypervisor_type, canonical_vm_mode)
_PROPERTIES = ("architecture", "hypervisor_type", "vm_mode")


def _wanted(image_properties: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(canon(image_properties.get(prop)) for canon, prop in zip(_CANONICAL, _PROPERTIES, strict=True))


def _supports(supported_instances: Sequence[Sequence[object]], wanted: tuple[str, ...]) -> bool:
    if not any(wanted):
        return True
    for triple in supported_instances:
        if all(
            not want or (position < len(triple) and _CANONICAL[position](triple[position]) == want)
            for position, want in enumerate(wanted)
        ):
            return True
    return False


def instance_supported(supported_instances: Sequence[Sequence[object]], image_properties: Mapping[str, Any]) -> bool:
    """True when one of the node's triples provides every property the image asks for."""
    return _supports(supported_instances, _wanted(image_properties))


class ImagePropertiesFilter(BaseHostFilter):
    """Passes nodes that can run the image's architecture, hypervisor type and vm mode."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return instance_supported(host_state.supported_instances, spec.image_properties)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        wanted = _wanted(spec.image_properties)
        if not any(wanted):
            return []

        def accepts(key: Hashable) -> bool:
            assert isinstance(key, tuple)
            return _supports(key[0], wanted)

        return [Constraint(SUPPORTED_INSTANCES, accepts)]
