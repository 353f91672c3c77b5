"""A simulated deploy ramdisk: plays the node's side of a PXE deploy over the real wire protocol.

It lives in the package, not under ``tests/``, because it is the executable statement of the protocol:
it parses the kernel arguments with the very names :mod:`bmd.drivers.deploy.templates` writes (the two cannot
drift), end-to-end tests in any directory import it without path tricks, and ``python -m
bmd.drivers.deploy.agent_sim`` drives a real bmd from the lab. It imports nothing the daemon does not already have.

It speaks the agent-token protocol (Ironic's model): nothing the node reads over TFTP/HTTP boot is
secret, so it starts with only its identity and bmd's URL and asks bmd for a token, once per boot.

1. read ``<tftp_root>/pxelinux.cfg/01-<mac-with-dashes>`` (what pxelinux fetches for that interface), check
   it is in deploy mode and take two kernel arguments of the ``deploy`` label: ``bmd_node_uuid`` and
   ``bmd_url`` (iPXE adds ``BOOTIF=01-<mac>``; the agent knows the MAC it booted from). Or, as iPXE does,
   fetch ``<http_url>/ipxe/01-<mac-with-dashes>.ipxe`` over HTTP and take them from the ``kernel`` line of
   its ``:deploy`` section (:func:`fetch_boot_args`; the lab's simulated machines boot this way);
2. look up its token: ``POST <bmd_url>/v1/agent/lookup`` with ``{"node_uuid": "<uuid>", "mac": "<mac>"}``.
   ``200`` answers::

       {"node_uuid": "...", "deployment_id": "12", "token": "<random, 43 chars>",
        "image_url": "<bmd_url>/v1/agent/nodes/<uuid>/image", "image_checksum": "sha256:<hex>",
        "image_size": 2097152, "root_mb": 10240, "swap_mb": 512,
        "root_device": {"size": 20, "serial": "..."}, "boot_mode": "bios",
        "heartbeat_url": "<bmd_url>/v1/agent/nodes/<uuid>/heartbeat",
        "callback_url": "<bmd_url>/v1/nodes/<uuid>/vendor_passthru/pass_deploy_info"}

   (``root_device``: the node's root-device hints, ``{}`` when none). With ``Accept: text/plain`` the same
   answer comes as ``key=value`` lines (``root_device_size=20``...) for the sh agent in ``bmd/agent/``
   (see :mod:`bmd.api.shell_text`).

   bmd issues the token only while the node waits for an agent in a boot bmd started (``wait_callback``)
   and after bmd powered it on, only once per boot, and with ``agent.lookup_source = "pxe_ip"`` only to the
   node's PXE address. Refusals: ``409 invalid_state`` (no boot waits for an agent, or bmd has not powered
   the node on), ``403 agent_lookup_refused`` (not from the PXE address), ``404`` (unknown node or MAC),
   ``409 agent_token_already_issued`` (a second lookup: bmd also fails the deploy and logs a security
   event, so whoever lost the race is noticed);
3. from here on every request carries ``X-Agent-Token: <token>``; without it, with a wrong one or once the
   boot is over (success, failure, timeout, delete) bmd answers ``401 agent_token_refused`` and changes
   nothing. Download ``image_url``, deliberately in two parts: the first request is dropped part-way and
   the rest fetched with ``Range: bytes=<n>-``, which must come back ``206`` with a matching
   ``Content-Range``; check the bytes against ``image_checksum``. When the answer has
   ``config_drive_url`` (the instance has a config drive), GET it too: an ISO9660 volume ``config-2``;
4. report progress: ``POST heartbeat_url`` with ``{"message": "..."}`` (``202``);
5. ``POST callback_url`` with ``{"deployment_id": "...", "address": "<agent IP>", "error": null}`` (or
   ``"error": "<message>"`` when the deploy failed on the node; an optional ``"console"``, the tail of
   the agent's console up to 64 KiB, goes to the node's console log). ``202`` with ``{"provision_state": ...}``
   when bmd accepts the report: the token dies with it, and bmd finishes the deploy (disk boot, reboot)
   on its own after answering, so the state the answer names is the one at the time of the report
   (``wait_callback``, or ``error`` for a reported failure). The agent returns whatever status it got.

A clean boot (after a delete, ``docs/cleaning.md``) is the same boot: the node is ``cleaning`` and the
lookup answers ``{"mode": "clean", "erase": "metadata"|"full", "token", "deployment_id", "heartbeat_url",
"callback_url", ...}`` without image keys; the agent erases its disks, heartbeats, and calls back the same
way (``202`` ``cleaning``, or ``clean failed`` for a reported error).

An inspect boot (``docs/inspection.md``) too: the lookup answers ``{"mode": "inspect", "inspection_url",
"lldp_wait", ...}``; the agent heartbeats and POSTs its report (the collector's JSON, here the ``report``
given to :func:`run_deploy`) to ``inspection_url`` with its token: ``200`` with the outcome. Without a
report it calls back with an error, as the real agent does when its collector fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict, Unpack

import aiohttp
import structlog

from bmd.drivers.deploy import templates as t
from bmd.drivers.deploy.checksum import DigestSink, parse_checksum
from bmd.drivers.deploy.spec import mac_link_name
from bmd.errors import BmdError, DriverError
from bmd.provision.agent import TOKEN_HEADER

log = structlog.get_logger(__name__)


class AgentError(DriverError):
    """The simulated ramdisk could not do its part (bad config, download failure)."""


@dataclass(frozen=True, slots=True)
class BootArgs:
    """What the ramdisk knows when it starts: nothing secret."""

    node_uuid: str
    bmd_url: str
    kernel_args: dict[str, str]


@dataclass(frozen=True, slots=True)
class Lookup:
    """bmd's answer to the lookup. ``token`` is the secret: hidden from repr, never logged."""

    token: str = field(repr=False)
    deployment_id: str
    heartbeat_url: str
    callback_url: str
    image_url: str = ""  # a clean boot has no image
    image_checksum: str = ""
    root_mb: int = 0
    swap_mb: int = 0
    config_drive_url: str | None = None  # only when the instance has a config drive
    mode: str = "deploy"  # "clean": erase the disks (``erase``: metadata or full) and call back; "inspect"
    erase: str = ""
    inspection_url: str = ""  # an inspect boot: where the report goes


