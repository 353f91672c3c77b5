"""sushy-tools' Redfish emulator (fake driver, no libvirt) run as a subprocess on 127.0.0.1.

One emulator per test session (it starts in ~0.5 s): HTTP Basic auth on (bcrypt htpasswd file), several fake
systems so each test owns the ones it changes. A second emulator without auth serves exactly one system, for
the service-root address form and the no-credentials path.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "admin"
PASSWORD = "s3cret-redfish"
START_DEADLINE = 20.0

# uuid -> initial power state; each test uses its own systems.
SYSTEMS = {
    "read-off": ("00000000-0000-4000-8000-000000000001", "Off"),
    "read-on": ("00000000-0000-4000-8000-000000000002", "On"),
    "power-on": ("00000000-0000-4000-8000-000000000003", "Off"),
    "power-off": ("00000000-0000-4000-8000-000000000004", "On"),
    "reboot": ("00000000-0000-4000-8000-000000000005", "On"),
    "reboot-off": ("00000000-0000-4000-8000-000000000006", "Off"),
    "boot": ("00000000-0000-4000-8000-000000000007", "Off"),
    "nowait": ("00000000-0000-4000-8000-000000000008", "Off"),
}


@dataclass(frozen=True)
class Emulator:
    base_url: str
    systems: dict[str, str]  # role -> uuid
    log_path: Path

    def system_url(self, role: str) -> str:
        return f"{self.base_url}/redfish/v1/Systems/{self.systems[role]}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=1.0, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmd test BMC")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "bmc.crt", workdir / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _start(
    workdir: Path, systems: dict[str, tuple[str, str]], auth: bool, tls: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator on a free port; retry on a new port if the chosen one was taken meanwhile."""
    workdir.mkdir(parents=True, exist_ok=True)
    fake_systems = [
        {
            "uuid": uuid,
            "name": role,
            "power_state": power,
            "external_notifier": False,
            "nics": [{"mac": f"52:54:00:00:00:{i:02x}", "ip": f"10.0.0.{i}"}],
        }
        for i, (role, (uuid, power)) in enumerate(systems.items(), start=1)
    ]
    lines = [
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        f"SUSHY_EMULATOR_STATE_DIR = {str(workdir / 'state')!r}",
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake_systems!r}",
    ]
    if auth:
        htpasswd = workdir / "htpasswd"
        digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{USER}:{digest}\n")
        lines.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}")
    if tls:
        cert_path, key_path = _self_signed(workdir)
        lines.append(f"SUSHY_EMULATOR_SSL_CERT = {str(cert_path)!r}")
        lines.append(f"SUSHY_EMULATOR_SSL_KEY = {str(key_path)!r}")
    exe = str(Path(sys.executable).with_name("sushy-emulator"))
    last_log = ""
    for attempt in range(3):
        port = _free_port()
        config = workdir / "emulator.conf"
        config.write_text("\n".join([*lines, f"SUSHY_EMULATOR_LISTEN_PORT = {port}"]) + "\n")
        log_path = workdir / f"emulator-{attempt}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [exe, "--config", str(config)], stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir
            )
        base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if _ready(base + "/redfish/v1/"):
                return proc, base
            try:
                proc.wait(timeout=0.05)  # paces the polling and notices an early exit
            except subprocess.TimeoutExpired:
                continue
            break  # exited: probably the port was taken; try another
        _stop(proc)
        last_log = log_path.read_text(errors="replace")
    raise RuntimeError(f"sushy-emulator did not become ready:\n{last_log[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    workdir = tmp_path_factory.mktemp("sushy-auth")
    proc, base = _start(workdir, SYSTEMS, auth=True)
    try:
        yield Emulator(base, {role: uuid for role, (uuid, _) in SYSTEMS.items()}, workdir)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """HTTPS with a self-signed certificate (``workdir/bmc.crt``), no auth, one system."""
    workdir = tmp_path_factory.mktemp("sushy-tls")
    systems = {"only": ("00000000-0000-4000-8000-0000000000bb", "Off")}
    proc, base = _start(workdir, systems, auth=False, tls=True)
    try:
        yield Emulator(base, {"only": systems["only"][0]}, workdir)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def single_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    workdir = tmp_path_factory.mktemp("sushy-single")
    systems = {"only": ("00000000-0000-4000-8000-0000000000aa", "On")}
    proc, base = _start(workdir, systems, auth=False)
    try:
        yield Emulator(base, {"only": systems["only"][0]}, workdir)
    finally:
        _stop(proc)
