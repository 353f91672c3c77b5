"""What the API answers, as pydantic models: the response half of the OpenAPI spec (bmd/api/openapi.py).

The handlers build their answers as dicts (``node_to_dict`` and friends); these models describe those dicts,
and the test suite validates every answer it receives against the spec built from them (tests/openapi_check.py),
so a field added to an answer but not here, or a type that changed, fails the tests naming the field. Models
are closed (``additionalProperties: false``) wherever bmd decides the keys; ``Open`` marks the few answers that
carry what something else decided (a driver's health, an inspection report).

A new answer: add its model here and declare it on the handler with ``@answers(status, Model)``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

Timestamp = Annotated[
    str,
    Field(description="UTC date and time as bmd writes it, ISO 8601 with a space: 2026-12-02 06:27:42.123456+00:00"),
]
Json = Annotated[Any, Field(description="any JSON value")]


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """An answer whose keys past the listed ones belong to someone else (a driver, a report)."""

    model_config = ConfigDict(extra="allow")


class Error(View):
    """Every error answer (4xx, 5xx): exactly these three keys."""

    error: str = Field(description="a stable code: invalid_input, not_found, conflict, no_valid_host, ...")
    message: str = Field(description="what went wrong, for a human")
    field: str | None = Field(description="the field, query parameter or path segment to blame, or null")


class InterfaceView(View):
    id: int
    bm_node_id: int
    address: str = Field(description="MAC address, aa:bb:cc:dd:ee:ff")
    datapath_id: str | None
    port_no: int | None
    vif_uuid: str | None


class NodeView(View):
    id: int
    uuid: str
    name: str | None
    service_host: str
    conductor_group: str
    instance_uuid: str | None
    cpus: int
    memory_mb: int
    local_gb: int
    pm_driver: str
    pm_address: str | None
    pm_user: str | None
    pm_password: Literal["******"] | None = Field(description="never the password: whether one is set")
    prov_mac_address: str | None
    registration_status: str
    task_state: str | None
    prov_vlan_id: int | None
    terminal_port: int | None
    power_state: str | None
    last_power_check: Timestamp | None
    power_failures: int
    last_power_error: str | None
    provision_state: str
    provision_updated_at: Timestamp | None
    deploy_deadline: Timestamp | None
    maintenance: bool
    maintenance_reason: str | None
    maintenance_set_by: str | None
    last_error: str | None
    extra_specs: dict[str, Json] = Field(description="the node's own capabilities")
    boot_mode: Literal["bios", "uefi"]
    root_device: dict[str, Json] | None
    deploy_steps: list[Json] | None
    inspected_at: Timestamp | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    interfaces: list[InterfaceView] | None = Field(None, description="in a node's own answer; not in lists")


class NodeRef(View):
    id: int
    uuid: str
    name: str | None


class NodeImportResult(View):
    created: int
    nodes: list[NodeRef]
    inspecting: int | None = Field(None, description="with inspection.on_enroll: the nodes whose inspection started")


class PxeIpView(View):
    id: int
    address: str
    server_address: str
    bm_node_id: int | None


class FlavorView(View):
    id: int
    name: str
    flavorid: str
    ram: int
    vcpus: int
    disk: int
    ephemeral: int
    swap: int
    extra_specs: dict[str, str]


class ExtraSpecs(View):
    extra_specs: dict[str, str]


class ConfigDriveView(View):
    hostname: str | None
    ssh_keys: list[str]
    meta: dict[str, str]
    network_data: bool = Field(description="whether network_data was given")
    user_data_bytes: int | None = Field(description="the size of user_data, never its text")


class InstanceView(View):
    uuid: str
    flavor_name: str | None
    reservation_id: str | None
    host: str | None
    node: str | None
    bm_node_id: int | None
    vm_state: str
    task_state: str | None
    image_ref: str | None = Field(description="redacted when it carried credentials")
    image_properties: dict[str, Json]
    hints: dict[str, Json]
    network_info: list[Json]
    last_error: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    deleted_at: Timestamp | None
    config_drive: ConfigDriveView | None
    provision_state: str | None = Field(None, description="the node's that holds it")
    power_state: str | None = Field(None, description="the node's that holds it")
    node_name: str | None = Field(None, description="the name of the node that holds it")


class Reservation(View):
    reservation_id: str
    instances: list[InstanceView]


class Deleting(View):
    uuid: str
    task_state: Literal["deleting"]


class Spawning(View):
    uuid: str
    task_state: Literal["spawning"]


class Candidate(View):
    node: str
    host: str
    weight: float


class FilterCount(View):
    filter: str
    before: int
    after: int


class SelectionView(View):
    ok: bool
    reason: str | None
    candidates: list[list[Candidate]] = Field(description="per instance, the nodes that passed, best first")
    filter_counts: list[list[FilterCount]] = Field(description="per instance, how many hosts each filter kept")


class CapabilitiesView(View):
    capabilities: list[dict[str, Json]] = Field(description="the host stats report_driver_status last published")
    published: bool = Field(description="false until the first report")
    next: str | None


class NodeCapabilities(View):
    node: int
    extra_specs: dict[str, Json]


class StatesView(View):
    power_state: str | None
    last_power_check: Timestamp | None
    last_power_error: str | None
    provision_state: str
    provision_updated_at: Timestamp | None
    maintenance: bool
    maintenance_reason: str | None
    maintenance_set_by: str | None
    last_error: str | None
    instance_uuid: str | None


class PowerView(View):
    node: int
    power_state: str = Field(description="what the BMC reports after the change")


class BootDeviceSet(View):
    node: int
    boot_device: Literal["pxe", "disk", "bios"]
    persistent: bool


class BootDeviceView(View):
    boot_device: str | None
    persistent: bool | None
    checked_at: Timestamp | None
    age_seconds: float | None
    source: Literal["cache", "bmc"]


class ProvisionStateView(View):
    provision_state: str


class InspectionApplied(View):
    node_id: int | None = Field(None, description="in the operators' call; not in the agent's")
    provision_state: str | None = Field(None, description="in the agent's call")
    applied: bool
    failure: str | None
    # The rest is absent only from the agent's answer to a report that could not be read at all.
    cpus: int | None = None
    memory_mb: int | None = None
    local_gb: int | None = None
    root_disk: str | None = Field(None, description="the name of the disk chosen as root (sda, nvme0n1)")
    capabilities: dict[str, Json] | None = None
    rules_matched: list[int] | None = Field(None, description="the indexes of the inspection rules that matched")
    maintenance: str | None = Field(None, description="the reason, when a rule put the node in maintenance")
    interfaces_added: list[str] | None = None


class InspectionStored(View):
    node_id: int
    inspected_at: Timestamp | None
    report: dict[str, Json] = Field(description="the report as the agent sent it")


class AgentLookupAnswer(Open):
    """The deploy agent's token and what its boot is for; the keys depend on the mode (deploy, clean,
    inspect): see bmd.provision.conductor.agent_lookup."""

    node_uuid: str
    deployment_id: str
    token: str
    root_device: dict[str, Json]
    boot_mode: str
    heartbeat_url: str
    callback_url: str


class TaskHealth(View):
    status: Literal["ok", "late", "failing"]
    interval: float
    last_start: float | None
    last_success: float | None
    last_success_age: float | None
    last_error: str | None
    last_duration: float | None
    passes: int
    failures: int
    consecutive_failures: int
    running: bool


class CheckHealth(Open):
    status: str


class HealthChecks(View):
    database: CheckHealth
    dhcp: CheckHealth


class HealthReport(View):
    status: Literal["starting", "ok", "degraded", "stopping", "failing"]
    service: str
    uptime_s: float
    checks: HealthChecks
    tasks: dict[str, TaskHealth]


def page_of(items: str, model: type[BaseModel], marker: type = int) -> type[BaseModel]:
    """A list's page: ``{"<items>": [...], "next": <marker or null>}`` (bmd/api/paging.py)."""
    name = "".join(part.capitalize() for part in items.split("_")) + "Page"
    fields: dict[str, Any] = {
        items: (list[model], ...),  # type: ignore[valid-type]
        "next": (marker | None, Field(description="the marker of the next page; null on the last page")),
    }
    page: type[BaseModel] = create_model(name, __base__=View, **fields)
    return page


