"""The indexed selector gives exactly the brute force's answer (Nova's algorithm: every filter on every
host, then weigh): candidates and weights per instance, per-filter counts, reason. Random hosts,
capabilities, flavors, hints, chains and weighers; random incremental updates between two selections, so
the index is checked both fresh and maintained."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bmd.filters.base import CORES, BaseHostFilter
from bmd.filters.compute import ComputeFilter
from bmd.filters.compute_capabilities import ComputeCapabilitiesFilter
from bmd.filters.deploy_ready import DeployReadyFilter
from bmd.filters.grouping import DifferentCapabilityFilter, SameCapabilityFilter
from bmd.filters.image_props import ImagePropertiesFilter
from bmd.filters.resources import (
    CoreFilter,
    DiskFilter,
    ExactCoreFilter,
    ExactDiskFilter,
    ExactRamFilter,
    RamFilter,
)
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec
from bmd.scheduler.reference import reference_select
from bmd.scheduler.selector import HostSelector
from bmd.scheduler.weighers import BaseWeigher, LeastWasteWeigher, RAMWeigher

from .factories import make_caps, make_spec


class RoomyFilter(BaseHostFilter):
    """A custom filter with no constraints, sensitive to consumption (runs host by host)."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.free_ram_mb >= 2048 or (host_state.node_id or 0) % 3 == 0


class NodeIdWeigher(BaseWeigher):
    """A custom weigher with no facets (weighs every host)."""

    def weigh(self, host_state: BaremetalNodeState, spec: RequestSpec) -> float:
        return float((host_state.node_id or 0) % 3)


FILTERS = [
    DeployReadyFilter,
    ComputeFilter,
    ImagePropertiesFilter,
    ComputeCapabilitiesFilter,
    RamFilter,
    lambda: RamFilter(allocation_ratio=1.5),
    DiskFilter,
    lambda: DiskFilter(allocation_ratio=2.0),
    CoreFilter,
    lambda: CoreFilter(allocation_ratio=2.0),
    ExactRamFilter,
    ExactDiskFilter,
    ExactCoreFilter,
    SameCapabilityFilter,
    DifferentCapabilityFilter,
    RoomyFilter,
]


class ManyCoresWeigher(BaseWeigher):
    """An indexed weigher with few distinct weights: many groups of hosts tie."""

    facets = (CORES,)

    def weigh(self, host_state: BaremetalNodeState, spec: RequestSpec) -> float:
        return 1.0 if host_state.vcpus_total >= 4 else 0.0


WEIGHERS: list[type[BaseWeigher]] = [RAMWeigher, LeastWasteWeigher, NodeIdWeigher, ManyCoresWeigher]

KEYS = [
    "cpu_arch",
    "capabilities:cpu_arch",
    "capabilities:gpu",
    "gpu",
    "gpus",
    "capabilities:gpus",
    "location",
    "capabilities:cpu_info:vendor",
    "capabilities:cpu_info:features",
    "capabilities:cpu_info",
    "hw:cpu_policy",
    "capabilities:missing",
]
REQUIREMENTS = [
    "x86_64",
    "amd64",
    "a100",
    "<or> a100 <or> h100",
    "s== a100",
    "2",
    "= 2",
    ">= 1",
    "<= 2",
    "== 2",
    "!= 2",
    "<in> 10",
    "<in> a",
    "<all-in> avx avx2",
    "<in> avx",
    "Intel",
    "s> AMD",
    "<or> r1 <or> r3",
    "r2",
    "",
    "== abc",
    "<or>",
]

node = st.fixed_dictionaries(
    {
        "memory_mb": st.sampled_from([1024, 2048, 4096]),
        "vcpus": st.sampled_from([0, 2, 4, 8]),
        "disk_gb": st.sampled_from([10, 20, 40]),
        "used": st.booleans(),
        "cpu_arch": st.sampled_from(["x86_64", "aarch64", "AMD64", "i386"]),
        "maintenance": st.sampled_from([False, False, False, True]),
        "deploy_ready": st.sampled_from([True, True, True, False]),
        "host": st.sampled_from(["svc1", "svc2"]),
    },
    optional={
        "gpu": st.sampled_from(["a100", "h100", 2, "2", 2.0]),
        "location": st.sampled_from(["r1", "r2", "r3"]),
        "cpu_info": st.fixed_dictionaries(
            {
                "vendor": st.sampled_from(["Intel", "AMD"]),
                "features": st.lists(st.sampled_from(["avx", "avx2", "sse4"]), max_size=3, unique=True),
            }
        ),
        "gpus": st.integers(0, 4),
        "supported_instances": st.just([]),
    },
)
specs = st.builds(
    make_spec,
    memory_mb=st.sampled_from([512, 1024, 2048, 4096]),
    vcpus=st.sampled_from([1, 2, 4, 8]),
    root_gb=st.sampled_from([5, 10, 20, 40]),
    ephemeral_gb=st.sampled_from([0, 5]),
    swap=st.sampled_from([0, 512, 1024]),
    extra_specs=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(REQUIREMENTS), max_size=3),
    image_properties=st.fixed_dictionaries(
        {},
        optional={
            "architecture": st.sampled_from(["x86_64", "amd64", "aarch64", "i686", ""]),
            "hypervisor_type": st.sampled_from(["baremetal", "kvm"]),
            "vm_mode": st.sampled_from(["baremetal", "hvm"]),
        },
    ),
    num_instances=st.integers(1, 3),
    hints=st.fixed_dictionaries(
        {},
        optional={
            "same_capability": st.sampled_from(["location", "cpu_info:vendor", "gpu"]),
            "different_capability": st.sampled_from(["location", "capabilities:cpu_info:vendor", "gpu"]),
        },
    ),
)
chains = st.lists(st.sampled_from(range(len(FILTERS))), max_size=7)
weighings = st.lists(
    st.tuples(st.sampled_from(range(len(WEIGHERS))), st.sampled_from([1.0, 2.0, 0.5, -1.0, 0.0])), max_size=3
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("caps"), st.integers(0, 14), node),
        st.tuples(st.just("consume"), st.integers(0, 14)),
        st.tuples(st.just("remove"), st.integers(0, 14)),
        st.tuples(st.just("health"), st.integers(0, 14), st.booleans(), st.booleans()),
        st.tuples(st.just("service"), st.sampled_from(["svc1", "svc2"]), st.booleans()),
    ),
    max_size=8,
)


