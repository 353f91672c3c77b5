"""Selection latency: bmd's indexed HostSelector against the brute force (Nova's algorithm), same run.

    python bench/schedule.py                      # 1,000 / 10,000 / 100,000 nodes
    python bench/schedule.py --sizes 10000 --runs 500

Nodes have mixed capabilities (architecture, GPU model, rack, CPU vendor, four memory classes, some used,
in maintenance or with a power fault); the flavor asks for an x86_64 node with an A100 GPU, which about
10 % of the nodes can take. Both paths run the default chain (8 filters) and LeastWasteWeigher on the same
selector; their answers are compared once per size. Prints p50/p99 per path and the ratio of p99s.

Claims per second need the database and are measured by ``run_claims`` with the real SQL claim: pass it
an async ``claim(candidate) -> bool`` (True when this client won the node). ``--claims-demo`` runs it with
an in-memory stand-in to show the harness, which is not a figure for the SQL claim.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmd.filters.registry import DEFAULT_FILTERS, DEFAULT_WEIGHERS, build_filters, build_weighers
from bmd.flavors import Flavor
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.reference import reference_select
from bmd.scheduler.selection import Candidate
from bmd.scheduler.selector import HostSelector

MEMORY_CLASSES = [(65536, 16, 480), (131072, 32, 960), (262144, 64, 1920), (524288, 128, 3840)]

SPEC = RequestSpec(
    Flavor(
        "gpu.a100",
        memory_mb=65536,
        vcpus=16,
        root_gb=400,
        extra_specs={
            "capabilities:gpu": "a100",
            "cpu_arch": "x86_64",
            "capabilities:cpu_info:vendor": "<or> Intel <or> AMD",
        },
    ),
    image_properties={"architecture": "amd64"},
)
SPREAD = RequestSpec(SPEC.flavor, SPEC.image_properties, num_instances=4, hints={"different_capability": "location"})


def node_caps(node_id: int, rng: random.Random) -> dict[str, Any]:
    memory_mb, vcpus, disk_gb = rng.choices(MEMORY_CLASSES, weights=[4, 3, 2, 1])[0]
    arch = "x86_64" if rng.random() < 0.85 else "aarch64"
    used = rng.random() < 0.2
    caps: dict[str, Any] = {
        "vcpus": vcpus,
        "vcpus_used": vcpus if used else 0,
        "cpu_info": {"vendor": rng.choice(["Intel", "AMD"]), "features": ["avx2", "sse4_2"]},
        "disk_total": disk_gb,
        "disk_used": disk_gb if used else 0,
        "disk_available": 0 if used else disk_gb,
        "host_memory_total": memory_mb,
        "host_memory_free": 0 if used else memory_mb,
        "hypervisor_type": "baremetal",
        "hypervisor_version": 1,
        "hypervisor_hostname": str(node_id),
        "supported_instances": [[arch, "baremetal", "baremetal"]],
        "cpu_arch": arch,
        "baremetal_driver": "ipmi",
        "location": f"rack{node_id // 40}",
        "host": f"bmd{node_id % 4}",
        "node": str(node_id),
        "host_ip": "10.0.0.1",
        "maintenance": rng.random() < 0.01,
    }
    gpu = rng.choices(["a100", "h100", None], weights=[15, 15, 70])[0]
    if gpu:
        caps["gpu"] = gpu
    return caps


def build(size: int, seed: int = 42) -> tuple[HostSelector, float]:
    rng = random.Random(seed)
    selector = HostSelector(build_filters(DEFAULT_FILTERS), build_weighers(DEFAULT_WEIGHERS))
    started = time.perf_counter()
    for node_id in range(size):
        selector.update_capabilities(node_caps(node_id, rng))
        if rng.random() < 0.005:
            selector.set_health(str(node_id), power_fault=True)
    return selector, time.perf_counter() - started


def timed(select: Callable[[RequestSpec], object], spec: RequestSpec, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        select(spec)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(size: int, runs: int, brute_runs: int, spec: RequestSpec, label: str, selector: HostSelector) -> None:
    started = time.perf_counter()
    selector.prepare(spec)
    first = selector.select(spec)
    warm_ms = (time.perf_counter() - started) * 1000
    brute = reference_select(selector, spec)
    assert first == brute, "indexed and brute-force answers differ"
    matching = first.filter_counts[0][-1].after
    gc.collect()
    indexed = timed(selector.select, spec, runs)
    baseline = timed(lambda s: reference_select(selector, s), spec, brute_runs)
    p50, p99 = percentile(indexed, 0.5), percentile(indexed, 0.99)
    b50, b99 = percentile(baseline, 0.5), percentile(baseline, 0.99)
    print(
        f"{size:>7} {label:<13} {matching / size:6.1%} {p50:8.2f} {p99:8.2f} {b50:9.2f} {b99:9.2f} "
        f"{b99 / p99:7.1f}x {warm_ms:8.1f}   {runs}/{brute_runs}"
    )


def lean_scan(selector: HostSelector, runs: int) -> list[float]:
    """The issue's orientation figure: four cheap checks over host dicts, no weighing, no counts. A floor
    for any brute force; our brute force above runs the real chain and weigher and is much slower."""
    dicts = [host.capabilities for host in selector.hosts()]
    memory = SPEC.flavor.memory_mb

    def scan(_spec: RequestSpec) -> list[Mapping[str, Any]]:
        return [
            caps
            for caps in dicts
            if not caps["maintenance"]
            and caps["cpu_arch"] == "x86_64"
            and caps.get("gpu") == "a100"
            and caps["host_memory_free"] >= memory
        ]

    return timed(scan, SPEC, runs)


Claim = Callable[[Candidate], Awaitable[bool]]


async def run_claims(
    selector: HostSelector, spec: RequestSpec, claim: Claim, *, clients: int = 32, requests: int = 2000
) -> float:
    """Claims per second: ``clients`` concurrent loops select, then claim the candidates in order until one
    is won. Each candidate is reserved (``consume``) before the claim is awaited, with no await between
    ``select`` and ``consume``, so clients of this process never race each other for a node; a claim lost
    to another process leaves the node consumed, which it is. Stops after ``requests`` claims or when
    nothing fits. This is the hook for the SQL claim."""
    done = 0

    async def client() -> None:
        nonlocal done
        while done < requests:
            selection = selector.select(spec)
            if not selection.ok:
                return
            for option in selection.candidates[0]:
                selector.consume(option.nodename, spec)
                if await claim(option):
                    done += 1
                    break

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def memory_claim() -> Claim:
    taken: set[str] = set()

    async def claim(option: Candidate) -> bool:
        await asyncio.sleep(0)
        if option.nodename in taken:
            return False
        taken.add(option.nodename)
        return True

    return claim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=300, help="indexed selections per size")
    parser.add_argument("--brute-runs", type=int, default=0, help="brute-force runs per size (default: scaled)")
    parser.add_argument("--claims-demo", action="store_true", help="run_claims with an in-memory claim")
    parser.add_argument("--claim-nodes", type=int, default=2000, help="nodes for the SQLite claims figure (0: skip)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; chain: {', '.join(DEFAULT_FILTERS)}; weighers: {DEFAULT_WEIGHERS}")
    print("latencies in ms; ratio = brute p99 / indexed p99; warm = prepare + first select (facet build)")
    print(
        f"{'nodes':>7} {'request':<13} {'match':>6} {'p50':>8} {'p99':>8} {'brute p50':>9} {'brute p99':>9} "
        f"{'ratio':>8} {'warm':>8}   runs"
    )
    for size in args.sizes:
        selector, load_s = build(size)
        brute_runs = args.brute_runs or max(10, min(100, 3_000_000 // size))
        report(size, args.runs, brute_runs, SPEC, "1 instance", selector)
        report(size, max(50, args.runs // 3), max(5, brute_runs // 3), SPREAD, "4 over racks", selector)
        plain = lean_scan(selector, max(10, brute_runs))
        print(
            f"{'':>7} plain 4-check dict scan (no weighing): p50 {percentile(plain, 0.5):.2f} "
            f"p99 {percentile(plain, 0.99):.2f} ms; loading {size} capability dicts took {load_s:.2f} s"
        )
        if args.claims_demo:
            rate = asyncio.run(run_claims(selector, SPEC, memory_claim()))
            print(f"{'':>7} claims/s with 32 clients, in-memory stand-in (not SQL): {rate:,.0f}")
    if args.claim_nodes:
        from claims import measure  # bench/claims.py: the HostManager's real claim, SQLite, 32 clients

        asyncio.run(measure(args.claim_nodes, 32, None))


if __name__ == "__main__":
    main()
