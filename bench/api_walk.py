"""Walking the whole fleet through the API: every node (``GET /v1/nodes``) and every published host's
capabilities (``GET /v1/capabilities``) in keyset pages, while a liveness probe runs beside the walks.

Fills a fresh database (SQLite, or a new database on ``--db-url``'s PostgreSQL server) with N nodes of the
fake power driver, two interfaces each, then starts a real ``bmd serve`` (bmd/lab/cluster.py's
ServiceProcess) and waits until report_driver_status has published every node and each periodic loop has
finished its first pass (their intervals are 10 min here, so no pass runs beside the walk: the figures are
the API's). Then, with a real aiohttp client, it walks each list from the first page to the last (``next``
until null; each page parsed as JSON, as a client must) while a second client, in a process of its own,
probes ``/livez`` every ~10 ms (``/healthz`` while ``/livez`` is not served: the bench says which).
Prints the total walk time, the service's CPU time over it (from /proc: wall times on a shared machine
swing with what else runs), per-page p50/p99 and the client's own parse of a page, and the probe's p50/p99
during each walk, targets beside them. ``--profile FILE`` records the service with py-spy meanwhile.

    .venv/bin/python bench/api_walk.py [--nodes 10000 100000] [--page 1000]
        [--db-url postgresql://root@127.0.0.1:5432/postgres] [--profile /tmp/walk.raw]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claims import database
from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Interface, utcnow
from bmd.lab.cluster import ServiceProcess, placeholder_deploy, placeholder_images, service_config

HOST = "walk"
WALK_TARGET_S = 2.0  # the whole walk at 100,000 nodes (issue 15)
PROBE_TARGET_MS = 50.0  # the probe's p99 while a walk runs
PROBE_EVERY_S = 0.01
BATCH = 10_000


async def fill(db_url: str, nodes: int) -> None:
    """N nodes as an enrolled fleet has them (BMC fields, an encrypted-size password, some per-node
    capabilities, a few in maintenance) and two interfaces each, one already switch-attached."""
    engine = make_engine(DatabaseSettings(url=db_url))
    await upgrade(engine)
    now = utcnow()
    async with engine.begin() as conn:
        for start in range(0, nodes, BATCH):
            ids = range(start, min(start + BATCH, nodes))
            rows = [
                {
                    "id": i + 1,
                    "uuid": str(uuid.UUID(int=i + 1)),
                    "name": f"node-{i:06d}",
                    "service_host": HOST,
                    "cpus": (8, 16, 32, 64)[i % 4],
                    "memory_mb": (16384, 65536, 131072, 262144)[i % 4],
                    "local_gb": (200, 500, 1000, 2000)[i % 4],
                    "pm_driver": "fake",
                    "pm_address": f"fake-{i}",
                    "pm_user": "admin",
                    "pm_password": "gAAAAA" + "x" * 134,  # a Fernet token's length
                    "prov_mac_address": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    "registration_status": "done",
                    "provision_state": "available",
                    "provision_updated_at": now,
                    "maintenance": i % 50 == 0,
                    "maintenance_reason": "bench: rack work" if i % 50 == 0 else None,
                    "maintenance_set_by": "operator" if i % 50 == 0 else None,
                    "extra_specs": {"location": f"rack{i % 40}", "cpu_arch": "x86_64"} if i % 3 == 0 else {},
                    "power_failures": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in ids
            ]
            await conn.execute(insert(BareMetalNode), rows)
            ifaces = [
                {
                    "bm_node_id": i + 1,
                    "address": f"52:54:{nic:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    "datapath_id": f"0x{i // 48:012x}" if nic == 1 else None,
                    "port_no": i % 48 + 1 if nic == 1 else None,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in ids
                for nic in (1, 2)
            ]
            await conn.execute(insert(Interface), ifaces)
    await engine.dispose()


def write_config(tmp: Path, db_url: str) -> Path:
    own = tmp / HOST
    return service_config(
        tmp / f"{HOST}.toml",
        own,
        HOST,
        db_url,
        tmp / "secret.key",
        driver={"instance_type_extra_specs": ["cpu_arch:x86_64", "location:dc1"]},
        tasks={"host_state_interval": 600, "update_resources_interval": 600, "power_sync_interval": 600},
        deploy=placeholder_deploy(own, placeholder_images(tmp / "images")),
    )


async def settled(http: aiohttp.ClientSession, url: str, deadline: float) -> float:
    """Wait until every node's capabilities are published and no loop is in its first pass; the seconds."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        async with http.get(f"{url}/v1/capabilities", params={"limit": "1"}) as resp:
            published = (await resp.json())["published"]
        async with http.get(f"{url}/healthz") as resp:
            tasks = (await resp.json())["tasks"]
        first_passes_done = all(t.get("passes", 0) >= 1 and not t.get("running") for t in tasks.values())
        if published and first_passes_done:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"not settled within {deadline} s: published={published}, tasks={tasks}")


