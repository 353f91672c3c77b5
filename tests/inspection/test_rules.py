"""The inspection rules: the hand-written parser (every kind of bad rule refused, naming the rule and the
problem), the evaluation on a report, and the config check at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmd.config import load_settings
from bmd.errors import ConfigError
from bmd.inspection.mapping import rule_facts
from bmd.inspection.report import InspectionReport
from bmd.inspection.rules import RuleError, apply_rules, compile_rule, compile_rules, parse_condition

REPORT = InspectionReport.model_validate(
    {
        "cpu": {"count": 8, "arch": "x86_64", "model": "AMD EPYC 7302"},
        "memory": {"total_mib": 3900, "physical_mib": 4096},
        "boot_mode": "uefi",
        "disks": [
            {"name": "sda", "size": 480 << 30, "model": "Samsung SSD 870", "rotational": False},
            {"name": "sdb", "size": 4000 << 30, "model": "HGST HUS726", "rotational": True},
        ],
        "nics": [
            {"name": "eth0", "mac": "52:54:00:00:00:01", "carrier": True, "speed_mbps": 10000,
             "lldp": {"chassis_id": "aa:bb:cc:00:00:01", "port_id": "Ethernet7"}},
            {"name": "eth1", "mac": "52:54:00:00:00:02", "carrier": False},
        ],
    }
)  # fmt: skip
FACTS = rule_facts(REPORT, REPORT.disks[0])


def holds(src: str) -> bool:
    return parse_condition(src).holds(FACTS)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("memory_mb < 4096", False),
        ("memory_mb <= 4096", True),
        ("memory_mb == 4096 and cpus >= 8", True),
        ("cpu.count > 8 or cpu.arch == 'x86_64'", True),
        ("not cpu.count != 8", True),
        ("not (cpus == 8 and local_gb > 1000)", True),
        ("local_gb == 480", True),
        ("disks[0].model ~= 'SSD'", True),
        ("disks[1].model ~= '^hgst'", False),  # searched, case-sensitive
        ("disks[1].model ~= '(?i)^hgst'", True),
        ("disks[1].rotational == true and disks[0].rotational == false", True),
        ("disks[2].model ~= 'x'", False),  # a missing disk is null: ~= and ordering are false
        ("disks[2].size > 0", False),
        ("disks[2] .model == null", True),
        ("disks[-1].name == 'sdb'", True),
        ('nics[0].lldp.port_id == "Ethernet7"', True),
        ("nics[1].lldp.chassis_id == null", True),
        ("nics[1].speed_mbps != null", False),
        ("boot_mode == 'uefi' and root_disk.name == 'sda'", True),
        ("system.vendor == null", True),
        ("'x86_64' == cpu_arch", True),
        ("cpu.model == 'it\\'s'", False),
        ("a_or_b == 1" if False else "cpus==8", True),  # no spaces needed
        ("cpus == 1 or cpus == 2 or cpus == 8 and memory_mb > 1", True),  # and binds tighter
        ("cpus == 8 or cpus == 1 and memory_mb > 99999", True),
        ("(cpus == 8 or cpus == 1) and memory_mb > 99999", False),
    ],
)
def test_conditions_evaluate_on_the_report(src: str, expected: bool) -> None:
    assert holds(src) is expected


@pytest.mark.parametrize(
    ("src", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("memory_mb", "expected a comparison"),
        ("memory_mb <", "expected a value"),
        ("memory_mb < 4096 4", "expected 'and', 'or'"),
        ("memory_mb <> 4096", "expected a value"),
        ("memory_mb = 4096", "unexpected '='"),
        ("memory < 4096", "memory has fields"),
        ("ram_mb < 4096", "unknown name"),
        ("disks.model ~= 'x'", "disks is a list: index it first"),
        ("disks < 1", "disks is a list"),
        ("disks[0].modle ~= 'x'", "has no field 'modle'"),
        ("disks[x].model ~= 'x'", "expected a whole number index"),
        ("disks[0.model ~= 'x'", "expected ']'"),
        ("cpu.count[0] == 1", "is not a list"),
        ("cpu.count.x == 1", "has no fields"),
        ("cpu. == 1", "expected a field name"),
        ("disks[0].model < 5", "compares whole numbers"),
        ("disks[0].model == 5", "is str and 5 is int"),
        ("disks[0].rotational == 'yes'", "is bool"),
        ("cpus ~= '8'", "needs a text path"),
        ("disks[0].model ~= 5", "needs a 'regular expression'"),
        ("disks[0].model ~= '('", "bad regular expression"),
        ("1 == 1", "at least one path"),
        ("cpus == 8 and", "expected a value"),
        ("(cpus == 8", "expected ')'"),
        ("cpus == 8)", "expected 'and', 'or'"),
        ("not", "expected a value"),
        ("and == 1", "not a keyword"),
        ("cpu.model == 'unterminated", "unexpected"),
        ("cpus == 8 ; rm -rf /", "unexpected ';'"),
        ("__import__('os') == 1", "unknown name"),
        ("x" * 1001, "longer than 1000"),
    ],
)
def test_bad_conditions_are_refused_with_the_problem(src: str, problem: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_condition(src)
    assert problem in str(err.value)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"if": "cpus == 8"}, "missing 'then'"),
        ({"then": "fail"}, "missing 'if'"),
        ({"if": "cpus == 8", "then": "fail", "else": "x"}, "unknown key 'else'"),
        ({"if": "cpus == 8", "then": []}, "non-empty list"),
        ({"if": "cpus == 8", "then": 3}, "non-empty list"),
        ({"if": "cpus == 8", "then": "reboot"}, "unknown action 'reboot'"),
        ({"if": "cpus == 8", "then": ""}, "an action is empty"),
        ({"if": "cpus == 8", "then": "capability disk_type"}, "expected KEY=VALUE"),
        ({"if": "cpus == 8", "then": "capability disk_type="}, "expected KEY=VALUE"),
        ({"if": "cpus == 8", "then": "capability 9x=1"}, "bad key '9x'"),
        ({"if": "cpus == 8", "then": "capability a:b=1"}, "bad key 'a:b'"),
        ({"if": "cpus == 8", "then": "capability vcpus=4"}, "'vcpus' is reserved"),
        ({"if": "cpus == 8", "then": ["maintenance", "capability =ssd"]}, "bad key ''"),
        ({"if": "cpus == 8", "then": "fail " + "x" * 300}, "longer than 255"),
        ({"if": 3, "then": "fail"}, "the condition is empty"),
        ("cpus == 8", "a rule is a table"),
    ],
)
def test_bad_rules_name_their_index(spec: Any, problem: str) -> None:
    with pytest.raises(RuleError) as err:
        compile_rules([{"if": "cpus > 0", "then": "fail"}, spec])
    assert str(err.value).startswith("rule 1 (")
    assert problem in str(err.value)


def test_actions_and_their_order() -> None:
    rules = compile_rules(
        [
            {"if": "memory_mb < 8192", "then": "maintenance only 4 GiB of memory"},
            {"if": "disks[0].model ~= 'SSD'", "then": ["capability disk_type=ssd", "capability tier=fast"]},
            {"if": "cpus == 8", "then": ["capability tier=eight", "maintenance second reason"]},
            {"if": "cpus == 1", "then": "fail never"},
            {"if": "nics[0].carrier == true", "then": "fail"},
        ]
    )
    out = apply_rules(rules, FACTS)
    assert out.matched == [0, 1, 2, 4]
    assert out.maintenance == "only 4 GiB of memory"  # the first reason wins
    assert out.capabilities == {"disk_type": "ssd", "tier": "eight"}  # a later rule overrides
    assert out.failure == "inspection rule 4: nics[0].carrier == true"  # no reason: the rule is named
    assert compile_rule(0, {"if": "cpus > 1", "then": "maintenance"}).actions[0].text == ""


def test_a_bad_rule_in_the_config_stops_start_up(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[inspection]\nrules = [{if = "memory_mb < 4096", then = "maintenance"},\n'
        '  {if = "disks[0].model ~= \'SSD\'", then = "capability disk_type=ssd"}]\n'
    )
    settings = load_settings(good, {})
    assert [r.source for r in compile_rules(settings.inspection.rules)] == [
        "memory_mb < 4096",
        "disks[0].model ~= 'SSD'",
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[inspection]\nrules = [{if = "memory_mb < 4096", then = "maintenance"},\n'
        '  {if = "disks[0].model ~= \'SSD(\'", then = "capability disk_type=ssd"}]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(bad, {})
    assert "inspection.rules: rule 1 (if \"disks[0].model ~= 'SSD('\"): " in str(err.value)
    assert "bad regular expression" in str(err.value)