@dataclass(frozen=True, slots=True)
class AgentResult:
    status: int  # HTTP status of the last call: the lookup's when it was refused, else the callback's
    body: str  # that call's response body
    error: str | None  # what the agent reported: None for success
    bytes_downloaded: int
    resumed: bool  # the download was completed by a Range request answered 206
    stage: str = "callback"  # "lookup" when bmd refused the token
    config_drive: bytes | None = field(default=None, repr=False)  # the ISO fetched, when there was one


def parse_pxelinux(text: str) -> tuple[str | None, dict[str, dict[str, str]]]:
    """``(default label, {label: {"kernel": ..., "append": ...}})`` from a pxelinux config."""
    default: str | None = None
    labels: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.lower()
        if word == "default":
            default = rest.strip()
        elif word == "label":
            current = labels.setdefault(rest.strip(), {})
        elif current is not None:
            current[word] = rest.strip()
    return default, labels


def parse_grub(text: str) -> tuple[str | None, dict[str, dict[str, str]]]:
    """A bmd GRUB config in :func:`parse_pxelinux`'s shape: ``append`` is the ``linux`` line's arguments."""
    default: str | None = None
    labels: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("set default="):
            default = line.removeprefix("set default=")
        elif line.startswith("menuentry ") and "--id " in line:
            current = labels.setdefault(line.split("--id ", 1)[1].split()[0], {})
        elif current is not None and line.startswith("linux "):
            kernel, _, args = line.removeprefix("linux ").partition(" ")
            current["kernel"], current["append"] = kernel, args
        elif line == "}":
            current = None
    return default, labels


