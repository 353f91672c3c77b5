"""``GET /metrics``: Prometheus text exposition of the service's own counters (no database query, no auth,
no secrets): periodic loops, claims, provisioning jobs, bus drops."""

from __future__ import annotations

from aiohttp import web

from bmd.api.app import CTX
from bmd.api.openapi import answers
from bmd.context import AppContext


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def render(ctx: AppContext) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(**labels)} {value:g}" for labels, value in samples)

    records = ctx.runner.records.values()
    metric(
        "bmd_task_passes_total",
        "counter",
        "Passes run by each periodic loop.",
        [({"task": r.name}, r.passes) for r in records],
    )
    metric(
        "bmd_task_failures_total",
        "counter",
        "Failed passes of each periodic loop.",
        [({"task": r.name}, r.failures) for r in records],
    )
    metric(
        "bmd_task_last_duration_seconds",
        "gauge",
        "Duration of each loop's last pass.",
        [({"task": r.name}, r.last_duration or 0.0) for r in records],
    )
    metric(
        "bmd_task_last_success_timestamp_seconds",
        "gauge",
        "When each loop last succeeded (0: never).",
        [({"task": r.name}, r.last_success or 0.0) for r in records],
    )
    metric(
        "bmd_node_step_failures_total",
        "counter",
        "Per-node steps of a loop that failed (the node's error is recorded, the pass went on).",
        [({"task": task}, n) for task, n in sorted(ctx.step_failures.totals.items())],
    )
    metric("bmd_claims_total", "counter", "Nodes claimed by this scheduler.", [({}, ctx.scheduler.claims)])
    metric(
        "bmd_claim_lost_races_total",
        "counter",
        "Claims retried after another scheduler took the node.",
        [({}, ctx.scheduler.lost_races)],
    )
    metric("bmd_scheduler_hosts", "gauge", "Nodes the scheduler knows.", [({}, len(ctx.scheduler.selector))])
    metric("bmd_provision_jobs", "gauge", "Node jobs running (deploy, power).", [({}, len(ctx.conductor.jobs))])
    stats = ctx.bus.stats()
    metric(
        "bmd_bus_dropped_total",
        "counter",
        "Items a slow bus subscriber lost.",
        [({"topic": t}, s["dropped"]) for t, s in stats.items()],
    )
    return "\n".join(lines) + "\n"


@answers(200, media="text/plain", description="Prometheus text exposition format")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=render(request.app[CTX]), content_type="text/plain", charset="utf-8")


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
