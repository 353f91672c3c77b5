"""dnsmasq really run by bmd's supervisor, serving a bridge in a network namespace the test creates.

bmd's own ``open_context`` starts it (``pxe.dhcp_provider = "dnsmasq"``, the binary wrapped to run inside
the namespace); ``/healthz`` reports it; SIGKILL makes the supervisor restart it; leaving the context stops
it. ``busybox udhcpc`` on veth ports plays the PXE clients: a MAC of a node being deployed gets a lease and
the loader of its firmware, a MAC of no deploying node gets nothing (dnsmasq logs "ignored"), a removed
node's MAC gets nothing again (SIGHUP), and TFTP serves the loaders from ``deploy.tftp_root``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bmd.api.app import create_app
from bmd.context import AppContext
from bmd.drivers.dhcp.dnsmasq import DnsmasqProvider
from bmd.service import open_context
from tests.dhcp.conftest import PxeNetns, dhcp_client, dhcpv6_info_request, dnsmasq_settings, need, run, wait_for

NODE = "6f1c1b4e-3f7a-4a62-9d0e-1b2c3d4e5f60"
KNOWN = "52:54:00:aa:00:01"
UNKNOWN = "52:54:00:bb:00:02"
PUBLIC = "http://10.77.0.1:8080"


def provider(ctx: AppContext) -> DnsmasqProvider:
    assert isinstance(ctx.dhcp, DnsmasqProvider)
    return ctx.dhcp


async def wait_health(client: TestClient[Any, Any], check: Any, within: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            body: dict[str, Any] = await (await client.get("/healthz")).json()
            if check(body["checks"]["dhcp"]):
                return body
            await asyncio.sleep(0.1)  # polling /healthz with a deadline


def exe_of(pid: int) -> Path | None:
    try:
        return Path(f"/proc/{pid}/exe").resolve(strict=True)
    except OSError:
        return None


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def pad_log(path: Path, size: int) -> None:
    with open(path, "ab") as out:
        out.write(b"#" * size)


def log_text(ctx: AppContext) -> str:
    path = provider(ctx).files.log
    return path.read_text(errors="replace") if path.exists() else ""


async def test_supervised_dnsmasq_serves_only_deploying_macs(
    pxe_netns: PxeNetns, dnsmasq_installed: None, tmp_path: Path, db_file: Path
) -> None:
    need("busybox")
    settings = dnsmasq_settings(tmp_path, pxe_netns)
    known = pxe_netns.add_port("vk0", KNOWN)
    unknown = pxe_netns.add_port("vu0", UNKNOWN)
    async with open_context(settings, public_url=PUBLIC) as ctx:
        dhcp = provider(ctx)
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            body = await wait_health(client, lambda d: d["running"])
            first = body["checks"]["dhcp"]
            assert first["provider"] == "dnsmasq" and first["status"] == "ok" and first["restarts"] == 0
            assert first["hosts"] == 0 and isinstance(first["pid"], int)
            assert exe_of(first["pid"]) == Path("/usr/sbin/dnsmasq")

            # No node is being deployed: nobody gets an answer.
            assert await dhcp_client(pxe_netns, known, tmp_path, expect=False) is None
            await ctx.dhcp.add_node(NODE, [KNOWN.upper()], "bios", "10.77.0.42")  # its PXE IP (bm_pxe_ips)
            bios = await dhcp_client(pxe_netns, known, tmp_path, "0000")
            assert bios is not None, log_text(ctx)
            assert bios["boot_file"] == "undionly.kpxe" and bios["siaddr"] == pxe_netns.address
            assert bios["ip"] == "10.77.0.42"
            uefi = await dhcp_client(pxe_netns, known, tmp_path, "0007")
            assert uefi is not None and uefi["boot_file"] == "snponly.efi"
            assert await dhcp_client(pxe_netns, unknown, tmp_path, expect=False) is None
            assert f"{UNKNOWN} ignored" in log_text(ctx)
            assert (await (await client.get("/healthz")).json())["checks"]["dhcp"]["hosts"] == 1

            # TFTP serves the loader bmd copied into tftp_root.
            got = tmp_path / "got.kpxe"
            done = await asyncio.to_thread(
                run, pxe_netns.argv("busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l", str(got), pxe_netns.address)
            )
            assert done.returncode == 0, done.stderr
            assert same_bytes(got, Path("/usr/lib/ipxe/undionly.kpxe"))

            # The log past its bound: rotated, and dnsmasq (SIGUSR2) writes a fresh one.
            await asyncio.to_thread(pad_log, dhcp.files.log, settings.pxe.log_max_bytes)
            [rotation] = [t for t in ctx.runner.tasks.values() if t.name == "dnsmasq_log_rotation"]
            await rotation.run_once()
            assert await dhcp_client(pxe_netns, unknown, tmp_path, expect=False) is None
            assert f"{UNKNOWN} ignored" in log_text(ctx) and len(log_text(ctx)) < settings.pxe.log_max_bytes

            # Killed: degraded while it is down, then restarted by the supervisor with a new PID.
            pid = first["pid"]
            os.kill(pid, signal.SIGKILL)
            again = await wait_health(client, lambda d: d["running"] and d["pid"] != pid)
            assert again["checks"]["dhcp"]["restarts"] == 1 and again["checks"]["dhcp"]["last_exit"] == -9
            assert again["checks"]["dhcp"]["status"] == "ok"
            # The restarted dnsmasq read the hosts dir again: the node still gets its answer.
            assert (await dhcp_client(pxe_netns, known, tmp_path)) is not None

            # Removed (deploy cleaned): SIGHUP makes dnsmasq forget the MAC at once.
            await ctx.dhcp.remove_node(NODE)
            assert await dhcp_client(pxe_netns, known, tmp_path, expect=False) is None
            assert f"{KNOWN} ignored" in log_text(ctx)
            last_pid = (await (await client.get("/healthz")).json())["checks"]["dhcp"]["pid"]
        assert dhcp.supervisor.status.running
    # The service stopped: so did dnsmasq.
    assert not dhcp.supervisor.status.running
    assert not exe_of(last_pid)


async def test_dhcpv6_information_requests_are_answered_for_deploying_macs_only(
    pxe_netns: PxeNetns, dnsmasq_installed: None, tmp_path: Path, db_file: Path
) -> None:
    """With an IPv6 RA (the documented pxe.extra_options), iPXE asks DHCPv6 for stateless information and
    waits ~13 s for an answer. A node pinned to its IPv4 PXE IP matches there only as "known-othernet": it
    is answered too; a MAC of no deploying node is still ignored."""
    settings = dnsmasq_settings(tmp_path, pxe_netns, extra_options=pxe_netns.advertise_ipv6())
    known = pxe_netns.add_port("vk0", KNOWN)
    unknown = pxe_netns.add_port("vu0", UNKNOWN)
    async with open_context(settings, public_url=PUBLIC) as ctx:
        await ctx.dhcp.add_node(NODE, [KNOWN], "bios", "10.77.0.42")
        assert await dhcpv6_info_request(pxe_netns, known, KNOWN), log_text(ctx)
        assert not await dhcpv6_info_request(pxe_netns, unknown, UNKNOWN, wait=2.0), log_text(ctx)
        requests = [line for line in log_text(ctx).splitlines() if "DHCPINFORMATION-REQUEST(br0)" in line]
        assert len(requests) == 2 and requests[1].endswith(" ignored"), requests
        assert not requests[0].rstrip().endswith("ignored"), requests


async def test_dead_dnsmasq_degrades_health(
    pxe_netns: PxeNetns, dnsmasq_installed: None, tmp_path: Path, db_file: Path
) -> None:
    """A dnsmasq that keeps failing to restart: /healthz says degraded (200), with the reason."""
    settings = dnsmasq_settings(tmp_path, pxe_netns, restart_backoff=0.2, restart_backoff_max=0.2)
    async with open_context(settings, public_url=PUBLIC) as ctx:
        dhcp = provider(ctx)
        for name in ctx.runner.records:
            assert await ctx.runner.run_pass(name)
        ctx.mark_ready()  # as serve marks it after its first passes
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            assert (await (await client.get("/healthz")).json())["status"] == "ok"
            # The binary goes bad (a broken upgrade): every restart fails.
            write_text(Path(settings.pxe.dnsmasq_path), "#!/bin/sh\necho dnsmasq: broken install >&2\nexit 3\n")
            os.kill(dhcp.supervisor.status.pid or 0, signal.SIGKILL)
            await wait_health(client, lambda d: not d["running"] and d["restarts"] >= 2)
            resp = await client.get("/healthz")
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "degraded" and body["checks"]["dhcp"]["status"] == "failing"
            assert body["checks"]["dhcp"]["last_error"]


async def test_a_dnsmasq_left_by_a_killed_bmd_is_replaced(
    pxe_netns: PxeNetns, dnsmasq_installed: None, tmp_path: Path, db_file: Path
) -> None:
    """bmd was SIGKILLed while its dnsmasq lived on (holding the DHCP socket): the next start stops it."""
    settings = dnsmasq_settings(tmp_path, pxe_netns)
    files = DnsmasqProvider.from_settings(settings, PUBLIC)
    await asyncio.to_thread(files._prepare_files)  # the configuration the first bmd wrote
    orphan = pxe_netns.spawn(["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={files.files.conf}"])
    await asyncio.to_thread(wait_for, lambda: read_pid(files.files.pid) == orphan.pid, 10, "the orphan's pid file")
    async with open_context(settings, public_url=PUBLIC) as ctx:
        status = provider(ctx).supervisor.status
        assert status.running and status.pid != orphan.pid
        assert orphan.poll() is not None  # stopped (and reaped: the test started it)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
