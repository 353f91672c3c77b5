"""Config drives: the OpenStack-style ISO9660 volume (label ``config-2``) cloud-init reads on first boot.

Layout of the volume (Rock Ridge and Joliet names, so every reader sees the long names)::

    openstack/latest/meta_data.json      uuid, name, hostname, public_keys, keys, meta, launch_index, ...
    openstack/latest/user_data           only when the request gave user_data (bytes as given)
    openstack/latest/network_data.json   only when the request gave network_data
    openstack/2012-08-10/...             the same files again: the oldest dated version cloud-init accepts

The ISO is written with pycdlib (we do not hand-roll ISO9660) at deploy time into
``<state_dir>/agent-images/<node_uuid>/configdrive.iso`` (0600, never under the served roots: user_data
may hold secrets) and handed to the agent only with its token (``GET /v1/agent/nodes/{node}/configdrive``).
The agent writes it into a new partition at the end of the disk (``bmd/agent/configdrive.sh``).

The ``check_*`` functions validate the request's fields; each raises ``ValueError`` with a message
(pydantic turns it into a 400 naming the field) — or ``InvalidInput`` naming the field when called
directly with ``field=``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bmd.errors import DriverError

__all__ = [
    "ConfigDrive",
    "build_iso",
    "check_hostname",
    "check_meta",
    "check_network_data",
    "check_ssh_key",
    "decode_user_data",
]

VOLUME_LABEL = "config-2"
VERSIONS = ("latest", "2012-08-10")
MAX_USER_DATA = 64 * 1024
MAX_SSH_KEYS = 32
MAX_SSH_KEY_LEN = 16 * 1024
MAX_META_ITEMS = 128
MAX_META_KEY = 255
MAX_META_VALUE = 255
MAX_NETWORK_DATA = 64 * 1024  # bytes of its JSON
MAX_NETWORK_ITEMS = 256  # entries of each of links, networks, services

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_KEY_TYPES = frozenset(
    {
        "ssh-rsa",
        "ssh-dss",
        "ssh-ed25519",
        "ssh-ed448",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_COMMENT = re.compile(r"^[\x20-\x7e]*$")


def check_hostname(value: str) -> str:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, ≤ 253 characters."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{value!r} is not an RFC 1123 host name (labels of letters, digits and '-', ≤ 63 each)")
    if name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r} is not a host name: the last label is all digits")
    return name.lower()


def check_ssh_key(value: str) -> str:
    """One OpenSSH public key line: ``<type> <base64 blob> [comment]``; the blob must decode and name the
    same key type (RFC 4253 string encoding), so a truncated or pasted-wrong key is refused here."""
    if len(value) > MAX_SSH_KEY_LEN:
        raise ValueError(f"an SSH public key is at most {MAX_SSH_KEY_LEN} characters")
    parts = value.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise ValueError("not an OpenSSH public key (expected '<type> <base64> [comment]', e.g. 'ssh-ed25519 AAAA...')")
    kind, blob = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{kind} key: the key data is not base64") from None
    if (
        len(raw) < 4
        or int.from_bytes(raw[:4], "big") > len(raw) - 4
        or raw[4 : 4 + int.from_bytes(raw[:4], "big")] != kind.encode()
    ):
        raise ValueError(f"{kind} key: the key data does not hold a {kind} key")
    if not _COMMENT.match(comment):
        raise ValueError("an SSH key comment must be printable ASCII on one line")
    return " ".join(p for p in (kind, blob, comment) if p)


def check_meta(value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > MAX_META_ITEMS:
        raise ValueError(f"at most {MAX_META_ITEMS} meta items")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise ValueError("meta must map non-empty strings to strings")
        if len(k) > MAX_META_KEY or len(v) > MAX_META_VALUE:
            raise ValueError(f"meta {k[:40]!r}: keys and values are at most {MAX_META_KEY} characters")
    return dict(value)


def check_network_data(value: Mapping[str, Any]) -> dict[str, Any]:
    """OpenStack ``network_data.json``, checked loosely: an object whose ``links``, ``networks`` and
    ``services`` (each optional) are lists of objects, bounded in count and total size; no other keys."""
    unknown = set(value) - {"links", "networks", "services"}
    if unknown:
        raise ValueError(f"network_data: unknown keys {sorted(unknown)} (links, networks, services)")
    for key in ("links", "networks", "services"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"network_data.{key} must be a list of objects")
        if len(items) > MAX_NETWORK_ITEMS:
            raise ValueError(f"network_data.{key}: at most {MAX_NETWORK_ITEMS} entries")
        for i, item in enumerate(items):
            if key != "services" and not isinstance(item.get("id"), str):
                raise ValueError(f"network_data.{key}[{i}] needs a string 'id'")
            if "type" in item and not isinstance(item["type"], str):
                raise ValueError(f"network_data.{key}[{i}].type must be a string")
    if len(json.dumps(value)) > MAX_NETWORK_DATA:
        raise ValueError(f"network_data is larger than {MAX_NETWORK_DATA} bytes of JSON")
    return dict(value)


def decode_user_data(value: str, is_base64: bool) -> bytes:
    """The user_data bytes: the string as UTF-8, or base64-decoded; at most 64 KiB either way."""
    if is_base64:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("user_data is not valid base64 (user_data_base64 is true)") from None
    else:
        data = value.encode()
    if len(data) > MAX_USER_DATA:
        raise ValueError(f"user_data is {len(data)} bytes: at most {MAX_USER_DATA}")
    return data


@dataclass(frozen=True)
class ConfigDrive:
    """What goes on one instance's config drive. ``user_data`` may be secret: never logged (not in repr)."""

    uuid: str
    name: str | None = None
    hostname: str | None = None
    ssh_keys: Sequence[str] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    network_data: Mapping[str, Any] | None = None
    user_data: bytes | None = field(default=None, repr=False)
    launch_index: int = 0

    def meta_data(self) -> dict[str, Any]:
        hostname = self.hostname or self.name or f"host-{self.uuid[:8]}"
        keys = {f"key-{i}": key for i, key in enumerate(self.ssh_keys)}
        return {
            "uuid": self.uuid,
            "name": self.name or hostname,
            "hostname": hostname,
            "launch_index": self.launch_index,
            "availability_zone": "bmd",
            "public_keys": keys,
            "keys": [{"name": name, "type": "ssh", "data": key} for name, key in keys.items()],
            "meta": dict(self.meta),
            "files": [],
        }

    def files(self) -> dict[str, bytes]:
        """Path inside the volume → bytes, for every version directory."""
        out: dict[str, bytes] = {}
        for version in VERSIONS:
            base = f"openstack/{version}"
            out[f"{base}/meta_data.json"] = json.dumps(self.meta_data(), indent=1, sort_keys=True).encode()
            if self.user_data is not None:
                out[f"{base}/user_data"] = self.user_data
            if self.network_data is not None:
                out[f"{base}/network_data.json"] = json.dumps(dict(self.network_data), sort_keys=True).encode()
        return out


