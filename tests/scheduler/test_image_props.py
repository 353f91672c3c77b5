"""ImagePropertiesFilter and instance_supported."""

from __future__ import annotations

from typing import Any

import pytest

from bmd.filters.image_props import ImagePropertiesFilter, instance_supported

from .factories import make_host, make_spec

BAREMETAL_X86 = [["x86_64", "baremetal", "baremetal"]]

CASES: list[tuple[list[list[str]], dict[str, Any], bool]] = [
    (BAREMETAL_X86, {}, True),
    (BAREMETAL_X86, {"architecture": "x86_64"}, True),
    (BAREMETAL_X86, {"architecture": "amd64"}, True),
    (BAREMETAL_X86, {"architecture": "AMD64"}, True),
    (BAREMETAL_X86, {"architecture": "x64"}, True),
    (BAREMETAL_X86, {"architecture": "X86_64"}, True),
    (BAREMETAL_X86, {"architecture": "i686"}, False),
    (BAREMETAL_X86, {"architecture": "aarch64"}, False),
    ([["i686", "baremetal", "baremetal"]], {"architecture": "i386"}, True),
    ([["i386", "baremetal", "baremetal"]], {"architecture": "i686"}, True),
    ([["I586", "baremetal", "baremetal"]], {"architecture": "x86_32"}, True),
    ([["AMD64", "baremetal", "baremetal"]], {"architecture": "x86_64"}, True),
    ([["aarch64", "baremetal", "baremetal"]], {"architecture": "arm64"}, True),
    (BAREMETAL_X86, {"hypervisor_type": "baremetal"}, True),
    (BAREMETAL_X86, {"hypervisor_type": "BareMetal"}, True),
    (BAREMETAL_X86, {"hypervisor_type": "kvm"}, False),
    (BAREMETAL_X86, {"vm_mode": "baremetal"}, True),
    (BAREMETAL_X86, {"vm_mode": "hvm"}, False),
    ([["x86_64", "xen", "xen"]], {"hypervisor_type": "xapi", "vm_mode": "pv"}, True),
    ([["x86_64", "kvm", "hvm"]], {"vm_mode": "hv"}, True),
    (BAREMETAL_X86, {"architecture": "x86_64", "hypervisor_type": "baremetal", "vm_mode": "baremetal"}, True),
    (BAREMETAL_X86, {"architecture": "x86_64", "hypervisor_type": "kvm"}, False),
    (BAREMETAL_X86, {"architecture": "", "hypervisor_type": None}, True),
    (BAREMETAL_X86, {"os_distro": "ubuntu"}, True),
    ([], {}, True),
    ([], {"architecture": "x86_64"}, False),
    (
        [["aarch64", "baremetal", "baremetal"], ["x86_64", "baremetal", "baremetal"]],
        {"architecture": "amd64"},
        True,
    ),
    ([["x86_64"]], {"architecture": "x86_64"}, True),
    ([["x86_64"]], {"architecture": "x86_64", "vm_mode": "baremetal"}, False),
    ([["baremetal", "x86_64", "baremetal"]], {"architecture": "x86_64"}, False),
]


@pytest.mark.parametrize(("supported", "props", "expected"), CASES)
def test_instance_supported(supported: list[list[str]], props: dict[str, Any], expected: bool) -> None:
    assert instance_supported(supported, props) is expected


def test_filter_reads_supported_instances_from_the_capabilities() -> None:
    image_filter = ImagePropertiesFilter()
    spec = make_spec(image_properties={"architecture": "amd64"})
    assert image_filter.host_passes(make_host(1, cpu_arch="x86_64"), spec)
    assert not image_filter.host_passes(make_host(2, cpu_arch="aarch64"), spec)
    assert image_filter.host_passes(make_host(3, cpu_arch="aarch64"), make_spec())
