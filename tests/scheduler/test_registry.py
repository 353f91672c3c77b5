"""Filters and weighers by name through entry points."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bmd.errors import ConfigError
from bmd.filters.registry import (
    BUILTIN_FILTERS,
    BUILTIN_WEIGHERS,
    DEFAULT_FILTERS,
    DEFAULT_WEIGHERS,
    available_filters,
    build_filters,
    build_weighers,
    load_filter,
)
from bmd.filters.resources import RamFilter
from bmd.scheduler.reference import reference_select
from bmd.scheduler.selector import HostSelector
from bmd.scheduler.weighers import RAMWeigher

from .factories import make_caps, make_spec

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from bmd.filters.base import BaseHostFilter


class EvenNodeFilter(BaseHostFilter):
    """Only even node ids (a third party's filter, without constraints)."""

    def __init__(self, remainder: int = 0) -> None:
        self.remainder = remainder

    def host_passes(self, host_state, spec):
        return host_state.node_id % 2 == self.remainder


class NotAFilter:
    pass
'''


def install_plugin(root: Path, monkeypatch: pytest.MonkeyPatch, entries: str, name: str = "acme_bmd") -> None:
    """A distribution on sys.path, as pip would leave it, without pip."""
    (root / f"{name}_filters.py").write_text(PLUGIN)
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entries)
    monkeypatch.syspath_prepend(str(root))


def test_pyproject_declares_exactly_the_builtin_entry_points() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert project["bmd.filters"] == dict(BUILTIN_FILTERS)
    assert project["bmd.weighers"] == dict(BUILTIN_WEIGHERS)


def test_every_builtin_loads_and_is_named_as_registered() -> None:
    for built in build_filters(list(BUILTIN_FILTERS)) + build_weighers(list(BUILTIN_WEIGHERS)):
        assert built.name in BUILTIN_FILTERS or built.name in BUILTIN_WEIGHERS
    assert [f.name for f in build_filters(DEFAULT_FILTERS)] == list(DEFAULT_FILTERS)
    assert [w.name for w in build_weighers(DEFAULT_WEIGHERS)] == list(DEFAULT_WEIGHERS)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build_filters(["ComputeFilter", "NoSuchFilter"])
    message = str(caught.value)
    assert "NoSuchFilter" in message
    for name in BUILTIN_FILTERS:
        assert name in message
    with pytest.raises(ConfigError, match="LeastWasteWeigher"):
        build_weighers(["Heaviest"])


def test_options_reach_the_constructor() -> None:
    (ram,) = build_filters(["RamFilter"], {"RamFilter": {"allocation_ratio": 1.5}})
    assert isinstance(ram, RamFilter) and ram.allocation_ratio == 1.5
    (weigher,) = build_weighers(["RAMWeigher"], {"RAMWeigher": {"multiplier": -2}})
    assert isinstance(weigher, RAMWeigher) and weigher.multiplier == -2.0


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"RamFilter": {"ratio": 2}}, "scheduler.filter_options.RamFilter"),
        ({"ComputeFilter": {"x": 1}}, "scheduler.filter_options.ComputeFilter"),
        ({"DiskFilter": {"allocation_ratio": 2}}, "scheduler.filter_options.DiskFilter"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_filters(["RamFilter", "ComputeFilter"], options)


def test_a_filter_from_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "[bmd.filters]\nEvenNodeFilter = acme_bmd_filters:EvenNodeFilter\n")
    assert "EvenNodeFilter" in available_filters()
    chain = build_filters(["ComputeFilter", "EvenNodeFilter"], {"EvenNodeFilter": {"remainder": 1}})
    assert chain[1].name == "EvenNodeFilter"
    selector = HostSelector(chain, build_weighers(DEFAULT_WEIGHERS))
    for node_id in range(6):
        selector.update_capabilities(make_caps(node_id))
    result = selector.select(make_spec())
    assert sorted(c.nodename for c in result.candidates[0]) == ["1", "3", "5"]
    assert result == reference_select(selector, make_spec())


def test_an_entry_point_that_is_not_a_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "[bmd.filters]\nOdd = acme_bmd_filters:NotAFilter\nGone = nowhere:X\n")
    with pytest.raises(ConfigError, match="is not a BaseHostFilter"):
        load_filter("Odd")
    with pytest.raises(ConfigError, match="cannot load nowhere:X"):
        load_filter("Gone")


def test_a_name_claimed_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "[bmd.filters]\nRamFilter = acme_bmd_filters:EvenNodeFilter\n")
    with pytest.raises(ConfigError, match="registered twice"):
        load_filter("RamFilter")
    assert load_filter("DiskFilter").name == "DiskFilter"
