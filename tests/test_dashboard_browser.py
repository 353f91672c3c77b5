"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
``bmd serve --lab 8``: the grid shows the lab's 8 nodes; a power change made through the API appears in the
page without a reload (from the event stream, not a reload of the list); the capability and name filters;
a node's detail; a pasted token is sent on the page's fetches. The screenshot is kept as a test artifact
(``$BMD_TEST_ARTIFACTS/dashboard.png``, else under the test's tmp dir).

Skips when chromium or playwright is missing (``.ci/run`` installs both)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bmd.node_events import TOPIC, NodeView
from tests.conftest import make_settings
from tests.lab_api import serving_lab

async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("BMD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

WITHIN_MS = 15_000  # every wait on the page is on the DOM, bounded by this


def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("BMD_TEST_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


async def test_the_dashboard_shows_the_lab_live(tmp_path: Path, db_file: Path) -> None:
    settings = make_settings(
        tmp_path,
        driver={"default_power_driver": "ipmi"},
        ipmi={"timeout": 2.0, "min_command_interval": 0.0},
        tasks={"host_state_interval": 0.5, "update_resources_interval": 0.5},
    )
    expect = async_api.expect
    async with (
        serving_lab(settings, count=8, machines="sim", within=60) as (_lab, ctx, endpoint),
        aiohttp.ClientSession(endpoint.url, headers={"Authorization": f"Bearer {ctx.api_token}"}) as http,
        async_api.async_playwright() as pw,
    ):
        async with http.get("/v1/nodes") as resp:
            nodes = {n["name"]: n for n in (await resp.json())["nodes"]}
        assert len(nodes) == 8
        async with http.get(f"/v1/nodes/{next(iter(nodes))}/events") as resp:
            no_events = resp.status == 404  # GET /v1/nodes/{node}/events: only on a bmd that keeps node history
        browser = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))

            def on_console(msg: Any) -> None:
                url = msg.location.get("url", "")
                if msg.type == "error" and not (no_events and "/events?" in url and "404" in msg.text):
                    errors.append(f"{msg.text} ({url})")

            page.on("console", on_console)
            requests: list[Any] = []
            page.on("request", lambda r: requests.append(r))

            await page.goto(endpoint.url + "/")
            grid = page.locator("#grid .node")
            await expect(grid).to_have_count(8, timeout=WITHIN_MS)
            assert sorted(await grid.evaluate_all("ts => ts.map(t => t.dataset.name)")) == sorted(nodes)
            await expect(page.locator("#live")).to_have_attribute("data-live", "true", timeout=WITHIN_MS)
            await expect(page.locator("#health-status")).not_to_have_text("…", timeout=WITHIN_MS)
            await expect(page.locator("#loops tr[data-loop=sync_power_states]")).to_have_count(1)

            # a power change through the API appears without a reload, from the stream's view of the node
            name = sorted(nodes)[2]
            tile = page.locator(f'#grid .node[data-name="{name}"]')
            before = await tile.get_attribute("data-power")
            target = "power off" if before == "power on" else "power on"
            await page.evaluate("window.__loaded_once = true")
            lists_before = sum(1 for r in requests if r.url.endswith("/v1/nodes?limit=1000"))
            async with http.put(f"/v1/nodes/{name}/states/power", json={"target": target}) as resp:
                assert resp.status == 200, await resp.text()
            answered = time.perf_counter()
            await expect(tile).to_have_attribute("data-power", target, timeout=WITHIN_MS)
            print(f"power change on the page {(time.perf_counter() - answered) * 1e3:.0f} ms after the API answered")
            assert await page.evaluate("window.__loaded_once") is True  # the same page, never reloaded
            assert sum(1 for r in requests if r.url.endswith("/v1/nodes?limit=1000")) == lists_before

            # a stream that fell behind (more batches than its queue holds, at once) is told to resync: the page
            # reloads the list, once, and shows the same nodes
            reload_of_list = page.expect_request(lambda r: r.url.endswith("/v1/nodes?limit=1000"), timeout=WITHIN_MS)
            async with reload_of_list:
                for version in range(256):  # no await between: the stream's queue (32) overflows
                    ctx.bus.publish(TOPIC, [NodeView(node_id=10**9, version=version)])
            await expect(grid).to_have_count(8)
            assert not [r for r in requests if "/v1/nodes/1000000000" in r.url]  # the dropped views were not used

            # filter by capability: disk_type = ssd is every other lab node; then by name
            ssd = sorted(n for n, node in nodes.items() if node["extra_specs"]["disk_type"] == "ssd")
            assert 0 < len(ssd) < 8
            await page.select_option("#filter-key", "disk_type")
            await page.select_option("#filter-value", "ssd")
            await expect(grid).to_have_count(len(ssd), timeout=WITHIN_MS)
            assert sorted(await grid.evaluate_all("ts => ts.map(t => t.dataset.name)")) == ssd
            await page.select_option("#filter-key", "")
            await page.fill("#filter-name", ssd[0])
            await expect(grid).to_have_count(1, timeout=WITHIN_MS)
            await page.fill("#filter-name", "")
            await expect(grid).to_have_count(8, timeout=WITHIN_MS)

            # a token pasted into the page: kept in the tab, sent on every fetch (the console log needs it)
            await page.fill("#token", ctx.api_token)
            await page.click("#token-form button[type=submit]")
            await expect(page.locator("#token-forget")).to_be_visible(timeout=WITHIN_MS)
            assert await page.evaluate("sessionStorage.getItem('bmd.token')") == ctx.api_token

            # a node's detail on click: capabilities, interfaces, console log (with the token)
            node = nodes[name]
            await tile.click()
            detail = page.locator("#detail")
            await expect(detail).to_be_visible(timeout=WITHIN_MS)
            await expect(page.locator("#detail-title")).to_have_text(name)
            caps = detail.locator("[data-section=capabilities]")
            for key, value in node["extra_specs"].items():
                await expect(caps.locator("tr", has_text=key)).to_contain_text(str(value))
            await expect(detail.locator("[data-section=interfaces]")).to_contain_text(node["prov_mac_address"])
            console = detail.locator("[data-section=console]")
            await expect(console).not_to_contain_text("paste an operator token", timeout=WITHIN_MS)
            await expect(console).not_to_contain_text("console log:")  # no error reading it
            logged = [r for r in requests if "/console-log" in r.url]
            assert logged and all(r.headers.get("authorization") == f"Bearer {ctx.api_token}" for r in logged)
            await expect(detail.locator("[data-section=events]")).to_have_count(0 if no_events else 1)

            # the detail follows the node live too
            async with http.put(f"/v1/nodes/{name}/maintenance", json={"reason": "fan noise"}) as resp:
                assert resp.status == 200, await resp.text()
            await expect(detail).to_contain_text("fan noise", timeout=WITHIN_MS)
            await expect(tile).to_have_attribute("data-maintenance", "true", timeout=WITHIN_MS)

            # a deploy (the lab's simulated machines PXE-boot for real): its node turns busy, then active, live
            demo = Path(settings.service.state_dir) / "lab" / "images" / "demo.img"
            async with http.post("/v1/instances", json={"flavor": "lab", "image_ref": str(demo)}) as resp:
                assert resp.status == 202, await resp.text()
                instance = (await resp.json())["instances"][0]
            deployed = page.locator(f'#grid .node[data-id="{instance["node"]}"]')
            await expect(deployed).to_have_attribute("data-provision", "active", timeout=WITHIN_MS * 2)
            await expect(deployed).to_have_class(re.compile(r"\bprov-active\b"))
            await expect(page.locator("#summary")).to_contain_text("active: 1")
            async with http.get("/v1/nodes") as resp:  # and every tile says what the API says
                for api_node in (await resp.json())["nodes"]:
                    shown = page.locator(f'#grid .node[data-id="{api_node["id"]}"]')
                    await expect(shown).to_have_attribute("data-power", api_node["power_state"], timeout=WITHIN_MS)
                    await expect(shown).to_have_attribute("data-provision", api_node["provision_state"])

            await deployed.click()  # its detail: the deploy's steps
            await expect(page.locator("#detail-title")).to_have_text(await deployed.get_attribute("data-name") or "")
            steps = detail.locator("[data-section=deploy-steps]")
            await expect(steps).to_be_visible(timeout=WITHIN_MS)
            await expect(steps.locator("tbody tr").first).to_be_visible()

            shot = artifacts(tmp_path) / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            await browser.close()
