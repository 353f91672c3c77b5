"""plug_vifs with the ``ovs`` VIF driver against a private Open vSwitch: flows follow the bindings."""

from __future__ import annotations

from typing import Any

from bmd.drivers.vif.binding import plug_vifs, unplug_vifs
from bmd.drivers.vif.ovs import OVSVif
from tests.conftest import make_settings, node_body
from tests.drivers.vif.test_binding import net, vifs
from tests.drivers.vif.test_ovs_bridge import BRIDGE, PORTS, PrivateOVS, ovs  # noqa: F401 - the fixture


async def test_ovs_flows_follow_plug_and_unplug(client, auth, ctx, ovs: PrivateOVS, tmp_path: Any) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ifaces = [
        {"address": "52:54:00:0a:00:01", "datapath_id": "0x1", "port_no": PORTS["node1"]},
        {"address": "52:54:00:0a:00:02", "datapath_id": "0x1", "port_no": PORTS["node2"]},
    ]
    node = (await (await client.post("/v1/nodes", json=node_body(1, interfaces=ifaces), headers=auth)).json())["id"]
    settings = make_settings(
        tmp_path, network={"ovs_bridge": BRIDGE, "ovs_db": str(ovs.db_sock), "ovs_run_dir": str(ovs.run_dir)}
    )
    driver = OVSVif.from_settings(settings)
    await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-a", vlan=100), net("vif-b", vlan=200)])
    flows = ovs.flows()
    assert any(f"in_port={PORTS['node1']}" in f and "push_vlan" in f for f in flows), flows
    assert any("dl_vlan=100" in f for f in flows) and any("dl_vlan=200" in f for f in flows)
    assert await vifs(ctx, node) == ["vif-a", "vif-b"]
    await unplug_vifs(ctx.sessionmaker, driver, node)
    assert ovs.flows() == []
    assert await vifs(ctx, node) == [None, None]
