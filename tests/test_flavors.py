"""Flavors and extra specs over the API and the CLI."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_cli

M1 = {"name": "bm.small", "ram": 16384, "vcpus": 8, "disk": 200}


async def test_flavor_crud_and_extra_specs(client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post(
        "/v1/flavors", json={**M1, "extra_specs": {"capabilities:cpu_arch": "x86_64"}}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    flavor = await resp.json()
    assert flavor["ram"] == 16384 and flavor["extra_specs"] == {"capabilities:cpu_arch": "x86_64"}
    assert (await client.post("/v1/flavors", json=M1, headers=auth)).status == 409

    resp = await client.post(
        "/v1/flavors/bm.small/extra_specs", json={"extra_specs": {"trust:trusted_host": "true"}}, headers=auth
    )
    assert (await resp.json())["extra_specs"] == {"capabilities:cpu_arch": "x86_64", "trust:trusted_host": "true"}
    resp = await client.put(
        "/v1/flavors/bm.small/extra_specs/capabilities:location", json={"value": "rack11"}, headers=auth
    )
    assert resp.status == 200
    resp = await client.put(
        "/v1/flavors/bm.small/extra_specs/capabilities:cpu_arch", json={"value": "aarch64"}, headers=auth
    )
    specs = (await (await client.get("/v1/flavors/bm.small/extra_specs")).json())["extra_specs"]
    assert specs == {
        "capabilities:cpu_arch": "aarch64",
        "capabilities:location": "rack11",
        "trust:trusted_host": "true",
    }
    assert (await client.delete("/v1/flavors/bm.small/extra_specs/trust:trusted_host", headers=auth)).status == 204
    assert (await client.delete("/v1/flavors/bm.small/extra_specs/trust:trusted_host", headers=auth)).status == 404
    assert [f["name"] for f in (await (await client.get("/v1/flavors")).json())["flavors"]] == ["bm.small"]
    assert (await client.delete("/v1/flavors/bm.small", headers=auth)).status == 204
    assert (await client.get("/v1/flavors/bm.small")).status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**M1, "ram": 0}, "ram"),
        ({**M1, "vcpus": "8"}, "vcpus"),
        ({**M1, "name": "bad name"}, "name"),
        ({**M1, "extra_specs": {"capabilities:x": 5}}, "extra_specs.capabilities:x"),
        ({**M1, "extra_specs": {"bad key": "v"}}, "extra_specs"),
        ({**M1, "colour": "red"}, "colour"),
    ],
)
async def test_bad_flavor_bodies(client, auth, body, field) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/v1/flavors", json=body, headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == field, await resp.text()
    assert (await (await client.get("/v1/flavors")).json())["flavors"] == []


async def test_flavor_cli_like_nova_manage(client, ctx, capsys) -> None:  # type: ignore[no-untyped-def]
    tok = ctx.api_token
    code, out, err = await run_cli(
        client, tok, "flavor", "create", "bm.large", "--ram", "65536", "--vcpus", "32", "--disk", "1000", capsys=capsys
    )
    assert code == 0, err
    code, out, _ = await run_cli(
        client,
        tok,
        "flavor",
        "set-key",
        "--name",
        "bm.large",
        "--key",
        "capabilities:gpu",
        "--value",
        "a100",
        capsys=capsys,
    )
    assert code == 0 and "Key capabilities:gpu set to a100 on instance type bm.large" in out
    code, out, _ = await run_cli(client, None, "flavor", "show", "bm.large", "-f", "json", capsys=capsys)
    assert json.loads(out)["extra_specs"] == {"capabilities:gpu": "a100"}
    code, out, _ = await run_cli(
        client, tok, "flavor", "unset-key", "--name", "bm.large", "--key", "capabilities:gpu", capsys=capsys
    )
    assert code == 0
    code, _, err = await run_cli(
        client, tok, "flavor", "unset-key", "--name", "bm.large", "--key", "capabilities:gpu", capsys=capsys
    )
    assert code == 1 and "no extra spec" in err
    code, _, err = await run_cli(
        client, tok, "flavor", "create", "x", "--ram", "-1", "--vcpus", "1", "--disk", "1", capsys=capsys
    )
    assert code == 2 and "ram" in err
