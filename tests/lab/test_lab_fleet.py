"""The lab fleet: worker processes, inventory, control channel, lifecycle (stop, parent death)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from bmd.errors import BMCAuthError, BMCTimeout
from bmd.ipmi import BMCTarget
from bmd.lab import Fault, Lab, LabError, LabSpec, run_lab
from tests.ipmi.helpers import FAST, eventually, ipmi_client, running_lab, target
from tests.lab_api import alive

NODE_KEYS = {
    "name",
    "pm_driver",
    "pm_address",
    "pm_user",
    "pm_password",
    "cpus",
    "memory_mb",
    "local_gb",
    "prov_mac_address",
    "extra_specs",
    "interfaces",
}


async def test_fleet_over_workers_with_faults_and_inventory(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    spec = LabSpec(count=7, per_process=3, faults="dead=1,badpass=1", inventory_path=path, seed=3)
    async with running_lab(spec) as lab:
        assert len(lab.pids) == 3
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds passwords
        nodes = json.loads(path.read_text())["nodes"]
        assert nodes == lab.inventory()
        assert [n["name"] for n in nodes] == [f"lab-{i:04d}" for i in range(1, 8)]
        for node, b in zip(nodes, lab.bmcs, strict=True):
            assert set(node) == NODE_KEYS
            assert node["pm_address"] == f"{b.host}:{b.port}" and node["pm_driver"] == "ipmi"
            assert (node["pm_user"], node["pm_password"]) == ("admin", "password")
            assert node["extra_specs"]["cpu_arch"] == "x86_64"
            (iface,) = node["interfaces"]
            assert iface["address"] == node["prov_mac_address"] and iface["datapath_id"].startswith("0x")
            assert isinstance(iface["port_no"], int)
        assert len({n["prov_mac_address"] for n in nodes}) == 7
        assert len({b.host for b in lab.bmcs}) == 7 and len({b.port for b in lab.bmcs}) == 1
        faults = {b.name: b.fault for b in lab.bmcs if b.fault}
        assert sorted(f.kind for f in faults.values()) == ["badpass", "dead"]
        async with ipmi_client(FAST) as client:
            for b in lab.bmcs:
                kind = b.fault.kind if b.fault else None
                if kind == "dead":
                    with pytest.raises(BMCTimeout):
                        await client.get_power_state(target(b))
                elif kind == "badpass":
                    with pytest.raises(BMCAuthError):
                        await client.get_power_state(target(b))
                else:
                    assert (await client.get_device_id(target(b))).device_id == 0x20
        states = await lab.states()
        assert len(states) == 7 and sum(s["down"] for s in states.values()) == 1
        pids = lab.pids
    assert not any(alive(pid) for pid in pids)


async def test_ports_layout_over_ipv6_loopback() -> None:
    async with running_lab(LabSpec(count=3, layout="ports", first_address="::1")) as lab:
        assert {b.host for b in lab.bmcs} == {"::1"} and len({b.port for b in lab.bmcs}) == 3
        assert lab.inventory()[0]["pm_address"] == f"[::1]:{lab.bmcs[0].port}"
        async with ipmi_client(FAST) as client:
            for b in lab.bmcs:
                assert await client.get_power_state(BMCTarget("::1", b.port, "admin", "password")) is False


async def test_control_errors() -> None:
    async with running_lab(LabSpec(count=2, first_address="127.1.90.1")) as lab:
        with pytest.raises(KeyError):
            await lab.state("lab-9999")
        with pytest.raises(LabError, match="unknown fault kind"):
            await lab.set_fault(["lab-0001"], Fault("zombie"))  # type: ignore[arg-type]
        await lab.set_fault(None, Fault("dead"))
        assert all(s["down"] for s in (await lab.states()).values())
        await lab.set_fault(None, None)
        assert not any(s["down"] for s in (await lab.states()).values())


async def test_a_taken_port_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.1.91.2", 0))
        port = squatter.getsockname()[1]
        lab = Lab(LabSpec(count=3, first_address="127.1.91.1", port=port))
        with pytest.raises(LabError, match="taken"):
            await lab.start()
        assert lab.pids == []


async def test_run_lab_serves_until_stopped() -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    seen: list[Lab] = []

    async def on_ready(lab: Lab) -> None:
        seen.append(lab)
        ready.set()

    task = asyncio.ensure_future(run_lab(LabSpec(count=2, first_address="127.1.92.1"), stop, on_ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        (lab,) = seen
        b = lab.bmcs[0]
        pids = lab.pids
        async with ipmi_client(FAST) as client:
            assert await client.get_power_state(target(b)) is False
    finally:
        stop.set()
        await task
    assert not any(alive(pid) for pid in pids)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((b.host, b.port))  # released


_ORPHAN = """
import asyncio, sys
from bmd.lab import Lab, LabSpec
async def main():
    lab = Lab(LabSpec(count=2, per_process=1, first_address="127.1.93.1"))
    await lab.start()
    print(" ".join(map(str, lab.pids)), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_workers_exit_when_the_parent_dies() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert parent.stdout is not None
        line = b""
        while not line.strip() or not line.split()[0].isdigit():
            line = await asyncio.wait_for(parent.stdout.readline(), 30)
            assert line, "the parent exited early"
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()

    async def gone() -> bool:
        return not any(alive(p) for p in pids)

    await eventually(gone, bool, deadline=10.0)


async def test_python_m_bmd_lab_serves_until_interrupted(tmp_path: Path) -> None:
    inventory = tmp_path / "lab.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bmd.lab",
        "--count",
        "3",
        "--faults",
        "dead=1",
        "--first-address",
        "127.1.94.1",
        "--inventory",
        str(inventory),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"lab: 3 BMCs"):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "python -m bmd.lab exited early"
        assert b"'dead': 1" in line
        assert len(json.loads(inventory.read_text())["nodes"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


def test_python_m_bmd_lab_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from bmd.lab.__main__ import main

    assert main(["--faults", "dead=200%"]) == 2
    assert "between 0 and 100" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--suites", "x"])
