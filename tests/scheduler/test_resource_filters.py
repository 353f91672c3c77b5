"""RAM/disk/vcpu filters (ratio and exact) and ComputeFilter."""

from __future__ import annotations

import pytest

from bmd.errors import ConfigError
from bmd.filters.base import BaseHostFilter
from bmd.filters.compute import ComputeFilter
from bmd.filters.resources import (
    CoreFilter,
    DiskFilter,
    ExactCoreFilter,
    ExactDiskFilter,
    ExactRamFilter,
    RamFilter,
)

from .factories import make_host, make_spec


@pytest.mark.parametrize(
    ("ratio", "total", "free", "requested", "expected"),
    [
        (1.0, 4096, 4096, 4096, True),
        (1.0, 4096, 4096, 4097, False),
        (1.0, 4096, 0, 1, False),
        (1.5, 4096, 0, 2048, True),
        (1.5, 4096, 0, 2049, False),
        (2.0, 1024, 1024, 2048, False),
        (1.0, 4096, 1024, 1024, True),
    ],
)
def test_ram_filter(ratio: float, total: int, free: int, requested: int, expected: bool) -> None:
    host = make_host(1, memory_mb=total)
    host.free_ram_mb = free
    assert RamFilter(allocation_ratio=ratio).host_passes(host, make_spec(memory_mb=requested)) is expected


@pytest.mark.parametrize(
    ("ratio", "disk_gb", "used", "root_gb", "ephemeral_gb", "swap", "expected"),
    [
        (1.0, 100, False, 100, 0, 0, True),
        (1.0, 100, False, 90, 10, 0, True),
        (1.0, 100, False, 90, 10, 1, False),
        (1.0, 100, False, 99, 0, 1024, True),
        (1.0, 100, True, 1, 0, 0, False),
        (2.0, 100, True, 100, 0, 0, True),
        (2.0, 100, False, 101, 0, 0, False),
    ],
)
def test_disk_filter(
    ratio: float, disk_gb: int, used: bool, root_gb: int, ephemeral_gb: int, swap: int, expected: bool
) -> None:
    spec = make_spec(root_gb=root_gb, ephemeral_gb=ephemeral_gb, swap=swap)
    host = make_host(1, disk_gb=disk_gb, used=used)
    assert DiskFilter(allocation_ratio=ratio).host_passes(host, spec) is expected


@pytest.mark.parametrize(
    ("ratio", "vcpus", "used", "requested", "expected"),
    [
        (1.0, 8, False, 8, True),
        (1.0, 8, False, 9, False),
        (1.0, 8, True, 1, False),
        (2.0, 8, True, 8, True),
        (16.0, 8, False, 9, False),
        (1.0, 0, False, 64, True),
    ],
)
def test_core_filter(ratio: float, vcpus: int, used: bool, requested: int, expected: bool) -> None:
    host = make_host(1, vcpus=vcpus, used=used)
    assert CoreFilter(allocation_ratio=ratio).host_passes(host, make_spec(vcpus=requested)) is expected


@pytest.mark.parametrize(
    ("host_filter", "field", "flavor_value", "expected"),
    [
        (ExactRamFilter(), "memory_mb", 4096, True),
        (ExactRamFilter(), "memory_mb", 2048, False),
        (ExactCoreFilter(), "vcpus", 8, True),
        (ExactCoreFilter(), "vcpus", 4, False),
        (ExactDiskFilter(), "root_gb", 100, True),
        (ExactDiskFilter(), "root_gb", 50, False),
    ],
)
def test_exact_filters_want_exactly_the_free_resources(
    host_filter: BaseHostFilter, field: str, flavor_value: int, expected: bool
) -> None:
    sizes = {"memory_mb": 4096, "vcpus": 8, "root_gb": 100}
    sizes[field] = flavor_value
    spec = make_spec(sizes["memory_mb"], sizes["vcpus"], sizes["root_gb"])
    host = make_host(1, memory_mb=4096, vcpus=8, disk_gb=100)
    assert host_filter.host_passes(host, spec) is expected
    host.consume_from_instance(spec)
    assert host_filter.host_passes(host, spec) is False


def test_exact_disk_counts_swap_and_ephemeral() -> None:
    host = make_host(1, disk_gb=100)
    assert ExactDiskFilter().host_passes(host, make_spec(root_gb=90, ephemeral_gb=10))
    assert not ExactDiskFilter().host_passes(host, make_spec(root_gb=90, ephemeral_gb=10, swap=512))


def test_exact_core_fails_a_node_reporting_no_vcpus() -> None:
    assert not ExactCoreFilter().host_passes(make_host(1, vcpus=0), make_spec(vcpus=0))


@pytest.mark.parametrize("ratio", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_allocation_ratio_is_a_config_error(ratio: object) -> None:
    with pytest.raises(ConfigError, match="allocation_ratio"):
        RamFilter(allocation_ratio=ratio)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("maintenance", "power_fault", "service_up", "expected"),
    [
        (False, False, True, True),
        (True, False, True, False),
        (False, True, True, False),
        (False, False, False, False),
        (True, True, False, False),
    ],
)
def test_compute_filter(maintenance: bool, power_fault: bool, service_up: bool, expected: bool) -> None:
    host = make_host(1, maintenance=maintenance)
    host.power_fault = power_fault
    host.service_up = service_up
    assert ComputeFilter().host_passes(host, make_spec()) is expected
