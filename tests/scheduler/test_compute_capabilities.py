"""ComputeCapabilitiesFilter and satisfies_extra_specs: the scope rules."""

from __future__ import annotations

from typing import Any

import pytest

from bmd.filters.compute_capabilities import ComputeCapabilitiesFilter, satisfies_extra_specs

from .factories import make_host, make_spec

CAPS: dict[str, Any] = {
    "cpu_arch": "x86_64",
    "vcpus": 16,
    "location": "rack11",
    "gpu": "a100",
    "cpu_info": {"vendor": "Intel", "features": ["avx", "avx2"], "topology": {"cores": 8}},
    "capabilities": "top-level key named capabilities",
    "enabled": None,
    "empty": "",
}

SCOPE_CASES: list[tuple[dict[str, str], bool]] = [
    ({}, True),
    ({"cpu_arch": "x86_64"}, True),
    ({"cpu_arch": "aarch64"}, False),
    ({"capabilities:cpu_arch": "x86_64"}, True),
    ({"capabilities:cpu_arch": "aarch64"}, False),
    ({"trust:trusted_host": "true"}, True),
    ({"hw:cpu_policy": "dedicated"}, True),
    ({"hw:cpu_policy": "dedicated", "cpu_arch": "aarch64"}, False),
    ({"capabilities:cpu_info:vendor": "Intel"}, True),
    ({"capabilities:cpu_info:vendor": "AMD"}, False),
    ({"capabilities:cpu_info:topology:cores": ">= 8"}, True),
    ({"capabilities:cpu_info:topology:cores": "== 4"}, False),
    ({"capabilities:cpu_info:features": "<all-in> avx avx2"}, True),
    ({"capabilities:cpu_info:features": "<in> avx512"}, False),
    ({"capabilities:cpu_info:missing": "x"}, False),
    ({"capabilities:location:sub": "x"}, False),
    ({"capabilities:cpu_info:features:0": "avx"}, False),
    ({"missing": "x"}, False),
    ({"capabilities:missing": "<or> x <or> y"}, False),
    ({"enabled": "None"}, False),
    ({"empty": ""}, True),
    ({"vcpus": "= 8"}, True),
    ({"vcpus": "16"}, True),
    ({"vcpus": ">= 32"}, False),
    ({"location": "<or> rack10 <or> rack11"}, True),
    ({"capabilities": "top-level key named capabilities"}, True),
    ({"capabilities:": "x"}, False),
    ({"cpu_info:vendor": "AMD"}, True),
    ({"gpu": "a100", "cpu_arch": "x86_64", "location": "s== rack11"}, True),
    ({"gpu": "a100", "cpu_arch": "x86_64", "location": "s== rack12"}, False),
]


@pytest.mark.parametrize(("extra_specs", "expected"), SCOPE_CASES)
def test_scope_rules(extra_specs: dict[str, str], expected: bool) -> None:
    assert satisfies_extra_specs(CAPS, extra_specs) is expected


def test_operators_and_scope_cases_reach_sixty() -> None:
    from .test_extra_specs_ops import CASES

    assert len(CASES) + len(SCOPE_CASES) >= 60


@pytest.mark.parametrize(("extra_specs", "expected"), SCOPE_CASES)
def test_filter_uses_the_node_capabilities(extra_specs: dict[str, str], expected: bool) -> None:
    host = make_host(1)
    host.update_from_capabilities({**host.capabilities, **CAPS})
    assert ComputeCapabilitiesFilter().host_passes(host, make_spec(extra_specs=extra_specs)) is expected


def test_filter_sees_per_node_extra_specs_published_on_the_bus() -> None:
    spec = make_spec(extra_specs={"capabilities:gpu": "a100", "cpu_arch": "x86_64"})
    assert ComputeCapabilitiesFilter().host_passes(make_host(1, gpu="a100"), spec)
    assert not ComputeCapabilitiesFilter().host_passes(make_host(2, gpu="h100"), spec)
    assert not ComputeCapabilitiesFilter().host_passes(make_host(3), spec)
