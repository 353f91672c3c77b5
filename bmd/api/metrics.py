"""``GET /metrics``: the Prometheus exposition of the service, through prometheus_client (no auth, no
secrets, no database query).

Each application has its own ``CollectorRegistry`` (never the process-wide default: a test process builds
many applications). It holds the API's request histogram and one collector that, at scrape time, reads
what the parts keep in memory: the runner's records and pass histogram, the scheduler's counts (the fleet
by power state, provision state and maintenance is counted as node views arrive: no query and no pass
over 100,000 nodes per scrape), the BMC call meter, the deploy meter, the bus's counts and the image
cache's size. Every metric is listed in README.md ("Metrics").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bmd.api.app import CTX, Handler
from bmd.context import AppContext
from bmd.drivers.deploy.images import ImageCache
from bmd.metrics import API_BUCKETS

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics_registry", CollectorRegistry)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route took (404, 405): never the raw path


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class ServiceCollector(Collector):
    """The service's metrics, read from ``ctx`` at each scrape."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        yield from self._loops()
        yield from self._nodes()
        yield from self._scheduler()
        yield from self._provisioning()
        yield from self._bus()
        yield from self._image_cache()
        yield from self.ctx.power.meter.duration.collect()
        yield from self.ctx.power.meter.errors.collect()
        start = _gauge("bmd_start_time_seconds", "When this service started (Unix time).")
        start.add_metric([], self.ctx.started_at)
        yield start

    def _loops(self) -> Iterator[Metric]:
        records = list(self.ctx.runner.records.values())
        families: list[tuple[GaugeMetricFamily | CounterMetricFamily, str]] = [
            (_counter("bmd_task_passes_total", "Passes run by each periodic loop.", ["task"]), "passes"),
            (_counter("bmd_task_failures_total", "Failed passes of each periodic loop.", ["task"]), "failures"),
            (_gauge("bmd_task_consecutive_failures", "Failed passes in a row (0: the last succeeded).", ["task"]),
             "consecutive_failures"),
            (_gauge("bmd_task_interval_seconds", "Each loop's configured interval.", ["task"]), "interval"),
            (_gauge("bmd_task_last_duration_seconds", "Duration of each loop's last pass.", ["task"]), "last_duration"),
            (_gauge("bmd_task_last_success_timestamp_seconds", "When each loop last succeeded (Unix time; 0: never).",
                    ["task"]), "last_success"),
        ]  # fmt: skip
        for family, attr in families:
            for rec in records:
                family.add_metric([rec.name], getattr(rec, attr) or 0.0)
            yield family
        yield from self.ctx.runner.pass_duration.collect()
        steps = _counter(
            "bmd_node_step_failures_total",
            "Per-node steps of a loop that failed (the node's error is recorded, the pass went on).",
            ["task"],
        )
        totals = self.ctx.step_failures.totals
        for task in sorted(set(totals) | {rec.name for rec in records}):  # every loop's zero too
            steps.add_metric([task], totals.get(task, 0))
        yield steps

    def _nodes(self) -> Iterator[Metric]:
        counts = {
            (power or "unknown", provision, "true" if maintenance else "false"): n
            for (power, provision, maintenance), n in self.ctx.scheduler.fleet().items()
        }
        nodes = _gauge(
            "bmd_nodes",
            "Nodes in bm_nodes (every service's) by power state, provision state and maintenance.",
            ["power_state", "provision_state", "maintenance"],
        )
        for labels, n in sorted(counts.items()):
            nodes.add_metric(list(labels), n)
        maintenance = _gauge(
            "bmd_nodes_in_maintenance", "Nodes in maintenance (always present, 0 included: alerts compare it)."
        )
        maintenance.add_metric([], sum(n for (_, _, m), n in counts.items() if m == "true"))
        yield from (nodes, maintenance)

    def _scheduler(self) -> Iterator[Metric]:
        s = self.ctx.scheduler
        requests = _counter("bmd_scheduler_requests_total", "Claim requests (instance creates) scheduled here.")
        requests.add_metric([], s.requests)
        refused = _counter(
            "bmd_scheduler_no_valid_host_total",
            "Claim requests refused for want of a host, by the filter that removed the last ones "
            "(no_hosts: none known; lost_races: other schedulers kept taking the picks).",
            ["reason"],
        )
        for reason, n in sorted(s.no_valid_host.items()):
            refused.add_metric([reason], n)
        claims = _counter("bmd_claims_total", "Nodes claimed by this scheduler.")
        claims.add_metric([], s.claims)
        lost = _counter("bmd_claim_lost_races_total", "Claims retried after another scheduler took the node.")
        lost.add_metric([], s.lost_races)
        hosts = _gauge("bmd_scheduler_hosts", "Nodes the scheduler knows.")
        hosts.add_metric([], len(s.selector))
        yield from (requests, refused, claims, lost, hosts)

    def _provisioning(self) -> Iterator[Metric]:
        jobs = _gauge("bmd_provision_jobs", "Node jobs running (deploy, power).")
        jobs.add_metric([], len(self.ctx.conductor.jobs))
        yield jobs
        yield from self.ctx.conductor.deploys.outcomes.collect()
        yield from self.ctx.conductor.deploys.duration.collect()

    def _bus(self) -> Iterator[Metric]:
        bus = self.ctx.bus
        topics = sorted(set(bus.published) | set(bus.dropped) | set(bus.stats()))
        published = _counter("bmd_bus_published_total", "Items published on each bus topic.", ["topic"])
        dropped = _counter("bmd_bus_dropped_total", "Items slow bus subscribers lost, by topic.", ["topic"])
        for topic in topics:
            published.add_metric([topic], bus.published[topic])
            dropped.add_metric([topic], bus.dropped[topic])
        yield from (published, dropped)

    def _image_cache(self) -> Iterator[Metric]:
        cache = getattr(self.ctx.driver.drivers.deploy, "cache", None)
        if not isinstance(cache, ImageCache):  # a deploy driver without the image cache
            return
        size = _gauge("bmd_image_cache_bytes", "Bytes the deploy image cache holds.")
        size.add_metric([], cache.total_bytes)
        budget = _gauge("bmd_image_cache_max_bytes", "The deploy image cache's budget (deploy.image_cache_max_bytes).")
        budget.add_metric([], cache.max_bytes)
        entries = _gauge("bmd_image_cache_entries", "Images the deploy image cache holds.")
        entries.add_metric([], len(cache.entries()))
        yield from (size, budget, entries)


