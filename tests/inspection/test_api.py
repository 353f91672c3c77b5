"""``POST /v1/nodes/{node}/inspection`` over real HTTP with the report the real collector (inspect.sh
under busybox) prints for a machine made of files: a node enrolled with only its BMC gets its resources,
capabilities and interfaces; the rules from the config run; bad reports, fail rules, a node holding an
instance and a MAC of another node change nothing but what they say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.models import BareMetalNode, Interface
from tests.conftest import make_settings, node_body
from tests.inspection.collector import busybox_or_skip, run_collector
from tests.inspection.test_inspect_sh import fake_machine

RULES = [
    {"if": "memory_mb < 16384", "then": "maintenance less than 16 GiB of memory"},
    {"if": "root_disk.model ~= 'SSD'", "then": ["capability disk_type=ssd"]},
    {"if": "cpus > 64", "then": "fail too many cpus for this rack"},
]


@pytest.fixture
def settings(tmp_path: Path, db_file: Path) -> Settings:
    return make_settings(tmp_path, inspection={"rules": RULES})


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    busybox = busybox_or_skip()
    m = fake_machine(tmp_path / "m")
    env = m.env()
    raw: dict[str, Any] = run_collector(busybox, tmp_path, env)
    # eth0 heard its switch (what test_lldp.py measures for real)
    raw["nics"][0]["lldp"] = {"chassis_id": "aa:bb:cc:00:00:01", "chassis_id_subtype": 4, "port_id": "Ethernet7",
                              "port_id_subtype": 5, "system_name": "tor-1", "port_description": None}  # fmt: skip
    return raw


async def bmc_only_node(client: Any, auth: dict[str, str], **extra: Any) -> dict[str, Any]:
    body = {k: v for k, v in node_body(1, **extra).items() if k not in ("cpus", "memory_mb", "local_gb")}
    body["interfaces"] = [{"address": "52:54:00:12:34:56", "datapath_id": "old", "port_no": 1}]
    resp = await client.post("/v1/nodes", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    node: dict[str, Any] = await resp.json()
    assert (node["cpus"], node["memory_mb"], node["local_gb"]) == (0, 0, 0)
    return node


async def test_a_bmc_only_node_gets_its_resources_and_interfaces(client, auth, ctx: AppContext, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth)
    before = {s["node"]: s for s in await ctx.driver.get_host_stats(refresh=True)}[str(node["id"])]
    assert (before["vcpus"], before["host_memory_total"], before["disk_total"]) == (0, 0, 0)
    resp = await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)
    assert resp.status == 200, await resp.text()
    # What the scheduler sees: the inspected resources, the architecture, the boot mode.
    after = {s["node"]: s for s in await ctx.driver.get_host_stats(refresh=True)}[str(node["id"])]
    assert (after["vcpus"], after["host_memory_total"], after["disk_total"]) == (4, 8192, 480)
    assert after["cpu_arch"] == "x86_64" and after["boot_mode"] == "uefi" and after["disk_type"] == "ssd"
    assert after["supported_instances"] == [("x86_64", "baremetal", "baremetal")]
    out = await resp.json()
    assert out["applied"] is True and out["failure"] is None
    assert (out["cpus"], out["memory_mb"], out["local_gb"], out["root_disk"]) == (4, 8192, 480, "sda")
    assert out["rules_matched"] == [0, 1]
    assert out["interfaces_added"] == ["52:54:00:12:34:57", "52:54:00:12:34:58"]
    shown = await (await client.get(f"/v1/nodes/{node['id']}", headers=auth)).json()
    assert (shown["cpus"], shown["memory_mb"], shown["local_gb"]) == (4, 8192, 480)
    assert shown["extra_specs"]["cpu_arch"] == "x86_64" and shown["extra_specs"]["disk_type"] == "ssd"
    assert shown["boot_mode"] == "uefi" and shown["extra_specs"]["disk_rotational"] == "false"  # was bios
    assert shown["maintenance"] is True and shown["maintenance_reason"] == "less than 16 GiB of memory"
    assert shown["inspected_at"] is not None
    ifaces = {i["address"]: (i["datapath_id"], i["port_no"]) for i in shown["interfaces"]}
    assert ifaces == {
        "52:54:00:12:34:56": ("aa:bb:cc:00:00:01", 7),  # LLDP overrides what the operator had
        "52:54:00:12:34:57": (None, None),
        "52:54:00:12:34:58": (None, None),
    }
    async with ctx.sessionmaker() as session:
        row = await session.scalar(select(BareMetalNode).where(BareMetalNode.id == node["id"]))
        assert row is not None and row.maintenance_set_by == "inspection"
    stored = await (await client.get(f"/v1/nodes/{node['id']}/inspection", headers=auth)).json()
    assert stored["report"]["disks"][0]["model"] == "Samsung SSD 870"
    assert stored["report"]["nics"][0]["lldp"]["port_id"] == "Ethernet7"
    # Inspecting again changes nothing more (the rows are updated, not added twice).
    again = await (await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)).json()
    assert again["applied"] is True and again["interfaces_added"] == []


async def test_root_device_hints_choose_the_disk_for_local_gb(client, auth, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth, root_device={"size": 4000})
    out = await (await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)).json()
    assert (out["local_gb"], out["root_disk"]) == (4000, "sdb")
    assert "disk_type" not in out["capabilities"]  # the SSD is not the root disk


async def test_a_bad_report_is_400_naming_the_field_and_nothing_is_stored(client, auth, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth)
    for change, field in (
        ({"disks": [{"name": "sda", "size": -1}]}, "disks.0.size"),
        ({"cpu": {"count": 0, "arch": "x86_64"}}, "cpu.count"),
        ({"nics": [{"name": "eth0", "mac": "not-a-mac"}]}, "nics.0.mac"),
        ({"extra": 1}, "extra"),
        ({"boot_mode": "floppy"}, "boot_mode"),
    ):
        resp = await client.post(f"/v1/nodes/{node['id']}/inspection", json={**report, **change}, headers=auth)
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["field"] == field
    assert (await client.get(f"/v1/nodes/{node['id']}/inspection", headers=auth)).status == 404
    shown = await (await client.get(f"/v1/nodes/{node['id']}", headers=auth)).json()
    assert (shown["cpus"], shown["inspected_at"], len(shown["interfaces"])) == (0, None, 1)


async def test_a_fail_rule_stores_the_report_but_sets_nothing(client, auth, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth)
    report["cpu"]["count"] = 96
    out = await (await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)).json()
    assert out["applied"] is False and out["failure"] == "too many cpus for this rack"
    shown = await (await client.get(f"/v1/nodes/{node['id']}", headers=auth)).json()
    assert (shown["cpus"], shown["maintenance"], len(shown["interfaces"])) == (0, False, 1)
    assert shown["last_error"] == "inspection: too many cpus for this rack" and shown["inspected_at"] is not None


async def test_no_disk_is_a_failed_inspection(client, auth, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth)
    out = await (
        await client.post(f"/v1/nodes/{node['id']}/inspection", json={**report, "disks": []}, headers=auth)
    ).json()
    assert out["applied"] is False and "no disk matches" in out["failure"]


async def test_a_busy_node_or_a_foreign_mac_is_409_and_changes_nothing(client, auth, ctx: AppContext, report) -> None:  # type: ignore[no-untyped-def]
    node = await bmc_only_node(client, auth)
    other = await client.post(
        "/v1/nodes", json=node_body(2, interfaces=[{"address": "52:54:00:12:34:58"}]), headers=auth
    )
    assert other.status == 201
    resp = await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)
    assert resp.status == 409 and "52:54:00:12:34:58" in (await resp.json())["message"]
    shown = await (await client.get(f"/v1/nodes/{node['id']}", headers=auth)).json()
    assert (shown["cpus"], shown["inspected_at"], len(shown["interfaces"])) == (0, None, 1)
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == node["id"]).values(instance_uuid="1" * 36)
        )
        await session.execute(
            update(Interface).where(Interface.address == "52:54:00:12:34:58").values(address="52:54:00:12:34:59")
        )
    resp = await client.post(f"/v1/nodes/{node['id']}/inspection", json=report, headers=auth)
    assert resp.status == 409 and "holds instance" in (await resp.json())["message"]


async def test_inspection_needs_the_api_token(client, report) -> None:  # type: ignore[no-untyped-def]
    assert (await client.post("/v1/nodes/1/inspection", json=report)).status == 401


async def test_the_cli_applies_a_report_file(client, ctx: AppContext, report, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.test_cli import run_cli

    node = await bmc_only_node(client, {"Authorization": f"Bearer {ctx.api_token}"})
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    code, out, err = await run_cli(
        client, ctx.api_token, "node", "inspect", str(node["id"]), "--report", str(path), "-f", "json", capsys=capsys
    )
    assert code == 0, err
    assert json.loads(out)["cpus"] == 4
    code, out, err = await run_cli(
        client, ctx.api_token, "node", "inspection", str(node["id"]), "-f", "json", capsys=capsys
    )
    assert code == 0 and json.loads(out)["report"]["cpu"]["count"] == 4
    path.write_text("{not json")
    code, _, err = await run_cli(
        client, ctx.api_token, "node", "inspect", str(node["id"]), "--report", str(path), capsys=capsys
    )
    assert code == 2 and "report.json" in err
