"""What the structure promises, checked by reading the source tree (cheap): ``Settings`` is built only by
the service and the CLI; there is one plugin loader; the packages that moved under ``bmd/drivers/`` left
nothing behind; every builtin plugin is declared as an entry point."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from bmd.plugins import BUILTIN

ROOT = Path(__file__).resolve().parents[1]
BMD = ROOT / "bmd"


def sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(BMD.rglob("*.py"))}


def where(pattern: str) -> set[str]:
    found = re.compile(pattern)
    return {path for path, text in sources().items() if found.search(text)}


def test_settings_are_built_only_by_the_service_and_the_cli() -> None:
    builders = where(r"(?<![\w])Settings\(|Settings\.model_validate\(")
    allowed = {"bmd/config.py", "bmd/service.py"}
    assert {p for p in builders if p not in allowed and not p.startswith("bmd/cli/")} == set()


def test_there_is_one_plugin_loader() -> None:
    assert where(r"\bentry_points\b|importlib\.metadata|importlib\.import_module|__import__\(") == {"bmd/plugins.py"}
    assert where(r"\bfrom_settings\(\w+\.settings\)|\bBUILDERS\b") == set()  # one construction protocol


def test_the_moved_packages_left_nothing_behind() -> None:
    gone_paths = (
        "bmd/deploy",
        "bmd/network",
        "bmd/drivers/vif.py",
        "bmd/scheduler.py",
        "bmd/claims.py",
        "bmd/scheduling",
        "bmd/filters/host_state.py",
        "bmd/filters/chain.py",
        "bmd/filters/weighers.py",
        "tests/deploy",
        "tests/network",
        "tests/redfish",
    )
    for gone in gone_paths:
        assert not (ROOT / gone).exists(), gone
    old = r"bmd\.(deploy|network|scheduling|claims|filters\.(host_state|chain|weighers))\b"
    assert where(rf"(?m)^\s*(from|import) {old}|[\"']{old}") == set()


def test_every_builtin_plugin_is_an_entry_point() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {group: dict(names) for group, names in BUILTIN.items()} == {g: declared[g] for g in BUILTIN}


def test_the_seed_plug_vifs_is_found_where_a_newcomer_looks() -> None:
    assert "async def plug_vifs(" in (BMD / "drivers" / "vif" / "binding.py").read_text()


def test_the_service_wires_by_constructor() -> None:
    """service.py builds each part with what it needs: it never sets another object's attribute afterwards
    (``ctx.conductor.p.public_url = ...`` was the pattern)."""
    service = (BMD / "service.py").read_text()
    assert re.findall(r"(?m)^\s+\w+(?:\.\w+)+\s*=(?!=)", service) == []


def test_no_module_calls_another_objects_private_method() -> None:
    """``obj._method(`` on anything but ``self``/``cls`` (recovery called ``conductor._destroy``). The lab's
    BMC drives pyghmi's server session by its one packet entry point, which pyghmi keeps private; the stop's
    deadline ends the process with ``os._exit``, a public function despite its name."""
    offenders = {
        path: hits
        for path, text in sources().items()
        if (hits := re.findall(r"\b(?!self\b|cls\b|super\(\))[a-z_]\w*\._[a-z]\w*\(", text))
    }
    # os._exit is the os module's public hard exit (the stop's deadline thread), not a private method
    assert offenders == {"bmd/lab/bmc.py": ["session._handle_ipmi2_packet("], "bmd/service.py": ["os._exit("]}
