"""The PXE/iPXE writer on real files: config content, MAC links, switch to boot, clean, validation."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bmd.drivers.deploy.agent_sim import parse_pxelinux
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.deploy.pxe import DeploySpec, ImageRef, PXEDeploy, PXESettings
from bmd.errors import ConfigError, Conflict, DriverError, InvalidInput, NotFound
from tests.drivers.deploy.servers import ImageServer

NODE_A = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
NODE_B = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
BMD_URL = "http://10.0.0.1:6385"


@dataclass
class Env:
    pxe: PXEDeploy
    cache: ImageCache
    server: ImageServer
    tftp: Path
    http: Path
    private: Path
    images: dict[str, bytes]

    def spec(self, node_uuid: str = NODE_A, macs: tuple[str, ...] = ("AA:BB:CC:DD:EE:01",), **kw: object) -> DeploySpec:
        refs = {
            name: ImageRef(self.server.url(name), "sha256:" + hashlib.sha256(data).hexdigest())
            for name, data in self.images.items()
        }
        fields: dict[str, object] = dict(
            node_uuid=node_uuid,
            macs=macs,
            deployment_id="42",
            bmd_url=BMD_URL,
            **refs,
        )
        fields.update(kw)
        return DeploySpec(**fields)  # type: ignore[arg-type]


def tree(root: Path) -> list[str]:
    """Every path under root (links not followed), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def all_text(*roots: Path) -> str:
    return "".join(p.read_text(errors="replace") for r in roots for p in r.rglob("*") if p.is_file())


def make_env(tmp_path: Path, server: ImageServer, cache: ImageCache, same_root: bool = False) -> Env:
    images = {
        name: os.urandom(1000 + i)
        for i, name in enumerate(["deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk", "image"])
    }
    for name, data in images.items():
        server.add(name, data)
    tftp = tmp_path / "tftp"
    http = tftp if same_root else tmp_path / "http"
    private = tmp_path / "state" / "agent-images"
    settings = PXESettings(tftp, http, "http://10.0.0.1:6385/images/", private, append_params="console=ttyS0,115200n8")
    return Env(PXEDeploy(settings, cache), cache, server, tftp, http, private, images)


@pytest.fixture
async def env(tmp_path: Path, image_server: ImageServer) -> AsyncIterator[Env]:
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        yield make_env(tmp_path, image_server, cache)
    finally:
        await cache.close()


async def test_config_has_both_labels_and_the_deploy_args(env: Env) -> None:
    layout = await env.pxe.prepare(env.spec())
    config = env.tftp / NODE_A / "config"
    assert layout.config_path == config and layout.node_dir == env.tftp / NODE_A
    default, labels = parse_pxelinux(config.read_text())
    assert default == "deploy" and set(labels) == {"deploy", "boot"}
    assert labels["deploy"]["kernel"] == f"{NODE_A}/deploy_kernel"
    assert labels["deploy"]["ipappend"] == "3"
    disk_sha = hashlib.sha256(env.images["image"]).hexdigest()
    assert layout.image_path == env.private / NODE_A / "disk"
    assert layout.image_checksum == f"sha256:{disk_sha}" == await env.pxe.image_checksum(NODE_A)
    # Only the node's identity and bmd's URL: nothing secret, nothing the lookup hands out.
    assert labels["deploy"]["append"].split() == [
        f"initrd={NODE_A}/deploy_ramdisk",
        f"bmd_node_uuid={NODE_A}",
        f"bmd_url={BMD_URL}",
        "console=ttyS0,115200n8",
    ]
    assert labels["boot"] == {
        "kernel": f"{NODE_A}/kernel",
        "append": f"initrd={NODE_A}/ramdisk root=LABEL=root ro console=ttyS0,115200n8",
    }


async def test_node_files_are_hard_links_into_the_cache(env: Env) -> None:
    await env.pxe.prepare(env.spec())
    tftp_files = {"config", ".config.boot", "grub.cfg", ".grub.cfg.boot"}
    tftp_files |= {"deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"}
    assert {p.name for p in (env.tftp / NODE_A).iterdir()} == tftp_files
    http_files = {"boot.ipxe", ".boot.ipxe.boot", "deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"}
    assert {p.name for p in (env.http / NODE_A).iterdir()} == http_files
    assert {p.name for p in (env.private / NODE_A).iterdir()} == {"disk", "disk.sha256"}
    for name, file in [("deploy_kernel", "deploy_kernel"), ("ramdisk", "ramdisk"), ("image", "disk")]:
        cached = await env.cache.fetch(env.server.url(name), env.spec().__getattribute__(name).checksum)
        node_file = (env.private if file == "disk" else env.tftp) / NODE_A / file
        assert node_file.read_bytes() == env.images[name]
        assert node_file.stat().st_ino == cached.stat().st_ino


