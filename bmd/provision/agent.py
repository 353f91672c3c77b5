"""The deploy agent's token (Ironic's agent-token model): what may ask for one, how it is checked.

Nothing PXE or TFTP serves is secret, so the ramdisk starts with only its node's identity and bmd's URL. It
asks ``POST /v1/agent/lookup`` once per boot and gets a random token; bmd keeps only its SHA-256 (in
``bm_deployments.agent_token_hash``). Every later agent call carries ``X-Agent-Token``. A token is issued
only while the node waits for an agent in a boot bmd started (:data:`AGENT_WAIT_STATES`) and after bmd
powered it on (``booted_at``); with ``agent.lookup_source = "pxe_ip"`` only to the node's PXE address. It
dies with the boot: every transition out of the waiting state clears the hash (success, failure, timeout),
and a delete removes the row.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, Deployment, utcnow
from bmd.db.nodes import get_node
from bmd.errors import BmdError, Conflict, Forbidden, NotFound
from bmd.states import ProvisionState

TOKEN_HEADER = "X-Agent-Token"

# States in which bmd booted a ramdisk and waits for its agent: a deploy's, a clean's (docs/cleaning.md), an
# inspection's (docs/inspection.md).
AGENT_WAIT_STATES = frozenset({ProvisionState.WAIT_CALLBACK, ProvisionState.CLEANING, ProvisionState.INSPECTING})


class AgentTokenRefused(BmdError):
    """The call carries no token, a wrong one, or one whose boot is over. Changes nothing."""

    http_status = 401
    code = "agent_token_refused"
    field = TOKEN_HEADER


class AgentLookupRefused(Forbidden):
    """A lookup from an address that is not the node's PXE address (``agent.lookup_source = "pxe_ip"``)."""

    code = "agent_lookup_refused"
    field = "peer"


class AgentTokenAlreadyIssued(Conflict):
    """A second lookup for the same boot: refused, and the deploy is failed."""

    code = "agent_token_already_issued"
    field = "node_uuid"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_address(a: str | None, b: str | None) -> bool:
    """Equal IP addresses, ``::ffff:10.0.0.1`` being ``10.0.0.1``; anything unparsable is unequal."""
    try:
        x, y = (ipaddress.ip_address((v or "").split("%", 1)[0]) for v in (a, b))
    except ValueError:
        return False
    x = x.ipv4_mapped or x if isinstance(x, ipaddress.IPv6Address) else x
    y = y.ipv4_mapped or y if isinstance(y, ipaddress.IPv6Address) else y
    return x == y


def waits_for_agent(node: BareMetalNode) -> bool:
    """The node is in a boot bmd started, waiting for its agent, and that boot has not timed out."""
    return (
        node.provision_state in AGENT_WAIT_STATES
        and node.deploy_deadline is not None
        and node.deploy_deadline >= utcnow()
    )


@dataclass(frozen=True, slots=True)
class AgentBoot:
    node: BareMetalNode
    deployment: Deployment


async def authenticate(
    session: AsyncSession, node_ident: str, token: str | None, *, for_update: bool = False
) -> AgentBoot:
    """The boot that ``token`` belongs to, or AgentTokenRefused (401) — the same answer whatever is wrong,
    so a probe learns nothing. ``for_update`` locks the node row for a caller that changes it."""
    try:
        node = await get_node(session, node_ident, for_update=for_update)
    except NotFound:
        node = None
    dep = None
    if node is not None:
        dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node.id))
    expected = dep.agent_token_hash if dep is not None else None
    given = token_digest(token) if token else ""
    if node is None or dep is None or not expected or not hmac.compare_digest(given, expected):
        raise AgentTokenRefused(f"a valid {TOKEN_HEADER} for this node's boot is required")
    if not waits_for_agent(node):
        raise AgentTokenRefused(f"the boot this token was issued for is over (node is {node.provision_state})")
    return AgentBoot(node, dep)
