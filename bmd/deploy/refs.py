"""Image references: what the operator wrote, parsed into something the cache can fetch and log.

A ref is an ``http(s)://`` URL, a ``file://`` URL or an absolute path. Local refs are resolved (symlinks
followed) and must land under one of the allowed roots: whatever the cache holds is served over HTTP, so an
arbitrary local path from an API user would be a way to read the daemon's own files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bmd.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ImageSource:
    kind: str  # "http" or "local"
    location: str  # the URL, or the resolved absolute path
    display: str  # safe to log and to store


def display_ref(ref: str) -> str:
    """The ref as it may be logged: user info and query string (tokens, signatures) removed."""
    parts = urlsplit(ref)
    if parts.scheme not in ("http", "https"):
        return ref
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "<redacted>" if parts.query else "", ""))


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
            raise InvalidInput(f"{field}: a file:// URL must be local, got host {parts.netloc!r}", field=field)
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
