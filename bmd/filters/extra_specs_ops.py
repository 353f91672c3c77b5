"""Match one capability value against one flavor extra-spec requirement, with Nova's semantics.

A requirement is split on whitespace. When its first word is not an operator, the whole requirement is
compared with ``str(value)`` (plain string equality). Otherwise:

=========================  =====================================================================
``= N``                    numeric *at least*: ``float(value) >= float(N)`` (not equality)
``== N``, ``!= N``         numeric equality / inequality (as floats)
``>= N``, ``<= N``         numeric comparison (as floats)
``s== S`` ... ``s>= S``    string comparison of ``str(value)`` with ``S`` (``s==``, ``s!=``, ``s<``,
                           ``s<=``, ``s>``, ``s>=``)
``<in> S``                 ``S`` is a substring of ``str(value)`` (an element, when value is a list)
``<all-in> A B ...``       every word is an element of value (a list); substrings of a string value
``<or> A <or> B ...``      ``str(value)`` equals one of the alternatives
=========================  =====================================================================

As in Nova, an operator uses only the first word after it (except ``<all-in>`` and ``<or>``), and ``<or>``
takes every second word as an alternative without checking the keywords between them
(``<or> a x b`` offers ``a`` and ``b``). Where Nova raised, we answer ``False``: a value that is not a number
under a numeric operator, an operator without operand (``"=="``, ``"<or>"``), a requirement that is not a
string. A ``None`` value never matches (Nova's capabilities filter rejects it before matching).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

__all__ = ["OPERATORS", "equality_candidates", "match"]

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
}
_STRING: dict[str, Callable[[str, str], bool]] = {
    "s==": operator.eq,
    "s!=": operator.ne,
    "s<": operator.lt,
    "s<=": operator.le,
    "s>": operator.gt,
    "s>=": operator.ge,
}
_CONTAINER_OPS = frozenset({"<in>", "<all-in>"})
OR = "<or>"
OPERATORS: frozenset[str] = frozenset(_NUMERIC) | frozenset(_STRING) | _CONTAINER_OPS | {OR}

# A value of one of these types is a collection of elements for <in> and <all-in>; anything else is
# compared through str(value), as Nova's filter does (it hands match() ``str(capability)``).
_CONTAINERS = (list, tuple, set, frozenset)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def match(value: object, req: str) -> bool:
    """True when the capability ``value`` satisfies the extra-spec requirement ``req``."""
    if value is None or not isinstance(req, str):
        return False
    words = req.split()
    op = words[0] if words else None
    if op not in OPERATORS:
        return str(value) == req
    operands = words[1:]
    if op == OR:
        return str(value) in operands[0::2]
    if not operands:
        return False
    if op in _CONTAINER_OPS:
        wanted = operands if op == "<all-in>" else operands[:1]
        if isinstance(value, _CONTAINERS):
            elements = {str(v) for v in value}
            return all(word in elements for word in wanted)
        text = str(value)
        return all(word in text for word in wanted)
    if op in _STRING:
        return _STRING[op](str(value), operands[0])
    left, right = _as_float(str(value)), _as_float(operands[0])
    if left is None or right is None:
        return False
    return _NUMERIC[op](left, right)


def equality_candidates(req: str) -> frozenset[str] | None:
    """The strings ``s`` such that ``match(value, req)`` is exactly ``str(value) in s`` (for a non-None
    value), or ``None`` when ``req`` is not a pure equality requirement. Lets an index answer plain, ``s==``
    and ``<or>`` requirements by lookup instead of testing every distinct value."""
    if not isinstance(req, str):
        return frozenset()
    words = req.split()
    op = words[0] if words else None
    if op not in OPERATORS:
        return frozenset({req})
    if op == OR:
        return frozenset(words[1::2])
    if op == "s==":
        return frozenset(words[1:2])
    return None
