"""Seed-shaped capability dicts and requests for the scheduler tests."""

from __future__ import annotations

from typing import Any

from bmd.flavors import Flavor
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec


def make_caps(
    node_id: int,
    *,
    memory_mb: int = 4096,
    vcpus: int = 8,
    disk_gb: int = 100,
    used: bool = False,
    cpu_arch: str = "x86_64",
    host: str = "svc1",
    maintenance: bool = False,
    deploy_ready: bool = True,
    **extra_specs: Any,
) -> dict[str, Any]:
    """What ``report_driver_status`` publishes for one node (``used``: it holds an instance)."""
    caps: dict[str, Any] = {
        "vcpus": vcpus,
        "vcpus_used": vcpus if used else 0,
        "cpu_info": "baremetal cpu",
        "disk_total": disk_gb,
        "disk_used": disk_gb if used else 0,
        "disk_available": 0 if used else disk_gb,
        "host_memory_total": memory_mb,
        "host_memory_free": 0 if used else memory_mb,
        "hypervisor_type": "baremetal",
        "hypervisor_version": 1,
        "hypervisor_hostname": str(node_id),
        "supported_instances": [[cpu_arch, "baremetal", "baremetal"]],
        "cpu_arch": cpu_arch,
        "baremetal_driver": "ipmi",
        "host": host,
        "node": str(node_id),
        "host_ip": "10.0.0.1",
        "maintenance": maintenance,
        "deploy_ready": deploy_ready,
        "deploy_blocker": "" if deploy_ready else "no interface: PXE boot needs a MAC",
    }
    caps.update(extra_specs)
    return caps


def make_host(node_id: int, **kwargs: Any) -> BaremetalNodeState:
    caps = make_caps(node_id, **kwargs)
    state = BaremetalNodeState(host=caps["host"], nodename=str(node_id))
    state.update_from_capabilities(caps)
    return state


def make_spec(
    memory_mb: int = 2048,
    vcpus: int = 4,
    root_gb: int = 20,
    *,
    extra_specs: dict[str, str] | None = None,
    image_properties: dict[str, Any] | None = None,
    num_instances: int = 1,
    hints: dict[str, Any] | None = None,
    ephemeral_gb: int = 0,
    swap: int = 0,
) -> RequestSpec:
    flavor = Flavor("test", memory_mb, vcpus, root_gb, ephemeral_gb, swap, extra_specs or {})
    return RequestSpec(flavor, image_properties or {}, num_instances, hints or {})
