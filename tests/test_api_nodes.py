"""Node inventory over real HTTP: validation naming the field, conflicts, auth, secrets never shown."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from bmd.context import AppContext
from bmd.db.models import BareMetalNode, Interface
from tests.conftest import node_body


async def count(ctx: AppContext, model: Any) -> int:
    async with ctx.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_create_show_list_update_delete(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json=node_body(1, extra_specs={"location": "rack11"}), headers=auth)
    assert resp.status == 201, await resp.text()
    node = await resp.json()
    assert node["pm_password"] == "******"
    assert node["service_host"] == "test-host" and node["provision_state"] == "available"
    assert node["interfaces"][0]["address"] == "52:54:00:00:00:01"
    assert node["extra_specs"] == {"location": "rack11"}

    for ident in (node["id"], node["uuid"], node["name"]):
        resp = await client.get(f"/v1/nodes/{ident}")
        assert resp.status == 200 and (await resp.json())["id"] == node["id"]

    listed = (await (await client.get("/v1/nodes")).json())["nodes"]
    assert [n["id"] for n in listed] == [node["id"]]

    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"cpus": 16, "pm_password": "new-pw"}, headers=auth)
    assert resp.status == 200 and (await resp.json())["cpus"] == 16

    resp = await client.delete(f"/v1/nodes/{node['id']}", headers=auth)
    assert resp.status == 204
    assert (await client.get(f"/v1/nodes/{node['id']}")).status == 404
    assert await count(ctx, Interface) == 0


async def test_password_encrypted_at_rest_and_never_returned(client, auth, ctx: AppContext, db_file) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json=node_body(1), headers=auth)
    text = await resp.text()
    assert "s3cr3t-bmc-pass" not in text
    async with ctx.sessionmaker() as session:
        stored = await session.scalar(select(BareMetalNode.pm_password))
    assert stored and stored.startswith("fernet:") and ctx.secret_box.decrypt(stored) == "s3cr3t-bmc-pass"
    await ctx.engine.dispose()  # flush WAL into the file before reading raw bytes
    raw = db_file.read_bytes() + (
        db_file.with_name(db_file.name + "-wal").read_bytes()
        if db_file.with_name(db_file.name + "-wal").exists()
        else b""
    )
    assert b"s3cr3t-bmc-pass" not in raw
    for path in ("/v1/nodes", "/v1/nodes/1", "/v1/nodes/1/interfaces"):
        assert "s3cr3t" not in await (await client.get(path)).text()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cpus": "eight"}, "cpus"),
        ({"cpus": -1}, "cpus"),  # 0 is "not known yet" (inspection fills it in)
        ({"cpus": True}, "cpus"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"local_gb": 1.5}, "local_gb"),
        ({"name": "12345"}, "name"),
        ({"name": "has space"}, "name"),
        ({"prov_mac_address": "zz:zz"}, "prov_mac_address"),
        ({"interfaces": [{"address": "not-a-mac"}]}, "interfaces.0.address"),
        ({"interfaces": [{"address": "52:54:00:00:00:09", "port_no": -1}]}, "interfaces.0.port_no"),
        ({"prov_vlan_id": 5000}, "prov_vlan_id"),
        ({"pm_driver": "carrier-pigeon"}, "pm_driver"),
        ({"extra_specs": {"bad:key": "x"}}, "extra_specs"),
        ({"extra_specs": {"vcpus": 3}}, "extra_specs"),
        ({"surprise": 1}, "surprise"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"boot_mode": "legacy"}, "boot_mode"),
        ({"root_device": {"size": 0}}, "root_device.size"),
        ({"root_device": {"name": "sda; reboot"}}, "root_device.name"),
        ({"root_device": {"colour": "red"}}, "root_device.colour"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(client, auth, ctx, change, field) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json={**node_body(1), **change}, headers=auth)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["field"] == field, body
    assert field.split(".")[0] in body["message"]
    assert await count(ctx, BareMetalNode) == 0 and await count(ctx, Interface) == 0


async def test_missing_required_field_and_bad_json(client, auth) -> None:  # type: ignore[no-untyped-def]
    body = node_body(1)
    body["cpus"] = "8"  # cpus/memory_mb/local_gb may be left out (0: inspection fills them in), not mistyped
    resp = await client.post("/v1/nodes", json=body, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "cpus"
    resp = await client.post("/v1/nodes", data=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["field"] == "body"
    resp = await client.post("/v1/nodes", json=[1, 2], headers=auth)
    assert resp.status == 400


async def test_duplicates_are_409_and_nothing_half_written(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    # same interface MAC on a new node: the node row must not be left behind
    dup_mac = node_body(2, interfaces=[{"address": "52:54:00:00:00:03"}, {"address": "52:54:00:00:00:01"}])
    resp = await client.post("/v1/nodes", json=dup_mac, headers=auth)
    assert resp.status == 409 and "52:54:00:00:00:01" in (await resp.json())["message"]
    resp = await client.post("/v1/nodes", json=node_body(3, name="node-1"), headers=auth)
    assert resp.status == 409 and "name" in (await resp.json())["message"]
    twice = node_body(4, interfaces=[{"address": "52:54:00:00:00:04"}, {"address": "52-54-00-00-00-04"}])
    assert (await client.post("/v1/nodes", json=twice, headers=auth)).status == 409
    assert await count(ctx, BareMetalNode) == 1 and await count(ctx, Interface) == 1


async def test_unknown_ids_are_404(client, auth) -> None:  # type: ignore[no-untyped-def]
    for method, path in (
        ("GET", "/v1/nodes/42"),
        ("PATCH", "/v1/nodes/nope"),
        ("DELETE", "/v1/nodes/42"),
        ("GET", "/v1/nodes/42/interfaces"),
        ("DELETE", "/v1/pxe_ips/42"),
    ):
        resp = await client.request(method, path, json={"cpus": 1} if method == "PATCH" else None, headers=auth)
        assert resp.status == 404, (method, path, resp.status)
        assert (await resp.json())["error"] == "not_found"


async def test_mutations_need_the_bearer_token(client, auth) -> None:  # type: ignore[no-untyped-def]
    assert (await client.post("/v1/nodes", json=node_body(1))).status == 401
    bad = {"Authorization": "Bearer wrong"}
    assert (await client.post("/v1/nodes", json=node_body(1), headers=bad)).status == 401
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    assert (await client.delete("/v1/nodes/1")).status == 401
    assert (await client.get("/v1/nodes/1")).status == 200
    assert (await client.get("/healthz")).status in (200, 503)


async def test_interfaces_and_pxe_ips(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    node = await (await client.post("/v1/nodes", json=node_body(1), headers=auth)).json()
    resp = await client.post(f"/v1/nodes/{node['id']}/interfaces", json={"address": "52:54:00:AA:00:02"}, headers=auth)
    assert resp.status == 201 and (await resp.json())["address"] == "52:54:00:aa:00:02"
    resp = await client.post(f"/v1/nodes/{node['id']}/interfaces", json={"address": "52:54:00:aa:00:02"}, headers=auth)
    assert resp.status == 409
    assert len((await (await client.get(f"/v1/nodes/{node['id']}/interfaces")).json())["interfaces"]) == 2
    resp = await client.delete(f"/v1/nodes/{node['id']}/interfaces/52:54:00:aa:00:02", headers=auth)
    assert resp.status == 204

    resp = await client.post("/v1/pxe_ips", json={"address": "10.0.0.10", "server_address": "10.0.0.1"}, headers=auth)
    assert resp.status == 201
    pxe = await resp.json()
    again = {"address": "10.0.0.10", "server_address": "10.0.0.2"}
    assert (await client.post("/v1/pxe_ips", json=again, headers=auth)).status == 409
    bad = {"address": "10.0.0.300", "server_address": "10.0.0.1"}
    resp = await client.post("/v1/pxe_ips", json=bad, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "address"
    assert len((await (await client.get("/v1/pxe_ips")).json())["pxe_ips"]) == 1
    assert (await client.delete(f"/v1/pxe_ips/{pxe['id']}", headers=auth)).status == 204


async def test_node_with_instance_cannot_be_deleted_or_resized(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    node = await (await client.post("/v1/nodes", json=node_body(1), headers=auth)).json()
    async with ctx.sessionmaker.begin() as session:
        row = await session.get(BareMetalNode, node["id"])
        assert row is not None
        row.instance_uuid = "11111111-2222-3333-4444-555555555555"
    resp = await client.delete(f"/v1/nodes/{node['id']}", headers=auth)
    assert resp.status == 409 and "instance" in (await resp.json())["message"]
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"cpus": 1}, headers=auth)
    assert resp.status == 409
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"instance_uuid": None}, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "instance_uuid"


async def test_import_is_all_or_nothing(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    good = [node_body(i) for i in range(1, 6)]
    resp = await client.post("/v1/nodes/import", json={"nodes": good}, headers=auth)
    assert resp.status == 201 and (await resp.json())["created"] == 5
    batch = [node_body(i) for i in range(10, 14)] + [node_body(3)]
    resp = await client.post("/v1/nodes/import", json={"nodes": batch}, headers=auth)
    assert resp.status == 409
    bad = [node_body(20), {**node_body(21), "cpus": "x"}]
    resp = await client.post("/v1/nodes/import", json={"nodes": bad}, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "nodes.1.cpus"
    assert await count(ctx, BareMetalNode) == 5


async def test_boot_mode_and_root_device_hints(client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json=node_body(1), headers=auth)
    node = await resp.json()
    assert node["boot_mode"] == "bios" and node["root_device"] is None and node["deploy_steps"] is None
    hints = {"size": 20, "model": "QEMU HARDDISK", "serial": "disk-1"}
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"boot_mode": "uefi", "root_device": hints}, headers=auth)
    assert resp.status == 200, await resp.text()
    got = await (await client.get(f"/v1/nodes/{node['id']}")).json()
    assert got["boot_mode"] == "uefi" and got["root_device"] == hints
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"boot_mode": None}, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "boot_mode"
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"root_device": None}, headers=auth)
    assert (await resp.json())["root_device"] is None