async def probe_loop(url: str, stop: Any, report: Any) -> None:
    """The prober's loop: ``/livez`` (``/healthz`` while /livez is not served) every ~10 ms until ``stop``."""
    path, samples = "/livez", []
    async with aiohttp.ClientSession() as http:
        async with http.get(url + path) as resp:
            if resp.status in (401, 404):  # not served yet (an unknown path without a token is a 401)
                path = "/healthz"
        gc.collect()
        gc.freeze()  # the prober's own collections must not show as the service's latency
        report.send(path)
        while not stop.is_set():
            t0 = time.monotonic()
            async with http.get(url + path) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            took = time.monotonic() - t0
            samples.append((t0, took))
            await asyncio.sleep(max(0.0, PROBE_EVERY_S - took))
    report.send(samples)


def run_probe(url: str, stop: Any, report: Any) -> None:
    asyncio.run(probe_loop(url, stop, report))


class Probe:
    """The liveness probe in a process of its own, as a monitor is (in the walker's process, the walker's
    parsing and collections would show as the service's latency). Times are CLOCK_MONOTONIC, shared."""

    def __init__(self, url: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._stop = spawn.Event()
        self._conn, child = spawn.Pipe(duplex=False)
        self._proc = spawn.Process(target=run_probe, args=(url, self._stop, child), daemon=True)
        self.path = ""
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)

    def __enter__(self) -> Probe:
        self._proc.start()
        if not self._conn.poll(60):
            raise AssertionError("the probe did not start")
        self.path = self._conn.recv()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._conn.poll(30):
            self.samples = self._conn.recv()
        self._proc.join(10)

    def between(self, start: float, end: float) -> list[float]:
        return [took for t0, took in self.samples if start <= t0 < end]


async def walk(http: aiohttp.ClientSession, url: str, items: str, key: str, page: int) -> dict[str, Any]:
    """Follow ``next`` from the first page to the last; the rows' keys, the page times, the wall span."""
    keys: list[Any] = []
    pages: list[float] = []
    parsing: list[float] = []
    size = 0
    marker: Any = None
    start = time.monotonic()
    while True:
        params = {"limit": str(page), **({"marker": str(marker)} if marker is not None else {})}
        t0 = time.perf_counter()
        async with http.get(f"{url}{items}", params=params) as resp:
            assert resp.status == 200, await resp.text()
            raw = await resp.read()
        t1 = time.perf_counter()
        body = json.loads(raw)
        t2 = time.perf_counter()
        pages.append(t2 - t0)
        parsing.append(t2 - t1)
        size = max(size, len(raw))
        rows = body[key]
        keys.extend(r["id" if key == "nodes" else "node"] for r in rows)
        marker = body["next"]
        if marker is None:
            end = time.monotonic()
            return {"keys": keys, "pages": pages, "parsing": parsing, "size": size, "start": start, "end": end}


