"""Credentials in image refs are secrets: a ref like ``http://user:pass@host/x?sig=...`` is fetched with its
credentials (the image server below refuses anything else), stored encrypted, and shown only redacted —
in the API, the database file, the files bmd writes, the logs, /metrics and error messages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select
from structlog.testing import capture_logs

from bmd.db.models import Deployment
from bmd.drivers.deploy.refs import open_refs
from tests.cloud import make_cloud
from tests.test_service import Daemon, bmd, write_config

USER, PASSWORD, SIG = "deployer", "Pa55-in-the-url", "sig-5e1f0c0ffee7ab1e"
SECRETS = (PASSWORD, SIG)


@dataclass
class SignedImageServer:
    """Serves ``files[name]`` at ``/img/<name>`` only with basic auth USER:PASSWORD and ``?sig=SIG``."""

    server: TestServer
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def url(self, name: str) -> str:
        return f"http://{USER}:{PASSWORD}@{self.host}/img/{name}?sig={SIG}&expires=2099"

    def shown(self, name: str) -> str:
        """What bmd may show of ``url(name)``."""
        return f"http://***@{self.host}/img/{name}?<redacted>"

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return "sha256:" + hashlib.sha256(data).hexdigest()


SIGNED = web.AppKey("signed", SignedImageServer)


async def _serve_signed(request: web.Request) -> web.Response:
    state = request.app[SIGNED]
    name = request.match_info["name"]
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    if request.headers.get("Authorization") != basic:
        state.refused[name] += 1
        raise web.HTTPUnauthorized()
    if request.query.get("sig") != SIG:
        state.refused[name] += 1
        raise web.HTTPForbidden()
    if name not in state.files:
        raise web.HTTPNotFound()
    state.hits[name] += 1
    return web.Response(body=state.files[name])


@pytest.fixture
async def signed() -> AsyncIterator[SignedImageServer]:
    app = web.Application()
    app.router.add_get("/img/{name}", _serve_signed)
    server = TestServer(app, host="127.0.0.1", port=0)
    state = SignedImageServer(server)
    app[SIGNED] = state
    await server.start_server()
    try:
        yield state
    finally:
        await server.close()


def assert_no_secret(where: str, text: str | bytes) -> None:
    for secret in SECRETS:
        needle: str | bytes = secret.encode() if isinstance(text, bytes) else secret
        assert needle not in text, f"{secret!r} found in {where}"  # type: ignore[operator]


def assert_no_secret_on_disk(root: Path, config: Path | None = None) -> None:
    """Every file under ``root`` (but the operator's config): the SQLite file and its -wal, the image cache,
    the TFTP and HTTP roots, the state directory."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p != config]
    assert any(p.name == "bmd.sqlite" for p in files)
    for path in files:
        assert_no_secret(str(path), path.read_bytes())


async def test_credentialed_refs_deploy_and_are_shown_redacted_everywhere(
    tmp_path: Path, db_file: Path, signed: SignedImageServer
) -> None:
    disk, kernel = b"disk-image" * 5000, b"kernel" * 700
    disk_sum, kernel_sum = signed.add("disk", disk), signed.add("kernel", kernel)
    async with make_cloud(tmp_path) as cloud:
        await cloud.enroll(3)
        await cloud.add_pxe_ips(3)
        with capture_logs() as logs:
            status, created = await cloud.create(
                image_ref=signed.url("disk"), image_checksum=disk_sum, kernel_ref=signed.url("kernel"),
                kernel_checksum=kernel_sum,
            )  # fmt: skip
            assert status == 202, created
            await cloud.settle()
            status, failing = await cloud.create(image_ref=signed.url("missing"), image_checksum=None)
            assert status == 202, failing
            await cloud.settle()
            status, plain = await cloud.create()
            assert status == 202, plain
            await cloud.settle()

        # The deploy really used the credentials: the server refused nothing and served each file once.
        assert signed.hits == Counter({"disk": 1, "kernel": 1}) and not signed.refused
        (good,) = created["instances"]
        inst = await cloud.instance(good["uuid"])
        assert inst.task_state == "wait_callback" and inst.vm_state == "building", inst.last_error
        node = await cloud.node(inst.bm_node_id or 0)
        assert (Path(cloud.ctx.settings.service.state_dir) / "agent-images" / node.uuid / "disk").read_bytes() == disk
        assert (cloud.tftp_root / node.uuid / "kernel").read_bytes() == kernel

        # Stored: redacted in clear, the real refs only encrypted.
        assert inst.image_ref == signed.shown("disk")
        assert inst.deploy_info["kernel_ref"] == signed.shown("kernel") and inst.deploy_info["ramdisk_ref"] is None
        assert inst.secret_refs is not None and inst.secret_refs.startswith("fernet:")
        assert open_refs(inst.secret_refs, cloud.ctx.secret_box) == {
            "image_ref": signed.url("disk"),
            "kernel_ref": signed.url("kernel"),
        }
        async with cloud.ctx.sessionmaker() as session:
            dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node.id))
        assert dep is not None and dep.image_ref == signed.shown("disk")
        plain_inst = await cloud.instance(plain["instances"][0]["uuid"])
        assert plain_inst.secret_refs is None and plain_inst.image_ref == cloud.image_ref

        # A failing fetch: the error names the redacted URL and the HTTP status, nothing else.
        bad = await cloud.instance(failing["instances"][0]["uuid"])
        assert bad.vm_state == "error" and bad.last_error is not None
        assert f"downloading {signed.shown('missing')} failed: HTTP 404" in bad.last_error
        assert_no_secret("last_error", bad.last_error)

        # The API, anonymous readers included: create, list, show; and /metrics.
        assert good["image_ref"] == signed.shown("disk")
        assert_no_secret("create response", json.dumps([created, failing]))
        for path in ("/v1/instances", f"/v1/instances/{good['uuid']}", f"/v1/instances/{bad.uuid}", "/metrics"):
            resp = await cloud.client.get(path)
            text = await resp.text()
            assert resp.status == 200, text
            assert_no_secret(path, text)
        shown = await (await cloud.client.get(f"/v1/instances/{good['uuid']}")).json()
        assert shown["image_ref"] == signed.shown("disk")
        listed = (await (await cloud.client.get("/v1/instances")).json())["instances"]
        assert {i["image_ref"] for i in listed} >= {signed.shown("disk"), signed.shown("missing")}

        # The logs: every event that carried a ref carried its redacted form.
        assert_no_secret("captured logs", repr(logs))
        fetched = [e for e in logs if e["event"] == "image_fetched"]
        assert {e["ref"] for e in fetched} >= {signed.shown("disk"), signed.shown("kernel")}
        assert any(signed.shown("missing") in str(e.get("reason", "")) for e in logs if e["event"] == "spawn_failed")
    assert_no_secret_on_disk(tmp_path)  # the service is closed: what is in the files is all there is


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("file://deployer:Pa55-in-the-url@otherhost/x", "must be local"),
        ("ftp://deployer:Pa55-in-the-url@host/x?sig=sig-5e1f0c0ffee7ab1e", "must be an absolute path"),
        ("http://deployer:Pa55-in-the-url@/x?sig=sig-5e1f0c0ffee7ab1e", "has no host"),
    ],
)
async def test_refused_refs_are_redacted_in_the_error(tmp_path: Path, db_file: Path, ref: str, problem: str) -> None:
    async with make_cloud(tmp_path) as cloud:
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create(image_ref=ref)
        await cloud.settle()
        if status == 202:  # refused when the deploy starts (until the request is checked before the claim)
            inst = await cloud.instance(body["instances"][0]["uuid"])
            message = inst.last_error or ""
        else:
            message = body["message"]
        assert problem in message
        assert_no_secret("error message", message)
        assert_no_secret("list", await (await cloud.client.get("/v1/instances")).text())


