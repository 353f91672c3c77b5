"""The chain's record and reason, and multi-instance requests: the same answers indexed and brute force."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from bmd.errors import NoValidHost
from bmd.filters.base import BaseHostFilter
from bmd.filters.registry import DEFAULT_FILTERS, DEFAULT_WEIGHERS, build_filters, build_weighers
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.reference import reference_select
from bmd.scheduler.selection import NO_HOSTS, FilterCount, Selection
from bmd.scheduler.selector import HostSelector
from bmd.scheduler.weighers import BaseWeigher

from .factories import make_caps, make_spec

Select = Callable[[RequestSpec], Selection]


def selector(
    nodes: Sequence[dict[str, Any]],
    filters: Sequence[BaseHostFilter] | None = None,
    weighers: Sequence[BaseWeigher] | None = None,
    candidates_per_instance: int = 8,
) -> HostSelector:
    built = HostSelector(
        build_filters(DEFAULT_FILTERS) if filters is None else filters,
        build_weighers(DEFAULT_WEIGHERS) if weighers is None else weighers,
        candidates_per_instance=candidates_per_instance,
    )
    for caps in nodes:
        built.update_capabilities(caps)
    return built


@pytest.fixture(params=["indexed", "brute_force"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(sel: HostSelector, mode: str, spec: RequestSpec) -> Selection:
    """Run one path, and check the other gives the same answer."""
    indexed, brute = sel.select(spec), reference_select(sel, spec)
    assert indexed == brute
    return indexed if mode == "indexed" else brute


def names(selection: Selection) -> list[str]:
    return [c.nodename for c in selection.chosen]


def test_reason_names_the_filter_that_removed_the_last_hosts(mode: str) -> None:
    sel = selector([make_caps(1, gpu="h100"), make_caps(2), make_caps(3, gpu="h100"), make_caps(4, used=True)])
    result = run(sel, mode, make_spec(extra_specs={"capabilities:gpu": "a100"}))
    assert result.reason == "ComputeCapabilitiesFilter removed the last 4 hosts"
    assert not result.ok and result.candidates == ()
    assert result.filter_counts == (
        (
            FilterCount("DeployReadyFilter", 4, 4),
            FilterCount("ComputeFilter", 4, 4),
            FilterCount("ImagePropertiesFilter", 4, 4),
            FilterCount("ComputeCapabilitiesFilter", 4, 0),
        ),
    )
    with pytest.raises(NoValidHost, match="ComputeCapabilitiesFilter removed the last 4 hosts"):
        result.require()


def test_counts_record_every_filter_in_order(mode: str) -> None:
    nodes = [
        make_caps(1, maintenance=True),
        make_caps(2, cpu_arch="aarch64"),
        make_caps(3, used=True),
        make_caps(4, memory_mb=1024),
        make_caps(5, gpu="a100"),
        make_caps(6),
        make_caps(7, deploy_ready=False),
    ]
    spec = make_spec(memory_mb=2048, image_properties={"architecture": "amd64"})
    result = run(selector(nodes), mode, spec)
    counts = [(c.filter, c.removed) for c in result.filter_counts[0]]
    assert counts == [
        ("DeployReadyFilter", 1),
        ("ComputeFilter", 1),
        ("ImagePropertiesFilter", 1),
        ("ComputeCapabilitiesFilter", 0),
        ("RamFilter", 2),
        ("DiskFilter", 0),
        ("CoreFilter", 0),
        ("SameCapabilityFilter", 0),
        ("DifferentCapabilityFilter", 0),
    ]
    assert sorted(c.nodename for c in result.candidates[0]) == ["5", "6"]


def test_only_unready_nodes_name_the_readiness_filter(mode: str) -> None:
    result = run(selector([make_caps(1, deploy_ready=False), make_caps(2, deploy_ready=False)]), mode, make_spec())
    assert result.reason == "DeployReadyFilter removed the last 2 hosts"


def test_no_hosts_at_all(mode: str) -> None:
    result = run(selector([]), mode, make_spec())
    assert result.reason == NO_HOSTS
    assert result.filter_counts == ()


def test_candidates_are_ordered_by_weight_and_capped(mode: str) -> None:
    nodes = [make_caps(n, memory_mb=4096 * (1 + n % 3), vcpus=8, disk_gb=100) for n in range(10)]
    sel = selector(nodes, candidates_per_instance=4)
    result = run(sel, mode, make_spec(memory_mb=4096, vcpus=8, root_gb=100))
    assert [c.nodename for c in result.candidates[0]] == ["0", "3", "6", "9"]
    weights = [c.weight for c in result.candidates[0]]
    assert weights == sorted(weights, reverse=True)


def test_ties_are_broken_by_host_order(mode: str) -> None:
    sel = selector([make_caps(n) for n in (5, 3, 9)])
    sel.remove("3")
    sel.update_capabilities(make_caps(7))
    result = run(sel, mode, make_spec())
    assert [c.nodename for c in result.candidates[0]] == [h.nodename for h in sel.hosts()] == ["5", "7", "9"]


def test_each_instance_gets_its_own_node(mode: str) -> None:
    result = run(selector([make_caps(n) for n in range(4)]), mode, make_spec(num_instances=3))
    assert result.ok
    assert len(set(names(result))) == 3
    second = result.filter_counts[1]
    assert FilterCount("RamFilter", 4, 3) in second


def test_a_request_that_runs_out_of_nodes_says_where(mode: str) -> None:
    result = run(selector([make_caps(1), make_caps(2)]), mode, make_spec(num_instances=3))
    assert result.reason == "RamFilter removed the last 1 hosts"
    assert len(result.candidates) == 2 and len(result.filter_counts) == 3


def racks(layout: dict[str, int], **extra: Any) -> list[dict[str, Any]]:
    nodes, node_id = [], 0
    for rack, count in layout.items():
        for _ in range(count):
            nodes.append(make_caps(node_id, location=rack, **extra))
            node_id += 1
    return nodes


def test_same_capability_keeps_a_request_in_one_rack(mode: str) -> None:
    nodes = racks({"rack1": 3, "rack2": 3})
    result = run(selector(nodes), mode, make_spec(num_instances=3, hints={"same_capability": "location"}))
    assert result.ok
    located = {sel_node["location"] for sel_node in nodes if sel_node["node"] in names(result)}
    assert located == {"rack1"}


def test_same_capability_is_greedy(mode: str) -> None:
    nodes = racks({"rack1": 2, "rack2": 3})
    result = run(selector(nodes), mode, make_spec(num_instances=3, hints={"same_capability": "location"}))
    assert result.reason == "RamFilter removed the last 1 hosts"
    assert names(result) == ["0", "1"]


def test_different_capability_spreads_a_request(mode: str) -> None:
    nodes = racks({"rack1": 2, "rack2": 2, "rack3": 2})
    spec = make_spec(num_instances=3, hints={"different_capability": "location"})
    result = run(selector(nodes), mode, spec)
    assert names(result) == ["0", "2", "4"]
    four = run(selector(nodes), mode, make_spec(num_instances=4, hints={"different_capability": "location"}))
    assert four.reason == "DifferentCapabilityFilter removed the last 1 hosts"


def test_grouping_hints_walk_nested_capabilities(mode: str) -> None:
    nodes = [make_caps(n, cpu_info={"vendor": "Intel" if n % 2 else "AMD"}) for n in range(4)]
    spec = make_spec(num_instances=2, hints={"same_capability": "capabilities:cpu_info:vendor"})
    assert names(run(selector(nodes), mode, spec)) == ["0", "2"]
    spec = make_spec(num_instances=2, hints={"different_capability": "cpu_info:vendor"})
    assert names(run(selector(nodes), mode, spec)) == ["0", "1"]


def test_a_node_without_the_hinted_capability_never_passes(mode: str) -> None:
    nodes = [make_caps(0), make_caps(1, location="rack1")]
    result = run(selector(nodes), mode, make_spec(hints={"same_capability": "location"}))
    assert names(result) == ["1"]
    result = run(selector(nodes[:1]), mode, make_spec(hints={"different_capability": "location"}))
    assert result.reason == "DifferentCapabilityFilter removed the last 1 hosts"


def test_without_hints_grouping_filters_pass_everything(mode: str) -> None:
    result = run(selector(racks({"rack1": 2, "rack2": 1})), mode, make_spec(num_instances=3))
    assert result.ok