def apply(selector: HostSelector, operation: tuple[Any, ...]) -> None:
    kind, target = operation[0], operation[1]
    nodename = str(target)
    if kind == "caps":
        selector.update_capabilities(make_caps(target, **operation[2]))
    elif kind == "service":
        selector.set_service_up(target, operation[2])
    elif nodename not in selector:
        return
    elif kind == "consume":
        selector.consume(nodename)
    elif kind == "remove":
        selector.remove(nodename)
    else:
        selector.set_health(nodename, power_fault=operation[2], service_up=operation[3])


def check(selector: HostSelector, spec: RequestSpec) -> None:
    indexed = selector.select(spec)
    assert indexed == reference_select(selector, spec)
    event("placed all" if indexed.ok else "no valid host")


def check_before_and_after_updates(
    selector: HostSelector, nodes: list[dict[str, Any]], spec: RequestSpec, updates: list[tuple[Any, ...]]
) -> None:
    """Load ``nodes``, compare (this builds the facets), apply ``updates`` incrementally, compare again."""
    for node_id, caps in enumerate(nodes):
        selector.update_capabilities(make_caps(node_id, **caps))
    check(selector, spec)
    for operation in updates:
        apply(selector, operation)
    check(selector, spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(node, max_size=12),
    spec=specs,
    chain=chains,
    weighing=weighings,
    candidates_per_instance=st.integers(1, 5),
    updates=operations,
)
def test_indexed_selection_equals_brute_force(
    nodes: list[dict[str, Any]],
    spec: RequestSpec,
    chain: list[int],
    weighing: list[tuple[int, float]],
    candidates_per_instance: int,
    updates: list[tuple[Any, ...]],
) -> None:
    selector = HostSelector(
        [FILTERS[i]() for i in chain],
        [WEIGHERS[i](multiplier=m) for i, m in weighing],
        candidates_per_instance=candidates_per_instance,
    )
    check_before_and_after_updates(selector, nodes, spec, updates)


grouped_node = st.fixed_dictionaries(
    {
        "location": st.sampled_from(["r1", "r2", "r3", "r4"]),
        "used": st.sampled_from([False, False, False, True]),
    },
    optional={
        "gpu": st.sampled_from(["a100", "h100", 2, "2", 2.0]),
        "cpu_info": st.fixed_dictionaries({"vendor": st.sampled_from(["Intel", "AMD"])}),
    },
)
grouping_hints = st.one_of(
    st.fixed_dictionaries({"same_capability": st.sampled_from(["location", "cpu_info:vendor", "gpu"])}),
    st.fixed_dictionaries({"different_capability": st.sampled_from(["location", "cpu_info:vendor", "gpu"])}),
)


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(grouped_node, max_size=16),
    spec=specs,
    keep_extra_specs=st.booleans(),
    hints=grouping_hints,
    instances=st.integers(1, 5),
    updates=operations,
)
def test_capability_and_grouping_constraints_equal_brute_force(
    nodes: list[dict[str, Any]],
    spec: RequestSpec,
    keep_extra_specs: bool,
    hints: dict[str, str],
    instances: int,
    updates: list[tuple[Any, ...]],
) -> None:
    flavor = spec.flavor if keep_extra_specs else dataclasses.replace(spec.flavor, extra_specs={})
    spec = dataclasses.replace(spec, flavor=flavor, hints=hints, num_instances=instances)
    selector = HostSelector(
        [ComputeCapabilitiesFilter(), RamFilter(), SameCapabilityFilter(), DifferentCapabilityFilter()],
        [ManyCoresWeigher()],
    )
    check_before_and_after_updates(selector, nodes, spec, updates)
