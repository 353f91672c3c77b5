"""Config: TOML + environment, validated into frozen settings; errors name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from structlog.testing import capture_logs

from bmd.config import SECTIONS, Settings, load_settings, parse_extra_specs, supported_instances
from bmd.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "bmd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bmd.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    s = load_settings(environ={})
    assert s.database.url == "sqlite+aiosqlite:///./var/bmd.sqlite"
    assert s.api.port == 6385 and s.api.host == "127.0.0.1"
    assert s.tasks.host_state_interval == 60.0
    assert s.service.host  # the hostname


def test_example_file_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    loaded = load_settings(EXAMPLE, environ={})
    assert loaded.model_dump(exclude={"service": {"host"}}) == Settings().model_dump(exclude={"service": {"host"}})
    data = tomllib.loads(text)
    for section, model in SECTIONS.items():
        assert f"[{section}]" in text
        for key in model.model_fields:
            documented = key in data.get(section, {}) or f"# {key} = " in text
            assert documented, f"{section}.{key} is not in config/bmd.toml"


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(ValidationError):
        s.api.port = 1  # type: ignore[misc]


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nport = 7000\n[service]\nhost = "from-file"\n')
    env = {
        "BMD_API_PORT": "7100",
        "BMD_DRIVER_INSTANCE_TYPE_EXTRA_SPECS": '["cpu_arch:aarch64", "location:rack1"]',
        "BMD_LOGGING_LEVEL": "DEBUG",
        "BMD_DATABASE_URL": "postgresql+asyncpg://bmd@db.example/bmd",
        "BMD_CONFIG": "ignored: not a setting",
    }
    s = load_settings(path, environ=env)
    assert s.api.port == 7100
    assert s.service.host == "from-file"
    assert s.driver.instance_type_extra_specs == ["cpu_arch:aarch64", "location:rack1"]
    assert s.logging.level == "debug"
    assert s.database.url.startswith("postgresql+asyncpg://")
    assert s.bus.backend == "memory"  # the default: nothing travels between services


def test_postgresql_bus_on_postgresql_is_accepted(tmp_path: Path) -> None:
    text = '[bus]\nbackend = "postgresql"\n[database]\nurl = "postgresql+asyncpg://bmd@db.example/bmd"\n'
    assert load_settings(write(tmp_path, text), environ={}).bus.backend == "postgresql"


@pytest.mark.parametrize(
    ("text", "env", "key", "problem"),
    [
        ("[api]\nprot = 1\n", {}, "api.prot", "unknown key"),
        ("[apii]\nport = 1\n", {}, "apii", "unknown key"),
        ('[api]\nport = "many"\n', {}, "api.port", "integer"),
        ("[api]\nport = 70000\n", {}, "api.port", "less than or equal to 65535"),
        ("[tasks]\nhost_state_interval = 0\n", {}, "tasks.host_state_interval", "greater than 0"),
        ("[tasks]\npower_sync_interval = -5\n", {}, "tasks.power_sync_interval", "greater than 0"),
        ('[database]\nurl = "mysql://x/y"\n', {}, "database.url", "unsupported driver"),
        ('[database]\nurl = "not a url"\n', {}, "database.url", "not a database URL"),
        ('[database]\nurl = "sqlite+aiosqlite://"\n', {}, "database.url", "file path"),
        ('[logging]\nformat = "xml"\n', {}, "logging.format", "'json', 'console' or 'auto'"),
        ('[driver]\ninstance_type_extra_specs = "cpu_arch:x86_64"\n', {}, "driver.instance_type_extra_specs", "list"),
        ('[driver]\ninstance_type_extra_specs = ["nocolon"]\n', {}, "driver.instance_type_extra_specs", "nocolon"),
        ("", {"BMD_TASKS_HOST_STATE_INTERVAL": "0"}, "tasks.host_state_interval", "greater than 0"),
        ("", {"BMD_API_NOPE": "1"}, "api.nope", "unknown key"),
        ("[api]\nport = \n", {}, "config file", "not valid TOML"),
        ('[bus]\nbackend = "redis"\n', {}, "bus.backend", "'memory' or 'postgresql'"),
        ('[bus]\nbackend = "postgresql"\n', {}, "bus.backend", "needs database.url to be a PostgreSQL database"),
        ("[service]\ngroups = []\n", {}, "service.groups", "serves no group"),
        ('[service]\ngroups = ["a", "a"]\n', {}, "service.groups", "more than once"),
        ('[service]\ngroups = ["rack 11"]\n', {}, "service.groups.0", "should match pattern"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=env)
    message = str(info.value)
    assert key in message and problem in message, message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["cpu_arch:x86_64"], {"cpu_arch": "x86_64"}),
        ([" cpu_arch : x86_64 "], {"cpu_arch": "x86_64"}),
        (["cpu_arch:x86_64", "url:http://a:8080/x"], {"cpu_arch": "x86_64", "url": "http://a:8080/x"}),
        (["cpu_arch:x86_64", "empty:"], {"cpu_arch": "x86_64", "empty": ""}),
        (["cpu_arch:arm", "cpu_arch:x86_64"], {"cpu_arch": "x86_64"}),
    ],
)
def test_parse_extra_specs(pairs: list[str], expected: dict[str, str]) -> None:
    assert parse_extra_specs(pairs, "bmd.drv") == {**expected, "baremetal_driver": "bmd.drv"}


def test_baremetal_driver_always_wins() -> None:
    assert parse_extra_specs(["cpu_arch:x", "baremetal_driver:other"], "mine")["baremetal_driver"] == "mine"


def test_missing_cpu_arch_warns_and_becomes_empty() -> None:
    with capture_logs() as logs:
        specs = parse_extra_specs(["location:rack1"], "d")
    assert specs["cpu_arch"] == ""
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["cpu_arch_missing"]
    assert supported_instances(specs) == [("", "baremetal", "baremetal")]


def test_no_warning_when_cpu_arch_present() -> None:
    with capture_logs() as logs:
        parse_extra_specs(["cpu_arch:x86_64"], "d")
    assert logs == []


@pytest.mark.parametrize("bad", ["nocolon", ":value", "  :x"])
def test_bad_extra_spec_entry_is_named(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_extra_specs(["cpu_arch:x86_64", bad], "d")
    assert repr(bad) in str(info.value)


def test_supported_instances_follow_cpu_arch() -> None:
    assert supported_instances({"cpu_arch": "x86_64"}) == [("x86_64", "baremetal", "baremetal")]


def test_every_section_forbids_unknown_keys() -> None:
    for model in SECTIONS.values():
        assert issubclass(model, BaseModel)
        assert model.model_config.get("extra") == "forbid"
        assert model.model_config.get("frozen") is True
