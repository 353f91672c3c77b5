"""Driver-side input checks: pm_address forms, validate(), settings (no I/O)."""

from __future__ import annotations

import pytest

from bmd.drivers.power.base import BMCAccess
from bmd.drivers.power.ipmi import IPMIPower, IPMIPowerSettings, parse_pm_address
from bmd.drivers.power.ipmi_pyghmi import PyghmiPower
from bmd.errors import ConfigError, InvalidInput


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 623)),
        ("10.0.0.1:6230", ("10.0.0.1", 6230)),
        (" bmc.example.com:700 ", ("bmc.example.com", 700)),
        ("[fe80::1]:6230", ("fe80::1", 6230)),
        ("[::1]", ("::1", 623)),
        ("fe80::1", ("fe80::1", 623)),
    ],
)
def test_pm_address_forms(address: str, expected: tuple[str, int]) -> None:
    assert parse_pm_address(address) == expected


@pytest.mark.parametrize("address", ["", ":623", "host:0", "host:70000", "host:abc", "[::1", "[::1]x", "[]:1"])
def test_pm_address_errors_name_the_field(address: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_pm_address(address)
    assert info.value.field == "pm_address"


@pytest.mark.parametrize(
    ("node", "field"),
    [
        (BMCAccess(1, "", "admin", "password"), "pm_address"),
        (BMCAccess(1, "h:x", "admin", "password"), "pm_address"),
        (BMCAccess(1, "h", None, "password"), "pm_user"),
        (BMCAccess(1, "h", "u" * 17, "password"), "pm_user"),
        (BMCAccess(1, "h", "admin", None), "pm_password"),
        (BMCAccess(1, "h", "admin", "p" * 21), "pm_password"),
    ],
)
def test_validate(node: BMCAccess, field: str) -> None:
    for driver in (IPMIPower(), PyghmiPower()):
        with pytest.raises(InvalidInput) as info:
            driver.validate(node)
        assert info.value.field == field
        driver.validate(BMCAccess(1, "h:624", "admin", "password"))  # and a good one passes


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="min_command_interval"):
        IPMIPowerSettings(min_command_interval=-1)
