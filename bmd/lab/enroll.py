"""Enroll a lab's inventory into a running bmd over its HTTP API: new nodes are imported (all or nothing).
A node already there (same name) with another BMC address is a machine bmd manages elsewhere as far as
this lab knows: enrolment refuses, naming those nodes, before writing anything, unless ``replace`` (then
they get the lab's BMC address and credentials: ``bmd lab --enroll --replace``, and ``bmd serve --lab``,
whose own nodes get fresh ports on every start)."""

from __future__ import annotations

from typing import Any

import aiohttp

from bmd.errors import BmdError, Conflict

BMC_FIELDS = ("pm_driver", "pm_address", "pm_user", "pm_password")


async def enroll_inventory(
    url: str, token: str, nodes: list[dict[str, Any]], *, replace: bool = False
) -> dict[str, int]:
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
        moved = [(existing[n["name"]], n) for n in nodes if n["name"] in existing]
        moved = [(old, node) for old, node in moved if old["pm_address"] != node["pm_address"]]
        if moved and not replace:
            shown = ", ".join(
                f"{node['name']} ({old['pm_address']} -> {node['pm_address']})" for old, node in moved[:10]
            )
            more = f" and {len(moved) - 10} more" if len(moved) > 10 else ""
            raise Conflict(
                f"{len(moved)} node(s) already enrolled with another BMC address: {shown}{more}; nothing was "
                "changed. Pass --replace to point them at this lab's BMCs, or enroll into another bmd"
            )
        updated = 0
        for old, node in moved:
            await call("PATCH", f"v1/nodes/{old['id']}", {k: node[k] for k in BMC_FIELDS})
            updated += 1
        if new:
            await call("POST", "v1/nodes/import", {"nodes": new})
    return {"created": len(new), "updated": updated, "unchanged": len(nodes) - len(new) - updated}