def read_boot_args(tftp_root: Path, mac: str) -> BootArgs:
    """What the ramdisk learns from its kernel command line: from the pxelinux config of a BIOS node, else
    the GRUB config of a UEFI node. Blocking: call from a thread."""
    link = Path(tftp_root) / "pxelinux.cfg" / mac_link_name(mac)
    grub = Path(tftp_root) / "grub" / f"grub.cfg-{mac_link_name(mac)}"
    try:
        text = link.read_text()
        parse = parse_pxelinux
    except FileNotFoundError:
        try:
            text, parse = grub.read_text(), parse_grub
        except OSError:
            raise AgentError(f"no PXE config for {mac} at {link} (nor a GRUB config at {grub})") from None
    except OSError as err:
        raise AgentError(f"no PXE config for {mac} at {link}: {err.strerror or err}") from err
    default, labels = parse(text)
    if default != "deploy" or "deploy" not in labels:
        raise AgentError(f"PXE config for {mac} is not in deploy mode (default {default!r})")
    args = dict(a.split("=", 1) for a in labels["deploy"].get("append", "").split() if "=" in a)
    missing = [n for n in (t.ARG_NODE_UUID, t.ARG_BMD_URL) if not args.get(n)]
    if missing:
        raise AgentError(f"deploy label of {mac} lacks kernel args: {', '.join(missing)}")
    return BootArgs(node_uuid=args[t.ARG_NODE_UUID], bmd_url=args[t.ARG_BMD_URL].rstrip("/"), kernel_args=args)


def parse_ipxe(text: str) -> tuple[str | None, dict[str, dict[str, str]]]:
    """``(goto target, {section: {"kernel": <args after the URL>, ...}})`` from an iPXE script bmd wrote."""
    default: str | None = None
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            current = sections.setdefault(line[1:].strip(), {})
            continue
        word, _, rest = line.partition(" ")
        if word == "goto" and current is None and default is None:
            default = rest.strip()
        elif current is not None and word in ("kernel", "initrd", "chain"):
            current[word] = rest.strip()
    return default, sections


def boot_args_from_ipxe(text: str, mac: str) -> BootArgs | None:
    """The deploy section's kernel arguments; None when the script boots the instance (``goto boot``)."""
    default, sections = parse_ipxe(text)
    if default == "boot":
        return None
    if default != "deploy" or "kernel" not in sections.get("deploy", {}):
        raise AgentError(f"iPXE script for {mac} is neither in deploy nor in boot mode (goto {default!r})")
    words = sections["deploy"]["kernel"].split()[1:]  # the first word is the kernel's URL
    args = dict(a.split("=", 1) for a in words if "=" in a)
    missing = [n for n in (t.ARG_NODE_UUID, t.ARG_BMD_URL) if not args.get(n)]
    if missing:
        raise AgentError(f"deploy section of {mac} lacks kernel args: {', '.join(missing)}")
    return BootArgs(node_uuid=args[t.ARG_NODE_UUID], bmd_url=args[t.ARG_BMD_URL].rstrip("/"), kernel_args=args)


async def fetch_boot_args(session: aiohttp.ClientSession, http_url: str, mac: str) -> tuple[int, BootArgs | None]:
    """What iPXE would boot for ``mac``: GET ``<http_url>/ipxe/01-<mac>.ipxe``. ``(status, args)``; args is
    None when there is no script (404: iPXE exits to the next boot device) or it boots the instance."""
    url = f"{http_url.rstrip('/')}/ipxe/{mac_link_name(mac)}.ipxe"
    async with session.get(url) as resp:
        text = await resp.text()
        if resp.status != 200:
            return resp.status, None
    return 200, boot_args_from_ipxe(text, mac)


async def lookup(session: aiohttp.ClientSession, boot: BootArgs, mac: str) -> tuple[int, str, Lookup | None]:
    """``POST /v1/agent/lookup``: (status, body, the answer when bmd issued a token)."""
    url = f"{boot.bmd_url}/v1/agent/lookup"
    async with session.post(url, json={"node_uuid": boot.node_uuid, "mac": mac}) as resp:
        text = await resp.text()
        if resp.status != 200:
            return resp.status, text, None
    got = json.loads(text)
    if got.get("mode") in ("clean", "inspect"):
        answer = Lookup(
            token=got["token"],
            deployment_id=str(got["deployment_id"]),
            heartbeat_url=got["heartbeat_url"],
            callback_url=got["callback_url"],
            mode=got["mode"],
            erase=str(got.get("erase", "")),
            inspection_url=str(got.get("inspection_url", "")),
        )
        return 200, text, answer
    answer = Lookup(
        token=got["token"],
        deployment_id=str(got["deployment_id"]),
        image_url=got["image_url"],
        image_checksum=got["image_checksum"],
        root_mb=int(got["root_mb"]),
        swap_mb=int(got["swap_mb"]),
        heartbeat_url=got["heartbeat_url"],
        callback_url=got["callback_url"],
        config_drive_url=got.get("config_drive_url"),
    )
    return 200, text, answer


