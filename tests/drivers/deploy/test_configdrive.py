"""Config drives: the ISO read back with pycdlib, the request's validation (400 naming the field), the
token-only route and the lookup's ``config_drive_url`` against the real app; whole-disk requests."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bmd.drivers.deploy.agent_sim import parse_pxelinux, run_agent
from bmd.drivers.deploy.configdrive import ConfigDrive, build_iso, check_ssh_key
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import MAC, Waiting, agent, deploy_until_waiting, lookup

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def ssh_key(kind: str = "ed25519", comment: str = "ops@example") -> str:
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} {comment}"


def read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    """(volume label, {rock ridge path: bytes}) of an ISO."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for root, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                files[path] = out.getvalue()
        # Joliet readers (Windows, some cloud-init paths) see the same long names.
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/openstack/latest/meta_data.json")
        assert out.getvalue() == files["/openstack/latest/meta_data.json"]
        return label, files
    finally:
        iso.close()


def test_the_iso_holds_the_openstack_layout() -> None:
    key = ssh_key()
    network = {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:00:01:00"}]}
    drive = ConfigDrive(
        uuid=UUID,
        name="web",
        hostname="web-1.example.org",
        ssh_keys=[key],
        meta={"role": "web"},
        network_data=network,
        user_data=b"#cloud-config\nhostname: web-1\n",
    )
    label, files = read_iso(build_iso(drive))
    assert label == "config-2"
    for version in ("latest", "2012-08-10"):
        base = f"/openstack/{version}"
        assert set(f for f in files if f.startswith(base + "/")) == {
            f"{base}/meta_data.json",
            f"{base}/user_data",
            f"{base}/network_data.json",
        }
        meta = json.loads(files[f"{base}/meta_data.json"])
        assert meta["uuid"] == UUID and meta["hostname"] == "web-1.example.org" and meta["name"] == "web"
        assert meta["public_keys"] == {"key-0": key} and meta["keys"][0]["data"] == key
        assert meta["meta"] == {"role": "web"} and meta["launch_index"] == 0
        assert files[f"{base}/user_data"] == b"#cloud-config\nhostname: web-1\n"
        assert json.loads(files[f"{base}/network_data.json"]) == network


def test_without_user_data_or_network_data_only_meta_data() -> None:
    _, files = read_iso(build_iso(ConfigDrive(uuid=UUID, hostname="db")))
    assert set(files) == {"/openstack/latest/meta_data.json", "/openstack/2012-08-10/meta_data.json"}
    assert "user_data" not in repr(ConfigDrive(uuid=UUID, user_data=b"secret")).replace("user_data=", "")


def test_ssh_keys_are_checked_to_their_blob() -> None:
    for kind in ("ed25519", "rsa"):
        key = ssh_key(kind)
        assert check_ssh_key(key) == key
    good = ssh_key().split()
    for bad in [
        "ssh-ed25519",
        "ssh-foo AAAA",
        f"ssh-ed25519 {good[1][:-8]}!!!!!!!!",  # not base64
        f"ssh-rsa {good[1]}",  # an ed25519 blob claiming to be RSA
        f"ssh-ed25519 {good[1]} multi\nline",
    ]:
        with pytest.raises(ValueError, match="key"):
            check_ssh_key(bad)


# -- the API ----------------------------------------------------------------------------------------


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hostname": "-bad-.example"}, "hostname"),
        ({"hostname": "a" * 64}, "hostname"),
        ({"hostname": "host.123"}, "hostname"),
        ({"ssh_keys": ["ssh-ed25519 notbase64!"]}, "ssh_keys.0"),
        ({"ssh_keys": "ssh-ed25519 AAAA"}, "ssh_keys"),
        ({"user_data": "x" * (64 * 1024 + 1)}, "user_data"),
        ({"user_data": "!!!", "user_data_base64": True}, "user_data"),
        ({"user_data": base64.b64encode(b"x" * (64 * 1024 + 1)).decode(), "user_data_base64": True}, "user_data"),
        ({"user_data_base64": True}, "user_data_base64"),
        ({"network_data": {"links": "eth0"}}, "network_data"),
        ({"network_data": {"routes": []}}, "network_data"),
        ({"network_data": {"links": [{"id": str(i)} for i in range(300)]}}, "network_data"),
        ({"meta": {"k": 1}}, "meta.k"),
        ({"meta": {"k": "v" * 300}}, "meta"),
        ({"whole_disk": True, "kernel_ref": "/x"}, "kernel_ref"),
    ],
)
async def test_bad_config_drive_input_is_400_naming_the_field(cloud: Cloud, change: dict[str, Any], field: str) -> None:
    await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create(**change)
    assert status == 400 and body["field"] == field, body


