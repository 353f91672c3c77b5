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
