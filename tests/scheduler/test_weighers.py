"""Weighers and the weight arithmetic."""

from __future__ import annotations

import pytest

from bmd.errors import ConfigError
from bmd.scheduler.weighers import LeastWasteWeigher, RAMWeigher, combine_weights, normalize, weigh_hosts

from .factories import make_host, make_spec


def test_normalize() -> None:
    assert normalize([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]
    assert normalize([5.0, 5.0]) == [0.0, 0.0]
    assert normalize([2.0, 4.0], minval=0.0) == [0.5, 1.0]
    assert normalize([]) == []


def test_ram_weigher_spreads_by_default_and_stacks_with_a_negative_multiplier() -> None:
    hosts = [make_host(1, memory_mb=1024), make_host(2, memory_mb=4096), make_host(3, memory_mb=2048)]
    spec = make_spec(memory_mb=512)
    assert weigh_hosts([RAMWeigher()], hosts, spec) == [0.25, 1.0, 0.5]
    assert weigh_hosts([RAMWeigher(multiplier=-1.0)], hosts, spec) == [-0.25, -1.0, -0.5]


def test_least_waste_prefers_the_node_that_fits_the_flavor_most_closely() -> None:
    small = make_host(1, memory_mb=4096, vcpus=8, disk_gb=100)
    big = make_host(2, memory_mb=65536, vcpus=64, disk_gb=2000)
    exact = make_host(3, memory_mb=2048, vcpus=4, disk_gb=20)
    spec = make_spec(memory_mb=2048, vcpus=4, root_gb=20)
    weights = weigh_hosts([LeastWasteWeigher()], [small, big, exact], spec)
    assert weights[2] == 1.0
    assert weights[2] > weights[0] > weights[1]
    assert LeastWasteWeigher().weigh(exact, spec) == 0.0


def test_least_waste_is_normalised_on_a_fixed_range() -> None:
    spec = make_spec(memory_mb=2048, vcpus=4, root_gb=20)
    half = make_host(1, memory_mb=4096, vcpus=8, disk_gb=40)
    alone = weigh_hosts([LeastWasteWeigher()], [half, make_host(2, memory_mb=4096, vcpus=8, disk_gb=40)], spec)
    assert alone == [0.5, 0.5]


def test_combined_weighers_sum_multiplied_normalised_weights() -> None:
    hosts = [make_host(1, memory_mb=2048), make_host(2, memory_mb=8192)]
    spec = make_spec(memory_mb=2048, vcpus=8, root_gb=100)
    weights = weigh_hosts([LeastWasteWeigher(multiplier=2.0), RAMWeigher(multiplier=1.0)], hosts, spec)
    assert weights == [2.0 * 1.0 + 0.25, 2.0 * (1 - 0.75 / 3) + 1.0]


def test_one_host_weighs_nothing() -> None:
    assert weigh_hosts([RAMWeigher()], [make_host(1)], make_spec()) == [0.0]
    assert combine_weights([RAMWeigher()], [[5.0]], objects=1, hosts=1) == [0.0]


def test_a_group_of_equal_hosts_weighs_like_each_of_them() -> None:
    hosts = [make_host(n, memory_mb=4096) for n in range(3)]
    each = weigh_hosts([RAMWeigher()], hosts, make_spec())
    assert each == [1.0, 1.0, 1.0]
    assert combine_weights([RAMWeigher()], [[4096.0]], objects=1, hosts=3) == [1.0]


@pytest.mark.parametrize("multiplier", [float("nan"), "1", None])
def test_bad_multiplier_is_a_config_error(multiplier: object) -> None:
    with pytest.raises(ConfigError, match="multiplier"):
        RAMWeigher(multiplier=multiplier)  # type: ignore[arg-type]
