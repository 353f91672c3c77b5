"""Takeover of a dead service's nodes (bmd.tasks.adoption): the nodes new to this service since the last pass
get the recovery of a restart, per node. One service here; the move is written straight into bm_nodes, as
another service's node_ownership pass would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from bmd.db.models import BareMetalNode
from bmd.tasks.adoption import NodeAdoption
from tests.cloud import Cloud, make_cloud


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def test_a_node_taken_over_mid_spawn_is_failed_with_a_reason(cloud: Cloud) -> None:
    await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    _, body = await cloud.create()
    node_id = body["instances"][0]["bm_node_id"]
    await cloud.settle()
    async with cloud.ctx.sessionmaker.begin() as session:  # owned by a dead service, cut short mid-spawn
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == node_id)
            .values(service_host="dead-svc", provision_state="deploying", deploy_deadline=None)
        )
    adoption = NodeAdoption(cloud.ctx.conductor, 1.0)
    await adoption.run_once()  # the first pass only records what this service owns
    async with cloud.ctx.sessionmaker.begin() as session:  # the survivor's ownership pass moves it here
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == node_id)
            .values(service_host=cloud.ctx.settings.service.host)
        )
    await adoption.run_once()
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.instance_uuid is None  # failed spawn, node released
    assert "interrupted" in (node.last_error or "")
    assert (await cloud.instance(body["instances"][0]["uuid"])).vm_state == "error"
