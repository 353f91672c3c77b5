"""Image references: what the operator wrote, parsed into something the cache can fetch and log.

A ref is an ``http(s)://`` URL, a ``file://`` URL or an absolute path. Local refs are resolved (symlinks
followed) and must land under one of the allowed roots: whatever the cache holds is served over HTTP, so an
arbitrary local path from an API user would be a way to read the daemon's own files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bmd.errors import BmdError, InvalidInput
from bmd.secrets import SecretBox


@dataclass(frozen=True, slots=True)
class ImageSource:
    kind: str  # "http" or "local"
    location: str  # the URL, or the resolved absolute path
    display: str  # safe to log and to store


def display_ref(ref: str) -> str:
    """The one redacted form of a ref, safe to log, store, return and put in an error message.

    User info becomes ``***@`` and a query ``?<redacted>`` (only when there was one), the fragment is
    dropped: ``http://u:p@host/x?sig=1`` → ``http://***@host/x?<redacted>``. Plain paths and URLs without
    either come back unchanged. A URL too broken to parse (or whose port is not a number, as when a password
    holds an unescaped ``/`` or ``?``) is replaced whole.
    """
    try:
        parts = urlsplit(ref)
    except ValueError:
        return "<unparseable URL redacted>"
    if not parts.scheme or not (parts.netloc or parts.query or parts.fragment):
        return ref
    _, at, host = parts.netloc.rpartition("@")
    try:
        parts.port  # noqa: B018 - a "port" that is not a number may be half of an unescaped password
    except ValueError:
        return f"{parts.scheme}://***"  # and the rest of it may be in the path: show nothing
    netloc = f"***@{host}" if at else host
    return urlunsplit((parts.scheme, netloc, parts.path, "<redacted>" if parts.query else "", ""))


# A URL ends at whitespace, a quote or a bracket; an already redacted query is taken whole (idempotence).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+(?:<redacted>)?")


def scrub_urls(text: str) -> str:
    """``text`` with every URL in it replaced by its :func:`display_ref` form (exception messages, reprs)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: display_ref(m.group(0)), text)


def has_secret(ref: str) -> bool:
    """True when the ref carries something its displayed form drops (credentials, a signature)."""
    return display_ref(ref) != ref


def seal_refs(
    refs: Mapping[str, str | None], box: SecretBox, extra: Mapping[str, str] | None = None
) -> tuple[dict[str, str | None], str | None]:
    """Split refs into what may be stored in clear (each ref's displayed form) and, encrypted, the refs
    that carry secrets (``instances.secret_refs``; None when none does). ``extra`` values (other secrets of
    the request, e.g. the config drive's user_data) are sealed with them, under their own names."""
    shown = {name: display_ref(ref) if ref else ref for name, ref in refs.items()}
    secret = {name: ref for name, ref in refs.items() if ref and shown[name] != ref}
    secret.update(extra or {})
    return shown, box.encrypt(json.dumps(secret, sort_keys=True)) if secret else None


def open_refs(sealed: str | None, box: SecretBox) -> dict[str, str]:
    """The refs :func:`seal_refs` encrypted, by name (empty when there were none)."""
    if not sealed:
        return {}
    refs = json.loads(box.decrypt(sealed))
    if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
        raise BmdError("instances.secret_refs does not hold a JSON object of refs")
    return refs


def parse_image_ref(ref: object, allowed_local_roots: Sequence[Path], field: str = "image_ref") -> ImageSource:
    """Parse and check a ref. Blocking (resolves local paths): call from a thread. Errors name ``field``."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    ref = ref.strip()
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidInput(f"{field} {display_ref(ref)!r} has no host", field=field)
        return ImageSource("http", ref, display_ref(ref))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            host = parts.netloc.rpartition("@")[2]
            raise InvalidInput(f"{field}: a file:// URL must be local, got host {host!r}", field=field)
        path = unquote(parts.path)
    elif parts.scheme == "" and ref.startswith("/"):
        path = ref
    else:
        raise InvalidInput(
            f"{field} must be an absolute path, a file:// or an http(s):// URL, got {display_ref(ref)!r}",
            field=field,
        )
    resolved = os.path.realpath(path)
    roots = [os.path.realpath(r) for r in allowed_local_roots]
    if not any(Path(resolved).is_relative_to(r) for r in roots):
        allowed = ", ".join(roots) or "none configured: local refs are disabled"
        raise InvalidInput(f"{field} {path} is not under an allowed local root ({allowed})", field=field)
    return ImageSource("local", resolved, resolved)
