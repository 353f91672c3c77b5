"""The API over real HTTPS on 127.0.0.1: a self-signed certificate the test makes (``cryptography``, the
dependency Fernet already brings), the service's own ``serve()``, the CLI's client trusting it through
``api.tls_ca``; and the configuration errors, each naming the key."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bmd.cli.client import Client
from bmd.config import Settings, load_settings
from bmd.context import AppContext
from bmd.errors import BmdError, ConfigError
from bmd.service import Endpoint, serve
from bmd.tls import server_context
from tests.conftest import make_settings


def self_signed(directory: Path, name: str = "bmd") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (so a client can trust exactly it), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
        )  # digital_signature, key_cert_sign
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def run_service(settings: Settings, check: Any) -> None:
    """``serve()`` in this process until ``check(endpoint)`` (run in a thread: the CLI client is blocking)
    returns; bounded."""
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def ready(ctx: AppContext, endpoint: Endpoint) -> None:
        async def probe() -> None:
            try:
                await asyncio.to_thread(check, endpoint)
            except BaseException as err:  # noqa: BLE001 - pytest's failures are BaseExceptions: re-raised below
                failure.append(err)
            finally:
                stop.set()

        tasks.append(asyncio.create_task(probe()))

    tasks: list[asyncio.Task[None]] = []
    async with asyncio.timeout(60):
        await serve(settings, stop, on_ready=ready)
        await asyncio.gather(*tasks)
    if failure:
        raise failure[0]


async def test_the_api_serves_https_and_the_cli_trusts_api_tls_ca(tmp_path: Path, db_file: Path) -> None:
    cert, key = self_signed(tmp_path)
    other, _ = self_signed(tmp_path, "someone-else")
    settings = make_settings(tmp_path, api={"tls_cert": str(cert), "tls_key": str(key)})
    seen: dict[str, Any] = {}

    def check(endpoint: Endpoint) -> None:
        assert endpoint.url.startswith("https://127.0.0.1:")
        trusting = Client.from_settings(settings.model_copy(update={"api": settings.api.model_copy(
            update={"tls_ca": str(cert)})}), endpoint.url, None)  # fmt: skip
        seen["nodes"] = trusting.get("/v1/nodes")
        token = (tmp_path / "api-token").read_text().strip()
        admin = Client(endpoint.url, token, tls=trusting.tls)
        seen["flavor"] = admin.post("/v1/flavors", {"name": "f", "ram": 1, "vcpus": 1, "disk": 1})
        # the system's CAs, or another certificate, do not vouch for a self-signed one
        for ca in ("", str(other)):
            api = settings.api.model_copy(update={"tls_ca": ca})
            stranger = Client.from_settings(settings.model_copy(update={"api": api}), endpoint.url, None)
            with pytest.raises(BmdError, match="CERTIFICATE_VERIFY_FAILED"):
                stranger.get("/v1/nodes")
        # plain HTTP to the TLS port gets no API answer
        with pytest.raises(BmdError):
            Client(endpoint.url.replace("https:", "http:"), None, timeout=5).get("/v1/nodes")

    await run_service(settings, check)
    assert seen["nodes"]["nodes"] == [] and seen["flavor"]["name"] == "f"


def test_tls_needs_both_files_and_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^api\.tls_key: empty while api\.tls_cert is set"):
        load_settings(environ={"BMD_API_TLS_CERT": '"/etc/bmd/tls.crt"'})
    with pytest.raises(ConfigError, match=r"^api\.tls_key: set while api\.tls_cert is empty"):
        load_settings(environ={"BMD_API_TLS_KEY": '"/etc/bmd/tls.key"'})
    assert load_settings(environ={}).api.scheme == "http"


def test_unloadable_tls_files_stop_start_up_naming_the_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other")
    base = load_settings(environ={}).api
    mismatch = r"api\.tls_cert/api\.tls_key: .* not a PEM certificate and its private key"
    cases = [
        ({"tls_cert": str(tmp_path / "missing.crt"), "tls_key": str(key)}, r"api\.tls_cert: .*missing\.crt does not"),
        ({"tls_cert": str(cert), "tls_key": str(other_key)}, mismatch),
        ({"tls_cert": str(key), "tls_key": str(key)}, r"api\.tls_cert/api\.tls_key"),
    ]
    for update, problem in cases:
        with pytest.raises(ConfigError, match=problem):
            server_context(base.model_copy(update=update))
    assert server_context(base.model_copy(update={"tls_cert": str(cert), "tls_key": str(key)})) is not None
    assert server_context(base) is None
