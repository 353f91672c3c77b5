"""Enroll a lab's inventory into a running bmd over its HTTP API: new nodes are imported (all or nothing),
nodes already there (same name) get the lab's current BMC address and credentials."""

from __future__ import annotations

from typing import Any

import aiohttp

from bmd.errors import BmdError

BMC_FIELDS = ("pm_driver", "pm_address", "pm_user", "pm_password")


async def enroll_inventory(url: str, token: str, nodes: list[dict[str, Any]]) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url=url.rstrip("/") + "/", headers=headers, timeout=timeout) as http:

        async def call(method: str, path: str, body: Any = None) -> Any:
            async with http.request(method, path, json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise BmdError(f"{method} /{path}: HTTP {resp.status}: {data.get('message', data)}")
                return data

        existing: dict[str, Any] = {}
        page = await call("GET", "v1/nodes")
        while True:  # every page: follow "next" until it is null
            existing.update((n["name"], n) for n in page["nodes"] if n["name"])
            if page["next"] is None:
                break
            page = await call("GET", f"v1/nodes?marker={page['next']}")
        new = [n for n in nodes if n["name"] not in existing]
        updated = 0
        for node in nodes:
            old = existing.get(node["name"])
            if old is not None and old["pm_address"] != node["pm_address"]:
                await call("PATCH", f"v1/nodes/{old['id']}", {k: node[k] for k in BMC_FIELDS})
                updated += 1
        if new:
            await call("POST", "v1/nodes/import", {"nodes": new})
    return {"created": len(new), "updated": updated, "unchanged": len(nodes) - len(new) - updated}
