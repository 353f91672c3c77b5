"""``GET /metrics`` through prometheus_client, against the real app over real HTTP: values print exactly
(a timestamp, a counter past 10^6), label sets are right, API latency is labelled by route template, the
registry is the app's own, and every metric the shipped Grafana dashboard and Prometheus alerts use is
served by a running bmd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bmd.api.app import create_app
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.errors import BMCTimeout
from bmd.tasks.sync_power_states import SyncPowerStates
from tests.cloud import Cloud, make_cloud

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config" / "grafana" / "bmd.json"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
Samples = dict[str, list[tuple[dict[str, str], float]]]
# What the hand-made page served, under the same names (dashboards built on them keep working).
EARLIER = (
    "bmd_task_passes_total",
    "bmd_task_failures_total",
    "bmd_task_last_duration_seconds",
    "bmd_task_last_success_timestamp_seconds",
    "bmd_node_step_failures_total",
    "bmd_claims_total",
    "bmd_claim_lost_races_total",
    "bmd_scheduler_hosts",
    "bmd_provision_jobs",
    "bmd_bus_dropped_total",
)


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def scrape(client: TestClient[Any, Any]) -> tuple[str, Samples]:
    """The page as text, and its samples by sample name (``..._bucket``, ``..._total``) with labels."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return text, samples


def value_line(text: str, prefix: str) -> str:
    """The one line of the page that starts with ``prefix`` (a sample name with its labels)."""
    lines = [line for line in text.splitlines() if line.startswith(prefix + " ")]
    assert len(lines) == 1, (prefix, lines)
    return lines[0]


