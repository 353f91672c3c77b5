"""Logging: JSON lines with the standard fields, stdlib loggers routed through structlog, secrets redacted."""

from __future__ import annotations

import io
import json
import logging

import structlog

from bmd.logs import REDACTED, configure_logging, is_secret_key, redact


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_have_the_standard_fields() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = structlog.get_logger("bmd.test")
    with structlog.contextvars.bound_contextvars(task="report_driver_status", node="7", request_id="r1"):
        log.info("power_state_changed", old="off", new="on")
    (entry,) = lines(out)
    assert entry["event"] == "power_state_changed"
    assert entry["level"] == "info"
    assert entry["logger"] == "bmd.test"
    assert entry["task"] == "report_driver_status" and entry["node"] == "7" and entry["request_id"] == "r1"
    assert str(entry["timestamp"]).endswith("Z")


def test_stdlib_loggers_go_through_structlog() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("aiohttp.server").error("boom %s", "here")
    (entry,) = lines(out)
    assert entry["event"] == "boom here" and entry["logger"] == "aiohttp.server" and entry["level"] == "error"


def test_secrets_are_redacted_at_any_depth_and_case() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    log = structlog.get_logger("bmd.test")
    log.info(
        "node_enrolled",
        pm_password="hunter2",
        API_TOKEN="tok-123",
        body={"pm_user": "admin", "Password": "p1", "nested": [{"secret": "s1", "deployment_key": "k1"}]},
    )
    logging.getLogger("pyghmi").warning("x", extra={"password": "p2"})
    text = out.getvalue()
    for secret in ("hunter2", "tok-123", "p1", "s1", "k1", "p2"):
        assert secret not in text
    entry = lines(out)[0]
    assert entry["pm_password"] == REDACTED
    assert entry["body"] == {
        "pm_user": "admin",
        "Password": REDACTED,
        "nested": [{"secret": REDACTED, "deployment_key": REDACTED}],
    }


def test_console_renderer_when_asked() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    structlog.get_logger("bmd.test").info("hello_world", password="zzz")
    text = out.getvalue()
    assert "hello_world" in text and "zzz" not in text
    assert not text.lstrip().startswith("{")


def test_secret_key_detection() -> None:
    for key in (
        "password",
        "pm_password",
        "PASSWD",
        "token",
        "api_token",
        "secret",
        "key",
        "deploy_key",
        "Authorization",
    ):
        assert is_secret_key(key), key
    for key in ("pm_user", "node", "monkey", "board_layout", "host"):
        assert not is_secret_key(key), key
    assert redact(("a", {"token": 1})) == ("a", {"token": REDACTED})


def test_url_credentials_are_scrubbed_from_every_string() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    log = structlog.get_logger("bmd.test")
    signed = "http://user:hunter2@10.0.0.1/img?sig=s3cr3t"
    log.info("image_fetch_started", ref=signed, nested={"urls": [signed]})
    log.info(f"message embedding {signed}")
    try:
        raise RuntimeError(f"GET {signed} failed: 404")
    except RuntimeError:
        log.exception("fetch_crashed")
    logging.getLogger("aiohttp.client").warning("redirected to %s", signed)
    try:
        raise ValueError(signed)
    except ValueError:
        logging.getLogger("aiohttp.server").exception("handler crashed")
    text = out.getvalue()
    assert "hunter2" not in text and "s3cr3t" not in text
    entries = lines(out)
    shown = "http://***@10.0.0.1/img?<redacted>"
    assert entries[0]["ref"] == shown and entries[0]["nested"] == {"urls": [shown]}
    assert entries[1]["event"] == f"message embedding {shown}"
    assert f"GET {shown} failed" in str(entries[2]["exception"])
    assert entries[3]["event"] == f"redirected to {shown}"
    assert shown in str(entries[4]["exception"])


async def test_events_that_name_a_node_by_id_carry_its_uuid_and_name(client, auth) -> None:  # type: ignore[no-untyped-def]
    """The service's node directory is loaded at start and kept by the node change feed: enrol, rename,
    delete — a log line names one machine, even when the id is all the caller had."""
    from tests.conftest import node_body

    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = structlog.get_logger("bmd.test")
    resp = await client.post("/v1/nodes", json=node_body(1), headers=auth)
    node = await resp.json()
    assert resp.status == 201, node
    log.info("power_state_changed", node=node["id"])
    with structlog.contextvars.bound_contextvars(node=node["id"]):
        log.info("deploy_waiting_for_callback")
    assert (await client.patch(f"/v1/nodes/{node['id']}", json={"name": "renamed"}, headers=auth)).status == 200
    log.info("power_state_changed", node=node["id"])
    assert (await client.delete(f"/v1/nodes/{node['id']}", headers=auth)).status == 204
    log.info("node_gone", node=node["id"])
    first, bound, renamed, gone = [e for e in lines(out) if e.get("logger") == "bmd.test"]
    for entry in (first, bound):
        assert (entry["node_uuid"], entry["node_name"]) == (node["uuid"], "node-1"), entry
    assert (renamed["node_uuid"], renamed["node_name"]) == (node["uuid"], "renamed")
    assert "node_uuid" not in gone and gone["node"] == node["id"]


async def test_the_node_directory_is_loaded_at_start(client, auth, settings) -> None:  # type: ignore[no-untyped-def]
    from bmd.service import open_context
    from tests.conftest import node_body

    node = await (await client.post("/v1/nodes", json=node_body(2), headers=auth)).json()
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    async with open_context(settings):  # a restarted service: nothing enrolled since it started
        structlog.get_logger("bmd.test").info("power_state_changed", node=node["id"])
    (entry,) = [e for e in lines(out) if e.get("logger") == "bmd.test"]
    assert (entry["node_uuid"], entry["node_name"]) == (node["uuid"], "node-2")
