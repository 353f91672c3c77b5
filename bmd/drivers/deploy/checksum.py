"""Image checksums: ``<algorithm>:<hex digest>`` strings, parsed once and verified while streaming.

Accepted algorithms are ``md5``, ``sha256`` and ``sha512`` (md5 only because older image services publish
nothing else). Every download also computes SHA-256, whatever was asked for: the deploy agent is always
handed a SHA-256 to check, so a weak ``md5`` from the operator never becomes the agent's only guard.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from bmd.errors import DriverError, InvalidInput

ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def parse_checksum(value: str | None, field: str = "checksum") -> Checksum | None:
    """Parse ``sha256:<hex>`` (or md5/sha512). None or '' means "no checksum". Bad input names ``field``."""
    if value is None or value == "":
        return None
    algorithm, sep, digest = value.strip().partition(":")
    algorithm = algorithm.lower()
    digest = digest.lower()
    if not sep or algorithm not in ALGORITHMS:
        raise InvalidInput(
            f"{field} must look like '<algorithm>:<hex digest>' with algorithm one of "
            f"{', '.join(sorted(ALGORITHMS))}, got {value!r}",
            field=field,
        )
    if len(digest) != ALGORITHMS[algorithm] or not _HEX.match(digest):
        raise InvalidInput(
            f"{field}: a {algorithm} digest is {ALGORITHMS[algorithm]} hex characters, got {digest!r}",
            field=field,
        )
    return Checksum(algorithm, digest)


class DigestSink:
    """Feeds every chunk to SHA-256 and, if asked, to the expected checksum's algorithm."""

    def __init__(self, expected: Checksum | None) -> None:
        self.expected = expected
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._other: Hasher | None = None
        if expected is not None and expected.algorithm != "sha256":
            self._other = hashlib.new(expected.algorithm)

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha256.update(chunk)
        if self._other is not None:
            self._other.update(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def actual(self) -> Checksum:
        """The digest in the expected checksum's algorithm (SHA-256 when none was expected)."""
        if self._other is not None and self.expected is not None:
            return Checksum(self.expected.algorithm, self._other.hexdigest())
        return Checksum("sha256", self.sha256)

    def verify(self, what: str) -> None:
        """Raise DriverError naming both digests when the content does not match the expected checksum."""
        if self.expected is None:
            return
        actual = self.actual()
        if actual != self.expected:
            raise DriverError(
                f"checksum mismatch for {what}: expected {self.expected}, got {actual} ({self.size} bytes)"
            )
