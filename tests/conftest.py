"""Shared fixtures: real SQLite files under tmp_path (migrated once, copied per test), the real aiohttp
app on 127.0.0.1 port 0, and a PostgreSQL database per run when BMD_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from bmd.api.app import create_app
from bmd.config import Settings, load_settings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.service import open_context
from tests.openapi_check import SpecChecker

PG_ENV = "BMD_TEST_POSTGRES_URL"
_SPEC: list[SpecChecker] = []  # fetched once per run from the first bmd server that answers


@pytest.fixture(autouse=True)
def openapi_answers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every answer of a bmd server to any aiohttp client in the test is checked against bmd's OpenAPI
    document (tests/openapi_check.py); the test fails at teardown, listing each answer that does not match."""
    problems: list[str] = []
    if request.node.get_closest_marker("no_openapi_check"):
        yield problems
        return
    original = aiohttp.ClientSession._request

    async def checked(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        resp = await original(self, method, str_or_url, **kwargs)
        if "X-Request-Id" in resp.headers and resp.status != 101:
            try:
                problem = await _check_answer(self, original, resp, kwargs.get("ssl", True))
            except Exception as err:  # noqa: BLE001 - the check itself broke: say so, never pass
                problem = f"{resp.method} {resp.url} -> {resp.status}: could not be checked: {err!r}"
            if problem:
                problems.append(problem)
        return resp

    monkeypatch.setattr(aiohttp.ClientSession, "_request", checked)
    yield problems
    monkeypatch.undo()
    assert not problems, "answers that do not match bmd's OpenAPI document:\n" + "\n".join(problems[:20])


async def _check_answer(
    session: aiohttp.ClientSession, original: Any, resp: aiohttp.ClientResponse, ssl: Any
) -> str | None:
    if not _SPEC:  # asked as the test asked (its session, its TLS trust); the document is open to anyone
        url = resp.url.origin().join(URL("/v1/openapi.json"))
        async with await original(session, "GET", url, ssl=ssl) as got:
            got.raise_for_status()
            _SPEC.append(SpecChecker(await got.json()))
    content_type = resp.headers.get("Content-Type", "")
    if content_type.startswith("application/json") and resp.method != "HEAD":
        body = await resp.read()  # kept by aiohttp: the test reads the same bytes after this
    else:  # not read (a disk image can be large): whether there is a body is all that is checked
        body = b"" if resp.content_length == 0 else b"?"
    return _SPEC[0].problem(resp.method, resp.url.raw_path, resp.status, content_type, body)


def make_settings(tmp: Path, db_url: str | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: everything under ``tmp``; ``sections`` override keys ({"tasks": {...}})."""
    data: dict[str, Any] = {
        "service": {"host": "test-host", "state_dir": str(tmp / "state")},
        "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp / 'bmd.sqlite'}"},
        # Reads open to anyone, as `make run` has them, so a test reads without a token; tests/test_tokens.py
        # checks the default (api.anonymous_read = false: reads need a reader token).
        "api": {"host": "127.0.0.1", "port": 0, "token_file": str(tmp / "api-token"), "anonymous_read": True},
        "secrets": {"key_file": str(tmp / "secret.key")},
        "logging": {"format": "json", "level": "info"},
        "driver": {"default_power_driver": "fake"},
        # Never the defaults (./var/...): a test writes only under its own tmp dir, not into the checkout.
        "deploy": {
            "tftp_root": str(tmp / "tftpboot"),
            "http_root": str(tmp / "httpboot"),
            "image_cache_dir": str(tmp / "images"),
            # Cleaning after a delete is on by default (bmd/config.py); tests that do not boot an agent
            # for it turn it off here, the cleaning tests turn it on (tests/test_cleaning.py).
            "automated_clean": False,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings.model_validate(data)


@pytest.fixture(autouse=True, scope="session")
def logs_to_stderr() -> None:
    """The in-process API logs (an ``audit`` event per mutating call) on stderr, as the CLI's users see them:
    a CLI test reads the command's stdout, which structlog's unconfigured default would share. And loggers
    are never cached, whoever configures logging (``bmd serve`` in-process calls ``bmd.logs.configure``):
    ``structlog.testing.capture_logs`` cannot see the events of a logger cached before it."""
    real = structlog.configure

    def configure(**kwargs: Any) -> None:
        real(**{**kwargs, "cache_logger_on_first_use": False})

    structlog.configure = configure  # type: ignore[assignment]
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test session; tests get a copy (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("template") / "bmd.sqlite"

    async def build() -> None:
        engine = make_engine(load_settings(environ={"BMD_DATABASE_URL": f'"sqlite+aiosqlite:///{path}"'}).database)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
def db_file(tmp_path: Path, migrated_template: Path) -> Path:
    target = tmp_path / "bmd.sqlite"
    shutil.copyfile(migrated_template, target)
    return target


@pytest.fixture
def settings(tmp_path: Path, db_file: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[AppContext]:
    async with open_context(settings) as context:
        context.mark_ready()  # no start-up phase here: the service is ready once built
        yield context


@pytest.fixture
async def client(ctx: AppContext) -> AsyncIterator[TestClient[Any, Any]]:
    server = TestServer(create_app(ctx), host="127.0.0.1", port=0)
    async with TestClient(server) as test_client:
        yield test_client


@pytest.fixture
def auth(ctx: AppContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.api_token}"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database on each engine: this test's SQLite file, or the run's PostgreSQL database (a
    test module with another need defines its own ``db_url``)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{request.getfixturevalue('db_file')}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"bmd_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


NODE = {
    "cpus": 8,
    "memory_mb": 16384,
    "local_gb": 200,
    "pm_driver": "fake",
    "pm_address": "127.0.0.1:623",
    "pm_user": "admin",
    "pm_password": "s3cr3t-bmc-pass",
}


def node_body(i: int = 1, **extra: Any) -> dict[str, Any]:
    mac = f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"
    body = {**NODE, "name": f"node-{i}", "interfaces": [{"address": mac}], **extra}
    return body


@pytest.fixture(scope="session")
def deploy_ramdisk() -> Path:
    """The directory of a ``bmd ramdisk build`` (deploy_kernel, deploy_ramdisk, manifest.json), built once
    and cached across sessions by its inputs (see tests/ramdisk_cache.py); skips with the reason when the
    Debian archive or a build tool is missing. Read-only: copy files out of it before changing them."""
    from tests.ramdisk_cache import built_ramdisk

    return built_ramdisk()
