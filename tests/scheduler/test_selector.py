"""HostSelector: feeding it, incremental updates, and what the index spares custom filters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from bmd.errors import InvalidInput, NotFound
from bmd.filters.base import BaseHostFilter, Constraint
from bmd.filters.registry import DEFAULT_FILTERS, DEFAULT_WEIGHERS, build_filters, build_weighers
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec
from bmd.scheduler.reference import reference_select
from bmd.scheduler.selector import HostSelector
from bmd.scheduler.weighers import RAMWeigher

from .factories import make_caps, make_spec

GPU = make_spec(extra_specs={"capabilities:gpu": "a100"})


def default_selector(*node_ids: int, **caps: Any) -> HostSelector:
    selector = HostSelector(build_filters(DEFAULT_FILTERS), build_weighers(DEFAULT_WEIGHERS))
    for node_id in node_ids:
        selector.update_capabilities(make_caps(node_id, **caps))
    return selector


def chosen(selector: HostSelector, spec: RequestSpec) -> list[str]:
    result = selector.select(spec)
    assert result == reference_select(selector, spec)
    return sorted(c.nodename for c in result.candidates[0]) if result.ok else []


def test_capability_updates_move_a_node_in_and_out_of_the_answer() -> None:
    selector = default_selector(1, 2, gpu="h100")
    assert chosen(selector, GPU) == []
    selector.update_capabilities(make_caps(2, gpu="a100"))
    assert chosen(selector, GPU) == ["2"]
    selector.update_capabilities(make_caps(2, gpu="a100", used=True))
    assert chosen(selector, GPU) == []
    selector.update_capabilities(make_caps(3, gpu="a100"))
    assert chosen(selector, GPU) == ["3"]


def test_select_consumes_nothing_and_consume_does() -> None:
    selector = default_selector(1, 2)
    first = selector.select(make_spec(num_instances=2))
    assert selector.select(make_spec(num_instances=2)) == first
    assert selector.get("1").free_ram_mb == 4096
    selector.consume(first.chosen[0].nodename)
    assert chosen(selector, make_spec()) == [n for n in ("1", "2") if n != first.chosen[0].nodename]


def test_remove_and_sync_service() -> None:
    selector = default_selector(1, 2, 3)
    selector.update_capabilities(make_caps(10, host="svc2"))
    assert chosen(selector, make_spec()) == ["1", "10", "2", "3"]
    selector.remove("2")
    assert "2" not in selector and len(selector) == 3
    assert chosen(selector, make_spec()) == ["1", "10", "3"]
    gone = selector.sync_service("svc1", [make_caps(3), make_caps(4)])
    assert gone == ["1"]
    assert chosen(selector, make_spec()) == ["10", "3", "4"]
    selector.update_capabilities(make_caps(3, host="svc2"))
    assert selector.sync_service("svc1", []) == ["4"]
    assert selector.sync_service("svc2", [make_caps(10, host="svc2")]) == ["3"]
    assert [state.nodename for state in selector.hosts()] == ["10"]
    with pytest.raises(NotFound):
        selector.remove("1")


def test_health_changes() -> None:
    selector = default_selector(1, 2)
    selector.update_capabilities(make_caps(3, host="svc2"))
    assert chosen(selector, make_spec()) == ["1", "2", "3"]
    selector.set_health("1", power_fault=True)
    assert chosen(selector, make_spec()) == ["2", "3"]
    selector.set_service_up("svc1", False)
    assert chosen(selector, make_spec()) == ["3"]
    selector.set_service_up("svc1", True)
    selector.set_health("1", power_fault=False)
    selector.update_capabilities(make_caps(3, host="svc2", maintenance=True))
    assert chosen(selector, make_spec()) == ["1", "2"]


def test_the_node_row_decides_free_or_used_over_the_capability_figures() -> None:
    selector = default_selector(1, 2)
    assert chosen(selector, make_spec()) == ["1", "2"]
    selector.set_node("2", free=False, maintenance=False, power_fault=False)
    assert chosen(selector, make_spec()) == ["1"]
    selector.update_capabilities(make_caps(2, memory_mb=8192))  # a report that still says free
    assert selector.get("2").total_usable_ram_mb == 8192 and chosen(selector, make_spec()) == ["1"]
    selector.update_capabilities(make_caps(1, used=True))  # a report that says used, of a free node
    assert chosen(selector, make_spec()) == []  # no view of node 1 yet: the report decides
    selector.set_node("1", free=True, maintenance=False, power_fault=False)
    selector.set_node("2", free=True, maintenance=False, power_fault=False)
    assert chosen(selector, make_spec()) == ["1", "2"]
    assert selector.get("2").free_ram_mb == 8192
    selector.set_node("1", free=True, maintenance=True, power_fault=False)
    assert chosen(selector, make_spec()) == ["2"]


def test_update_without_a_nodename_is_refused() -> None:
    caps = make_caps(1)
    del caps["hypervisor_hostname"], caps["node"]
    with pytest.raises(InvalidInput, match="hypervisor_hostname") as caught:
        default_selector().update_capabilities(caps)
    assert caught.value.field == "hypervisor_hostname"


class CountingFilter(BaseHostFilter):
    """A custom filter without constraints that records which hosts it was asked about."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        self.seen.append(host_state.nodename)
        return True


