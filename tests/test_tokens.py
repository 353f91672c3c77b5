"""Named API tokens with roles, anonymous reads off by default, the audit event of every mutating call,
and ``bmd token create|list|revoke`` — all against the real app on 127.0.0.1 and a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.api.auth import AUTHENTICATOR, Authenticator
from bmd.auth import Role
from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.tokens import create_token, token_hash
from bmd.service import open_context
from tests.conftest import make_settings, node_body
from tests.test_cli import run_cli

FLAVOR = {"name": "bm.small", "ram": 1024, "vcpus": 1, "disk": 10}


@pytest.fixture
def strict(tmp_path: Path, db_file: Path) -> Settings:
    """The shipped defaults for auth: api.anonymous_read = false, metrics.token_required = false."""
    return make_settings(tmp_path, api={"anonymous_read": False})


@pytest.fixture
async def sctx(strict: Settings) -> AsyncIterator[AppContext]:
    async with open_context(strict) as context:
        yield context


@pytest.fixture
async def sclient(sctx: AppContext) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(sctx), host="127.0.0.1", port=0)) as test_client:
        yield test_client


async def make_token(ctx: AppContext, name: str, role: str) -> dict[str, str]:
    async with ctx.sessionmaker.begin() as session:
        _, clear = await create_token(session, name, role)
    return {"Authorization": f"Bearer {clear}"}


async def test_reads_need_a_token_by_default_and_the_401_says_what_to_do(sclient, sctx) -> None:  # type: ignore[no-untyped-def]
    resp = await sclient.get("/v1/nodes")
    body = await resp.json()
    assert resp.status == 401 and body["error"] == "unauthorized", body
    for hint in ("Authorization: Bearer", "BMD_TOKEN", "bmd token create NAME --role reader", "api.anonymous_read"):
        assert hint in body["message"], (hint, body["message"])
    assert (await sclient.get("/v1/nodes", headers=await make_token(sctx, "ro", "reader"))).status == 200
    assert (await sclient.get("/v1/nodes", headers={"Authorization": f"Bearer {sctx.api_token}"})).status == 200
    # a token sent but unknown is refused, not served as anonymous, on reads too
    resp = await sclient.get("/v1/nodes", headers={"Authorization": "Bearer " + "0" * 64})
    assert resp.status == 401 and "not valid" in (await resp.json())["message"]


async def test_open_routes_stay_open_without_a_token(sclient) -> None:  # type: ignore[no-untyped-def]
    assert (await sclient.get("/healthz")).status in (200, 503)  # 503: no loop has run here, not a refusal
    assert (await sclient.get("/metrics")).status == 200
    # the PXE files are for booting machines: a missing one is 404, never 401
    assert (await sclient.get("/images/no-such-file")).status == 404
    # the agent's routes check their own X-Agent-Token (a 401 of theirs, not the bearer middleware's)
    resp = await sclient.get("/v1/agent/nodes/1/image")
    assert (await resp.json())["error"] != "unauthorized"
    # the dashboard's page loads so that a token can be pasted into it; its data stream needs the token
    assert (await sclient.get("/")).status == 200
    assert (await sclient.get("/dashboard/app.js")).status == 200
    assert (await sclient.get("/v1/events/stream")).status == 401


async def test_metrics_token_required(tmp_path: Path, db_file: Path) -> None:
    settings = make_settings(tmp_path, api={"anonymous_read": False}, metrics={"token_required": True})
    async with open_context(settings) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            assert (await client.get("/metrics")).status == 401
            assert (await client.get("/metrics", headers=await make_token(ctx, "prom", "reader"))).status == 200
            assert (await client.get("/healthz")).status in (200, 503)


# (role, method, path, body, expected status): what each role may do
ROLE_TABLE = [
    ("reader", "GET", "/v1/flavors", None, 200),
    ("reader", "POST", "/v1/flavors", FLAVOR, 403),
    ("reader", "GET", "/v1/nodes/1/console-log", None, 403),
    ("reader", "GET", "/v1/tokens", None, 403),
    ("operator", "POST", "/v1/flavors", FLAVOR, 201),
    ("operator", "GET", "/v1/nodes/1/console-log", None, 200),
    ("operator", "GET", "/v1/tokens", None, 403),
    ("operator", "POST", "/v1/tokens", {"name": "x", "role": "admin"}, 403),
    ("service", "POST", "/v1/flavors", FLAVOR, 201),
    ("service", "GET", "/v1/tokens", None, 403),
    ("admin", "POST", "/v1/flavors", FLAVOR, 201),
    ("admin", "GET", "/v1/tokens", None, 200),
    ("admin", "POST", "/v1/tokens", {"name": "x", "role": "reader"}, 201),
]


@pytest.mark.parametrize(("role", "method", "path", "body", "status"), ROLE_TABLE)
async def test_what_each_role_may_do(sclient, sctx, role, method, path, body, status) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Bearer {sctx.api_token}"}
    assert (await sclient.post("/v1/nodes", json=node_body(1), headers=admin)).status == 201
    headers = await make_token(sctx, f"t-{role}", role)
    resp = await sclient.request(method, path, json=body, headers=headers)
    answer = await resp.read()
    assert resp.status == status, answer
    if status == 403:
        message = json.loads(answer)["message"]
        assert f"'t-{role}' has role {role}" in message, message


async def test_revoked_token_is_refused_and_only_the_hash_is_stored(sclient, sctx, strict) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Bearer {sctx.api_token}"}
    resp = await sclient.post("/v1/tokens", json={"name": "ci", "role": "operator"}, headers=admin)
    created = await resp.json()
    clear = created["token"]
    assert resp.status == 201 and created["role"] == "operator" and len(clear) == 64
    mine = {"Authorization": f"Bearer {clear}"}
    assert (await sclient.post("/v1/flavors", json=FLAVOR, headers=mine)).status == 201
    listed = (await (await sclient.get("/v1/tokens", headers=admin)).json())["tokens"]
    assert [t["name"] for t in listed] == ["ci"] and listed[0]["last_used_at"] is not None
    assert all("token" not in t and "token_hash" not in t for t in listed)
    db = Path(strict.database.url.split("///", 1)[1])
    rows = sqlite3.connect(db).execute("SELECT * FROM api_tokens").fetchall()
    assert rows and clear not in repr(rows) and token_hash(clear) in repr(rows)
    # a name is taken for ever (an audit line's name means one token)
    assert (await sclient.post("/v1/tokens", json={"name": "ci", "role": "reader"}, headers=admin)).status == 409
    resp = await sclient.delete("/v1/tokens/ci", headers=admin)
    assert resp.status == 200 and (await resp.json())["revoked_at"] is not None
    resp = await sclient.delete("/v1/flavors/bm.small", headers=mine)
    assert resp.status == 401 and "revoked" in (await resp.json())["message"]
    assert (await sclient.get("/v1/tokens", headers=admin)).status == 200
    assert (await (await sclient.get("/v1/tokens", headers=admin)).json())["tokens"] == []


async def test_bad_names_and_roles_are_refused_naming_the_field(sclient, sctx) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Bearer {sctx.api_token}"}
    for body, field in (
        ({"name": "-x", "role": "reader"}, "name"),
        ({"name": "api.token_file", "role": "reader"}, "name"),
        ({"name": "x", "role": "root"}, "role"),
    ):
        resp = await sclient.post("/v1/tokens", json=body, headers=admin)
        assert resp.status == 400 and (await resp.json())["field"] == field, await resp.text()


async def test_every_mutating_call_is_audited_with_who_what_and_outcome(sclient, sctx) -> None:  # type: ignore[no-untyped-def]
    op = await make_token(sctx, "alice", "operator")
    ro = await make_token(sctx, "bob", "reader")
    clear = op["Authorization"].split()[1]
    with capture_logs() as logs:
        assert (await sclient.post("/v1/flavors", json=FLAVOR, headers=op)).status == 201
        assert (await sclient.get("/v1/flavors/bm.small", headers=op)).status == 200  # reads are not audited
        assert (await sclient.delete("/v1/flavors/bm.small", headers=ro)).status == 403
        assert (await sclient.delete("/v1/flavors/bm.small")).status == 401
        assert (await sclient.put("/v1/nodes/7/maintenance", json={"reason": "x"}, headers=op)).status == 404
        await sclient.post("/v1/agent/nodes/1/heartbeat", json={})  # the agent's protocol: not audited
    audits = [e for e in logs if e["event"] == "audit"]
    assert [(e["method"], e["route"], e["status"], e["outcome"]) for e in audits] == [
        ("POST", "/v1/flavors", 201, "ok"),
        ("DELETE", "/v1/flavors/{name}", 403, "denied"),
        ("DELETE", "/v1/flavors/{name}", 401, "denied"),
        ("PUT", "/v1/nodes/{node}/maintenance", 404, "failed"),
    ]
    alice_id = audits[0]["caller_id"]
    assert isinstance(alice_id, int)
    assert (audits[0]["caller"], audits[0]["role"]) == ("alice", "operator")
    assert (audits[1]["caller"], audits[1]["role"], audits[1]["flavor"]) == ("bob", "reader", "bm.small")
    assert audits[2]["caller"] is None and audits[2]["caller_id"] is None
    assert audits[3]["node"] == "7" and audits[3]["caller_id"] == alice_id
    assert all(e["request_id"] for e in audits)
    assert clear not in repr(logs)


async def test_the_token_file_is_an_admin_in_the_audit(client, auth) -> None:  # type: ignore[no-untyped-def]
    with capture_logs() as logs:
        assert (await client.post("/v1/pxe_ips", json={"address": "10.0.0.9", "server_address": "10.0.1.9"},
                                  headers=auth)).status == 201  # fmt: skip
        assert (await client.delete("/v1/pxe_ips/1", headers=auth)).status in (200, 204)
    audits = [e for e in logs if e["event"] == "audit"]
    assert [(e["caller"], e["caller_id"], e["role"]) for e in audits] == [("api.token_file", None, "admin")] * 2
    assert audits[1]["pxe_ip"] == "1"


async def test_token_cli_on_the_database_and_through_the_api(  # type: ignore[no-untyped-def]
    sclient, sctx, strict, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("BMD_TOKEN", raising=False)
    cfg = tmp_path / "bmd.toml"
    cfg.write_text(
        f'[database]\nurl = "{strict.database.url}"\n[api]\ntoken_file = "{tmp_path / "none"}"\n'
        f'[secrets]\nkey_file = "{strict.secrets.key_file}"\n'
    )
    base = ["--config", str(cfg)]
    code, out, err = await run_cli(
        sclient, None, *base, "token", "create", "alice", "--role", "operator", "-f", "json", capsys=capsys
    )
    assert code == 0, err
    alice = json.loads(out)
    assert alice["role"] == "operator" and len(alice["token"]) == 64
    code, out, err = await run_cli(sclient, None, *base, "token", "create", "alice", "--role", "reader", capsys=capsys)
    assert code == 1 and "exists" in err
    code, _, err = await run_cli(sclient, None, *base, "token", "create", "bob", "--role", "root", capsys=capsys)
    assert code == 2 and "--role" in err  # a usage error names the option

    # the token through $BMD_TOKEN: a mutating call works
    monkeypatch.setenv("BMD_TOKEN", alice["token"])
    code, out, err = await run_cli(sclient, None, "flavor", "create", "f1", "--ram", "1", "--vcpus", "1", "--disk", "1",
                                   capsys=capsys)  # fmt: skip
    assert code == 0, err
    monkeypatch.delenv("BMD_TOKEN")
    # with no token at all, the CLI says what to do
    code, _, err = await run_cli(sclient, None, *base, "flavor", "list", capsys=capsys)
    assert code == 1 and "no API token: set api.token_file or BMD_TOKEN" in err, err

    code, out, _ = await run_cli(sclient, None, *base, "token", "list", "--long", "-f", "json", capsys=capsys)
    assert [t["name"] for t in json.loads(out)] == ["alice"] and "token" not in json.loads(out)[0]
    code, out, _ = await run_cli(sclient, None, *base, "token", "revoke", "alice", "-f", "json", capsys=capsys)
    assert code == 0 and json.loads(out)["revoked_at"]
    # revoked in the database: the running service, which found the token a moment ago, refuses it once its
    # cache entry is older than Authenticator.CACHE_SECONDS (the clock is the authenticator's, moved here)
    authenticator = sclient.server.app[AUTHENTICATOR]
    started = authenticator.clock()
    authenticator.clock = lambda: started + Authenticator.CACHE_SECONDS + 0.1
    resp = await sclient.delete("/v1/flavors/f1", headers={"Authorization": f"Bearer {alice['token']}"})
    assert resp.status == 401
    code, out, _ = await run_cli(sclient, None, *base, "token", "list", "--all", "-f", "json", capsys=capsys)
    assert [t["name"] for t in json.loads(out)] == ["alice"]

    # --api: an admin over HTTP
    create = ("token", "create", "ci", "--role", "service", "--api", "-f", "json")
    code, out, err = await run_cli(sclient, sctx.api_token, *base, *create, capsys=capsys)
    assert code == 0 and json.loads(out)["role"] == "service", err
    ci = json.loads(out)["token"]
    code, _, err = await run_cli(sclient, ci, *base, "token", "list", "--api", capsys=capsys)
    assert code == 1 and "has role service; this call needs admin" in err, err


def test_roles_are_ranked() -> None:
    from bmd.auth import RANK, Caller

    assert Caller(1, "s", Role.service).may(Role.operator) and not Caller(1, "s", Role.service).may(Role.admin)
    assert not Caller(1, "r", Role.reader).may(Role.operator)
    assert set(RANK) == set(Role)