async def _call(http: aiohttp.ClientSession, url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url + path, json=body, headers=headers) as resp:
        text = await resp.text()
        assert resp.status < 300, (path, resp.status, text)
        return json.loads(text) if text else None


async def _until(what: str, probe: Callable[[], Any], deadline: float = 30.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if result := await probe():
            return result
        await asyncio.sleep(0.1)  # polling a live process with a deadline: nothing to wait on in-process
    raise AssertionError(f"{what} did not happen within {deadline} s")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


async def test_the_daemon_log_and_files_never_hold_ref_credentials(
    tmp_path: Path, signed: SignedImageServer, daemons: list[Daemon]
) -> None:
    """The real ``bmd serve``: JSON log at debug level, a deploy kernel in the config that is itself a signed
    URL, an instance whose image is one, and one whose image is missing."""
    images = tmp_path / "images-src"
    images.mkdir()
    for name in ("deploy_ramdisk", "kernel", "ramdisk"):
        (images / name).write_bytes(name.encode() * 100)
    signed.add("deploy_kernel", b"deploy-kernel" * 100)
    disk_sum = signed.add("disk", b"disk" * 10_000)
    config = write_config(
        tmp_path,
        f"""
[deploy]
tftp_root = "{tmp_path / "tftp"}"
http_root = "{tmp_path / "http"}"
image_cache_dir = "{tmp_path / "cache"}"
allowed_image_roots = ["{images}"]
deploy_kernel = "{signed.url("deploy_kernel")}"
deploy_ramdisk = "{images / "deploy_ramdisk"}"
boot_kernel = "{images / "kernel"}"
boot_ramdisk = "{images / "ramdisk"}"
""",
    )
    config.write_text(config.read_text().replace('format = "json"', 'format = "json"\nlevel = "debug"'))
    shown_config = await asyncio.to_thread(bmd, "--config", str(config), "config")
    assert shown_config.returncode == 0, shown_config.stderr
    assert json.loads(shown_config.stdout)["deploy"]["deploy_kernel"] == signed.shown("deploy_kernel")
    assert (await asyncio.to_thread(bmd, "--config", str(config), "db", "upgrade")).returncode == 0
    d = Daemon(config)
    daemons.append(d)
    url = (await asyncio.to_thread(d.wait_for, "service_started"))["api"]
    token = (tmp_path / "token").read_text().strip()
    async with aiohttp.ClientSession() as http:
        nodes = [
            {"name": f"n{i}", "cpus": 4, "memory_mb": 4096, "local_gb": 50, "pm_driver": "fake", "pm_address": "x",
             "interfaces": [{"address": f"52:54:00:00:00:0{i}"}]}
            for i in (1, 2)
        ]  # fmt: skip
        await _call(http, url, token, "POST", "/v1/nodes/import", {"nodes": nodes})
        for i in (1, 2):
            await _call(
                http, url, token, "POST", "/v1/pxe_ips", {"address": f"10.0.0.{i}", "server_address": f"10.1.0.{i}"}
            )
        await _call(http, url, token, "POST", "/v1/flavors", {"name": "f", "ram": 4096, "vcpus": 4, "disk": 50})

        async def schedulable() -> bool:
            return bool(
                (await _call(http, url, token, "POST", "/v1/schedule", {"flavor": "f", "num_instances": 2}))["ok"]
            )

        await _until("both nodes schedulable", schedulable)
        good = await _call(http, url, token, "POST", "/v1/instances",
                           {"flavor": "f", "image_ref": signed.url("disk"), "image_checksum": disk_sum})  # fmt: skip
        bad = await _call(http, url, token, "POST", "/v1/instances", {"flavor": "f", "image_ref": signed.url("nope")})
        good_uuid, bad_uuid = good["instances"][0]["uuid"], bad["instances"][0]["uuid"]

        async def settled() -> Any:
            a = await _call(http, url, token, "GET", f"/v1/instances/{good_uuid}")
            b = await _call(http, url, token, "GET", f"/v1/instances/{bad_uuid}")
            return (a, b) if a["task_state"] == "wait_callback" and b["vm_state"] == "error" else None

        a, b = await _until("the deploy waits and the other fails", settled)
        assert a["image_ref"] == signed.shown("disk") and signed.shown("nope") in b["last_error"]
        assert signed.hits == Counter({"deploy_kernel": 1, "disk": 1}) and not signed.refused
        for text in (json.dumps([good, bad, a, b]), await (await http.get(url + "/metrics")).text()):
            assert_no_secret("API", text)
    d.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(d.proc.wait, 10) == 0
    await asyncio.to_thread(d.wait_for, "service_stopped")
    log_text = json.dumps(d.lines)
    assert signed.shown("disk") in log_text  # the fetch was logged, redacted
    assert_no_secret("daemon log", log_text)
    assert_no_secret_on_disk(tmp_path, config)