def route_of(request: web.Request) -> str:
    """The canonical path template of the route that took the request (``/v1/nodes/{ident}``), never the
    raw path: the label's values are bounded by the routes."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def observe_requests(latency: Histogram) -> Middleware:
    """Middleware: every answered request's duration by method, route template and status. A websocket's
    life (101) and an event stream's (``text/event-stream``, the dashboard's) are no request latency and are
    left out, as is a request whose client went away."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status: int | None = None
        try:
            response = await handler(request)
            status = None if response.content_type == "text/event-stream" else response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            if status is not None and status != 101:
                method = request.method if request.method in METHODS else "other"
                latency.labels(method=method, route=route_of(request), status=str(status)).observe(
                    time.perf_counter() - began
                )

    return middleware


def render(ctx: AppContext) -> str:
    """The service collector's exposition alone (no API histogram), for tests that read one value."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(ctx))
    return generate_latest(registry).decode()


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    """The app's registry, ``/metrics``, and the request-latency middleware, put first (outermost) so it
    sees every request's final status, a refused token's 401 and an unknown route's 404 included."""
    registry = CollectorRegistry(auto_describe=True)
    latency = Histogram(
        "bmd_api_request_duration_seconds",
        "API requests by method, route template and status.",
        ["method", "route", "status"],
        buckets=API_BUCKETS,
        registry=registry,
    )
    registry.register(ServiceCollector(app[CTX]))  # auto_describe: a name clash fails here, at start-up
    app[REGISTRY] = registry
    app.middlewares.insert(0, observe_requests(latency))
    app.router.add_get("/metrics", metrics)
