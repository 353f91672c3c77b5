"""Who may call what: the roles of API tokens and the identity of a caller (no HTTP here; the middleware
is bmd/api/auth.py, the tokens' table bmd/db/tokens.py).

Roles are ranked; a role may do everything a lower one may:

- ``reader``: reads (GET/HEAD), when ``api.anonymous_read`` is false; nothing that talks to a BMC or shows a
  console.
- ``operator``: reader + every node, interface, capability, flavor, instance and PXE-IP action, a live BMC
  read (``?live=true``), the console and its log.
- ``service``: what bmd services use to forward work to each other (issue 14). For now exactly the
  operator's rights under its own name, so forwarded calls are told apart in the audit log and can be given
  their own routes later without touching any human's token.
- ``admin``: everything, tokens included (``/v1/tokens``). The token in ``api.token_file`` is an admin token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FILE_TOKEN_NAME = "api.token_file"  # the audit name of the token file's token (no row: it has no id)


class Role(enum.StrEnum):
    reader = "reader"
    operator = "operator"
    service = "service"
    admin = "admin"


RANK: dict[Role, int] = {Role.reader: 1, Role.operator: 2, Role.service: 2, Role.admin: 3}


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the token's id (None for the token file's) and name, never the token."""

    id: int | None
    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        return RANK[self.role] >= RANK[needed]


FILE_CALLER = Caller(id=None, name=FILE_TOKEN_NAME, role=Role.admin)
