"""The server side of the sh agent: the lookup's text rendering, the keys the agent needs, the console
tail appended to the node's console log, and empty deploy.* settings meaning what `bmd ramdisk build` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmd.api.shell_text import shell_lines, wants_shell_text
from bmd.ramdisk import ramdisk_dir
from tests.cloud import make_cloud
from tests.test_agent_token import MAC, deploy_until_waiting


def size_of(path: str) -> int:
    return Path(path).stat().st_size


def files_under(root: str) -> list[bytes]:
    return [p.read_bytes() for p in Path(root).rglob("*") if p.is_file()]


def parse_like_sh(text: str) -> dict[str, str]:
    """What the agent's `IFS= read -r line` + `${line%%=*}` / `${line#*=}` loop sees."""
    return {line.partition("=")[0]: line.partition("=")[2] for line in text.split("\n") if line}


@pytest.mark.parametrize(
    ("answer", "lines"),
    [
        ({"a": 1, "b": None, "c": True}, "a=1\nb=\nc=true\n"),
        ({"root_device": {"size": 20, "serial": "S 1"}}, "root_device_size=20\nroot_device_serial=S 1\n"),
        ({"root_device": {}}, ""),
        ({"x": "line\nbreak=1"}, "x=line\\x0abreak=1\n"),  # one line whatever the value holds
        ({"x": "back\\slash é"}, "x=back\\x5cslash \\xc3\\xa9\n"),
        ({"Bad-Key": "v", "ok": ["a", "b"]}, "ok=a,b\n"),
    ],
)
def test_shell_lines(answer: dict[str, Any], lines: str) -> None:
    assert shell_lines(answer) == lines


def test_only_an_accept_asking_for_text_gets_it() -> None:
    assert wants_shell_text("text/plain")
    assert wants_shell_text("text/plain; q=1, */*")
    assert not wants_shell_text("application/json, text/plain")
    assert not wants_shell_text("*/*") and not wants_shell_text("")


async def test_the_text_lookup_carries_what_the_json_one_does(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        ids = await cloud.enroll(1, root_device={"size": 10, "model": "Disk 1"})
        await cloud.add_pxe_ips(1)
        assert (await cloud.create())[0] == 202
        await cloud.settle()
        node = await cloud.node(ids[0])
        resp = await cloud.client.post(
            "/v1/agent/lookup", json={"node_uuid": node.uuid, "mac": MAC}, headers={"Accept": "text/plain"}
        )
        assert resp.status == 200 and resp.content_type == "text/plain"
        got = parse_like_sh(await resp.text())
        assert len(got["token"]) >= 32 and got["image_checksum"] == cloud.image_checksum
        assert got["image_size"] == str(size_of(cloud.image_ref)) and got["boot_mode"] == "bios"
        assert (got["root_device_size"], got["root_device_model"]) == ("10", "Disk 1")
        assert got["callback_url"].endswith(f"/v1/nodes/{node.uuid}/vendor_passthru/pass_deploy_info")
        # a second lookup, in any form, is refused (and fails the deploy)
        again = await cloud.client.post(
            "/v1/agent/lookup", json={"node_uuid": node.uuid}, headers={"Accept": "text/plain"}
        )
        assert again.status == 409


async def test_the_json_lookup_has_the_new_keys(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        (w,) = await deploy_until_waiting(cloud)
        resp = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": w.node_uuid})
        body = await resp.json()
        assert (body["root_device"], body["boot_mode"]) == ({}, "bios")
        assert body["image_size"] == size_of(cloud.image_ref)


async def test_the_agents_console_goes_to_the_nodes_console_log(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        (w,) = await deploy_until_waiting(cloud)
        token = (await (await cloud.client.post("/v1/agent/lookup", json={"node_uuid": w.node_uuid})).json())["token"]
        url = f"/v1/nodes/{w.node_uuid}/vendor_passthru/pass_deploy_info"
        too_long = {"error": "x", "console": "y" * 65537}
        resp = await cloud.client.post(url, json=too_long, headers={"X-Agent-Token": token})
        assert resp.status == 400 and (await resp.json())["field"] == "console"
        forged = await cloud.client.post(url, json={"error": "x", "console": "forged"}, headers={"X-Agent-Token": "no"})
        assert forged.status == 401
        assert cloud.ctx.console_logs.read(w.node_uuid) == b""  # nothing without the token
        body = {"error": "disk on fire", "console": "line 1\nline 2: disk on fire"}
        assert (await cloud.client.post(url, json=body, headers={"X-Agent-Token": token})).status == 202
        console = cloud.ctx.console_logs.read(w.node_uuid).decode()
        assert "line 1\nline 2: disk on fire\n" in console and "error report" in console
        node = await cloud.node(w.node_id)
        assert node.provision_state == "error" and "disk on fire" in (node.last_error or "")
        assert cloud.ctx.console_logs.path(w.node_uuid).parent == ramdisk_dir(cloud.tmp / "state").parent / "console"


async def test_empty_deploy_settings_mean_the_built_ramdisk(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path, deploy={"deploy_kernel": "", "deploy_ramdisk": ""}) as cloud:
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create()
        built = ramdisk_dir(cloud.ctx.settings.service.state_dir)
        assert status == 400 and body["field"] == "deploy_kernel_ref"
        assert f"{built}/deploy_kernel does not exist: run `bmd ramdisk build`" in body["message"]
        built.mkdir(parents=True)
        for name in ("deploy_kernel", "deploy_ramdisk"):
            (built / name).write_bytes(b"built " + name.encode())
        status, body = await cloud.create()
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(1)
        assert node.provision_state == "wait_callback", node.last_error
        served = files_under(cloud.ctx.settings.deploy.tftp_root)
        assert b"built deploy_kernel" in served and b"built deploy_ramdisk" in served