def one(samples: Samples, name: str, **labels: str) -> float:
    found = [v for ls, v in samples.get(name, []) if all(ls.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def power_sync(cloud: Cloud) -> SyncPowerStates:
    c = cloud.ctx
    return SyncPowerStates(c.sessionmaker, c.power, c.settings.service.host, c.settings.tasks, failures=c.step_failures)


async def test_a_timestamp_and_a_counter_past_a_million_print_exactly(cloud: Cloud) -> None:
    """The hand-made page printed %g: 1764657169.123456 became 1.76466e+09 (an hour off), 1000001 became
    1e+06."""
    when = 1_764_657_169.123456
    cloud.ctx.runner.clock = lambda: when
    assert await cloud.ctx.runner.run_pass("report_driver_status")
    bus = cloud.ctx.bus
    slow = bus.subscribe("flood", queue_size=1)
    for i in range(1_000_001):
        bus.publish("flood", i)
    slow.close()  # the subscriber goes; its drops stay counted (a counter never goes down)

    text, _ = await scrape(cloud.client)
    line = value_line(text, 'bmd_task_last_success_timestamp_seconds{task="report_driver_status"}')
    assert float(line.split()[-1]) == when and "1.764657169123456e+09" in line
    assert float(value_line(text, 'bmd_bus_published_total{topic="flood"}').split()[-1]) == 1_000_001
    assert float(value_line(text, 'bmd_bus_dropped_total{topic="flood"}').split()[-1]) == 1_000_000
    line = value_line(text, 'bmd_task_passes_total{task="report_driver_status"}')
    assert float(line.split()[-1]) == 1
    assert "# TYPE bmd_task_passes_total counter" in text and "# TYPE bmd_nodes gauge" in text
    assert [name for name in EARLIER if f"\n{name}" not in text] == []
    assert cloud.ctx.api_token not in text


async def test_fleet_gauges_by_power_and_provision_state_and_maintenance(cloud: Cloud) -> None:
    ids = await cloud.enroll(4)
    _, samples = await scrape(cloud.client)
    unknown = {"power_state": "unknown", "provision_state": "available", "maintenance": "false"}
    assert samples["bmd_nodes"] == [(unknown, 4)]
    assert one(samples, "bmd_nodes_in_maintenance") == 0

    cloud.fake.bmc(ids[0]).power = cloud.fake.bmc(ids[0]).power.ON
    await power_sync(cloud).run_once()
    body = {"maintenance": True, "maintenance_reason": "fan"}
    resp = await cloud.client.patch(f"/v1/nodes/{ids[3]}", json=body, headers=cloud.auth)
    assert resp.status == 200, await resp.text()

    _, samples = await scrape(cloud.client)
    got = {(ls["power_state"], ls["provision_state"], ls["maintenance"]): v for ls, v in samples["bmd_nodes"]}
    assert got == {
        ("power on", "available", "false"): 1,
        ("power off", "available", "false"): 2,
        ("power off", "available", "true"): 1,
    }
    assert one(samples, "bmd_nodes_in_maintenance") == 1
    await cloud.client.delete(f"/v1/nodes/{ids[1]}", headers=cloud.auth)
    _, samples = await scrape(cloud.client)
    assert sum(v for _, v in samples["bmd_nodes"]) == 3


def recount(cloud: Cloud) -> dict[tuple[str | None, str, bool], int]:
    """The fleet counted from the scheduler's views, the slow way."""
    views = [v for v in cloud.ctx.scheduler.node_views() if not v.deleted]
    return dict(Counter((v.power_state, v.provision_state, v.maintenance) for v in views))


async def test_api_latency_is_labelled_by_route_template_and_status(cloud: Cloud) -> None:
    await cloud.enroll(2)
    paths = ("/v1/nodes/node-1", "/v1/nodes/node-2", "/v1/nodes/no-such-node", "/no/such/route", "/healthz")
    for path in (*paths, "/images/no/such-file"):
        await cloud.client.get(path)
    assert (await cloud.client.delete("/v1/nodes/node-1")).status == 401  # no token
    assert (await cloud.client.request("PROPFIND", "/v1/nodes", headers=cloud.auth)).status == 405

    text, samples = await scrape(cloud.client)
    counts = {
        (ls["method"], ls["route"], ls["status"]): v for ls, v in samples["bmd_api_request_duration_seconds_count"]
    }
    assert counts[("GET", "/v1/nodes/{node}", "200")] == 2
    assert counts[("GET", "/v1/nodes/{node}", "404")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert counts[("DELETE", "/v1/nodes/{node}", "401")] == 1
    assert counts[("other", "unmatched", "405")] == 1
    assert counts[("POST", "/v1/nodes/import", "201")] == 1
    assert counts[("GET", "/images/{path}", "404")] == 1  # the sub-application's route, with its prefix
    assert any(key[:2] == ("GET", "/healthz") for key in counts)  # 200 or 503: no probe pass ran here
    assert "node-1" not in text and "no-such" not in text and "PROPFIND" not in text  # never the raw path or method
    le = {ls["le"] for ls, _ in samples["bmd_api_request_duration_seconds_bucket"]}
    assert {"0.001", "1.0", "+Inf"} <= le


async def test_bmc_calls_by_driver_and_error_kind(cloud: Cloud) -> None:
    ids = await cloud.enroll(3)
    cloud.fake.inject_failure(ids[1], BMCTimeout("no answer"))
    await power_sync(cloud).run_once()
    _, samples = await scrape(cloud.client)
    assert one(samples, "bmd_bmc_call_duration_seconds_count", driver="fake", call="get_power_state") == 3
    assert samples["bmd_bmc_call_errors_total"] == [
        ({"driver": "fake", "call": "get_power_state", "kind": "bmc_timeout"}, 1)
    ]


async def deploy(cloud: Cloud, mac: str, **agent: Any) -> None:
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    assert (await run_agent(cloud.tftp_root, mac, **agent)).status == 202
    await cloud.settle()


async def drive(cloud: Cloud) -> None:
    """Traffic enough for every labelled series: a deploy to active, one the agent fails, a request no
    host fits, a power sync with a BMC timeout, a drop on the bus, API calls."""
    ids = await cloud.enroll(3)
    await cloud.add_pxe_ips(3)
    await deploy(cloud, "52:54:00:00:01:00")
    await deploy(cloud, "52:54:00:00:02:00", fail_with="disk /dev/sda not found")
    arm = {"name": "bm.arm", "ram": 16384, "vcpus": 8, "disk": 200}
    assert (await cloud.client.post("/v1/flavors", json=arm, headers=cloud.auth)).status == 201
    spec = {"value": "aarch64"}
    await cloud.client.put("/v1/flavors/bm.arm/extra_specs/capabilities:cpu_arch", json=spec, headers=cloud.auth)
    status, body = await cloud.create(flavor="bm.arm")
    assert status == 409 and body["error"] == "no_valid_host", body
    cloud.fake.inject_failure(ids[2], BMCTimeout("no answer"))
    await power_sync(cloud).run_once()
    for name in cloud.ctx.runner.records:
        await cloud.ctx.runner.run_pass(name)
    slow = cloud.ctx.bus.subscribe("capabilities", queue_size=1)
    await cloud.publish()
    await cloud.publish()
    slow.close()


async def test_deploy_outcomes_durations_and_scheduler_counts(cloud: Cloud) -> None:
    await drive(cloud)
    _, samples = await scrape(cloud.client)
    assert one(samples, "bmd_deploys_total", outcome="active") == 1
    assert one(samples, "bmd_deploys_total", outcome="agent_failed") == 1
    assert one(samples, "bmd_deploys_total", outcome="timed_out") == 0  # present before the first one
    assert one(samples, "bmd_deploy_duration_seconds_count", outcome="active") == 1
    assert 0 < one(samples, "bmd_deploy_duration_seconds_sum", outcome="active") < 60
    assert one(samples, "bmd_scheduler_requests_total") == 3
    assert samples["bmd_scheduler_no_valid_host_total"] == [({"reason": "ComputeCapabilitiesFilter"}, 1)]
    assert one(samples, "bmd_claims_total") == 2
    assert one(samples, "bmd_image_cache_bytes") >= 300_000  # the disk image, in the cache
    assert one(samples, "bmd_bus_dropped_total", topic="capabilities") >= 1
    tasks = {ls["task"] for ls, _ in samples["bmd_task_pass_duration_seconds_count"]}
    assert cloud.ctx.scheduler.fleet() == recount(cloud)  # the counts kept as views come match the views
    assert tasks == set(cloud.ctx.runner.records)


async def test_each_app_has_its_own_registry(cloud: Cloud) -> None:
    """Two apps in one process count apart, and nothing lands in prometheus_client's global registry."""
    await cloud.client.get("/healthz")
    async with TestClient(TestServer(create_app(cloud.ctx), host="127.0.0.1", port=0)) as other:
        _, samples = await scrape(other)
    assert not any(ls["route"] == "/healthz" for ls, _ in samples.get("bmd_api_request_duration_seconds_count", []))
    assert b"bmd_" not in generate_latest(REGISTRY)


# -- the shipped dashboard and alerts ----------------------------------------------------------------------

_NAME = re.compile(r"\b(bmd_[a-zA-Z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(bmd_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    found = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in found} >= {
        "BmdLoopNotSucceeding",
        "BmdNodesEnteringMaintenance",
        "BmdDeployFailures",
        "BmdBMCErrorRatio",
    }
    for rule in found:
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]
    return [str(r["expr"]) for r in found]


def test_the_dashboard_and_the_alerts_have_expressions() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20 and all(_NAME.search(e) for e in exprs)
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))  # Grafana keys panels by id
    assert len(alert_exprs()) >= 4


