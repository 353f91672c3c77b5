"""The one id converter: a database id is plain ASCII digits and fits a signed 64-bit column.

``str.isdigit()`` is not enough: it is true for ``²`` (``int()`` then fails) and for ``\\u0661`` (``int()``
reads it as 1). Every path segment and query parameter that names a row by id goes through here.
"""

from __future__ import annotations

import re

MAX_ID = 2**63 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")


def is_id_text(text: str) -> bool:
    """True when ``text`` is spelled like an id (ASCII digits only), whatever its size."""
    return text.isascii() and text.isdigit()


def parse_id(text: str) -> int | None:
    """The id ``text`` spells, or None when it is not ASCII digits or exceeds 2**63-1."""
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None
