"""The agent lookup's answer as ``key=value`` lines, for the POSIX sh deploy agent (``bmd/agent/``).

One line per key, ``key`` matching ``[a-z][a-z0-9_]*``; a nested dict (``root_device``) is flattened one level
to ``root_device_<hint>=...``; ``None`` is an empty value; ``true``/``false`` for booleans; lists are
written comma-joined. The agent reads each line with ``IFS= read -r line`` and splits it at the first ``=``
(``${line%%=*}``, ``${line#*=}``) — nothing is ever evaluated. So that this always holds, a value is printable
ASCII only: a backslash and every other byte (control characters, newlines, non-ASCII UTF-8) is written as
``\\xHH``; the agent compares such values literally (a hint holding them simply matches nothing). Keys that
are not safe identifiers are left out rather than renamed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SAFE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # printable ASCII but the backslash


def wants_shell_text(accept: str) -> bool:
    """``Accept`` names ``text/plain`` (and not JSON first): the sh agent's request."""
    types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    return "text/plain" in types and "application/json" not in types[: types.index("text/plain")]


def shell_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(shell_value(v) for v in value)
    text = str(value)
    return _SAFE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group(0).encode("utf-8")), text)


def shell_lines(answer: Mapping[str, Any]) -> str:
    """The answer as ``key=value`` lines (see the module docstring)."""
    lines = []
    for key, value in answer.items():
        items = [(f"{key}_{k}", v) for k, v in value.items()] if isinstance(value, Mapping) else [(key, value)]
        for name, item in items:
            if _KEY.match(name) and not isinstance(item, Mapping):
                lines.append(f"{name}={shell_value(item)}")
    return "".join(line + "\n" for line in lines)