async def test_mac_links_are_relative_and_named_by_mac(env: Env) -> None:
    layout = await env.pxe.prepare(env.spec(macs=("AA:BB:CC:DD:EE:01", "aa-bb-cc-dd-ee-02", "aa:bb:cc:dd:ee:01")))
    links = sorted(os.listdir(env.tftp / "pxelinux.cfg"))
    assert links == ["01-aa-bb-cc-dd-ee-01", "01-aa-bb-cc-dd-ee-02"]
    for name in links:
        link = env.tftp / "pxelinux.cfg" / name
        assert link.is_symlink() and os.readlink(link) == f"../{NODE_A}/config"
        assert link.resolve() == (env.tftp / NODE_A / "config").resolve()
    ipxe_links = sorted(os.listdir(env.http / "ipxe"))
    assert ipxe_links == ["01-aa-bb-cc-dd-ee-01.ipxe", "01-aa-bb-cc-dd-ee-02.ipxe"]
    assert os.readlink(env.http / "ipxe" / ipxe_links[0]) == f"../{NODE_A}/boot.ipxe"
    assert len(layout.mac_links) == 4 and all(p.is_symlink() for p in layout.mac_links)


async def test_ipxe_scripts(env: Env) -> None:
    layout = await env.pxe.prepare(env.spec())
    script = layout.ipxe_path.read_text().splitlines()
    assert layout.ipxe_path == env.http / NODE_A / "boot.ipxe"
    assert script[0] == "#!ipxe" and "goto deploy" in script
    base = f"http://10.0.0.1:6385/images/{NODE_A}"
    kernel = next(line for line in script if line.startswith(f"kernel {base}/deploy_kernel "))
    assert f"bmd_node_uuid={NODE_A} bmd_url={BMD_URL}" in kernel and "initrd=deploy_ramdisk" in kernel
    assert kernel.endswith(" BOOTIF=01-${mac:hexhyp}")
    assert f"initrd {base}/deploy_ramdisk" in script and f"initrd {base}/ramdisk" in script
    assert ":boot" in script and any(
        line.startswith(f"kernel {base}/kernel root=LABEL=root")
        for line in [s.replace("initrd=ramdisk ", "") for s in script]
    )
    chain = (env.http / "boot.ipxe").read_text()
    assert "chain http://10.0.0.1:6385/images/ipxe/01-${mac:hexhyp}.ipxe" in chain


async def test_switch_to_boot_is_atomic_and_idempotent(env: Env) -> None:
    await env.pxe.prepare(env.spec())
    config = env.tftp / NODE_A / "config"
    before = config.stat().st_ino
    await env.pxe.switch_to_boot(NODE_A)
    default, labels = parse_pxelinux(config.read_text())
    assert default == "boot" and set(labels) == {"boot"}
    assert config.stat().st_ino != before  # replaced by rename, never rewritten in place
    assert "goto boot" in (env.http / NODE_A / "boot.ipxe").read_text().splitlines()
    assert not (env.tftp / NODE_A / ".config.boot").exists()
    # The MAC link now leads to the boot config.
    assert parse_pxelinux((env.tftp / "pxelinux.cfg" / "01-aa-bb-cc-dd-ee-01").read_text())[0] == "boot"
    await env.pxe.switch_to_boot(NODE_A)
    assert parse_pxelinux(config.read_text())[0] == "boot"


async def test_switch_to_boot_errors(env: Env) -> None:
    # nothing of the node here (another service prepared its deploy): nothing to switch, no error
    with capture_logs() as logs:
        await env.pxe.switch_to_boot(NODE_B)
    assert [e["event"] for e in logs] == ["pxe_switch_skipped"]
    assert not (env.tftp / NODE_B).exists() and not (env.http / NODE_B).exists()
    await env.pxe.prepare(env.spec())
    (env.tftp / NODE_A / "config").unlink()  # half of its files gone: that is an error
    (env.tftp / NODE_A / ".config.boot").unlink()
    with pytest.raises(NotFound, match="no config"):
        await env.pxe.switch_to_boot(NODE_A)
    await env.pxe.clean(NODE_A)
    await env.pxe.prepare(env.spec())
    (env.tftp / NODE_A / ".config.boot").unlink()
    with pytest.raises(DriverError, match="neither"):
        await env.pxe.switch_to_boot(NODE_A)


async def test_clean_is_idempotent_and_leaves_other_nodes_alone(env: Env) -> None:
    await env.pxe.prepare(env.spec(NODE_A, ("aa:bb:cc:dd:ee:01",)))
    await env.pxe.prepare(env.spec(NODE_B, ("aa:bb:cc:dd:ee:02",)))
    before_b = [p for p in tree(env.tftp) + tree(env.http) if NODE_B in p or "ee-02" in p]
    await env.pxe.clean(NODE_A)
    await env.pxe.clean(NODE_A)
    remaining = tree(env.tftp) + tree(env.http)
    assert not [p for p in remaining if NODE_A in p or "ee-01" in p]
    assert [p for p in remaining if NODE_B in p or "ee-02" in p] == before_b
    assert tree(env.private) == [NODE_B, f"{NODE_B}/disk", f"{NODE_B}/disk.sha256"]