def _consume(out: IO[bytes] | None, sink: DigestSink, chunk: bytes) -> None:
    sink.update(chunk)
    if out is not None:
        out.write(chunk)


async def _read_body(resp: aiohttp.ClientResponse, out: IO[bytes] | None, sink: DigestSink, limit: int) -> None:
    """Feed up to ``limit`` more bytes of the body to the sink (and the file)."""
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunk = chunk[: limit - sink.size] if limit >= 0 else chunk
        await asyncio.to_thread(_consume, out, sink, chunk)
        if 0 <= limit <= sink.size:
            return


async def download_image(
    session: aiohttp.ClientSession,
    url: str,
    sink: DigestSink,
    dest: Path | None,
    resume_at: float | None,
    headers: dict[str, str] | None = None,
) -> bool:
    """Download ``url`` into the sink; returns True when the second half came from a 206 Range answer."""
    headers = headers or {}
    out = await asyncio.to_thread(open, dest, "wb") if dest is not None else None
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise AgentError(f"GET {url}: HTTP {resp.status}")
            total = resp.content_length
            split = int(total * resume_at) if total and total >= 2 and resume_at else None
            await _read_body(resp, out, sink, split if split is not None else -1)
            if split is None or total is None:
                return False
            resp.close()  # drop the connection mid-body, as a flaky network would
        got = sink.size
        async with session.get(url, headers={**headers, "Range": f"bytes={got}-"}) as resp:
            expected_range = f"bytes {got}-{total - 1}/{total}"
            if resp.status != 206 or resp.headers.get("Content-Range") != expected_range:
                raise AgentError(
                    f"resuming {url} at byte {got}: HTTP {resp.status}, "
                    f"Content-Range {resp.headers.get('Content-Range')!r}, expected 206 {expected_range!r}"
                )
            await _read_body(resp, out, sink, -1)
        return True
    finally:
        if out is not None:
            out.close()


async def fetch_config_drive(session: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> bytes:
    """The config drive ISO (with the token); the real agent writes it to a partition at the disk's end
    (``bmd/agent/configdrive.sh``). Checked to be ISO9660 (``CD001`` at byte 32769)."""
    async with session.get(url, headers=auth) as resp:
        if resp.status != 200:
            raise AgentError(f"GET {url}: HTTP {resp.status}")
        data = await resp.read()
    if data[32769:32774] != b"CD001":
        raise AgentError(f"GET {url}: not an ISO9660 image")
    return data


class DeployOptions(TypedDict, total=False):
    """The keyword arguments of :func:`run_deploy` (and :func:`run_agent`)."""

    address: str
    dest: Path | None
    resume_at: float | None
    token: str | None
    fail_with: str | None
    session: aiohttp.ClientSession | None
    http_timeout: float
    report: dict[str, Any] | None


async def run_agent(tftp_root: Path, mac: str, **options: Unpack[DeployOptions]) -> AgentResult:
    """Play the deploy ramdisk for the node booting from ``mac`` (its boot args from the PXE config under
    ``tftp_root``); returns the callback's answer (or the lookup's, when bmd issued no token). The options
    are :func:`run_deploy`'s."""
    boot = await asyncio.to_thread(read_boot_args, tftp_root, mac)
    return await run_deploy(boot, mac, **options)


async def run_deploy(
    boot: BootArgs,
    mac: str,
    *,
    address: str = "127.0.0.1",
    dest: Path | None = None,
    resume_at: float | None = 0.5,
    token: str | None = None,
    fail_with: str | None = None,
    session: aiohttp.ClientSession | None = None,
    http_timeout: float = 60.0,
    report: dict[str, Any] | None = None,
) -> AgentResult:
    """Steps 2-5 for a ramdisk that booted with ``boot`` (from pxelinux, GRUB or iPXE).

    ``token`` replaces the token from the lookup (to test a wrong one); ``fail_with`` skips the download
    and reports that message as the deploy's error; ``dest`` keeps the downloaded image; ``report`` is
    what an inspect boot reports (the collector's JSON).
    """
    own_session = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=http_timeout))
    try:
        status, text, answer = await lookup(client, boot, mac)
        if answer is None:
            log.info("agent_lookup_refused", node_uuid=boot.node_uuid, status=status)
            return AgentResult(status, text, None, 0, False, stage="lookup")
        auth = {TOKEN_HEADER: answer.token if token is None else token}
        if answer.mode == "clean":
            return await _clean(client, answer, auth, address, fail_with)
        if answer.mode == "inspect":
            return await _inspect(client, answer, auth, address, fail_with, report)
        sink = DigestSink(parse_checksum(answer.image_checksum, field="image_checksum"))
        error, resumed, config_drive = fail_with, False, None
        if error is None:
            try:
                resumed = await download_image(client, answer.image_url, sink, dest, resume_at, auth)
                sink.verify(answer.image_url)
                if answer.config_drive_url:
                    config_drive = await fetch_config_drive(client, answer.config_drive_url, auth)
            except (BmdError, aiohttp.ClientError, TimeoutError) as err:
                error = str(err) or type(err).__name__
        log.info(
            "agent_image_done",
            deployment_id=answer.deployment_id,
            bytes=sink.size,
            resumed=resumed,
            error=error,
        )
        message = {"message": f"image written: {sink.size} bytes" if error is None else "deploy failed"}
        async with client.post(answer.heartbeat_url, json=message, headers=auth) as resp:
            log.info("agent_heartbeat_sent", deployment_id=answer.deployment_id, status=resp.status)
        body = {"deployment_id": answer.deployment_id, "address": address, "error": error}
        async with client.post(answer.callback_url, json=body, headers=auth) as resp:
            text = await resp.text()
            log.info("agent_callback_sent", deployment_id=answer.deployment_id, status=resp.status)
            return AgentResult(resp.status, text, error, sink.size, resumed, config_drive=config_drive)
    finally:
        if own_session:
            await client.close()


