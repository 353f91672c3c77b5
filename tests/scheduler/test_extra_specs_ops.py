"""extra_specs_ops.match: Nova's operators, one table row per behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmd.filters.extra_specs_ops import equality_candidates, match

CASES: list[tuple[Any, str, bool]] = [
    # no operator: str(value) == req, the whole requirement
    ("x86_64", "x86_64", True),
    ("x86_64", "i686", False),
    (8, "8", True),
    (8.0, "8", False),
    (True, "True", True),
    ("a b", "a b", True),
    ("x86_64", " x86_64", False),
    ("", "", True),
    ("x", "", False),
    ("x", "   ", False),
    (["a"], "['a']", True),
    ("<in>", "<in>", False),
    # = is numeric "at least"
    (8, "= 4", True),
    (4, "= 4", True),
    (3, "= 4", False),
    ("16", "= 8", True),
    ("1e3", "= 999", True),
    ("abc", "= 1", False),
    (8, "= abc", False),
    (8, "=", False),
    # numeric ==, !=, >=, <=
    (4, "== 4", True),
    ("4.0", "== 4", True),
    (5, "== 4", False),
    ("four", "== 4", False),
    ("nan", "== nan", False),
    (5, "!= 4", True),
    (4, "!= 4", False),
    ("x", "!= 4", False),
    (4, ">= 4", True),
    (3, ">= 4", False),
    (4, "<= 4", True),
    (5, "<= 4", False),
    (-1, "<= 0", True),
    (4, "== 4 5", True),
    (4, ">=", False),
    # string comparisons
    ("abc", "s== abc", True),
    ("abd", "s== abc", False),
    (10, "s== 10", True),
    ("abd", "s!= abc", True),
    ("abc", "s!= abc", False),
    ("abc", "s< abd", True),
    ("abd", "s< abc", False),
    ("10", "s< 9", True),
    ("abc", "s<= abc", True),
    ("abd", "s<= abc", False),
    ("9", "s> 10", True),
    ("abc", "s> abd", False),
    ("abc", "s>= abc", True),
    ("abb", "s>= abc", False),
    ("abc", "s==", False),
    # <in>: substring of a string, element of a list
    ("sse4 avx2", "<in> avx", True),
    ("sse4", "<in> avx", False),
    (["avx2", "sse4"], "<in> avx2", True),
    (["avx2"], "<in> avx", False),
    (42, "<in> 4", True),
    ("x", "<in>", False),
    # <all-in>: every word
    (["a", "b", "c"], "<all-in> a c", True),
    (["a", "b"], "<all-in> a d", False),
    (["ab"], "<all-in> a", False),
    ("avx sse", "<all-in> avx sse", True),
    ([1, 2], "<all-in> 1 2", True),
    (("a", "b"), "<all-in> b", True),
    ("x", "<all-in>", False),
    # <or>: alternatives at every second word, keywords not checked (Nova)
    ("a", "<or> a <or> b", True),
    ("b", "<or> a <or> b", True),
    ("c", "<or> a <or> b", False),
    ("b", "<or> a b", False),
    ("c", "<or> a x c", True),
    (11, "<or> 11 <or> 12", True),
    ("a", "<or> a <or>", True),
    ("x", "<or>", False),
    ("a", "<or>a", False),
    # None never matches
    (None, "None", False),
    (None, "<or> None", False),
    (None, "= 1", False),
]


@pytest.mark.parametrize(("value", "req", "expected"), CASES)
def test_match(value: Any, req: str, expected: bool) -> None:
    assert match(value, req) is expected


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("req", [None, 5, b"x86_64", ["== 1"]])
def test_requirement_that_is_not_a_string_does_not_match(req: Any) -> None:
    assert match("x86_64", req) is False


words = st.sampled_from(["=", "==", "!=", ">=", "<=", "s==", "s<", "s>=", "<in>", "<all-in>", "<or>", "1", "a"])
requirements = st.one_of(st.text(max_size=20), st.lists(words, max_size=5).map(" ".join))
values = st.one_of(
    st.none(),
    words,
    st.text(max_size=8),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@given(values, requirements)
def test_match_never_raises_and_equality_candidates_agree(value: Any, req: str) -> None:
    result = match(value, req)
    assert isinstance(result, bool)
    candidates = equality_candidates(req)
    if candidates is not None and value is not None:
        assert result == (str(value) in candidates)


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        ("x86_64", {"x86_64"}),
        ("a b", {"a b"}),
        ("", {""}),
        ("s== a100", {"a100"}),
        ("s== a b", {"a"}),
        ("s==", set()),
        ("<or> a <or> b", {"a", "b"}),
        ("<or> a x c", {"a", "c"}),
        ("<or>", set()),
        ("= 1", None),
        ("== 1", None),
        ("s!= a", None),
        ("<in> a", None),
        ("<all-in> a", None),
    ],
)
def test_equality_candidates(req: str, expected: set[str] | None) -> None:
    assert equality_candidates(req) == (None if expected is None else frozenset(expected))