async def test_every_metric_the_dashboard_and_alerts_use_is_served(cloud: Cloud) -> None:
    await drive(cloud)
    _, samples = await scrape(cloud.client)
    labels_of: dict[str, set[str]] = defaultdict(set)
    for name, series in samples.items():
        for ls, _ in series:
            labels_of[name] |= set(ls) | {"instance", "job"}  # what Prometheus adds at scrape
    for expr in dashboard_exprs() + alert_exprs():
        names = set(_NAME.findall(expr))
        missing = names - set(samples)
        assert not missing, f"{expr!r} uses {sorted(missing)}, which /metrics does not serve"
        for name, selector in _SELECTOR.findall(expr):
            unknown = set(_MATCHER.findall(selector)) - labels_of[name]
            assert not unknown, f"{expr!r}: {name} has no label {sorted(unknown)}"
        known = set().union(*(labels_of[n] for n in names)) | {"le"}
        for grouping in _GROUPING.findall(expr):
            unknown = {g.strip() for g in grouping.split(",") if g.strip()} - known
            assert not unknown, f"{expr!r} groups by {sorted(unknown)}, a label none of its metrics has"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_alerts_and_every_dashboard_query(tmp_path: Path) -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    queries = []
    for i, expr in enumerate(e for e in dashboard_exprs() if not e.startswith("label_values(")):
        for var, value in _GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        queries.append({"record": f"bmd:dashboard_query_{i}", "expr": expr})
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