async def _clean(
    client: aiohttp.ClientSession, answer: Lookup, auth: dict[str, str], address: str, fail_with: str | None
) -> AgentResult:
    """A clean boot (the lookup said ``mode: clean``): a simulated machine has no disks to erase; it
    reports as the real agent does (a heartbeat, then the callback, or ``fail_with`` as its error)."""
    message = {"message": f"disks erased ({answer.erase})" if fail_with is None else "clean failed"}
    async with client.post(answer.heartbeat_url, json=message, headers=auth) as resp:
        log.info("agent_heartbeat_sent", deployment_id=answer.deployment_id, status=resp.status)
    body = {"deployment_id": answer.deployment_id, "address": address, "error": fail_with}
    async with client.post(answer.callback_url, json=body, headers=auth) as resp:
        text = await resp.text()
        log.info("agent_clean_callback_sent", deployment_id=answer.deployment_id, status=resp.status)
        return AgentResult(resp.status, text, fail_with, 0, False, stage="clean")


async def _inspect(
    client: aiohttp.ClientSession,
    answer: Lookup,
    auth: dict[str, str],
    address: str,
    fail_with: str | None,
    report: dict[str, Any] | None,
) -> AgentResult:
    """An inspect boot: the report goes to ``inspection_url``; no report (or ``fail_with``): the callback
    carries the error."""
    message = {"message": "inspecting" if fail_with is None else "inspection failed"}
    async with client.post(answer.heartbeat_url, json=message, headers=auth) as resp:
        log.info("agent_heartbeat_sent", deployment_id=answer.deployment_id, status=resp.status)
    error = fail_with or (None if report is not None else "this machine has no inspection data to report")
    if error is None:
        async with client.post(answer.inspection_url, json=report, headers=auth) as resp:
            text = await resp.text()
            log.info("agent_inspection_sent", deployment_id=answer.deployment_id, status=resp.status)
            return AgentResult(resp.status, text, None, 0, False, stage="inspect")
    body = {"deployment_id": answer.deployment_id, "address": address, "error": error}
    async with client.post(answer.callback_url, json=body, headers=auth) as resp:
        text = await resp.text()
        return AgentResult(resp.status, text, error, 0, False, stage="inspect")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Play a bmd deploy ramdisk for one node.")
    parser.add_argument("--tftp-root", type=Path, required=True)
    parser.add_argument("--mac", required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--dest", type=Path)
    parser.add_argument("--fail-with", help="report this error instead of deploying")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_agent(args.tftp_root, args.mac, address=args.address, dest=args.dest, fail_with=args.fail_with)
    )
    json.dump({"status": result.status, "error": result.error, "resumed": result.resumed}, sys.stdout)
    print()
    return 0 if 200 <= result.status < 300 and result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