NodePage = page_of("nodes", NodeView)
InterfacePage = page_of("interfaces", InterfaceView)
PxeIpPage = page_of("pxe_ips", PxeIpView)
FlavorPage = page_of("flavors", FlavorView, str)
InstancePage = page_of("instances", InstanceView)


class ExtraSpec(RootModel[Annotated[dict[str, str], Field(min_length=1, max_length=1)]]):
    """One extra spec as set: ``{"<key>": "<value>"}``."""


class TokenView(View):
    """A named API token: never its hash, never its clear text (but once, at creation)."""

    id: int
    name: str
    role: Literal["reader", "operator", "service", "admin"]
    created_at: Timestamp | None
    revoked_at: Timestamp | None
    last_used_at: Timestamp | None


class TokenCreated(TokenView):
    token: str = Field(description="the token's clear text: shown here once, kept nowhere")


TokenPage = page_of("tokens", TokenView, str)


class NodeEventView(View):
    """One entry of a node's history (bmd.node_history)."""

    id: int
    node_id: int
    at: Timestamp
    kind: str
    event: str | None
    from_state: str | None
    to_state: str | None
    message: str | None
    instance_uuid: str | None
    actor: str | None = Field(description="the token's name for an API call; null for bmd's own work")


EventPage = page_of("events", NodeEventView)
