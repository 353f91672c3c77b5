"""Inspection rules: conditions on an inspection report and what to do when one holds (no ``eval``).

A rule is ``{if = "<condition>", then = "<action>" | ["<action>", ...]}`` (``[inspection] rules``). The
condition's grammar (a hand-written recursive-descent parser, below)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" condition ")" | comparison
    comparison := operand OP operand            OP: <  <=  ==  !=  >=  >  ~=
    operand    := path | INTEGER | STRING | true | false | null
    path       := NAME ("." NAME | "[" INTEGER "]")*        e.g. disks[0].model, cpu.count, memory_mb
    STRING     := '...' or "..." (backslash escapes the quote and itself)

Paths name the report's fields (:class:`~bmd.inspection.report.InspectionReport`: ``cpu``, ``memory``,
``boot_mode``, ``system``, ``disks``, ``nics``) and the node fields inspection gives (``cpus``,
``memory_mb``, ``local_gb``, ``cpu_arch``, ``root_disk`` the disk chosen as root). They are checked
against the model when the rule is read, and so are the types: ``<``… compare two integers, ``==``/``!=``
two values of one type (or with ``null``), ``~=`` a text path with a regular expression (Python ``re``,
searched, not anchored; compiled when the rule is read). A path that does not exist in this report
(``disks[3]`` on a two-disk machine, a NIC without LLDP) is ``null``: ordering and ``~=`` on ``null`` are
false.

Actions: ``maintenance [reason]`` (the node is put in maintenance with that reason), ``capability
KEY=VALUE`` (added to the node's capabilities, its ``extra_specs``), ``fail [reason]`` (the inspection
fails with that reason). Every bad rule is refused when the configuration is read: :class:`RuleError`
names the problem and where it is.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel

from bmd.inspection.report import Disk, InspectionReport

OPS = ("<=", ">=", "==", "!=", "~=", "<", ">")
KEYWORDS = {"and", "or", "not", "true", "false", "null"}
MAX_RULE = 1000
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>-?\d+)(?![A-Za-z_])
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op><=|>=|==|!=|~=|<|>)
    | (?P<punct>[()\[\].])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)
CAPABILITY_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")  # what the API's node extra_specs accept


class RuleError(ValueError):
    """A rule that cannot be used: the message says what and where."""


# --- the names a path may use: the report's model plus the node fields --------------------------------

Kind = Literal["int", "str", "bool"]


@dataclass(frozen=True)
class _List:
    item: type[BaseModel]


_Node = type[BaseModel] | _List | str  # a model, a list of models, or a scalar kind


def _kind_of(annotation: Any) -> _Node:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind_of(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind_of(args[0])
    if origin is list:
        (item,) = typing.get_args(annotation)
        inner = _kind_of(item)
        assert isinstance(inner, type), annotation
        return _List(inner)
    if origin is Literal:
        return "str" if isinstance(typing.get_args(annotation)[0], str) else "int"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is str:
        return "str"
    raise TypeError(f"no rule kind for {annotation!r}")


def _fields(model: type[BaseModel]) -> dict[str, _Node]:
    return {name: _kind_of(f.annotation) for name, f in model.model_fields.items()}


ROOT: dict[str, _Node] = {
    **_fields(InspectionReport),
    "cpus": "int",
    "memory_mb": "int",
    "local_gb": "int",
    "cpu_arch": "str",
    "root_disk": Disk,
}


# --- the syntax tree -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    parts: tuple[str | int, ...]
    kind: str

    def value(self, facts: Mapping[str, Any]) -> Any:
        cur: Any = facts
        for part in self.parts:
            if isinstance(part, int):
                cur = cur[part] if isinstance(cur, list) and -len(cur) <= part < len(cur) else None
            else:
                cur = cur.get(part) if isinstance(cur, Mapping) else None
            if cur is None:
                return None
        return cur

    def __str__(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.parts).lstrip(".")


@dataclass(frozen=True)
class Const:
    value: Any
    kind: str  # "int", "str", "bool" or "null"

    def __str__(self) -> str:
        if self.kind == "bool":
            return "true" if self.value else "false"
        return "null" if self.value is None else repr(self.value)


@dataclass(frozen=True)
class Compare:
    left: Path | Const
    op: str
    right: Path | Const
    pattern: re.Pattern[str] | None = None

    def holds(self, facts: Mapping[str, Any]) -> bool:
        a = self.left.value(facts) if isinstance(self.left, Path) else self.left.value
        b = self.right.value(facts) if isinstance(self.right, Path) else self.right.value
        if self.op == "==":
            return bool(a == b)
        if self.op == "!=":
            return bool(a != b)
        if a is None or b is None:
            return False
        if self.op == "~=":
            assert self.pattern is not None
            return self.pattern.search(str(a)) is not None
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int) or not isinstance(b, int):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]


@dataclass(frozen=True)
class Not:
    inner: Expr

    def holds(self, facts: Mapping[str, Any]) -> bool:
        return not self.inner.holds(facts)


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    items: tuple[Expr, ...]

    def holds(self, facts: Mapping[str, Any]) -> bool:
        results = (e.holds(facts) for e in self.items)
        return all(results) if self.op == "and" else any(results)


Expr = Compare | Not | BoolOp


# --- the parser --------------------------------------------------------------------------------------------


@dataclass
class _Tok:
    kind: str  # num, str, op, punct, name, end
    text: str
    col: int


def _tokens(src: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while True:
        while pos < len(src) and src[pos].isspace():
            pos += 1
        if pos >= len(src):
            out.append(_Tok("end", "", pos + 1))
            return out
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise RuleError(f"at column {pos + 1}: unexpected {src[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append(_Tok(kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks = _tokens(src)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, tok: _Tok, msg: str) -> RuleError:
        shown = f"{tok.text!r}" if tok.kind != "end" else "the end"
        return RuleError(f"at column {tok.col} ({shown}): {msg}")

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text == word

    def parse(self) -> Expr:
        expr = self.or_()
        if self.peek().kind != "end":
            raise self.error(self.peek(), "expected 'and', 'or' or the end of the condition")
        return expr

    def or_(self) -> Expr:
        items = [self.and_()]
        while self.is_word("or"):
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_(self) -> Expr:
        items = [self.not_()]
        while self.is_word("and"):
            self.take()
            items.append(self.not_())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_(self) -> Expr:
        if self.is_word("not"):
            self.take()
            return Not(self.not_())
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            inner = self.or_()
            close = self.take()
            if close.kind != "punct" or close.text != ")":
                raise self.error(close, "expected ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        start = self.peek()
        left = self.operand()
        tok = self.take()
        if tok.kind != "op":
            raise self.error(tok, f"expected a comparison ({' '.join(OPS)}) after {start.text!r}")
        right = self.operand()
        return _check(left, tok.text, right, start)

    def operand(self) -> Path | Const:
        tok = self.take()
        if tok.kind == "num":
            return Const(int(tok.text), "int")
        if tok.kind == "str":
            return Const(_unquote(tok.text), "str")
        if tok.kind == "name":
            if tok.text in ("true", "false"):
                return Const(tok.text == "true", "bool")
            if tok.text == "null":
                return Const(None, "null")
            if tok.text in KEYWORDS:
                raise self.error(tok, "expected a value or a path, not a keyword")
            return self.path(tok)
        raise self.error(tok, "expected a value (a number, a 'string', true, false, null) or a path")

    def path(self, first: _Tok) -> Path:
        if first.text not in ROOT:
            raise self.error(first, f"unknown name (known: {', '.join(sorted(ROOT))})")
        node: _Node = ROOT[first.text]
        parts: list[str | int] = [first.text]
        while self.peek().kind == "punct" and self.peek().text in ".[":
            tok = self.take()
            where = str(Path(tuple(parts), ""))
            if tok.text == "[":
                idx = self.take()
                if idx.kind != "num":
                    raise self.error(idx, f"expected a whole number index into {where}")
                close = self.take()
                if close.kind != "punct" or close.text != "]":
                    raise self.error(close, "expected ']'")
                if not isinstance(node, _List):
                    raise self.error(idx, f"{where} is not a list")
                parts.append(int(idx.text))
                node = node.item
            else:
                name = self.take()
                if name.kind != "name":
                    raise self.error(name, f"expected a field name after '{where}.'")
                if isinstance(node, _List):
                    raise self.error(name, f"{where} is a list: index it first ({where}[0].{name.text})")
                if not isinstance(node, type):
                    raise self.error(name, f"{where} has no fields")
                fields = _fields(node)
                if name.text not in fields:
                    raise self.error(name, f"{where} has no field {name.text!r} (it has: {', '.join(fields)})")
                parts.append(name.text)
                node = fields[name.text]
        where = str(Path(tuple(parts), ""))
        if isinstance(node, _List):
            raise RuleError(f"at column {first.col}: {where} is a list: compare one of its items ({where}[0]...)")
        if isinstance(node, type):
            raise RuleError(f"at column {first.col}: {where} has fields: compare one ({', '.join(_fields(node))})")
        return Path(tuple(parts), node)


def _check(left: Path | Const, op: str, right: Path | Const, at: _Tok) -> Compare:
    def err(msg: str) -> RuleError:
        return RuleError(f"at column {at.col}: {msg}")

    if isinstance(left, Const) and isinstance(right, Const):
        raise err("a comparison needs at least one path into the report")
    if op == "~=":
        if not isinstance(left, Path) or left.kind != "str":
            raise err(f"'~=' needs a text path on its left ({left} is not one)")
        if not isinstance(right, Const) or right.kind != "str":
            raise err("'~=' needs a 'regular expression' string on its right")
        try:
            pattern = re.compile(right.value)
        except re.error as e:
            raise err(f"bad regular expression {right.value!r}: {e}") from None
        return Compare(left, op, right, pattern)
    if op in ("==", "!="):
        if "null" not in (left.kind, right.kind) and left.kind != right.kind:
            raise err(f"{left} is {left.kind} and {right} is {right.kind}: '{op}' compares values of one type")
        return Compare(left, op, right)
    for side in (left, right):
        if side.kind != "int":
            raise err(f"'{op}' compares whole numbers: {side} is {side.kind}")
    return Compare(left, op, right)


def parse_condition(src: str) -> Expr:
    """The syntax tree of a condition (RuleError naming the column of the problem)."""
    if not isinstance(src, str) or not src.strip():
        raise RuleError("the condition is empty")
    if len(src) > MAX_RULE:
        raise RuleError(f"the condition is longer than {MAX_RULE} characters")
    return _Parser(src).parse()


# --- actions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    verb: Literal["maintenance", "capability", "fail"]
    text: str = ""  # the reason (maintenance, fail)
    key: str = ""  # capability
    value: str = ""


def parse_action(src: str) -> Action:
    if not isinstance(src, str) or not src.strip():
        raise RuleError("an action is empty")
    verb, _, rest = src.strip().partition(" ")
    rest = rest.strip()
    if verb in ("maintenance", "fail"):
        if len(rest) > 255:
            raise RuleError(f"{verb}: the reason is longer than 255 characters")
        return Action(verb, text=rest)  # type: ignore[arg-type]
    if verb == "capability":
        key, eq, value = rest.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise RuleError(f"capability: expected KEY=VALUE, got {rest!r}")
        if not CAPABILITY_KEY.match(key):
            raise RuleError(f"capability: bad key {key!r} (letters, digits, _ . -, starting with a letter)")
        from bmd.api.schemas import RESERVED_SPEC_KEYS  # the API's rule, in one place (imported late: no cycle)

        if key in RESERVED_SPEC_KEYS:
            raise RuleError(f"capability: {key!r} is reserved (bmd computes it)")
        if len(value) > 255 or not value.isprintable():
            raise RuleError(f"capability {key}: the value must be printable and at most 255 characters")
        return Action("capability", key=key, value=value)
    raise RuleError(f"unknown action {verb!r} (maintenance [reason], capability KEY=VALUE, fail [reason])")


# --- rules -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    index: int
    source: str
    condition: Expr
    actions: tuple[Action, ...]


def compile_rule(index: int, spec: Mapping[str, Any]) -> Rule:
    """One rule from its configuration table; RuleError("rule N (...): problem") when it is bad."""
    shown = repr(spec.get("if")) if isinstance(spec, Mapping) else repr(spec)
    try:
        if not isinstance(spec, Mapping):
            raise RuleError('a rule is a table {if = "...", then = "..."}')
        unknown = sorted(set(spec) - {"if", "then"})
        if unknown:
            raise RuleError(f"unknown key {unknown[0]!r} (a rule has 'if' and 'then')")
        if "if" not in spec or "then" not in spec:
            raise RuleError(f"missing {'if' if 'if' not in spec else 'then'!r}")
        condition = parse_condition(spec["if"])
        then = spec["then"]
        items = [then] if isinstance(then, str) else then
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise RuleError("'then' is an action or a non-empty list of actions")
        actions = tuple(parse_action(a) for a in items)
    except RuleError as err:
        raise RuleError(f"rule {index} (if {shown}): {err}") from None
    return Rule(index, str(spec["if"]), condition, actions)


def compile_rules(specs: Sequence[Mapping[str, Any]]) -> tuple[Rule, ...]:
    return tuple(compile_rule(i, s) for i, s in enumerate(specs))


@dataclass
class Outcome:
    """What the rules decided for one report."""

    matched: list[int] = field(default_factory=list)
    maintenance: str | None = None  # the reason when a rule asks for maintenance
    failure: str | None = None
    capabilities: dict[str, str] = field(default_factory=dict)


def apply_rules(rules: Sequence[Rule], facts: Mapping[str, Any]) -> Outcome:
    """Every rule in order; the first maintenance/fail reason wins, later capabilities override earlier."""
    out = Outcome()
    for rule in rules:
        if not rule.condition.holds(facts):
            continue
        out.matched.append(rule.index)
        for action in rule.actions:
            default = f"inspection rule {rule.index}: {rule.source}"
            if action.verb == "maintenance" and out.maintenance is None:
                out.maintenance = action.text or default
            elif action.verb == "fail" and out.failure is None:
                out.failure = action.text or default
            elif action.verb == "capability":
                out.capabilities[action.key] = action.value
    return out
