"""Each interface's ``validate(node)``: cheap, no I/O, good nodes pass and each refusal names its field; the
``No*`` slots raise UnsupportedOperation; ``NodeDriver`` runs them all and names the slot that refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bmd.config import Settings
from bmd.drivers.base import NoConsole, NodeDriver, NodeFacts, NoInspect
from bmd.drivers.deploy.driver import PXEDriver
from bmd.drivers.power.base import BMCAccess
from bmd.drivers.power.fake import FakePower
from bmd.drivers.power.ipmi import IPMIPower
from bmd.drivers.power.redfish import RedfishPower
from bmd.drivers.vif.generic import GenericVif
from bmd.drivers.vif.openflow import OpenFlowVif
from bmd.drivers.vif.ovs import OVSVif
from bmd.errors import InvalidInput, UnsupportedOperation
from tests.conftest import make_settings

GOOD = NodeFacts(id=1, pm_driver="fake", pm_address="10.0.0.1", pm_user="admin", interfaces=1)


def access(address: str) -> BMCAccess:
    return BMCAccess(node_id=1, address=address, username="admin", password="pw")


# (driver, pm_address, the field named, or None when it passes)
POWER = [
    pytest.param(IPMIPower, "10.0.0.1", None, id="ipmi-v4"),
    pytest.param(IPMIPower, "[fd00::1]:624", None, id="ipmi-v6-port"),
    pytest.param(IPMIPower, "", "pm_address", id="ipmi-no-address"),
    pytest.param(IPMIPower, "::::", "pm_address", id="ipmi-not-an-address"),
    pytest.param(IPMIPower, "10.0.0.1:0", "pm_address", id="ipmi-port-0"),
    pytest.param(RedfishPower, "https://10.0.0.5/redfish/v1/Systems/1", None, id="redfish-url"),
    pytest.param(RedfishPower, "10.0.0.5", "pm_address", id="redfish-not-a-url"),
    pytest.param(FakePower, "", None, id="fake-needs-nothing"),
]


@pytest.mark.parametrize(("cls", "address", "field"), POWER)
def test_power_validate(cls: type[Any], address: str, field: str | None) -> None:
    driver = cls()
    if field is None:
        driver.validate(access(address))
        return
    with pytest.raises(InvalidInput) as caught:
        driver.validate(access(address))
    assert caught.value.field == field


def pxe(tmp_path: Path, **deploy: Any) -> PXEDriver:
    settings = make_settings(tmp_path)
    return PXEDriver.from_settings(settings.model_copy(update={"deploy": settings.deploy.model_copy(update=deploy)}))


# (node change, deploy config change, the field named, or None when it passes)
DEPLOY = [
    pytest.param({}, {}, None, id="one-nic"),
    pytest.param({"interfaces": 4}, {}, None, id="four-nics"),
    pytest.param({"interfaces": 0}, {}, "interfaces", id="no-interface"),
    pytest.param({}, {"tftp_root": ""}, "deploy.tftp_root", id="no-tftp-root"),
    pytest.param({}, {"http_root": " "}, "deploy.http_root", id="no-http-root"),
]


@pytest.mark.parametrize(("node", "config", "field"), DEPLOY)
def test_pxe_deploy_validate(tmp_path: Path, node: dict[str, Any], config: dict[str, Any], field: str | None) -> None:
    driver = pxe(tmp_path, **config)
    facts = replace(GOOD, **node)
    if field is None:
        driver.validate(facts)
    else:
        with pytest.raises(InvalidInput) as caught:
            driver.validate(facts)
        assert caught.value.field == field
    assert not (tmp_path / "tftpboot").exists()  # validate does no I/O: nothing is created


def vif_drivers(settings: Settings) -> list[Any]:
    return [GenericVif(), OpenFlowVif.from_settings(settings), OVSVif.from_settings(settings)]


@pytest.mark.parametrize("facts", [GOOD, replace(GOOD, interfaces=0)], ids=["wired", "bare"])
def test_vif_validate_accepts_every_node(tmp_path: Path, facts: NodeFacts) -> None:
    """Which interfaces need a known switch port depends on the request: checked at plug time, not here."""
    for driver in vif_drivers(make_settings(tmp_path)):
        driver.validate(facts)


async def test_no_console_and_no_inspect_raise_unsupported() -> None:
    NoConsole().validate(GOOD)  # an unused slot refuses no node
    NoInspect().validate(GOOD)
    with pytest.raises(UnsupportedOperation, match="console is not supported"):
        await NoConsole().start_console(GOOD)
    with pytest.raises(UnsupportedOperation, match="console is not supported"):
        await NoConsole().stop_console(GOOD)
    with pytest.raises(UnsupportedOperation, match="inspection is not supported"):
        await NoInspect().inspect(GOOD)


def node_driver(tmp_path: Path, power: Any, address: str) -> NodeDriver:
    return NodeDriver(power, access(address), pxe(tmp_path), GenericVif(), NoConsole(), NoInspect())


# (power driver, pm_address, node change) -> the blocker's start ('' when the node is accepted)
COMPOSED = [
    pytest.param(FakePower(), "x", {}, "", id="ready"),
    pytest.param(IPMIPower(), "::::", {}, "power: pm_address", id="power-first"),
    pytest.param(IPMIPower(), "::::", {"interfaces": 0}, "power: pm_address", id="power-before-deploy"),
    pytest.param(FakePower(), "x", {"interfaces": 0}, "deploy: no interface", id="deploy"),
]


@pytest.mark.parametrize(("power", "address", "node", "blocker"), COMPOSED)
def test_node_driver_validates_every_slot_and_names_the_one_that_refused(
    tmp_path: Path, power: Any, address: str, node: dict[str, Any], blocker: str
) -> None:
    driver = node_driver(tmp_path, power, address)
    facts = replace(GOOD, **node)
    assert driver.blocker(facts).startswith(blocker) and bool(driver.blocker(facts)) == bool(blocker)
    if blocker:
        with pytest.raises(InvalidInput) as caught:  # validate raises the interface's own error, field kept
            driver.validate(facts)
        assert caught.value.field == ("pm_address" if blocker.startswith("power") else "interfaces")
    else:
        driver.validate(facts)