@pytest.mark.parametrize("damage", ["node_dirs", "links", "half_of_each"])
async def test_clean_copes_with_half_deleted_state(env: Env, damage: str) -> None:
    await env.pxe.prepare(env.spec(macs=("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02")))
    if damage in ("node_dirs", "half_of_each"):
        shutil.rmtree(env.tftp / NODE_A)
    if damage == "node_dirs":
        shutil.rmtree(env.http / NODE_A)
    if damage in ("links", "half_of_each"):
        (env.tftp / "pxelinux.cfg" / "01-aa-bb-cc-dd-ee-01").unlink()
    if damage == "links":
        for link in (env.http / "ipxe").iterdir():
            link.unlink()
    await env.pxe.clean(NODE_A)
    assert tree(env.tftp) == ["boot.ipxe", "grub", "pxelinux.cfg"]
    assert tree(env.http) == ["boot.ipxe", "ipxe"]


async def test_prepare_again_replaces_everything(env: Env) -> None:
    await env.pxe.prepare(env.spec(macs=("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02")))
    await env.pxe.prepare(env.spec(macs=("aa:bb:cc:dd:ee:02",), bmd_url="http://10.0.0.2:6385", deployment_id="43"))
    assert sorted(os.listdir(env.tftp / "pxelinux.cfg")) == ["01-aa-bb-cc-dd-ee-02"]
    text = all_text(env.tftp, env.http)
    assert "bmd_url=http://10.0.0.2:6385" in text and f"bmd_url={BMD_URL}" not in text


async def test_a_mac_booting_another_live_node_is_a_conflict(env: Env) -> None:
    await env.pxe.prepare(env.spec(NODE_A, ("aa:bb:cc:dd:ee:01",)))
    with pytest.raises(Conflict, match="aa:bb:cc:dd:ee:01"):
        await env.pxe.prepare(env.spec(NODE_B, ("aa:bb:cc:dd:ee:01",)))
    assert not (env.tftp / NODE_B).exists() and not (env.http / NODE_B).exists()
    assert os.readlink(env.tftp / "pxelinux.cfg" / "01-aa-bb-cc-dd-ee-01") == f"../{NODE_A}/config"
    # A stale link (its node's files are gone) is simply taken over.
    shutil.rmtree(env.tftp / NODE_A)
    shutil.rmtree(env.http / NODE_A)
    await env.pxe.prepare(env.spec(NODE_B, ("aa:bb:cc:dd:ee:01",)))
    assert os.readlink(env.tftp / "pxelinux.cfg" / "01-aa-bb-cc-dd-ee-01") == f"../{NODE_B}/config"


async def test_a_failed_fetch_leaves_nothing(env: Env) -> None:
    spec = env.spec(image=ImageRef(env.server.url("missing")))
    with pytest.raises(DriverError, match="404"):
        await env.pxe.prepare(spec)
    assert tree(env.tftp) == ["boot.ipxe", "grub", "pxelinux.cfg"] and tree(env.http) == ["boot.ipxe", "ipxe"]


