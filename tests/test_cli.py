"""The ``bmd`` command against the real API: node verbs, capabilities, import, exit codes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bmd.cli import main
from tests.conftest import node_body

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def machine_out(out: str) -> Any:
    """The CLI's JSON on stdout, without the log lines the in-process server wrote there meanwhile."""
    return json.loads("".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line)))


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
        "-f",
        "json",
        capsys=capsys,
    )
    assert code == 0, err
    node = json.loads(out)
    assert node["extra_specs"] == {"location": "rack11", "slots": 4} and node["pm_password"] == "******"
    assert "pw-123" not in out

    code, out, _ = await run_cli(client, None, "node", "list", capsys=capsys)
    assert code == 0 and "| n1 " in out.splitlines()[3]  # the first row under the table's header
    code, out, _ = await run_cli(client, None, "node", "show", "n1", "-f", "json", capsys=capsys)
    assert code == 0 and json.loads(out)["interfaces"][0]["address"] == "52:54:00:00:00:aa"

    code, out, _ = await run_cli(
        client, tok, "node", "set-capability", "n1", "gpu", "a100", "-f", "json", capsys=capsys
    )
    assert code == 0 and json.loads(out)["extra_specs"]["gpu"] == "a100"
    code, out, _ = await run_cli(client, tok, "node", "unset-capability", "n1", "gpu", "-f", "json", capsys=capsys)
    assert code == 0 and "gpu" not in json.loads(out)["extra_specs"]
    code, out, _ = await run_cli(
        client, tok, "node", "set", "n1", "--name", "n1b", "-f", "value", "-c", "name", capsys=capsys
    )
    assert code == 0 and out == "n1b\n"
    code, out, _ = await run_cli(
        client, tok, "node", "update", "n1b", "--name", "n1", "-f", "value", "-c", "name", capsys=capsys
    )
    assert code == 0 and out == "n1\n"  # update: the older name of set
    code, out, _ = await run_cli(
        client, tok, "node", "set", "n1", "--group", "row2", "-f", "value", "-c", "conductor_group", capsys=capsys
    )
    assert code == 0 and out == "row2\n"

    code, _, err = await run_cli(client, tok, "node", "update", "n1", "--cpus", "0", capsys=capsys)
    assert code == 2 and "cpus" in err
    hints = ("--root-device", "size=20", "--root-device", "serial=disk-1")
    code, out, err = await run_cli(
        client, tok, "node", "update", "n1", "--boot-mode", "uefi", *hints, "-f", "json", capsys=capsys
    )
    assert code == 0, err
    assert json.loads(out)["boot_mode"] == "uefi"
    assert json.loads(out)["root_device"] == {"size": 20, "serial": "disk-1"}
    code, _, err = await run_cli(client, tok, "node", "update", "n1", "--root-device", "size=big", capsys=capsys)
    assert code == 2 and "--root-device" in err
    code, _, err = await run_cli(client, tok, "node", "delete", "nope", capsys=capsys)
    assert code == 1 and "not found" in err
    code, _, err = await run_cli(client, None, "node", "delete", "n1", capsys=capsys)
    assert code == 1 and "no API token: set api.token_file or BMD_TOKEN" in err and len(err.splitlines()) == 1, err
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


@pytest.mark.parametrize(
    ("argv", "says", "where"),
    [
        (["node", "create", "--cpus", "x"], "'x' is not a valid integer", "node create"),
        (["frobnicate"], "No such command 'frobnicate'", ""),
        (["node", "list", "--bogus"], "--bogus", "node list"),
        (["node", "list", "-f", "xml"], "'xml'", "node list"),
        (["node", "list", "--sort", "name:sideways"], "expected COLUMN[:asc|desc]", "node list"),
        (["pxe-ip", "add", "--server", "10.0.0.1"], "give ADDRESS or --range FIRST-LAST", "pxe-ip add"),
        (["pxe-ip", "add", "--range", "10.0.0.9-10.0.0.1", "--server", "10.1.0.1"], "before the first", "pxe-ip add"),
        (["completion", "tcsh"], "'tcsh'", "completion"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], says: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", "http://127.0.0.1:9", "--token", "x" * 20, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("bmd: error: ") and len(err.splitlines()) == 1 and says in err, err
    assert err.rstrip().endswith(f"(see '{' '.join(['bmd', where]).strip()} --help')"), err  # where to look next


def test_bare_group_prints_its_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node"]) == 2
    assert "Commands:" in capsys.readouterr().out


def test_unreachable_service_exits_1_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", "http://127.0.0.1:9", "--token", "x" * 20, "node", "list"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert "cannot reach bmd at http://127.0.0.1:9" in err and "daemon running" in err


async def test_a_missing_token_file_says_what_to_set(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'[api]\ntoken_file = "{tmp_path / "no-such-token"}"\n')
    url = str(client.make_url("")).rstrip("/")
    code = await asyncio.to_thread(main, ["--config", str(config), "--url", url, "flavor", "delete", "x"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert "no API token: set api.token_file" in err and "BMD_TOKEN" in err
    code = await asyncio.to_thread(main, ["--url", url, "--token", "wrong-token-123", "flavor", "delete", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "the token was refused" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bmd {version('bmd')}\n"


def test_the_ramdisk_help_names_the_builders_default_kernel() -> None:
    from bmd.cli import ramdisk
    from bmd.ramdisk import build

    assert ramdisk.DEFAULT_KERNEL_PACKAGE == build.DEFAULT_KERNEL_PACKAGE  # copied to keep bmd --help fast
