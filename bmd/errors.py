"""bmd's exception hierarchy.

Every error a caller may need to tell apart has its own class; the API maps them to HTTP statuses
(``http_status``) and the CLI to exit codes. Driver errors wrap the library error with ``raise ... from err``.
"""

from __future__ import annotations


class BmdError(Exception):
    """Base of every error bmd raises on purpose."""

    http_status = 500
    code = "internal_error"


class ConfigError(BmdError):
    """A configuration key is unknown, mistyped or out of range; the message names the key."""

    code = "config_error"


class InvalidInput(BmdError):
    """A request, CLI argument or inventory entry is malformed; ``field`` names the culprit."""

    http_status = 400
    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(BmdError):
    http_status = 404
    code = "not_found"


class PayloadTooLarge(BmdError):
    http_status = 413
    code = "payload_too_large"
    field = "body"


class Conflict(BmdError):
    """A unique value is taken or the stored data forbids the change; ``field`` names the culprit when known."""

    http_status = 409
    code = "conflict"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidState(Conflict):
    """An operation is not allowed in the node's current state (the message names that state)."""

    code = "invalid_state"


class NoValidHost(Conflict):
    code = "no_valid_host"


class Forbidden(BmdError):
    http_status = 403
    code = "forbidden"


class OwnerUnavailable(BmdError):
    """The node's owning service (several services on one database) is down or did not answer; its nodes
    move to a live service within one ownership pass."""

    http_status = 503
    code = "owner_unavailable"


class DatabaseError(BmdError):
    """The database is unreachable, un-migrated, or newer than this code."""

    code = "database_error"


class DatabaseUnavailable(DatabaseError):
    """The database did not complete a request (locked, unreachable, refused): 503 naming the database."""

    http_status = 503
    code = "database_unavailable"


class StorageFull(DatabaseError):
    """The database refused a write because its storage is full (SQLITE_FULL, PostgreSQL 53100)."""

    http_status = 507
    code = "storage_full"


class DriverError(BmdError):
    """A driver (power, deploy, vif) failed to do its job."""

    code = "driver_error"
    http_status = 502


class UnsupportedOperation(DriverError):
    """The node's driver has no implementation for this interface or verb."""

    code = "unsupported"
    http_status = 400


class BMCError(DriverError):
    """The BMC answered with an error, or the answer made no sense."""

    code = "bmc_error"


class BMCUnreachable(BMCError):
    """The BMC's address cannot be reached (connection refused, no route, ICMP unreachable)."""

    code = "bmc_unreachable"


class BMCTimeout(BMCError):
    """The BMC did not answer within the deadline."""

    code = "bmc_timeout"
    http_status = 504


class BMCAuthError(BMCError):
    """The BMC refused the credentials. Fatal: retrying would only lock the account."""

    code = "bmc_auth_error"
