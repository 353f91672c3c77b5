"""The ``bmd`` command against the real API: node verbs, capabilities, import, exit codes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bmd.cli import main
from tests.conftest import node_body


async def run_cli(
    client: Any, token: str | None, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    base = ["--url", str(client.make_url("")).rstrip("/")]
    if token:
        base += [f"--token={token}"]
    code = await asyncio.to_thread(main, [*base, *args])
    out, err = capsys.readouterr()
    return code, out, err


async def test_node_lifecycle_through_the_cli(client, ctx, capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # the default api.token_file (./var/api-token) is not a checkout's own
    monkeypatch.delenv("BMD_TOKEN", raising=False)
    tok = ctx.api_token
    code, out, err = await run_cli(
        client,
        tok,
        "node",
        "create",
        "--name",
        "n1",
        "--cpus",
        "4",
        "--memory-mb",
        "8192",
        "--local-gb",
        "100",
        "--pm-driver",
        "fake",
        "--pm-address",
        "127.0.0.1",
        "--pm-user",
        "admin",
        "--pm-password",
        "pw-123",
        "--mac",
        "52:54:00:00:00:aa",
        "--capability",
        "location=rack11",
        "--capability",
        "slots=4",
        capsys=capsys,
    )
    assert code == 0, err
    node = json.loads(out)
    assert node["extra_specs"] == {"location": "rack11", "slots": 4} and node["pm_password"] == "******"
    assert "pw-123" not in out

    code, out, _ = await run_cli(client, None, "node", "list", capsys=capsys)
    assert code == 0 and "n1" in out.splitlines()[1]
    code, out, _ = await run_cli(client, None, "node", "show", "n1", capsys=capsys)
    assert code == 0 and json.loads(out)["interfaces"][0]["address"] == "52:54:00:00:00:aa"

    code, out, _ = await run_cli(client, tok, "node", "set-capability", "n1", "gpu", "a100", capsys=capsys)
    assert code == 0 and json.loads(out)["extra_specs"]["gpu"] == "a100"
    code, out, _ = await run_cli(client, tok, "node", "unset-capability", "n1", "gpu", capsys=capsys)
    assert code == 0 and "gpu" not in json.loads(out)["extra_specs"]

    code, _, err = await run_cli(client, tok, "node", "update", "n1", "--cpus", "0", capsys=capsys)
    assert code == 2 and "cpus" in err
    hints = ("--root-device", "size=20", "--root-device", "serial=disk-1")
    code, out, err = await run_cli(client, tok, "node", "update", "n1", "--boot-mode", "uefi", *hints, capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["boot_mode"] == "uefi"
    assert json.loads(out)["root_device"] == {"size": 20, "serial": "disk-1"}
    code, _, err = await run_cli(client, tok, "node", "update", "n1", "--root-device", "size=big", capsys=capsys)
    assert code == 2 and "--root-device" in err
    code, _, err = await run_cli(client, tok, "node", "delete", "nope", capsys=capsys)
    assert code == 1 and "not found" in err
    code, _, err = await run_cli(client, None, "node", "delete", "n1", capsys=capsys)
    assert code == 1 and "no API token: set api.token_file or BMD_TOKEN" in err, err
    code, out, _ = await run_cli(client, tok, "node", "delete", "n1", capsys=capsys)
    assert code == 0


async def test_import_inventory_file(client, ctx, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inventory = tmp_path / "inv.json"
    inventory.write_text(json.dumps({"nodes": [node_body(i) for i in range(1, 4)]}))
    code, out, err = await run_cli(client, ctx.api_token, "node", "import", str(inventory), capsys=capsys)
    assert code == 0 and "imported 3 nodes" in out, err
    inventory.write_text("{broken")
    code, _, err = await run_cli(client, ctx.api_token, "node", "import", str(inventory), capsys=capsys)
    assert code == 2 and "inv.json" in err
    inventory.write_text(json.dumps([{**node_body(9), "memory_mb": "lots"}]))
    code, _, err = await run_cli(client, ctx.api_token, "node", "import", str(inventory), capsys=capsys)
    assert code == 2 and "nodes.0.memory_mb" in err


def test_usage_errors_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        main(["node", "create", "--cpus", "x"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_unreachable_service_exits_1(capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["--url", "http://127.0.0.1:9", "--token", "x" * 20, "node", "list"])
    assert code == 1 and "cannot reach bmd" in capsys.readouterr().err
