"""Start-up, health and stop of a real ``bmd serve`` over N enrolled nodes (fake power driver).

Enrolls N nodes (default 100,000) in a fresh SQLite file in one statement (bmd.lab.cluster.insert_nodes),
starts ``bmd serve`` as a child process and prints, each with its target: the time to the first ``/livez``
200, the time to ready (``/readyz`` 200 and the ``service_started`` log line, with how long its parts
took), the resident memory per node once ready, what ``/healthz`` said while it started and while the
first passes ran (never ``failing``), and how long SIGTERM takes to stop it while a ``sync_power_states``
pass over every node is running.

    .venv/bin/python bench/startup.py [--nodes 100000] [--watch 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.lab.cluster import ServiceProcess, insert_nodes, service_config

GRACEFUL_TIMEOUT = 10.0


def config(tmp: Path) -> Path:
    db_url = f"sqlite+aiosqlite:///{tmp / 'bmd.sqlite'}"
    return service_config(
        tmp / "bmd.toml", tmp, "bench", db_url, tmp / "secret.key", service={"graceful_timeout": GRACEFUL_TIMEOUT}
    )


SLOWEST: dict[str, float] = collections.defaultdict(float)  # path -> the slowest answer seen, seconds


def status(url: str) -> tuple[int, dict[str, object]]:
    """The status and body of a GET (the event loop may be busy for seconds: it is waited for)."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    finally:
        path = url.rsplit("/", 1)[-1]
        SLOWEST[path] = max(SLOWEST[path], time.monotonic() - t0)


async def upgrade_and_insert(db_url: str, n: int) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    await insert_nodes(db_url, "bench", n)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS")


def api_url(d: ServiceProcess, deadline: float) -> str:
    """The API's address from the ``api_listening`` log line (the port is chosen at start)."""
    return str(d.wait_for("api_listening", deadline)["api"])


def measure(n: int, watch: float) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = config(tmp)
        db_url = f"sqlite+aiosqlite:///{tmp / 'bmd.sqlite'}"
        t0 = time.perf_counter()
        asyncio.run(upgrade_and_insert(db_url, n))
        print(f"enrolled {n} nodes in {time.perf_counter() - t0:.1f} s")

        start = time.monotonic()
        d = ServiceProcess(path)
        try:
            url = api_url(d, 120)
            while True:  # the first /livez 200
                try:
                    code, _ = status(url + "/livez")
                except OSError:
                    code = 0
                if code == 200:
                    break
            live = time.monotonic() - start
            said: collections.Counter[str] = collections.Counter()
            while True:
                code, body = status(url + "/readyz")
                said[str(status(url + "/healthz")[1]["status"])] += 1
                if code == 200:
                    break
            ready = time.monotonic() - start
            started = d.wait_for("service_started", 120)
            kib = rss_kib(d.proc.pid)
            failing: list[object] = []
            not_ok: collections.Counter[str] = collections.Counter()
            end = time.monotonic() + watch  # the first passes over every node run now
            while time.monotonic() < end:
                _, body = status(url + "/healthz")
                said[str(body["status"])] += 1
                if body["status"] == "failing":
                    failing.append(body["checks"])
                _, body = status(url + "/readyz")
                not_ok.update(body["not_ok"])  # type: ignore[arg-type]
            passes = _wait_for_pass(url, "sync_power_states", 60)
            tasks = status(url + "/healthz")[1]["tasks"]
            t1 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            code = d.proc.wait(timeout=120)
            stop = time.monotonic() - t1
            sync = tasks["sync_power_states"]
        finally:
            d.stop()
    print(f"nodes                                {n}")
    print(f"time to /livez 200                   {live:6.1f} s")
    print(f"time to /readyz 200                  {ready:6.1f} s    (target <= 10 s)")
    took = {k: v for k, v in started.items() if k.endswith("_s")}
    print(f"  of which (service_started)         {took}")
    print(f"RSS when ready                       {kib / n:6.2f} KiB/node  ({kib / 1024:.0f} MiB)")
    print(f"/healthz while starting and passing  {dict(said)}    (target: no failing)")
    print(f"sync_power_states passes before      {sync['passes']} (last took {sync['last_duration']} s)")  # type: ignore[index]
    print(f"/readyz not ok once ready, by check  {dict(not_ok)}")
    if failing:
        print(f"  first failing checks: {json.dumps(failing[0])}")
    print(f"slowest answers                      { {k: round(v, 2) for k, v in SLOWEST.items()} } s")
    print(f"SIGTERM during a sync pass ({passes}) -> exit {code} in {stop:.1f} s    (target <= {GRACEFUL_TIMEOUT:g} s)")


def _wait_for_pass(url: str, task: str, deadline: float) -> str:
    """Poll /healthz until ``task`` is in a pass; what it saw."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if status(url + "/healthz")[1]["tasks"][task]["running"]:  # type: ignore[index]
            return "running"
    return "not seen running"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--watch", type=float, default=20.0, help="seconds of /healthz polling once ready")
    args = parser.parse_args()
    measure(args.nodes, args.watch)


if __name__ == "__main__":
    main()
