"""A small synchronous client of bmd's HTTP API for the CLI (standard library only)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmd.errors import BmdError

if TYPE_CHECKING:  # bmd.config (pydantic) is read only when a command needs the settings: start-up time
    from bmd.config import Settings

NO_TOKEN = "no API token: set api.token_file or BMD_TOKEN"


def q(value: str) -> str:
    """One path segment (a node name, flavor name, uuid, key), quoted."""
    return urllib.parse.quote(value, safe="")


class ApiError(BmdError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        message = body.get("message") or body.get("reason") or body.get("error") or f"HTTP {status}"
        super().__init__(str(message))
        self.status = status
        self.body = body


class Client:
    def __init__(
        self, url: str, token: str | None, timeout: float = 30.0, tls: ssl.SSLContext | None = None, why: str = ""
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.tls = tls  # None: the system's CAs (for https URLs)
        self.why = why  # why there is no token (an unreadable token file), told with NO_TOKEN

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None, token: str | None) -> Client:
        """The token: ``--token``, else ``$BMD_TOKEN``, else the content of ``api.token_file`` (an admin
        token); none is fine for reads when the service has ``api.anonymous_read``."""
        from bmd.tls import client_context

        if url is None:
            host = settings.api.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
            url = f"{settings.api.scheme}://{host}:{settings.api.port}"
        why = ""
        token = token or os.environ.get("BMD_TOKEN") or None
        if token is None:
            path = Path(settings.api.token_file)
            try:
                token = path.read_text().strip() or None
            except FileNotFoundError:
                why = f"{path} does not exist"
            except OSError as err:
                why = f"cannot read {path}: {err.strerror}"
        tls = client_context(settings.api) if url.startswith("https:") else None
        return cls(url, token, tls=tls, why=why)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        raw = self.send(method, path, body)
        return json.loads(raw) if raw else None

    def get_bytes(self, path: str) -> bytes:
        """A GET whose answer is not JSON (a console log): its raw body."""
        return self.send("GET", path, None, accept="text/plain")

    def send(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")[:500] or err.reason}
            body = parsed if isinstance(parsed, dict) else {"message": str(parsed)}
            if err.code == 401 and not self.token:  # say what to do, not what the server refused
                body = {**body, "message": NO_TOKEN + (f" ({self.why})" if self.why else "")}
            raise ApiError(err.code, body) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise BmdError(
                f"cannot reach bmd at {self.url}: {reason}; is the daemon running there (bmd serve)? --url or api.port"
            ) from err
        return bytes(raw)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_all(self, path: str, items: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every row of a paged list: follow ``next`` from the first page until it is null (``params``:
        the API's filters, e.g. ``{"provision_state": "active"}``; None values are left out)."""
        rows: list[Any] = []
        marker: Any = None
        seen: set[str] = set()
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        while True:
            sep = "&" if "?" in path else "?"
            parts = [p for p in (query, None if marker is None else f"marker={q(str(marker))}") if p]
            page = self.get(f"{path}{sep}{'&'.join(parts)}" if parts else path)
            rows.extend(page[items])
            marker = page.get("next")
            if marker is None or str(marker) in seen:  # a repeated marker would loop forever
                return rows
            seen.add(str(marker))

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
