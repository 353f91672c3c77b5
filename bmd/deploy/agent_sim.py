"""A simulated deploy ramdisk: plays the node's side of a PXE deploy over the real wire protocol.

It lives in the package, not under ``tests/``, because it is the executable statement of the protocol:
it parses the kernel arguments with the very names :mod:`bmd.deploy.templates` writes (the two cannot
drift), end-to-end tests in any directory import it without path tricks, and ``python -m
bmd.deploy.agent_sim`` drives a real bmd from the lab. It imports nothing the daemon does not already have.

What it does, in order, like the ramdisk would:

1. read ``<tftp_root>/pxelinux.cfg/01-<mac-with-dashes>`` (what pxelinux fetches for that interface), check
   it is in deploy mode and parse the ``deploy`` label's kernel arguments;
2. download ``bmd_image_url``, deliberately in two parts: the first request is dropped part-way and the
   rest fetched with ``Range: bytes=<n>-``, which must come back ``206`` with a matching ``Content-Range``;
3. check the bytes against ``bmd_image_checksum``;
4. ``POST bmd_callback_url`` with the JSON body below, reporting success or what went wrong.

The callback body (``Content-Type: application/json``)::

    {"deployment_id": "<deployment_id kernel arg>",
     "key": "<deployment_key kernel arg>",
     "address": "<the agent's IP address>",
     "error": null}                      # or "<message>" when the deploy failed on the node

bmd answers 2xx when it accepts the report, 403 for a wrong key (nothing changes), 404 for an unknown
deployment and 409 when the node is not waiting for a callback. The agent returns whatever status it got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import structlog

from bmd.deploy import templates as t
from bmd.deploy.checksum import DigestSink, parse_checksum
from bmd.deploy.spec import mac_link_name
from bmd.errors import BmdError, DriverError

log = structlog.get_logger(__name__)


class AgentError(DriverError):
    """The simulated ramdisk could not do its part (bad config, download failure)."""


@dataclass(frozen=True, slots=True)
class DeployParams:
    deployment_id: str
    deployment_key: str = field(repr=False)
    callback_url: str
    image_url: str
    image_checksum: str
    root_mb: int
    swap_mb: int
    kernel_args: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentResult:
    status: int  # HTTP status of the callback
    body: str  # the callback's response body
    error: str | None  # what the agent reported: None for success
    bytes_downloaded: int
    resumed: bool  # the download was completed by a Range request answered 206


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


def read_deploy_params(tftp_root: Path, mac: str) -> DeployParams:
    """What the ramdisk learns from its kernel command line. Blocking: call from a thread."""
    link = Path(tftp_root) / "pxelinux.cfg" / mac_link_name(mac)
    try:
        text = link.read_text()
    except OSError as err:
        raise AgentError(f"no PXE config for {mac} at {link}: {err.strerror or err}") from err
    default, labels = parse_pxelinux(text)
    if default != "deploy" or "deploy" not in labels:
        raise AgentError(f"PXE config for {mac} is not in deploy mode (default {default!r})")
    args = dict(a.split("=", 1) for a in labels["deploy"].get("append", "").split() if "=" in a)
    names = (
        t.ARG_DEPLOYMENT_ID,
        t.ARG_DEPLOYMENT_KEY,
        t.ARG_CALLBACK_URL,
        t.ARG_IMAGE_URL,
        t.ARG_IMAGE_CHECKSUM,
    )
    missing = [n for n in names if not args.get(n)]
    if missing:
        raise AgentError(f"deploy label of {mac} lacks kernel args: {', '.join(missing)}")
    return DeployParams(
        deployment_id=args[t.ARG_DEPLOYMENT_ID],
        deployment_key=args[t.ARG_DEPLOYMENT_KEY],
        callback_url=args[t.ARG_CALLBACK_URL],
        image_url=args[t.ARG_IMAGE_URL],
        image_checksum=args[t.ARG_IMAGE_CHECKSUM],
        root_mb=int(args.get(t.ARG_ROOT_MB, "0")),
        swap_mb=int(args.get(t.ARG_SWAP_MB, "0")),
        kernel_args=args,
    )


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
    session: aiohttp.ClientSession, url: str, sink: DigestSink, dest: Path | None, resume_at: float | None
) -> bool:
    """Download ``url`` into the sink; returns True when the second half came from a 206 Range answer."""
    out = await asyncio.to_thread(open, dest, "wb") if dest is not None else None
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                raise AgentError(f"GET {url}: HTTP {resp.status}")
            total = resp.content_length
            split = int(total * resume_at) if total and total >= 2 and resume_at else None
            await _read_body(resp, out, sink, split if split is not None else -1)
            if split is None or total is None:
                return False
            resp.close()  # drop the connection mid-body, as a flaky network would
        got = sink.size
        async with session.get(url, headers={"Range": f"bytes={got}-"}) as resp:
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


async def run_agent(
    tftp_root: Path,
    mac: str,
    *,
    address: str = "127.0.0.1",
    dest: Path | None = None,
    resume_at: float | None = 0.5,
    key: str | None = None,
    fail_with: str | None = None,
    session: aiohttp.ClientSession | None = None,
    http_timeout: float = 60.0,
) -> AgentResult:
    """Play the deploy ramdisk for the node booting from ``mac``; returns the callback's answer.

    ``key`` replaces the key from the kernel args (to test a wrong key); ``fail_with`` skips the download
    and reports that message as the deploy's error; ``dest`` keeps the downloaded image.
    """
    params = await asyncio.to_thread(read_deploy_params, tftp_root, mac)
    own_session = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=http_timeout))
    try:
        sink = DigestSink(parse_checksum(params.image_checksum, field=t.ARG_IMAGE_CHECKSUM))
        error, resumed = fail_with, False
        if error is None:
            try:
                resumed = await download_image(client, params.image_url, sink, dest, resume_at)
                sink.verify(params.image_url)
            except (BmdError, aiohttp.ClientError, TimeoutError) as err:
                error = str(err) or type(err).__name__
        log.info(
            "agent_image_done",
            deployment_id=params.deployment_id,
            bytes=sink.size,
            resumed=resumed,
            error=error,
        )
        body = {
            "deployment_id": params.deployment_id,
            "key": params.deployment_key if key is None else key,
            "address": address,
            "error": error,
        }
        async with client.post(params.callback_url, json=body) as resp:
            text = await resp.text()
            log.info("agent_callback_sent", deployment_id=params.deployment_id, status=resp.status)
            return AgentResult(resp.status, text, error, sink.size, resumed)
    finally:
        if own_session:
            await client.close()


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