async def test_cancelling_prepare_mid_download_leaves_nothing(env: Env) -> None:
    gate, started = env.server.hold("image")
    task = asyncio.create_task(env.pxe.prepare(env.spec()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        await env.cache.wait_idle()
    assert tree(env.tftp) == ["boot.ipxe", "grub", "pxelinux.cfg"] and tree(env.http) == ["boot.ipxe", "ipxe"]
    gate.set()
    await env.pxe.prepare(env.spec())  # and the node can be prepared afterwards
    assert (env.tftp / NODE_A / "config").exists()


async def test_images_linked_into_nodes_survive_eviction(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(tmp_path / "cache", 100)  # far below the five images
    try:
        env = make_env(tmp_path, image_server, cache)
        await env.pxe.prepare(env.spec())
        image_server.add("other", b"x" * 200)
        await cache.fetch(image_server.url("other"))
        assert len(cache.entries()) >= 5  # nothing the node links to was evicted
        await env.pxe.clean(NODE_A)
        image_server.add("other2", b"y" * 50)
        await cache.fetch(image_server.url("other2"))
        assert [e.ref for e in cache.entries()] == [image_server.url("other2")]
    finally:
        await cache.close()


async def test_one_root_for_tftp_and_http(tmp_path: Path, image_server: ImageServer) -> None:
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        env = make_env(tmp_path, image_server, cache, same_root=True)
        await env.pxe.prepare(env.spec())
        names = {p.name for p in (env.tftp / NODE_A).iterdir()}
        assert {"config", "boot.ipxe", "kernel"} <= names and "disk" not in names
        await env.pxe.switch_to_boot(NODE_A)
        await env.pxe.clean(NODE_A)
        assert tree(env.tftp) == ["boot.ipxe", "grub", "ipxe", "pxelinux.cfg"]
    finally:
        await cache.close()


async def test_the_verbs_log_their_events(env: Env) -> None:
    with capture_logs() as logs:
        spec = env.spec()
        await env.pxe.prepare(spec)
        await env.pxe.switch_to_boot(NODE_A)
        await env.pxe.clean(NODE_A)
    assert {"pxe_config_written", "pxe_switched_to_boot", "pxe_cleaned"} <= {e["event"] for e in logs}
    assert tree(env.private) == []


BAD_SPECS: list[tuple[str, dict[str, object]]] = [
    ("node_uuid", {"node_uuid": "../../etc"}),
    ("node_uuid", {"node_uuid": NODE_A.upper()}),
    ("node_uuid", {"node_uuid": NODE_A.replace("-", "")}),
    ("macs", {"macs": ()}),
    ("macs", {"macs": "aa:bb:cc:dd:ee:ff"}),
    ("macs", {"macs": ("aa:bb:cc:dd:ee",)}),
    ("macs", {"macs": ("aa:bb:cc:dd:ee:zz",)}),
    ("macs", {"macs": ("aa:bb-cc:dd:ee:ff",)}),
    ("macs", {"macs": ("../../../x",)}),
    ("deployment_id", {"deployment_id": "4 2"}),
    ("deployment_id", {"deployment_id": 42}),
    ("bmd_url", {"bmd_url": "ftp://10.0.0.1/cb"}),
    ("bmd_url", {"bmd_url": "http://10.0.0.1/a b initrd=evil"}),
    ("bmd_url", {"bmd_url": "http://10.0.0.1/$(reboot)"}),
    ("bmd_url", {"bmd_url": "http://10.0.0.1/x\nlabel evil"}),
    ("root_device", {"root_device": "/dev/sda1 init=/bin/sh"}),
    ("image", {"image": ImageRef("")}),
    ("kernel", {"kernel": "http://x/kernel"}),
]


@pytest.mark.parametrize(("field", "change"), BAD_SPECS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_SPECS)])
async def test_bad_specs_name_the_field_and_write_nothing(env: Env, field: str, change: dict[str, object]) -> None:
    spec = dataclasses.replace(env.spec(), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as err:
        await env.pxe.prepare(spec)
    assert err.value.field == field
    assert "initrd=evil" not in str(err.value)  # a bad key is not echoed back
    assert not env.tftp.exists() and not env.http.exists()
    assert env.server.hits == {}


@pytest.mark.parametrize("node_uuid", ["../x", "", ".", NODE_A + "/..", None])
async def test_clean_and_switch_validate_the_node_uuid(env: Env, node_uuid: str) -> None:
    await env.pxe.ensure_layout()
    for verb in (env.pxe.clean, env.pxe.switch_to_boot):
        with pytest.raises(InvalidInput) as err:
            await verb(node_uuid)
        assert err.value.field == "node_uuid"
    assert tree(env.tftp) == ["boot.ipxe", "grub", "pxelinux.cfg"] and tree(env.http) == ["boot.ipxe", "ipxe"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tftp_root": "relative/tftp"}, "deploy.tftp_root"),
        ({"http_root": "http"}, "deploy.http_root"),
        ({"http_url": "ftp://10.0.0.1/images"}, "deploy.http_url"),
        ({"http_url": "http:///images"}, "deploy.http_url"),
        ({"http_url": "http://10.0.0.1/im ages"}, "deploy.http_url"),
        ({"append_params": "console=ttyS0 'quoted'"}, "deploy.append_params"),
        ({"image_root": "relative"}, "deploy.image_root"),
        ({"image_root": "SERVED/agent-images"}, "deploy.image_root"),  # served to anyone: refused
        ({"image_root": "PARENT"}, "deploy.image_root"),
    ],
)
def test_settings_are_checked(tmp_path: Path, kwargs: dict[str, str], key: str) -> None:
    base: dict[str, object] = {
        "tftp_root": tmp_path,
        "http_root": tmp_path,
        "http_url": "http://10.0.0.1/images",
        "image_root": tmp_path.parent / "private",
    }
    if "image_root" in kwargs:
        kwargs = {"image_root": kwargs["image_root"].replace("SERVED", str(tmp_path)).replace("PARENT", "/")}
    with pytest.raises(ConfigError, match=key):
        PXESettings(**{**base, **kwargs})  # type: ignore[arg-type]
