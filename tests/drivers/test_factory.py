"""DriverFactory: a node's composition from its pm_driver and the configured deploy/vif drivers, every piece
through the one plugin loader; an unknown configured name fails at start-up naming the known ones, in the
same words for drivers, filters and weighers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bmd.drivers.base import NoConsole, NodeFacts, NoInspect
from bmd.drivers.deploy.driver import PXEDriver
from bmd.drivers.factory import DriverFactory
from bmd.drivers.power.fake import FakePower
from bmd.drivers.power.ipmi import IPMIPower
from bmd.drivers.power.ipmi_pyghmi import PyghmiPower
from bmd.drivers.power.redfish import RedfishPower
from bmd.drivers.vif.generic import GenericVif
from bmd.drivers.vif.openflow import OpenFlowVif
from bmd.drivers.vif.ovs import OVSVif
from bmd.errors import ConfigError
from bmd.filters.registry import build_filters, build_weighers
from bmd.plugins import BUILTIN, DEPLOY_GROUP, POWER_GROUP, VIF_GROUP
from bmd.secrets import load_secret_box
from tests.conftest import make_settings


def factory(tmp_path: Path, **sections: dict[str, Any]) -> DriverFactory:
    settings = make_settings(tmp_path, **sections)
    return DriverFactory(settings, load_secret_box(settings.secrets.key_file))


@pytest.mark.parametrize(
    ("vif_driver", "vif_cls"), [("generic", GenericVif), ("openflow", OpenFlowVif), ("ovs", OVSVif)]
)
@pytest.mark.parametrize(
    ("pm_driver", "power_cls"),
    [("fake", FakePower), ("ipmi", IPMIPower), ("ipmi-pyghmi", PyghmiPower), ("redfish", RedfishPower)],
)
async def test_a_node_gets_its_power_driver_and_the_configured_deploy_and_vif(
    tmp_path: Path, pm_driver: str, power_cls: type[Any], vif_driver: str, vif_cls: type[Any]
) -> None:
    drivers = factory(tmp_path, driver={"deploy_driver": "pxe", "vif_driver": vif_driver})
    try:
        node = NodeFacts(id=7, pm_driver=pm_driver, pm_address="10.0.0.7", pm_user="admin", interfaces=1)
        composed = drivers.for_node(node)
        assert type(composed.power) is power_cls
        assert type(composed.deploy) is PXEDriver and type(composed.vif) is vif_cls
        assert isinstance(composed.console, NoConsole) and isinstance(composed.inspect, NoInspect)
        assert composed.access.node_id == 7 and composed.access.address == "10.0.0.7"
        assert drivers.for_node(node).power is composed.power  # one driver instance per name, shared
    finally:
        await drivers.close()


async def test_power_drivers_take_their_config_section(tmp_path: Path) -> None:
    drivers = factory(
        tmp_path, ipmi={"timeout": 1.5, "min_command_interval": 0.25}, redfish={"timeout": 3.0, "verify_tls": False}
    )
    try:
        ipmi, pyghmi, redfish = (drivers.power.get(name) for name in ("ipmi", "ipmi-pyghmi", "redfish"))
        assert isinstance(ipmi, IPMIPower) and ipmi.settings.client.timeout == 1.5
        assert ipmi.settings.min_command_interval == 0.25
        assert isinstance(pyghmi, PyghmiPower) and pyghmi.settings.timeout == 3.0
        assert isinstance(redfish, RedfishPower) and redfish.settings.timeout == 3.0
        assert not redfish.settings.verify_tls
    finally:
        await drivers.close()


async def test_an_unknown_pm_driver_blocks_the_node_alone(tmp_path: Path) -> None:
    drivers = factory(tmp_path)
    try:
        bad = NodeFacts(id=1, pm_driver="no-such", pm_address="x", interfaces=1)
        assert drivers.blocker(bad).startswith("power: pm_driver: unknown name 'no-such'; known power drivers: fake")
        assert drivers.blocker(NodeFacts(id=2, pm_driver="fake", pm_address="x", interfaces=1)) == ""
    finally:
        await drivers.close()


# (config section and key, the group whose names the message lists)
UNKNOWN = [
    pytest.param("deploy_driver", DEPLOY_GROUP, "deploy driver", id="deploy"),
    pytest.param("vif_driver", VIF_GROUP, "vif driver", id="vif"),
    pytest.param("default_power_driver", POWER_GROUP, "power driver", id="power"),
]


@pytest.mark.parametrize(("key", "group", "kind"), UNKNOWN)
async def test_an_unknown_driver_name_fails_at_start_up_listing_the_known_ones(
    tmp_path: Path, key: str, group: str, kind: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        factory(tmp_path, driver={key: "nope"})
    known = ", ".join(sorted(BUILTIN[group]))
    assert str(caught.value) == f"driver.{key}: unknown name 'nope'; known {kind}s: {known}"


SHAPE = re.compile(r"^(?P<key>[\w.]+): unknown name '(?P<name>[^']+)'; known (?P<kind>[a-z ]+)s: (?P<known>.+)$")


def test_filters_and_weighers_fail_in_the_same_words() -> None:
    for build, key, kind in (
        (build_filters, "scheduler.filters", "filter"),
        (build_weighers, "scheduler.weighers", "weigher"),
    ):
        with pytest.raises(ConfigError) as caught:
            build(["nope"])
        found = SHAPE.match(str(caught.value))
        assert found is not None, str(caught.value)
        assert (found["key"], found["name"], found["kind"]) == (key, "nope", kind)


async def test_the_service_fails_to_start_on_an_unknown_deploy_driver(tmp_path: Path, db_file: Path) -> None:
    from bmd.service import open_context

    settings = make_settings(tmp_path, driver={"deploy_driver": "iscsi"})
    with pytest.raises(ConfigError, match=r"driver.deploy_driver: unknown name 'iscsi'; known deploy drivers: pxe"):
        async with open_context(settings):
            pass


DEPLOY_PLUGIN = '''
from bmd.drivers.base import DeployInterface


class NullDeploy(DeployInterface):
    """A third party's deploy interface, built with from_settings like bmd's own."""

    name = "null"

    def __init__(self, settings):
        self.settings = settings

    @classmethod
    def from_settings(cls, settings):
        return cls(settings)

    async def prepare(self, spec): ...
    async def image_checksum(self, node_uuid): ...
    async def switch_to_boot(self, node_uuid): ...
    async def clean(self, node_uuid): ...


class NotADeploy:
    pass
'''


def install_deploy_plugin(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path, as pip would leave it, without pip."""
    (root / "acme_deploy.py").write_text(DEPLOY_PLUGIN)
    dist = root / "acme_deploy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme_deploy\nVersion: 1.0\n")
    entries = "[bmd.drivers.deploy]\nnull = acme_deploy:NullDeploy\nodd = acme_deploy:NotADeploy\n"
    (dist / "entry_points.txt").write_text(entries)
    monkeypatch.syspath_prepend(str(root))


async def test_a_deploy_driver_from_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_deploy_plugin(site, monkeypatch)
    drivers = factory(tmp_path, driver={"deploy_driver": "null"})
    try:
        assert type(drivers.deploy).__name__ == "NullDeploy"
        assert drivers.deploy.settings is drivers.settings  # type: ignore[attr-defined]
        composed = drivers.for_node(NodeFacts(id=1, pm_driver="fake", pm_address="x", interfaces=0))
        assert composed.deploy is drivers.deploy and composed.blocker(NodeFacts(1, "fake", "x")) == ""
    finally:
        await drivers.close()
    with pytest.raises(ConfigError, match=r"driver.deploy_driver: deploy driver 'odd': .* is not a DeployInterface"):
        factory(tmp_path, driver={"deploy_driver": "odd"})