def test_a_custom_filter_after_the_indexed_ones_sees_only_their_survivors() -> None:
    counting = CountingFilter()
    selector = HostSelector([*build_filters(DEFAULT_FILTERS), counting], build_weighers(DEFAULT_WEIGHERS))
    for node_id in range(100):
        selector.update_capabilities(make_caps(node_id, gpu="a100" if node_id % 10 == 0 else "none"))
    result = selector.select(GPU)
    assert sorted(counting.seen) == sorted(str(n) for n in range(0, 100, 10))
    counting.seen.clear()
    assert result == reference_select(selector, GPU)
    assert len(counting.seen) == 10


class LyingFilter(BaseHostFilter):
    """Its constraints claim every host passes; host_passes disagrees for odd nodes."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.node_id is not None and host_state.node_id % 2 == 0

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return []


def test_the_brute_force_comparison_catches_constraints_that_disagree_with_host_passes() -> None:
    selector = HostSelector([LyingFilter()], build_weighers(DEFAULT_WEIGHERS))
    for node_id in range(4):
        selector.update_capabilities(make_caps(node_id))
    assert selector.select(make_spec()) != reference_select(selector, make_spec())


def test_prepare_then_select_matches() -> None:
    selector = default_selector(*range(20), gpu="a100")
    selector.prepare(GPU)
    selector.update_capabilities(make_caps(3, gpu="h100"))
    assert chosen(selector, GPU) == sorted(str(n) for n in (0, 1, 2, 4, 5, 6, 7, 8))


def test_republished_capabilities_refresh_only_the_timestamp() -> None:
    selector = default_selector(1)
    first, later = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    state = selector.update_capabilities(make_caps(1), at=first)
    assert selector.update_capabilities(make_caps(1), at=later) is state
    assert state.updated == later


def test_capabilities_published_after_a_consume_still_win() -> None:
    selector = default_selector(1)
    selector.consume("1")
    assert chosen(selector, make_spec()) == []
    selector.update_capabilities(make_caps(1))
    assert selector.get("1").free_ram_mb == 4096
    assert chosen(selector, make_spec()) == ["1"]
    selector.set_node("1", free=True, maintenance=False, power_fault=False)
    selector.consume("1")  # once bm_nodes is known, a report no longer frees a consumed node
    selector.update_capabilities(make_caps(1))
    assert chosen(selector, make_spec()) == []


def test_a_malformed_update_changes_nothing() -> None:
    selector = default_selector(1, 2, gpu="a100")
    assert chosen(selector, GPU) == ["1", "2"]
    with pytest.raises(InvalidInput):
        selector.update_capabilities({**make_caps(2, gpu="h100", used=True), "vcpus": "many"})
    with pytest.raises(InvalidInput):
        selector.update_capabilities({**make_caps(1, used=True), "disk_total": []})
    assert selector.get("2").capabilities["gpu"] == "a100"
    assert (selector.get("1").free_ram_mb, selector.get("2").free_ram_mb) == (4096, 4096)
    assert chosen(selector, GPU) == ["1", "2"]


class UnindexedRAMWeigher(RAMWeigher):
    """RAMWeigher without facets: every host is weighed (the selector's other ranking path)."""

    facets = None


@pytest.mark.parametrize("weigher", [RAMWeigher, UnindexedRAMWeigher])
def test_the_local_services_nodes_come_first_among_equal_weights(weigher: type[RAMWeigher]) -> None:
    def selector(local_host: str | None) -> HostSelector:
        s = HostSelector(build_filters(["ComputeFilter", "RamFilter"]), [weigher()], local_host=local_host)
        for node_id, host in ((1, "svc1"), (2, "svc2"), (3, "svc1"), (4, "svc2")):
            s.update_capabilities(make_caps(node_id, host=host))
        s.update_capabilities(make_caps(5, host="svc1", memory_mb=8192))  # more free RAM: weighs more
        return s

    def order(s: HostSelector) -> list[str]:
        return [c.nodename for c in s.select(make_spec()).candidates[0]]

    plain = selector(None)
    assert plain.select(make_spec()) == reference_select(plain, make_spec())
    assert order(plain) == ["5", "1", "2", "3", "4"]
    # Weight first, then the service's own nodes, each part in slot order.
    assert order(selector("svc2")) == ["5", "2", "4", "1", "3"]
    assert order(selector("svc1")) == ["5", "1", "3", "2", "4"]
    assert order(selector("svc3")) == ["5", "1", "2", "3", "4"]
