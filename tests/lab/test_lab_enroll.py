"""``bmd lab --enroll`` never silently moves nodes bmd already has to this lab's BMCs: it refuses, naming
them, before writing anything, unless ``--replace`` (``bmd serve --lab`` passes it for its own nodes)."""

from __future__ import annotations

from typing import Any

import pytest

from bmd.errors import Conflict
from bmd.lab.enroll import enroll_inventory
from tests.conftest import node_body


def inventory(port: int, count: int = 3) -> list[dict[str, Any]]:
    return [{**node_body(i), "name": f"lab-{i}", "pm_address": f"127.0.0.1:{port + i}"} for i in range(count)]


async def nodes(client: Any) -> dict[str, str]:
    page = await (await client.get("/v1/nodes")).json()
    return {n["name"]: n["pm_address"] for n in page["nodes"]}


async def test_enroll_refuses_to_move_existing_nodes_unless_replace(client, ctx) -> None:  # type: ignore[no-untyped-def]
    url = str(client.make_url("")).rstrip("/")
    first = await enroll_inventory(url, ctx.api_token, inventory(40000, 2))
    assert first == {"created": 2, "updated": 0, "unchanged": 0}
    before = await nodes(client)

    moved = inventory(50000)  # lab-0 and lab-1 on other ports, lab-2 new
    with pytest.raises(Conflict) as refused:
        await enroll_inventory(url, ctx.api_token, moved)
    message = str(refused.value)
    assert "lab-0 (127.0.0.1:40000 -> 127.0.0.1:50000)" in message and "lab-1" in message
    assert "--replace" in message and "nothing was changed" in message
    assert await nodes(client) == before  # lab-2 was not imported either

    again = await enroll_inventory(url, ctx.api_token, inventory(40000, 2))  # same addresses: nothing to refuse
    assert again == {"created": 0, "updated": 0, "unchanged": 2}

    replaced = await enroll_inventory(url, ctx.api_token, moved, replace=True)
    assert replaced == {"created": 1, "updated": 2, "unchanged": 0}
    assert await nodes(client) == {f"lab-{i}": f"127.0.0.1:{50000 + i}" for i in range(3)}


def test_lab_has_replace() -> None:
    from bmd.cli import cli

    def parsed(*argv: str) -> dict[str, object]:
        lab = cli.get_command(cli.make_context("bmd", ["lab"]), "lab")
        assert lab is not None
        return lab.make_context("lab", list(argv)).params

    assert parsed("--enroll", "--replace")["replace"] is True
    assert parsed("--enroll")["replace"] is False