def _iso9660_name(name: str, is_dir: bool) -> str:
    """An ISO9660 level-3-safe identifier for a long name (readers use the Rock Ridge/Joliet names)."""
    stem = re.sub(r"[^A-Z0-9_]", "_", name.upper())
    return stem[:8] if is_dir else f"{stem[:8]}.;1"


def build_iso(drive: ConfigDrive) -> bytes:
    """The config drive as ISO9660 bytes with Rock Ridge and Joliet names, volume label ``config-2``.
    Blocking (pure Python): call it from a thread."""
    import pycdlib  # heavy import, only on the deploy path

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09", app_ident_str="bmd")
    try:
        made: dict[str, str] = {}  # path (real names) → ISO9660 path
        used: set[str] = set()

        def iso_path(parent_iso: str, name: str, is_dir: bool) -> str:
            ident = _iso9660_name(name, is_dir)
            n = 0
            while f"{parent_iso}/{ident}" in used:  # two long names with one short form
                n += 1
                stem = f"{ident.removesuffix('.;1')[:6]}{n:02d}"
                ident = stem if is_dir else f"{stem}.;1"
            used.add(f"{parent_iso}/{ident}")
            return f"{parent_iso}/{ident}"

        def ensure_dir(path: str) -> str:
            if not path:
                return ""
            if path in made:
                return made[path]
            parent, _, name = path.rpartition("/")
            p = iso_path(ensure_dir(parent), name, True)
            iso.add_directory(p, rr_name=name, joliet_path=f"/{path}")
            made[path] = p
            return p

        for path, data in drive.files().items():
            parent, _, name = path.rpartition("/")
            p = iso_path(ensure_dir(parent), name, False)
            iso.add_fp(io.BytesIO(data), len(data), p, rr_name=name, joliet_path=f"/{path}")
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    except pycdlib.pycdlibexception.PyCdlibException as err:
        raise DriverError(f"building the config drive failed: {err}") from err
    finally:
        iso.close()
