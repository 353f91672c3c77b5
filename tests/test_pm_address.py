"""pm_address is checked by the node's power driver (its ``validate_address``: one parser for checking and
for use, no I/O) at enroll, at import and on PATCH: 400 naming ``pm_address``, nothing written."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from bmd.context import AppContext
from bmd.db.models import BareMetalNode
from bmd.drivers.power.ipmi import parse_pm_address
from bmd.errors import InvalidInput
from tests.conftest import node_body

GOOD = [
    ("ipmi", "10.0.0.1"),
    ("ipmi", "10.0.0.1:623"),
    ("ipmi", "bmc-01.lab.example.com:6230"),
    ("ipmi", "localhost"),
    ("ipmi", "[::1]:623"),
    ("ipmi", "[fe80::1]"),
    ("ipmi", "fe80::1"),
    ("ipmi", "2001:db8::7"),
    ("ipmi-pyghmi", "127.0.0.1:65535"),
    ("ipmi-pyghmi", "[2001:db8::1]:1"),
    ("redfish", "https://10.0.0.5/redfish/v1/Systems/1"),
    ("redfish", "http://bmc.lab:8000"),
    ("redfish", "https://[2001:db8::5]:8443/redfish/v1"),
    ("fake", "anything at all"),
]

BAD = [
    ("ipmi", "::::"),
    ("ipmi", "10.0.0.1:99999"),
    ("ipmi", "10.0.0.1:0"),
    ("ipmi", "10.0.0.1:"),
    ("ipmi", "10.0.0.256"),
    ("ipmi", "bad_host"),
    ("ipmi", "-bmc"),
    ("ipmi", "a b"),
    ("ipmi", "[10.0.0.1]:623"),
    ("ipmi", "[::1]:"),
    ("ipmi", "[::1]x"),
    ("ipmi", "fe80::zz"),
    ("ipmi", "host:६२३"),  # a non-ASCII digit
    ("ipmi", "host:0000623"),
    ("ipmi-pyghmi", "::::"),
    ("ipmi-pyghmi", "h:70000"),
    ("redfish", "10.0.0.1"),
    ("redfish", "ftp://10.0.0.1/redfish/v1"),
    ("redfish", "https://"),
    ("redfish", "https://h:99999/redfish/v1"),
    ("redfish", "https://h:0/redfish/v1"),
    ("redfish", "https://h/not/redfish"),
    ("fake", "   "),
]


def body(driver: str, address: str, i: int = 1) -> dict[str, Any]:
    return node_body(i, pm_driver=driver, pm_address=address)


async def node_count(ctx: AppContext) -> int:
    async with ctx.sessionmaker() as session:
        return int(await session.scalar(select(func.count(BareMetalNode.id))) or 0)


@pytest.mark.parametrize(("driver", "address"), GOOD)
async def test_good_addresses_are_enrolled(client, auth, driver: str, address: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json=body(driver, address), headers=auth)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["pm_address"] == address


@pytest.mark.parametrize(("driver", "address"), BAD)
async def test_bad_addresses_are_refused_at_enroll(client, auth, ctx, driver: str, address: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/nodes", json=body(driver, address), headers=auth)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == "pm_address"
    resp = await client.post(
        "/v1/nodes/import", json={"nodes": [body("fake", "f", 1), body(driver, address, 2)]}, headers=auth
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == "nodes.1.pm_address"
    assert await node_count(ctx) == 0


@pytest.mark.parametrize(("driver", "address"), BAD)
async def test_bad_addresses_are_refused_on_patch(client, auth, ctx, driver: str, address: str) -> None:  # type: ignore[no-untyped-def]
    good = "https://10.0.0.5/redfish/v1" if driver == "redfish" else "10.0.0.5"
    node = await (await client.post("/v1/nodes", json=body(driver, good), headers=auth)).json()
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"pm_address": address}, headers=auth)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == "pm_address"
    assert (await (await client.get(f"/v1/nodes/{node['id']}", headers=auth)).json())["pm_address"] == good


async def test_changing_the_driver_checks_the_address_it_keeps(client, auth) -> None:  # type: ignore[no-untyped-def]
    node = await (await client.post("/v1/nodes", json=body("ipmi", "10.0.0.5"), headers=auth)).json()
    resp = await client.patch(f"/v1/nodes/{node['id']}", json={"pm_driver": "redfish"}, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "pm_address"
    both = {"pm_driver": "redfish", "pm_address": "https://10.0.0.5/redfish/v1"}
    resp = await client.patch(f"/v1/nodes/{node['id']}", json=both, headers=auth)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(("driver", "address"), [g for g in GOOD if g[0].startswith("ipmi")])
def test_the_parser_the_driver_uses_accepts_what_enroll_accepts(driver: str, address: str) -> None:
    host, port = parse_pm_address(address)
    assert host and 0 < port < 65536


@pytest.mark.parametrize(("driver", "address"), [b for b in BAD if b[0].startswith("ipmi")])
def test_the_parser_the_driver_uses_refuses_what_enroll_refuses(driver: str, address: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_pm_address(address)
    assert info.value.field == "pm_address"
