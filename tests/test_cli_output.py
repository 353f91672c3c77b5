"""The CLI's output against the real API with pages of 2: formats, columns, paging, filters, sort, ports,
PXE ranges, ``bmd status``; and as a subprocess: a closed pipe, shell completion."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.models import Interface
from tests.conftest import make_settings, node_body
from tests.test_cli import machine_out, run_cli

PAGE = 2
NODES = 5  # three pages


@pytest.fixture
def settings(tmp_path: Path, db_file: Path) -> Settings:
    return make_settings(tmp_path, api={"max_page_size": PAGE})


async def enroll(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    nodes = [node_body(i, extra_specs={"location": f"rack{i % 2}", "slots": i}) for i in range(1, NODES + 1)]
    assert (await client.post("/v1/nodes/import", json={"nodes": nodes}, headers=auth)).status == 201
    body = {"reason": "fan noise"}
    assert (await client.put("/v1/nodes/node-3/maintenance", json=body, headers=auth)).status == 200


async def cli(client: TestClient[Any, Any], capsys: pytest.CaptureFixture[str], *args: str, token: str | None = None):  # type: ignore[no-untyped-def]
    code, out, err = await run_cli(client, token, *args, capsys=capsys)
    assert code == 0, err
    return out


async def test_every_format_of_a_list_walks_every_page(
    client: TestClient[Any, Any], auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)
    names = [f"node-{i}" for i in range(1, NODES + 1)]
    rows = machine_out(await cli(client, capsys, "node", "list", "-f", "json"))
    assert [r["name"] for r in rows] == names  # past the first page of 2
    assert list(rows[0]) == ["id", "name", "power_state", "provision_state", "maintenance", "instance_uuid"]
    assert yaml.safe_load(await cli(client, capsys, "node", "list", "-f", "yaml")) == rows
    table = await cli(client, capsys, "node", "list")
    assert table.splitlines()[1].split("|")[2].strip() == "name" and table.count("node-") == NODES
    lines = list(
        csv.reader(
            (await cli(client, capsys, "node", "list", "-f", "csv", "-c", "name", "-c", "maintenance")).splitlines()
        )
    )
    assert lines == [["name", "maintenance"], *[[n, "true" if n == "node-3" else "false"] for n in names]]
    value = await cli(client, capsys, "node", "list", "-f", "value", "-c", "name", "-c", "extra_specs")
    assert value.splitlines()[0] == 'node-1 {"location":"rack1","slots":1}'
    long = machine_out(await cli(client, capsys, "node", "list", "-f", "json", "--long"))
    assert {"pm_address", "extra_specs", "maintenance_reason"} <= set(long[0])
    assert long[2]["maintenance_reason"] == "fan noise"


async def test_filters_and_sort(
    client: TestClient[Any, Any], auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)

    async def names(*args: str) -> list[str]:
        return (await cli(client, capsys, "node", "list", "-f", "value", "-c", "name", *args)).split()

    assert await names("--maintenance") == ["node-3"]
    assert await names("--no-maintenance") == ["node-1", "node-2", "node-4", "node-5"]
    assert await names("--capability", "location=rack0") == ["node-2", "node-4"]
    assert await names("--capability", "location=rack1", "--capability", "slots=5") == ["node-5"]
    assert await names("--provision-state", "active") == []
    assert await names("--provision-state", "available", "--unassociated") == [f"node-{i}" for i in range(1, 6)]
    assert await names("--power-state", "power on") == []
    assert await names("--sort", "name:desc") == [f"node-{i}" for i in range(5, 0, -1)]
    by_two = await names("--sort", "maintenance", "--sort", "id:desc")  # out of maintenance first, then by id
    assert by_two == ["node-5", "node-4", "node-2", "node-1", "node-3"]
    assert await names("--sort", "maintenance:desc,name") == ["node-3", "node-1", "node-2", "node-4", "node-5"]
    code, _, err = await run_cli(client, None, "node", "list", "--sort", "nope", capsys=capsys)
    assert code == 2 and "unknown column nope" in err
    code, _, err = await run_cli(client, None, "node", "list", "-c", "nope", capsys=capsys)
    assert code == 2 and "unknown column nope" in err and "provision_state" in err


async def test_show_formats(
    client: TestClient[Any, Any], auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)
    shown = machine_out(await cli(client, capsys, "node", "show", "node-3", "-f", "json"))
    assert shown["maintenance_reason"] == "fan noise" and shown["interfaces"][0]["address"]
    assert await cli(client, capsys, "node", "show", "node-3", "-f", "value", "-c", "name", "-c", "maintenance") == (
        "node-3\ntrue\n"
    )
    assert yaml.safe_load(await cli(client, capsys, "node", "show", "node-3", "-f", "yaml", "-c", "cpus")) == {
        "cpus": node_body()["cpus"]
    }
    table = await cli(client, capsys, "node", "show", "node-3")
    assert any(
        [c.strip() for c in line.split("|")[1:3]] == ["maintenance_reason", "fan noise"] for line in table.splitlines()
    ), table


async def test_ports(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)
    tok = ctx.api_token
    rows = machine_out(await cli(client, capsys, "port", "list", "-f", "json"))
    assert len(rows) == NODES and rows[0]["address"] == "52:54:00:00:00:01"  # every page of 2
    added = machine_out(
        await cli(client, capsys, "port", "create", "node-2", "52:54:00:AA:BB:CC", "-f", "json", token=tok)
    )
    assert added["address"] == "52:54:00:aa:bb:cc"
    only = await cli(client, capsys, "port", "list", "--node", "node-2", "-f", "value", "-c", "address")
    assert only.split() == ["52:54:00:00:00:02", "52:54:00:aa:bb:cc"]
    by_id = machine_out(await cli(client, capsys, "port", "show", str(added["id"]), "-f", "json"))
    assert by_id == machine_out(await cli(client, capsys, "port", "show", "52:54:00:aa:bb:cc", "-f", "json"))
    assert by_id["bm_node_id"] == rows[1]["bm_node_id"]
    moved = machine_out(
        await cli(client, capsys, "port", "set", "52:54:00:aa:bb:cc", "--datapath-id", "0x2a", "--port-no", "7",
                  "-f", "json", token=tok)
    )  # fmt: skip
    assert (moved["datapath_id"], moved["port_no"]) == ("0x2a", 7)
    cleared = machine_out(
        await cli(client, capsys, "port", "set", str(added["id"]), "--port-no", "", "-f", "json", token=tok)
    )
    assert (cleared["datapath_id"], cleared["port_no"]) == ("0x2a", None)
    code, _, err = await run_cli(client, tok, "port", "set", str(added["id"]), "--port-no", "-1", capsys=capsys)
    assert code == 2 and "--port-no" in err
    async with ctx.sessionmaker.begin() as session:  # a vif bound to it: the port stays where it is
        await session.execute(update(Interface).where(Interface.id == added["id"]).values(vif_uuid="vif-1"))
    code, _, err = await run_cli(client, tok, "port", "set", str(added["id"]), "--port-no", "8", capsys=capsys)
    assert code == 1 and "bound to vif vif-1" in err
    async with ctx.sessionmaker.begin() as session:
        await session.execute(update(Interface).where(Interface.id == added["id"]).values(vif_uuid=None))
    assert "deleted" in await cli(client, capsys, "port", "delete", "52:54:00:aa:bb:cc", token=tok)
    code, _, err = await run_cli(client, None, "port", "show", "52:54:00:aa:bb:cc", capsys=capsys)
    assert code == 1 and "not found" in err
    code, _, err = await run_cli(client, None, "port", "list", "--address", "not-a-mac", capsys=capsys)
    assert code == 2 and "not a MAC address" in err


async def test_pxe_ip_range_and_delete_by_address(
    client: TestClient[Any, Any], ctx: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = ctx.api_token
    added = machine_out(
        await cli(
            client, capsys, "pxe-ip", "add", "--range", "10.0.0.10-14", "--server", "10.1.0.10", "-f", "json", token=tok
        )
    )
    assert [(a["address"], a["server_address"]) for a in added] == [
        (f"10.0.0.{i}", f"10.1.0.{i}") for i in range(10, 15)
    ]
    listed = await cli(client, capsys, "pxe-ip", "list", "-f", "value", "-c", "address")
    assert listed.split() == [f"10.0.0.{i}" for i in range(10, 15)]  # three pages
    assert "deleted" in await cli(client, capsys, "pxe-ip", "delete", "10.0.0.12", str(added[0]["id"]), token=tok)
    listed = await cli(client, capsys, "pxe-ip", "list", "-f", "value", "-c", "address")
    assert listed.split() == ["10.0.0.11", "10.0.0.13", "10.0.0.14"]
    shown = machine_out(await cli(client, capsys, "pxe-ip", "show", "10.0.0.13", "-f", "json"))
    assert shown["server_address"] == "10.1.0.13"
    code, out, err = await run_cli(
        client,
        tok,
        "pxe-ip",
        "add",
        "--range",
        "10.0.0.20-10.0.0.22",
        "--server",
        "10.1.0.12",
        "-f",
        "json",
        capsys=capsys,
    )
    assert code == 1 and "1 of 3 added, stopped at 10.0.0.21" in err  # 10.1.0.13 is taken: the rest is not tried
    assert [a["address"] for a in machine_out(out)] == ["10.0.0.20"]
    code, _, err = await run_cli(client, tok, "pxe-ip", "delete", "10.0.0.99", capsys=capsys)
    assert code == 1 and "not found" in err


async def test_flavor_set_and_list(
    client: TestClient[Any, Any], ctx: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = ctx.api_token
    for name in ("bm.a", "bm.b", "bm.c"):
        await cli(client, capsys, "flavor", "create", name, "--ram", "1024", "--vcpus", "1", "--disk", "10", token=tok)
    shown = machine_out(
        await cli(
            client, capsys, "flavor", "set", "bm.b", "--property", "capabilities:gpu=a100", "-f", "json", token=tok
        )
    )
    assert shown["extra_specs"] == {"capabilities:gpu": "a100"}
    shown = machine_out(
        await cli(client, capsys, "flavor", "set", "bm.b", "--unset", "capabilities:gpu", "-f", "json", token=tok)
    )
    assert shown["extra_specs"] == {}
    assert (await cli(client, capsys, "flavor", "list", "-f", "value", "-c", "name")).split() == [
        "bm.a",
        "bm.b",
        "bm.c",
    ]


async def test_status_summarises_the_fleet(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)
    ctx.extras["lab"] = {
        "bmcs": 5,
        "machines": "sim",
        "boot_mode": "bios",
        "first_bmc": "127.1.0.1",
        "last_bmc": "127.1.0.5",
    }
    for name in ("update_available_resource", "report_driver_status"):
        assert await ctx.runner.run_pass(name)
    code, out, err = await run_cli(client, None, "status", "-f", "json", capsys=capsys)
    summary = machine_out(out)
    assert code == (0 if summary["status"] == "ok" else 1), err
    assert summary["nodes"]["total"] == NODES and summary["nodes"]["by_provision_state"] == {"available": NODES}
    assert sum(summary["nodes"]["by_power_state"].values()) == NODES
    assert summary["maintenance"] == [{"id": 3, "name": "node-3", "reason": "fan noise", "set_by": "operator"}]
    loops = {loop["loop"]: loop for loop in summary["loops"]}
    assert (
        loops["report_driver_status"]["passes"] >= 1 and loops["report_driver_status"]["last_success_age"] is not None
    )
    assert summary["lab"]["bmcs"] == 5
    code, out, _ = await run_cli(client, None, "status", capsys=capsys)
    assert f"nodes: {NODES}" in out and f"available {NODES}" in out and "in maintenance: 1" in out
    assert "fan noise" in out and "report_driver_status" in out and "lab: 5 BMCs (127.1.0.1 .. 127.1.0.5)" in out


async def bmd_subprocess(*args: str, env: dict[str, str] | None = None, stdout: Any = asyncio.subprocess.PIPE):  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bmd", *args, stdout=stdout, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return proc


async def test_a_closed_pipe_ends_quietly(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    """``bmd node list | head -1``: the reader is gone before bmd writes; no traceback, exit 0."""
    await enroll(client, auth)
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write bmd makes now fails with EPIPE
    try:
        url = str(client.make_url("")).rstrip("/")
        proc = await bmd_subprocess("--url", url, "node", "list", "--long", stdout=write_end)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and err == b"", err.decode()


async def test_shell_completion_scripts_and_answers(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    for shell, marker in (
        ("bash", b"complete -o nosort -F"),
        ("zsh", b"#compdef bmd"),
        ("fish", b"complete --no-files --command bmd"),
    ):
        proc = await bmd_subprocess("completion", shell)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and marker in out and b"_BMD_COMPLETE" in out, (shell, out, err)
    proc = await bmd_subprocess(env={"_BMD_COMPLETE": "bash_complete", "COMP_WORDS": "bmd no", "COMP_CWORD": "1"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"plain,node" in out
    proc = await bmd_subprocess(
        env={"_BMD_COMPLETE": "bash_complete", "COMP_WORDS": "bmd node list --prov", "COMP_CWORD": "3"}
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert b"--provision-state" in out
    await enroll(client, auth)  # NODE arguments complete with the API's node names
    url = str(client.make_url("")).rstrip("/")
    words = f"bmd --url {url} node show node-"
    proc = await bmd_subprocess(env={"_BMD_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "5"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().split() == [f"plain,node-{i}" for i in range(1, NODES + 1)]  # every page of 2
    words = "bmd --url http://127.0.0.1:9 node show node-"  # no daemon: nothing offered, no error
    proc = await bmd_subprocess(env={"_BMD_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "5"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.strip() == b"" and err == b""