def cpu_seconds(pid: int) -> float:
    """A process's CPU time (user + system, every thread) from /proc: the service's cost, whatever else the
    machine runs beside it (wall times on a shared machine are not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def report(name: str, nodes: int, result: dict[str, Any], probe: Probe) -> None:
    total = result["end"] - result["start"]
    pages = result["pages"]
    probes = probe.between(result["start"], result["end"])
    target = f"≤ {WALK_TARGET_S:.0f} s at 100,000" if nodes >= 100_000 else f"(≤ {WALK_TARGET_S:.0f} s at 100,000)"
    print(f"{name}: walked {len(result['keys'])} rows in {len(pages)} pages")
    print(f"  total walk                 {total:8.3f} s     target {target}")
    parsing = result["parsing"]
    per_page = result["cpu"] / len(pages) * 1000
    print(f"  the service's CPU          {result['cpu']:8.3f} s     ({per_page:.1f} ms a page, probes included)")
    print(f"  page p50 / p99             {pct(pages, 0.5) * 1000:8.1f} / {pct(pages, 0.99) * 1000:.1f} ms")
    print(
        f"    of which the client's json.loads {pct(parsing, 0.5) * 1000:.1f} / {pct(parsing, 0.99) * 1000:.1f} ms "
        f"(the largest page {result['size'] / 1e6:.2f} MB)"
    )
    print(
        f"  {probe.path} p50 / p99 ({len(probes)} probes) {pct(probes, 0.5) * 1000:6.1f} / "
        f"{pct(probes, 0.99) * 1000:.1f} ms   target p99 < {PROBE_TARGET_MS:.0f} ms (worst {max(probes) * 1000:.1f} ms)"
    )


def profiler(pid: int, out: str | None) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the service during the walks (``--profile``; py-spy is pip-installable)."""
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args = ["record", "--pid", str(pid), "--rate", "250", "--threads", "--output", out, "--format", "raw"]
    return subprocess.Popen([spy, *args])


async def measure(nodes: int, page: int, server_url: str | None, profile: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with database(server_url, tmp_name) as db_url:
            t0 = time.perf_counter()
            await fill(db_url, nodes)
            kind = "PostgreSQL" if server_url else "SQLite"
            print(f"nodes {nodes}, {kind}: filled in {time.perf_counter() - t0:.1f} s")
            service = ServiceProcess(write_config(tmp, db_url))
            try:
                t0 = time.perf_counter()
                url = service.started(deadline=600)
                print(f"service_started after {time.perf_counter() - t0:.1f} s")
                headers = {"Authorization": f"Bearer {service.token()}"}
                async with aiohttp.ClientSession(headers=headers) as http:
                    waited = await settled(http, url, deadline=600)
                    print(f"capabilities published and first passes done {waited:.1f} s later")
                    gc.collect()
                    gc.freeze()  # the filling's leftovers are not the walker's to collect
                    with Probe(url) as probe:
                        await asyncio.sleep(0.5)  # the probe's idle baseline
                        idle_end = time.monotonic()
                        spy = profiler(service.proc.pid, profile)
                        cpu0 = cpu_seconds(service.proc.pid)
                        walked = await walk(http, url, "/v1/nodes", "nodes", page)
                        cpu1 = cpu_seconds(service.proc.pid)
                        caps = await walk(http, url, "/v1/capabilities", "capabilities", page)
                        cpu2 = cpu_seconds(service.proc.pid)
                        walked["cpu"], caps["cpu"] = cpu1 - cpu0, cpu2 - cpu1
                        if spy is not None:
                            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                            spy.wait(30)
                    idle = probe.between(0, idle_end)
                    print(f"{probe.path} idle p50 / p99 {pct(idle, 0.5) * 1000:.1f} / {pct(idle, 0.99) * 1000:.1f} ms")
                    assert walked["keys"] == list(range(1, nodes + 1)), "the node walk missed or repeated rows"
                    assert caps["keys"] == sorted(str(i) for i in range(1, nodes + 1)), "the capabilities walk"
                    report("GET /v1/nodes", nodes, walked, probe)
                    report("GET /v1/capabilities", nodes, caps, probe)
            finally:
                service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--db-url", default=None, help="a PostgreSQL server: the bench makes a database on it")
    parser.add_argument("--profile", default=None, help="py-spy's flame-graph input (raw) of the service's walks")
    args = parser.parse_args()
    for n in args.nodes:
        asyncio.run(measure(n, args.page, args.db_url, args.profile))


if __name__ == "__main__":
    main()
