"""Typed settings: ``config/bmd.toml`` overlaid with ``BMD_<SECTION>_<KEY>`` environment variables.

Everything is validated into one frozen :class:`Settings` object before anything starts. Any problem —
unknown key, wrong type, bad URL, an interval that is not positive — is a :class:`ConfigError` whose message
names the dotted key (``tasks.host_state_interval``) and the problem.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bmd.config_pxe import PxeSettings
from bmd.errors import ConfigError
from bmd.inspection.rules import RuleError, compile_rules

log = structlog.get_logger(__name__)

ENV_PREFIX = "BMD_"

PositiveSeconds = Annotated[float, Field(gt=0)]
GROUP_PATTERN = r"^[A-Za-z0-9._-]*$"  # a node group's name: letters, digits, ".", "_", "-"; "" the default


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServiceSettings(_Section):
    host: str = Field(default_factory=socket.gethostname, min_length=1)
    my_ip: str = "127.0.0.1"
    graceful_timeout: PositiveSeconds = 10.0
    heartbeat_interval: PositiveSeconds = 10.0
    service_down_time: PositiveSeconds = 60.0
    # "static": bm_nodes.service_host stays as enrolled; "ring": derived from a hash ring over the live
    # services (bmd.tasks.node_ownership), for several services sharing one database.
    ownership: Literal["static", "ring"] = "static"
    # The node groups (bm_nodes.conductor_group, Ironic's conductor_group) this service owns nodes of under
    # the ring: "" is the group of every node not given one. An operator pins nodes to a site or a rack
    # row by giving them a group that only that site's services serve.
    groups: tuple[Annotated[str, Field(max_length=255, pattern=GROUP_PATTERN)], ...] = ("",)
    state_dir: str = "./var"

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        if not groups:
            raise ValueError('serves no group: list at least one ("" is the nodes given no group)')
        twice = sorted({g for g in groups if groups.count(g) > 1})
        if twice:
            raise ValueError(f"lists {twice} more than once")
        return groups


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///./var/bmd.sqlite"
    sqlite_busy_timeout: PositiveSeconds = 30.0
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError as err:
            raise ValueError(f"not a database URL: {value!r}") from err
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(
                f"unsupported driver {url.drivername!r}; use sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST/DB"
            )
        if url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file path (sqlite+aiosqlite:///./var/bmd.sqlite)")
        return value


class BusSettings(_Section):
    """Where node change events travel: ``memory`` within this service only (one service, the default);
    ``postgresql`` also between the services sharing one PostgreSQL database, by LISTEN/NOTIFY
    (``bmd/pg_bus.py``)."""

    backend: Literal["memory", "postgresql"] = "memory"


class TaskSettings(_Section):
    host_state_interval: PositiveSeconds = 60.0
    update_resources_interval: PositiveSeconds = 60.0
    power_sync_interval: PositiveSeconds = 60.0
    power_sync_workers: Annotated[int, Field(gt=0, le=10000)] = 64
    power_sync_timeout: PositiveSeconds = 5.0
    power_sync_max_retries: Annotated[int, Field(gt=0)] = 3
    force_power_state_during_sync: bool = False
    pass_timeout_factor: Annotated[float, Field(gt=0)] = 2.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1


class DriverSettings(_Section):
    baremetal_driver: str = "bmd.drivers.baremetal.BareMetalDriver"
    instance_type_extra_specs: list[str] = Field(default_factory=lambda: ["cpu_arch:x86_64"])
    default_power_driver: str = "ipmi"
    vif_driver: str = "generic"
    deploy_driver: str = "pxe"
    console_interface: str = "none"

    @field_validator("instance_type_extra_specs")
    @classmethod
    def _check_pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            if ":" not in pair or not pair.split(":", 1)[0].strip():
                raise ValueError(f'entry {pair!r} is not "key:value"')
        return pairs


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 6385
    token_file: str = "./var/api-token"
    public_url: str = ""
    max_page_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    keepalive_timeout: PositiveSeconds = 15.0
    # false: reads need a token (role reader or above); true: anyone may read the inventory (README: Security)
    anonymous_read: bool = False
    # TLS: both files (PEM) or neither; loaded when the service starts (a bad file stops it, naming the key)
    tls_cert: str = ""
    tls_key: str = Field(default="", validate_default=True)
    # The CLI's trust for an API served with TLS (a CA or the self-signed certificate; empty: the system's)
    tls_ca: str = ""

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, key: str, info: ValidationInfo) -> str:
        cert = info.data.get("tls_cert", "")
        if cert and not key:
            raise ValueError("empty while api.tls_cert is set: TLS needs both files (or neither)")
        if key and not cert:
            raise ValueError("set while api.tls_cert is empty: TLS needs both files (or neither)")
        return key

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


class MetricsSettings(_Section):
    # true: GET /metrics needs an API token (role reader or above) like any other read
    token_required: bool = False


class LoggingSettings(_Section):
    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class SecretsSettings(_Section):
    key_file: str = "./var/secret.key"


class SchedulerSettings(_Section):
    filters: list[str] = Field(
        default_factory=lambda: [
            "DeployReadyFilter",
            "ComputeFilter",
            "ImagePropertiesFilter",
            "ComputeCapabilitiesFilter",
            "ExactRamFilter",
            "ExactCoreFilter",
            "ExactDiskFilter",
            "SameCapabilityFilter",
            "DifferentCapabilityFilter",
        ]
    )
    weighers: list[str] = Field(default_factory=lambda: ["LeastWasteWeigher"])
    ram_allocation_ratio: Annotated[float, Field(gt=0)] = 1.0
    cpu_allocation_ratio: Annotated[float, Field(gt=0)] = 1.0
    disk_allocation_ratio: Annotated[float, Field(gt=0)] = 1.0
    ram_weight_multiplier: float = 1.0


class IpmiSettings(_Section):
    timeout: PositiveSeconds = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_in_flight: Annotated[int, Field(gt=0)] = 256
    min_command_interval: Annotated[float, Field(ge=0)] = 1.0


class RedfishSettings(_Section):
    timeout: PositiveSeconds = 10.0
    verify_tls: bool = True


class DeploySettings(_Section):
    tftp_root: str = "./var/tftpboot"
    http_root: str = "./var/httpboot"
    image_cache_dir: str = "./var/images"
    image_cache_max_bytes: Annotated[int, Field(gt=0)] = 20 * 1024**3
    image_convert_timeout: PositiveSeconds = 1800.0
    allowed_image_roots: list[str] = Field(default_factory=list)
    deploy_timeout: PositiveSeconds = 1800.0
    deploy_timeout_check_interval: PositiveSeconds = 30.0
    deploy_kernel: str = ""
    deploy_ramdisk: str = ""
    boot_kernel: str = ""
    boot_ramdisk: str = ""
    append_params: str = ""
    # Cleaning between tenants (docs/cleaning.md): after a delete the node boots the ramdisk in clean mode.
    automated_clean: bool = True
    clean_timeout: PositiveSeconds = 1800.0
    clean_erase: Literal["metadata", "full"] = "metadata"


class AgentSettings(_Section):
    """The deploy agent's token lookup. ``pxe_ip``: a token goes only to the node's allocated PXE address
    (the request's peer); ``any``: to whichever address asks first (NAT or a relay between bmd and the
    provisioning network, or a lab on loopback)."""

    lookup_source: Literal["pxe_ip", "any"] = "any"


class ConsoleSettings(_Section):
    """Recording a node's serial console while it deploys (``driver.console_interface``), and the
    interactive console (docs/console.md)."""

    grace: PositiveSeconds = 20.0
    read_rate: Annotated[int, Field(ge=1024)] = 65536
    connect_timeout: PositiveSeconds = 5.0
    retry_max: PositiveSeconds = 2.0
    terminal_port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: off
    terminal_host: str = "127.0.0.1"

    @field_validator("terminal_host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        import ipaddress

        try:
            loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"must be a loopback address (127.0.0.0/8 or ::1), got {value!r}")
        return value


class InspectionSettings(_Section):
    """Inspection (docs/inspection.md): ``rules`` are ``{if = "<condition>", then = "<action>" | [...]}``
    tables, each checked here (a bad one stops start-up naming its index and the problem)."""

    rules: tuple[dict[str, Any], ...] = ()
    # seconds the collector listens for LLDP on each NIC (all NICs at once); told to the agent at lookup
    lldp_wait: Annotated[int, Field(ge=0, le=300)] = 35
    # a node enrolled with a BMC is inspected at once (it boots the ramdisk in inspect mode)
    on_enroll: bool = False
    # the inspect agent's deadline: booted, looked up and reported within this, or the node is inspect failed
    timeout: PositiveSeconds = 1200.0

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, rules: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        try:
            compile_rules(rules)
        except RuleError as err:
            raise ValueError(str(err)) from None
        return rules


class NetworkSettings(_Section):
    controller_url: str = "http://127.0.0.1:8090"
    controller_timeout: PositiveSeconds = 5.0
    controller_retries: Annotated[int, Field(ge=0, le=10)] = 2
    ovs_bridge: str = "br-bm"
    ovs_db: str = ""
    ovs_run_dir: str = ""


class Settings(_Section):
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    driver: DriverSettings = Field(default_factory=DriverSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    ipmi: IpmiSettings = Field(default_factory=IpmiSettings)
    redfish: RedfishSettings = Field(default_factory=RedfishSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    inspection: InspectionSettings = Field(default_factory=InspectionSettings)
    pxe: PxeSettings = Field(default_factory=PxeSettings)
    bus: BusSettings = Field(default_factory=BusSettings)

    @model_validator(mode="after")
    def _bus_needs_postgresql(self) -> Settings:
        if self.bus.backend == "postgresql" and not self.database.url.startswith("postgresql"):
            raise ValueError(
                "bus.backend: postgresql needs database.url to be a PostgreSQL database "
                "(postgresql+asyncpg://USER@HOST/DB); it is LISTEN/NOTIFY on that database"
            )
        return self


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in Settings.model_fields.items()
}


def parse_extra_specs(pairs: list[str], baremetal_driver: str) -> dict[str, str]:
    """The seed's ``instance_type_extra_specs`` parsing: ``"key:value"`` split on the first ``:``."""
    specs: dict[str, str] = {}
    for pair in pairs:
        if ":" not in pair:
            raise ConfigError(f"driver.instance_type_extra_specs: entry {pair!r} has no ':' (expected \"key:value\")")
        key, value = pair.split(":", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"driver.instance_type_extra_specs: entry {pair!r} has an empty key")
        specs[key] = value.strip()
    specs["baremetal_driver"] = baremetal_driver
    if "cpu_arch" not in specs:
        log.warning("cpu_arch_missing", detail="cpu_arch is not in instance_type_extra_specs; using ''")
        specs["cpu_arch"] = ""
    return specs


def supported_instances(extra_specs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [(str(extra_specs.get("cpu_arch", "")), "baremetal", "baremetal")]


def _env_value(raw: str) -> Any:
    """Parse an environment override as a TOML value when it is one, else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _overlay_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # BMD_CONFIG and friends are not settings
        key = rest[len(section) + 1 :]
        if key not in SECTIONS[section].model_fields:
            raise ConfigError(f"{section}.{key}: unknown key (from environment variable {name})")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a table")
        target[key] = _env_value(raw)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if not key:  # a check across sections: its message names the key
        return str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {first['msg'].removeprefix('Value error, ')}{shown}"


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), overlay the environment, validate. Raises ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {file} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {file} is not valid TOML: {err}") from err
    _overlay_env(data, environ)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from err
    return settings
