"""BaremetalNodeState, Flavor and RequestSpec."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bmd.errors import InvalidInput
from bmd.flavors import Flavor
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

from .factories import make_caps, make_host, make_spec


def test_update_from_capabilities_takes_the_seed_keys() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state = BaremetalNodeState(host="", nodename="7")
    state.update_from_capabilities(make_caps(7, memory_mb=8192, vcpus=16, disk_gb=200, location="rack11"), at=at)
    assert (state.host, state.node_id, state.host_ip) == ("svc1", 7, "10.0.0.1")
    assert (state.total_usable_ram_mb, state.free_ram_mb) == (8192, 8192)
    assert (state.total_usable_disk_gb, state.free_disk_mb) == (200, 200 * 1024)
    assert (state.vcpus_total, state.vcpus_used) == (16, 0)
    assert state.supported_instances == (("x86_64", "baremetal", "baremetal"),)
    assert state.capabilities["location"] == "rack11"
    assert state.hypervisor_type == "baremetal"
    assert state.updated == at
    assert state.maintenance is False


def test_capabilities_of_a_used_node() -> None:
    state = make_host(3, used=True, maintenance=True)
    assert (state.free_ram_mb, state.free_disk_mb, state.vcpus_used) == (0, 0, 8)
    assert state.maintenance is True


def test_the_node_row_decides_whether_the_node_is_used() -> None:
    state = make_host(4, memory_mb=8192, vcpus=16, disk_gb=100, used=True)
    assert state.node_free is None and state.free_ram_mb == 0  # not known from bm_nodes: the report decides
    state.set_node(free=True, maintenance=False)
    assert (state.free_ram_mb, state.free_disk_mb, state.vcpus_used) == (8192, 100 * 1024, 0)
    state.update_from_capabilities(make_caps(4, memory_mb=8192, vcpus=16, disk_gb=100, used=True))
    assert state.free_ram_mb == 8192  # a stale report's used figures do not override the row
    state.set_node(free=False, maintenance=True)
    assert (state.free_ram_mb, state.free_disk_mb, state.vcpus_used, state.maintenance) == (0, 0, 16, True)
    state.update_from_capabilities(make_caps(4, memory_mb=8192, vcpus=16, disk_gb=100))
    assert (state.free_ram_mb, state.maintenance) == (0, True)


def test_consume_takes_the_whole_node_whatever_the_flavor() -> None:
    state = make_host(5, memory_mb=8192, vcpus=16, disk_gb=100)
    state.consume_from_instance(make_spec(memory_mb=512, vcpus=1, root_gb=1))
    assert (state.free_ram_mb, state.free_disk_mb, state.vcpus_used) == (0, 0, 16)
    assert (state.total_usable_ram_mb, state.vcpus_total) == (8192, 16)


@pytest.mark.parametrize(
    ("caps", "field"),
    [
        ({"host_memory_total": "lots"}, "host_memory_total"),
        ({"vcpus": [8]}, "vcpus"),
        ({"supported_instances": "x86_64"}, "supported_instances"),
        ({"supported_instances": ["x86_64"]}, "supported_instances"),
    ],
)
def test_malformed_capabilities_name_the_field(caps: dict[str, object], field: str) -> None:
    state = make_host(6)
    with pytest.raises(InvalidInput) as caught:
        state.update_from_capabilities({**make_caps(6), **caps})
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Flavor("f", -1, 1, 1), "memory_mb"),
        (lambda: Flavor("f", 1, True, 1), "vcpus"),
        (lambda: Flavor("f", 1, 1, 1, extra_specs={"cpu_arch": 5}), "extra_specs"),  # type: ignore[dict-item]
        (lambda: make_spec(num_instances=0), "num_instances"),
        (lambda: make_spec(hints={"same_capability": ""}), "hints.same_capability"),
        (lambda: make_spec(hints={"different_capability": 3}), "hints.different_capability"),
    ],
)
def test_bad_requests_name_the_field(build: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field


def test_request_spec_is_frozen_and_copies_its_inputs() -> None:
    specs = {"cpu_arch": "x86_64"}
    spec = RequestSpec(Flavor("f", 1, 1, 1, extra_specs=specs), hints={"same_capability": "location"})
    specs["cpu_arch"] = "aarch64"
    assert spec.extra_specs["cpu_arch"] == "x86_64"
    with pytest.raises(TypeError):
        spec.extra_specs["gpu"] = "a100"  # type: ignore[index]
    assert spec.flavor.disk_mb == 1024
