"""Client of the OpenFlow network controller's vifinfo REST API (the seed's Ryu-style controller).

The controller keeps one mapping per VIF: which switch (``datapath_id``) and which port (``port_no``) the
VIF's bare-metal interface is cabled to, so it can put that port on the VIF's network.

* ``GET /vifinfo/{vif_uuid}`` -> 200 ``{"vif_uuid", "datapath_id", "port_no"}`` or 404;
* ``POST /vifinfo`` with that object -> 200/201 (409 when it already exists);
* ``DELETE /vifinfo/{vif_uuid}`` -> 200/204, or 404 (treated as done: delete is idempotent).

Connection errors, timeouts and 5xx answers are retried (``VifInfoSettings.retries`` more attempts, with
doubling backoff); anything else is final.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import structlog

from bmd.errors import Conflict, DriverError, InvalidInput

log = structlog.get_logger(__name__)


class VifInfoError(DriverError):
    """The controller failed, answered nonsense, or could not be reached (the message names the URL)."""

    code = "vifinfo_error"


class VifInfoUnavailable(VifInfoError):
    """The controller could not be reached, timed out, or kept answering 5xx after every retry."""

    code = "vifinfo_unavailable"
    http_status = 503


class VifConflict(Conflict):
    """The VIF is already mapped to another switch port: ``vif_uuid <id> exists``."""

    code = "vif_conflict"


@dataclass(frozen=True, slots=True)
class VifInfoSettings:
    """``url`` is the controller's base URL (``http://host:port``, optionally with a path prefix).

    ``timeout`` bounds each attempt; ``retries`` is the number of extra attempts after a connection error,
    timeout or 5xx; ``retry_backoff`` the first pause between attempts (doubling each time).
    """

    url: str
    timeout: float = 5.0
    retries: int = 2
    retry_backoff: float = 0.2

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"vifinfo.url must be an http(s) URL, got {self.url!r}", field="vifinfo.url")
        if self.timeout <= 0:
            raise InvalidInput("vifinfo.timeout must be > 0", field="vifinfo.timeout")
        if self.retries < 0:
            raise InvalidInput("vifinfo.retries must be >= 0", field="vifinfo.retries")
        if self.retry_backoff < 0:
            raise InvalidInput("vifinfo.retry_backoff must be >= 0", field="vifinfo.retry_backoff")


@dataclass(frozen=True, slots=True)
class VifMapping:
    vif_uuid: str
    datapath_id: str
    port_no: int

    def as_json(self) -> dict[str, Any]:
        return {"vif_uuid": self.vif_uuid, "datapath_id": self.datapath_id, "port_no": self.port_no}

    def same_port(self, datapath_id: str, port_no: int) -> bool:
        return normalize_dpid(self.datapath_id) == normalize_dpid(datapath_id) and self.port_no == port_no


def normalize_dpid(datapath_id: str) -> str:
    """``0x000000000000000a``, ``000000000000000A`` and ``a`` name the same switch."""
    dpid = datapath_id.strip().lower().removeprefix("0x").lstrip("0")
    return dpid or "0"


class VifInfoClient:
    """One controller, one aiohttp ClientSession (created on first use, closed by :meth:`close`)."""

    def __init__(self, settings: VifInfoSettings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> VifInfoClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, vif_uuid: str) -> VifMapping | None:
        """The controller's mapping of ``vif_uuid``, or None when it has none (404)."""
        status, body = await self._request("GET", self._vif_url(vif_uuid))
        if status == 404:
            return None
        if status != 200:
            raise self._unexpected("GET", self._vif_url(vif_uuid), status, body)
        return self._parse(body, self._vif_url(vif_uuid))

    async def ensure(self, vif_uuid: str, datapath_id: str, port_no: int) -> VifMapping:
        """Make the controller map ``vif_uuid`` to (datapath_id, port_no).

        Absent -> created; present with the same switch port -> nothing to do; present elsewhere ->
        :class:`VifConflict` ``vif_uuid <id> exists`` and nothing is changed.
        """
        current = await self.get(vif_uuid)
        if current is None:
            wanted = VifMapping(vif_uuid, datapath_id, port_no)
            url = self._base + "/vifinfo"
            status, body = await self._request("POST", url, wanted.as_json())
            if status in (200, 201, 204):
                log.info("vifinfo_created", vif_uuid=vif_uuid, datapath_id=datapath_id, port_no=port_no)
                return wanted
            if status != 409:
                raise self._unexpected("POST", url, status, body)
            current = await self.get(vif_uuid)  # lost a race with another writer: judge what is there
            if current is None:
                raise VifInfoError(f"vifinfo controller {url}: 409 for vif {vif_uuid} but no entry exists")
        if not current.same_port(datapath_id, port_no):
            log.warning(
                "vifinfo_conflict",
                vif_uuid=vif_uuid,
                datapath_id=current.datapath_id,
                port_no=current.port_no,
                wanted_datapath_id=datapath_id,
                wanted_port_no=port_no,
            )
            raise VifConflict(f"vif_uuid {vif_uuid} exists")
        log.debug("vifinfo_unchanged", vif_uuid=vif_uuid)
        return current

    async def delete(self, vif_uuid: str) -> None:
        """Remove the mapping; an absent one (404) is fine."""
        url = self._vif_url(vif_uuid)
        status, body = await self._request("DELETE", url)
        if status == 404:
            log.debug("vifinfo_already_absent", vif_uuid=vif_uuid)
            return
        if status not in (200, 202, 204):
            raise self._unexpected("DELETE", url, status, body)
        log.info("vifinfo_deleted", vif_uuid=vif_uuid)

    # -- internals --------------------------------------------------------------------------------------
    def _vif_url(self, vif_uuid: str) -> str:
        if not vif_uuid:
            raise InvalidInput("vif_uuid must not be empty", field="vif_uuid")
        return f"{self._base}/vifinfo/{quote(vif_uuid, safe='')}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
            self._owns_session = True
        return self._session

    async def _request(self, method: str, url: str, payload: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or None); retries connection errors, timeouts and 5xx."""
        attempts = self.settings.retries + 1
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        failure = ""
        for attempt in range(1, attempts + 1):
            try:
                async with self._client().request(method, url, json=payload, timeout=timeout) as resp:
                    status, text = resp.status, await resp.text()
            except TimeoutError:
                failure = f"no answer within {self.settings.timeout:.1f}s"
            except aiohttp.ClientConnectorError as err:
                failure = f"unreachable ({err.os_error or err})"
            except aiohttp.ClientError as err:
                failure = f"{type(err).__name__}: {err}"
            else:
                if status < 500:
                    return status, _parse_json(text)
                failure = f"HTTP {status}: {text.strip()[:200]}"
            log.warning("vifinfo_request_failed", method=method, url=url, attempt=attempt, of=attempts, error=failure)
            if attempt < attempts and self.settings.retry_backoff > 0:
                await asyncio.sleep(self.settings.retry_backoff * 2 ** (attempt - 1))
        raise VifInfoUnavailable(
            f"vifinfo controller at {self._base} failed {method} {url} after {attempts} attempt(s): {failure}"
        )

    def _parse(self, body: Any, url: str) -> VifMapping:
        if isinstance(body, dict) and isinstance(body.get("vifinfo"), dict):
            body = body["vifinfo"]  # tolerate the wrapped form {"vifinfo": {...}}
        try:
            return VifMapping(str(body["vif_uuid"]), str(body["datapath_id"]), int(body["port_no"]))
        except (TypeError, KeyError, ValueError) as err:
            raise VifInfoError(f"vifinfo controller {url} returned a malformed entry: {body!r}") from err

    @staticmethod
    def _unexpected(method: str, url: str, status: int, body: Any) -> VifInfoError:
        return VifInfoError(f"vifinfo controller {method} {url} answered HTTP {status}: {body!r}")


def _parse_json(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()[:200]
