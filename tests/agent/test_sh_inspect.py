"""The real sh agent (``bmd/agent/bmd-agent.sh`` + ``inspect.sh``) under busybox sh on the host, booted for an
inspection against a real bmd: the lookup says ``mode=inspect``, the collector reads a machine made of files
(sysfs, cpuinfo, meminfo), the report goes to ``inspection_url`` with the token, and the node is filled in
and available; a collector that cannot report fails the inspection with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bmd.db.models import Interface
from tests.agent.machine import Disk, Machine, busybox_or_skip
from tests.cloud import Cloud, make_cloud

MAC = "52:54:00:00:01:00"


@pytest.fixture
def busybox() -> str:
    return busybox_or_skip()


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path, inspection={"lldp_wait": 0}) as c:
        await c.add_pxe_ips(1)
        yield c


async def inspecting(cloud: Cloud) -> tuple[int, str]:
    body = {"name": "bare-1", "pm_driver": "fake", "pm_address": "fake-1", "pm_user": "u", "pm_password": "p",
            "interfaces": [{"address": MAC}]}  # fmt: skip
    resp = await cloud.client.post("/v1/nodes", json=body, headers=cloud.auth)
    assert resp.status == 201, await resp.text()
    node = await resp.json()
    resp = await cloud.client.post(f"/v1/nodes/{node['id']}/inspect", headers=cloud.auth)
    assert resp.status == 202, await resp.text()
    await cloud.settle()
    return node["id"], node["uuid"]


def machine(cloud: Cloud, busybox: str) -> Machine:
    m = Machine(cloud.tmp / "machine", busybox)
    m.add_disk(Disk("vda", 40, model="QEMU HARDDISK", serial="QM00001"))
    (m.root / "sys" / "block" / "vda" / "queue").mkdir()
    (m.root / "sys" / "block" / "vda" / "queue" / "rotational").write_text("0\n")
    nic = m.root / "sys" / "class" / "net" / "eth0"
    nic.mkdir()
    (nic / "address").write_text(MAC + "\n")
    (nic / "carrier").write_text("1\n")
    (nic / "speed").write_text("1000\n")
    (m.root / "cpuinfo").write_text("".join(f"processor\t: {i}\nmodel name\t: Lab CPU\n\n" for i in range(6)))
    (m.root / "meminfo").write_text("MemTotal:        3900000 kB\n")
    return m


def collector_env(m: Machine) -> dict[str, str]:
    return {"BMD_AGENT_CPUINFO": str(m.root / "cpuinfo"), "BMD_AGENT_MEMINFO": str(m.root / "meminfo"),
            "BMD_AGENT_ARCH": "x86_64"}  # fmt: skip


async def test_the_sh_agent_inspects_a_machine_and_bmd_fills_the_node(cloud: Cloud, busybox: str) -> None:
    node_id, node_uuid = await inspecting(cloud)
    m = machine(cloud, busybox)
    url = str(cloud.client.make_url("")).rstrip("/")
    status = await m.run(url, node_uuid, MAC, **collector_env(m))
    assert status == 0, m.output
    assert "inspecting (LLDP: 0 s per NIC)" in m.output and "inspection report accepted" in m.output
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available", node.last_error
    assert (node.cpus, node.memory_mb, node.local_gb) == (6, 3808, 40)
    assert node.extra_specs["cpu_arch"] == "x86_64" and node.extra_specs["cpu_model"] == "Lab CPU"
    assert node.inspection is not None
    assert node.inspection["disks"][0]["serial"] == "QM00001" and node.inspection["nics"][0]["mac"] == MAC
    async with cloud.ctx.sessionmaker() as session:
        (iface,) = (await session.scalars(select(Interface).where(Interface.bm_node_id == node_id))).all()
    assert iface.address == MAC and iface.datapath_id is None  # no LLDP heard
    (token,) = m.tokens_in_argv()
    assert token not in m.output


async def test_a_collector_that_cannot_run_fails_the_inspection_with_its_reason(
    cloud: Cloud, busybox: str, tmp_path: Path
) -> None:
    node_id, node_uuid = await inspecting(cloud)
    m = machine(cloud, busybox)
    lib = tmp_path / "lib"  # the agent without its collector
    lib.mkdir()
    agent_dir = Path(__file__).parents[2] / "bmd" / "agent"
    (lib / "bmd-agent.sh").write_text((agent_dir / "bmd-agent.sh").read_text())
    m.lib = lib
    url = str(cloud.client.make_url("")).rstrip("/")
    status = await m.run(url, node_uuid, MAC, **collector_env(m))
    assert status == 1
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed"
    assert node.last_error is not None and "inspect.sh is missing" in node.last_error
    assert cloud.ctx.console_logs is not None
    assert b"inspect agent's console" in cloud.ctx.console_logs.read(node_uuid)