async def test_lookup_names_the_config_drive_and_only_the_token_gets_it(cloud: Cloud) -> None:
    key = ssh_key()
    user_data = "#cloud-config\npassword: hunter2\n"
    await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create(hostname="web-1", ssh_keys=[key], user_data=user_data, meta={"a": "b"})
    assert status == 202, body
    view = body["instances"][0]
    assert "hunter2" not in json.dumps(body)
    assert view["config_drive"] == {
        "hostname": "web-1",
        "ssh_keys": [key],
        "meta": {"a": "b"},
        "network_data": False,
        "user_data_bytes": len(user_data),
    }
    # Stored sealed: neither deploy_info nor the sealed column holds it in clear (nor its base64).
    inst = await cloud.instance(view["uuid"])
    encoded = base64.b64encode(user_data.encode()).decode()
    assert inst.deploy_info["user_data_bytes"] == len(user_data) and inst.secret_refs
    for text in (json.dumps(inst.deploy_info), inst.secret_refs):
        assert "hunter2" not in text and encoded not in text
    await cloud.settle()
    node = await cloud.node(view["bm_node_id"])
    assert node.provision_state == "wait_callback", node.last_error
    w = Waiting(node.id, node.uuid, view["uuid"])
    # Not under the served roots: anonymous TFTP/HTTP never sees the drive, its user_data least of all.
    for root in (cloud.tftp_root, Path(cloud.ctx.settings.deploy.http_root)):
        assert not any(b"hunter2" in p.read_bytes() for p in root.rglob("*") if p.is_file())
    url = f"/v1/agent/nodes/{w.node_uuid}/configdrive"
    assert (await cloud.client.get(url)).status == 401
    status, answer = await lookup(cloud, w)
    assert status == 200 and answer["config_drive_url"].endswith(url)
    token = answer["token"]
    assert (await cloud.client.get(url, headers=agent("wrong-" + token))).status == 401
    resp = await cloud.client.get(url, headers=agent(token))
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    iso = await resp.read()
    label, files = read_iso(iso)
    assert label == "config-2" and files["/openstack/latest/user_data"] == user_data.encode()
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert meta["uuid"] == w.instance_uuid and meta["hostname"] == "web-1" and meta["public_keys"]["key-0"] == key
    resp = await cloud.client.get(url, headers={**agent(token), "Range": "bytes=32768-32773"})
    assert resp.status == 206 and await resp.read() == iso[32768:32774]  # the primary volume descriptor
    # The instance's GET shows no user_data either.
    resp = await cloud.client.get(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)
    assert resp.status == 200 and "hunter2" not in await resp.text()


async def test_no_config_drive_no_url_and_404(cloud: Cloud) -> None:
    (w,) = await deploy_until_waiting(cloud)
    status, answer = await lookup(cloud, w)
    assert status == 200 and "config_drive_url" not in answer
    resp = await cloud.client.get(f"/v1/agent/nodes/{w.node_uuid}/configdrive", headers=agent(answer["token"]))
    assert resp.status == 404


@pytest.mark.parametrize("how", ["nothing-configured", "whole_disk-flag"])
async def test_a_whole_disk_deploy_boots_the_local_disk(tmp_path: Path, db_file: Path, how: str) -> None:
    deploy = {"boot_kernel": "", "boot_ramdisk": ""} if how == "nothing-configured" else {}
    async with make_cloud(tmp_path, deploy=deploy) as cloud:
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create(**({"whole_disk": True} if how == "whole_disk-flag" else {}))
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(body["instances"][0]["bm_node_id"])
        assert node.provision_state == "wait_callback", node.last_error
        node_dir = cloud.tftp_root / node.uuid
        assert not (node_dir / "kernel").exists()
        _, labels = parse_pxelinux((node_dir / ".config.boot").read_text())
        assert labels == {"boot": {"localboot": "0"}}
        ipxe = (Path(cloud.ctx.settings.deploy.http_root) / node.uuid / ".boot.ipxe.boot").read_text()
        assert ipxe.split(":boot\n", 1)[1].splitlines()[1] == "exit"


async def test_only_a_kernel_configured_is_400_naming_the_ramdisk(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path, deploy={"boot_ramdisk": ""}) as cloud:
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create()
        assert status == 400 and body["field"] == "ramdisk_ref", body


async def test_the_agent_fetches_the_config_drive_and_the_deploy_completes(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create(hostname="db-1", meta={"tier": "db"})
    assert status == 202, body
    await cloud.settle()
    result = await run_agent(cloud.tftp_root, MAC)
    assert result.status == 202 and result.error is None, result.body
    assert result.config_drive is not None
    meta = json.loads(read_iso(result.config_drive)[1]["/openstack/latest/meta_data.json"])
    assert meta["hostname"] == "db-1" and meta["meta"] == {"tier": "db"}
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "active"


async def test_a_uefi_node_deploys_through_its_grub_config(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1, boot_mode="uefi")
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.boot_mode == "uefi" and node.provision_state == "wait_callback", node.last_error
    assert not (cloud.tftp_root / "pxelinux.cfg" / "01-52-54-00-00-01-00").exists()
    assert (cloud.tftp_root / "grub" / "grub.cfg-01-52-54-00-00-01-00").is_file()
    result = await run_agent(cloud.tftp_root, MAC)  # reads the GRUB config: no pxelinux link for UEFI
    assert result.status == 202 and result.error is None, result.body
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "active"
    grub = (cloud.tftp_root / node.uuid / "grub.cfg").read_text()
    assert "set default=boot" in grub and f"linux /{node.uuid}/kernel" in grub
