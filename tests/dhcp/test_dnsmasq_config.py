"""dnsmasq's configuration from the settings (the lines that matter), the ``[pxe]`` checks naming the key,
and the hosts dir following the deploy path: written when a node's boot files are, gone when they are
cleaned, when the deploy finished (disk boot) or failed. No root needed: dnsmasq is not started here (the
netns tests run it), the provider's file side is real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bmd.config import Settings
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.drivers.dhcp import NoDhcp, build_provider
from bmd.drivers.dhcp.dnsmasq import DnsmasqProvider, boot_url, state_root
from bmd.errors import ConfigError, InvalidInput
from bmd.health import DB_PROBE
from bmd.service import open_context
from tests.cloud import Cloud, make_cloud
from tests.conftest import make_settings

NODE = "6f1c1b4e-3f7a-4a62-9d0e-1b2c3d4e5f60"
PXE = {
    "dhcp_provider": "dnsmasq",
    "interface": "br-prov",
    "dhcp_range_start": "10.77.0.100",
    "dhcp_range_end": "10.77.0.150",
    "dhcp_netmask": 24,
}


def pxe_settings(tmp: Path, **pxe: Any) -> Settings:
    return make_settings(tmp, pxe={**PXE, **pxe})


def provider(tmp: Path, public_url: str = "http://10.77.0.1:6385", **pxe: Any) -> DnsmasqProvider:
    made = build_provider(pxe_settings(tmp, **pxe), public_url)
    assert isinstance(made, DnsmasqProvider)
    return made


def test_config_lines(tmp_path: Path) -> None:
    p = provider(tmp_path, listen_address="10.77.0.1", dhcp_router="10.77.0.254", dns_servers=["10.0.0.53"])
    lines = p.config_text().splitlines()
    root = state_root(p.settings)
    assert root == (tmp_path / "state" / "dnsmasq").resolve()
    for line in [
        "port=0",
        "interface=br-prov",
        "listen-address=10.77.0.1",
        "dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,3600",
        f"dhcp-hostsdir={root}/hosts",
        "dhcp-ignore=tag:!known,tag:!dhcpv6",
        "dhcp-ignore=tag:!known,tag:!known-othernet,tag:dhcpv6",
        "enable-tftp",
        f"tftp-root={(tmp_path / 'tftpboot').resolve()}",
        "dhcp-match=set:ipxe,175",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-boot=tag:bmd,tag:ipxe,http://10.77.0.1:6385/images/boot.ipxe",
        "dhcp-boot=tag:bmd,tag:!ipxe,tag:bios,undionly.kpxe",
        "dhcp-boot=tag:bmd,tag:!ipxe,tag:efi64,snponly.efi",
        "dhcp-option=option:router,10.77.0.254",
        "dhcp-option=option:dns-server,10.0.0.53",
        "log-dhcp",
        f"log-facility={root}/dnsmasq.log",
        f"pid-file={root}/dnsmasq.pid",
        f"dhcp-leasefile={root}/dnsmasq.leases",
    ]:
        assert line in lines, line
    assert p.supervisor.argv == ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={root}/dnsmasq.conf"]


def test_config_defaults_and_extra_options(tmp_path: Path) -> None:
    p = provider(tmp_path, extra_options=["dhcp-authoritative"], state_dir=str(tmp_path / "dm"))
    lines = p.config_text().splitlines()
    assert lines[-1] == "dhcp-authoritative"  # appended after bmd's own lines
    # No empty dhcp-option lines (a zero-length option makes clients drop the whole offer), no listen-address.
    assert not [line for line in lines if line.startswith(("dhcp-option", "listen-address"))]
    assert f"pid-file={tmp_path / 'dm'}/dnsmasq.pid" in lines


def test_boot_url(tmp_path: Path) -> None:
    assert boot_url(make_settings(tmp_path), "http://10.0.0.1:6385/") == "http://10.0.0.1:6385/images/boot.ipxe"
    public = make_settings(tmp_path, api={"public_url": "http://pxe.example:80"})
    assert boot_url(public, "http://127.0.0.1:1") == "http://pxe.example:80/images/boot.ipxe"
    own = make_settings(tmp_path, pxe={"ipxe_boot_url": "http://10.0.0.9/chain.ipxe"})
    assert boot_url(own, "") == "http://10.0.0.9/chain.ipxe"
    with pytest.raises(ConfigError, match=r"^api\.public_url: unknown"):
        boot_url(make_settings(tmp_path), "")


@pytest.mark.parametrize(
    ("pxe", "message"),
    [
        ({"interface": ""}, r"^pxe\.interface: .*required"),
        ({"interface": "br prov"}, r"^pxe\.interface: not a network interface name"),
        ({"dhcp_range_start": ""}, r"^pxe\.dhcp_range_start: required"),
        ({"dhcp_range_start": "10.77.0.300"}, r"^pxe\.dhcp_range_start: not an IPv4 address"),
        ({"dhcp_range_start": "10.77.0.0"}, r"^pxe\.dhcp_range_start: .*network or broadcast"),
        ({"dhcp_range_end": ""}, r"^pxe\.dhcp_range_end: required"),
        ({"dhcp_range_end": "10.78.0.150"}, r"^pxe\.dhcp_range_end: .*not in the range's subnet 10\.77\.0\.0/24"),
        ({"dhcp_range_end": "10.77.0.50"}, r"^pxe\.dhcp_range_end: .*before dhcp_range_start"),
        ({"dhcp_range_end": "10.77.0.255"}, r"^pxe\.dhcp_range_end: .*broadcast"),
        ({"dhcp_netmask": "255.0.255.0"}, r"^pxe\.dhcp_netmask: not a netmask"),
        ({"dhcp_netmask": 31}, r"^pxe\.dhcp_netmask: /31 leaves no room"),
        ({"listen_address": "10.77.1.1"}, r"^pxe\.listen_address: .*not a host address in the range's subnet"),
        ({"listen_address": "10.77.0.120"}, r"^pxe\.listen_address: .*inside the DHCP range"),
        ({"dhcp_router": "192.168.0.1"}, r"^pxe\.dhcp_router: .*not a host address"),
        ({"dns_servers": ["10.0.0.x"]}, r"^pxe\.dns_servers: not an IPv4 address"),
        ({"dhcp_lease_time": 60}, r"^pxe\.dhcp_lease_time: "),
        ({"ipxe_boot_url": "tftp://x/boot.ipxe"}, r"^pxe\.ipxe_boot_url: not an http"),
        ({"ipxe_boot_url": "http://x/a,b"}, r"^pxe\.ipxe_boot_url: "),
        ({"extra_options": ["dhcp-authoritative\nport=53"]}, r"^pxe\.extra_options: .*one non-empty dnsmasq option"),
        ({"dnsmasq_user": "root;x"}, r"^pxe\.dnsmasq_user: not a user name"),
        ({"restart_backoff": 5, "restart_backoff_max": 1}, r"^pxe\.restart_backoff_max: must be at least"),
        ({"dhcp_provider": "isc"}, r"^pxe\.dhcp_provider: "),
        ({"dnsmasq_opts": []}, r"^pxe\.dnsmasq_opts: unknown key"),
    ],
)
def test_bad_pxe_settings_name_the_key(tmp_path: Path, pxe: dict[str, Any], message: str) -> None:
    from bmd.config import load_settings

    path = tmp_path / "bmd.toml"
    lines = ["[pxe]", *(f"{k} = {json.dumps(v)}" for k, v in {**PXE, **pxe}.items())]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_none_provider_needs_nothing(tmp_path: Path) -> None:
    assert isinstance(build_provider(make_settings(tmp_path)), NoDhcp)
    # addresses given while the provider is none are still checked
    with pytest.raises(Exception, match="dhcp_range_end"):
        make_settings(tmp_path, pxe={"dhcp_range_start": "10.0.0.10"})


async def test_hosts_files(tmp_path: Path) -> None:
    p = provider(tmp_path)
    hosts = p.files.hosts
    hosts.mkdir(parents=True)
    await p.add_node(NODE, ["52-54-00-AA-00-01", "52:54:00:aa:00:02"], "uefi")
    assert (hosts / NODE).read_text().splitlines() == [
        f"# bmd: node {NODE} (boot_mode uefi), being deployed",
        "52:54:00:aa:00:01,set:bmd,set:bmd-uefi",
        "52:54:00:aa:00:02,set:bmd,set:bmd-uefi",
    ]
    assert p.health()["hosts"] == 1 and p.health()["status"] == "failing"  # not started: not serving
    assert p.hosts.write(NODE, (hosts / NODE).read_text()) is False  # same text: untouched, no HUP needed
    await p.add_node(NODE, ["52:54:00:aa:00:03"], "bios")
    assert "52:54:00:aa:00:03,set:bmd,set:bmd-bios" in (hosts / NODE).read_text()
    assert not [f for f in hosts.iterdir() if f.name.startswith(".")]  # no temp file left behind
    # The node's PXE IP, when dnsmasq serves its subnet: one line, every MAC, the address.
    await p.add_node(NODE, ["52:54:00:aa:00:02", "52:54:00:aa:00:01"], "bios", "10.77.0.20")
    pinned = "52:54:00:aa:00:01,52:54:00:aa:00:02,set:bmd,set:bmd-bios,10.77.0.20"
    assert (hosts / NODE).read_text().splitlines()[1] == pinned
    for elsewhere in ("10.9.0.10", "10.77.0.255", "bogus"):  # not served here: not pinned (it would be ignored)
        await p.add_node(NODE, ["52:54:00:aa:00:01"], "bios", elsewhere)
        assert (hosts / NODE).read_text().splitlines()[1:] == ["52:54:00:aa:00:01,set:bmd,set:bmd-bios"]
    await p.remove_node(NODE)
    await p.remove_node(NODE)  # idempotent
    assert list(hosts.iterdir()) == [] and p.health()["hosts"] == 0
    for args, field in [
        (("not-a-uuid", ["52:54:00:aa:00:01"], "bios"), "node_uuid"),
        ((NODE, ["52:54:00:aa:00"], "bios"), "macs"),
        ((NODE, [], "bios"), "macs"),
        ((NODE, ["52:54:00:aa:00:01"], "efi"), "boot_mode"),
    ]:
        with pytest.raises(InvalidInput) as info:
            await p.add_node(*args)
        assert info.value.field == field
    assert list(hosts.iterdir()) == []


async def test_start_refuses_a_missing_binary_or_loaders(tmp_path: Path, db_file: Path) -> None:
    for pxe, key in [
        ({"dnsmasq_path": str(tmp_path / "no-dnsmasq")}, "pxe.dnsmasq_path"),
        ({"dnsmasq_path": "/bin/true", "ipxe_dir": str(tmp_path / "no-ipxe")}, "pxe.ipxe_dir"),
    ]:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            async with open_context(pxe_settings(tmp_path, **pxe), public_url="http://10.77.0.1:6385"):
                pass
    with pytest.raises(ConfigError, match=r"^api\.public_url: "):
        async with open_context(pxe_settings(tmp_path)):
            pass


async def deploy(cloud: Cloud, **extra: Any) -> tuple[int, str]:
    (node_id,) = await cloud.enroll(1, **extra)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "wait_callback"
    return node_id, node.uuid


async def test_hosts_follow_the_deploy(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        body = await (await cloud.client.get("/healthz")).json()
        assert body["checks"]["dhcp"] == {"provider": "none", "status": "ok"}
        # The dnsmasq provider's file side, not started (the netns tests run dnsmasq itself).
        dhcp = provider(tmp_path / "p")
        dhcp.files.hosts.mkdir(parents=True)
        cloud.ctx.conductor.p.dhcp = cloud.ctx.dhcp = dhcp
        node_id, uuid = await deploy(cloud, boot_mode="uefi")
        assert (dhcp.files.hosts / uuid).read_text().splitlines()[1] == "52:54:00:00:01:00,set:bmd,set:bmd-uefi"
        assert await cloud.ctx.runner.run_pass(DB_PROBE)
        body = await (await cloud.client.get("/healthz")).json()
        assert body["checks"]["dhcp"]["hosts"] == 1
        assert body["checks"]["dhcp"]["status"] == "failing" and body["status"] == "degraded"

        # The agent reports success: the node boots from disk from now on, DHCP no longer answers it.
        result = await run_agent(cloud.tftp_root, "52:54:00:00:01:00", dest=tmp_path / "written.img")
        assert result.status == 202, result.body
        await cloud.settle()
        assert (await cloud.node(node_id)).provision_state == "active"
        assert not (dhcp.files.hosts / uuid).exists()

        inst = (await (await cloud.client.get("/v1/instances")).json())["instances"][0]["uuid"]
        assert (await cloud.client.delete(f"/v1/instances/{inst}", headers=cloud.auth)).status == 202
        await cloud.settle()
        assert list(dhcp.files.hosts.iterdir()) == []

        # A deploy the agent reports failed: its boot files go, and so does its DHCP entry.
        status, _ = await cloud.create()
        assert status == 202
        await cloud.settle()
        assert (dhcp.files.hosts / uuid).exists()
        failed = await run_agent(cloud.tftp_root, "52:54:00:00:01:00", fail_with="no disk")
        assert json.loads(failed.body) == {"provision_state": "error"}
        assert list(dhcp.files.hosts.iterdir()) == []


async def test_log_rotation(tmp_path: Path) -> None:
    p = provider(tmp_path, log_max_bytes=65536)
    [rotation] = p.periodic()
    p.files.root.mkdir(parents=True)
    await rotation.run_once()  # no log yet: nothing to do
    p.files.log.write_bytes(b"x" * 65536)
    await rotation.run_once()
    assert p.files.log.exists()  # at the bound: kept
    p.files.log.write_bytes(b"y" * 65537)
    await rotation.run_once()
    assert not p.files.log.exists() and p.files.log.with_name("dnsmasq.log.1").read_bytes() == b"y" * 65537
