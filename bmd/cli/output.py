"""What every command prints: ``-f table|json|yaml|value|csv``, ``-c COLUMN``, ``--long`` and ``--sort``.

A list is rows of API objects; a show is one object, printed as a Field/Value table for a human. The
machine formats keep the API's types (json, yaml) or print bare values (value: one row per line, values
separated by a space; csv: a header and quoted rows), so a script never parses a table. Nested values
(capabilities, interfaces) are compact JSON in the text formats. Tables are drawn by PrettyTable, the
library the OpenStack clients draw theirs with; PyYAML writes yaml (imported only for ``-f yaml``).
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import click

FORMATS = ("table", "json", "yaml", "value", "csv")


def text_of(value: Any, empty: str = "") -> str:
    """One value as text: strings as they are, None as ``empty``, everything else as compact JSON."""
    if value is None:
        return empty
    if isinstance(value, str):
        return value
    return json.dumps(
        value, sort_keys=True, default=str, separators=(",", ":") if isinstance(value, dict | list) else None
    )


def _row_key(column: str, row: dict[str, Any]) -> tuple[int, Any]:
    return _sort_key(row.get(column))


def _sort_key(value: Any) -> tuple[int, Any]:
    """Missing values last; numbers by number, everything else by its text."""
    if value is None:
        return (2, "")
    if isinstance(value, bool | int | float):
        return (0, value)
    return (1, text_of(value))


def parse_sort(specs: Sequence[str]) -> list[tuple[str, bool]]:
    """``--sort name`` / ``--sort power_state:desc`` (repeatable, or comma-separated): (column, descending)."""
    out = []
    for spec in specs:
        for part in spec.split(","):
            column, _, direction = part.strip().partition(":")
            direction = direction.lower() or "asc"
            if not column or direction not in ("asc", "desc"):
                raise _bad(f"{part!r}: expected COLUMN[:asc|desc]", "--sort")
            out.append((column.replace("-", "_"), direction == "desc"))
    return out


@dataclass
class Output:
    """The output options of one command, and how to print with them."""

    fmt: str = "table"
    columns: tuple[str, ...] = ()
    long: bool = False
    sort: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    long_columns: tuple[str, ...] = ()
    stream: TextIO | None = field(default=None, repr=False)

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout

    def pick(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """The columns to print: ``-c`` ones (checked against what the rows have), else default or long."""
        if not self.columns:
            return list(self.long_columns if self.long and self.long_columns else self.default or _keys(rows))
        known = set(self.long_columns) | set(self.default) | set(_keys(rows))
        picked = [c.replace("-", "_") for c in self.columns]
        unknown = [c for c in picked if c not in known]
        if unknown:
            raise _bad(f"unknown column {', '.join(unknown)}; known: {', '.join(sorted(known))}", "-c/--column")
        return picked

    def rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Print a list (sorted by ``--sort``) in the chosen format."""
        data = list(rows)
        order = parse_sort(self.sort)
        known = set(self.long_columns) | set(self.default) | set(_keys(data))
        for column, _ in order:
            if data and column not in known:
                raise _bad(f"unknown column {column}; known: {', '.join(sorted(known))}", "--sort")
        for column, descending in reversed(order):  # stable sorts, last key first
            data.sort(key=functools.partial(_row_key, column), reverse=descending)
        columns = self.pick(data)
        write = WRITERS[self.fmt]
        write(self.out, columns, [[r.get(c) for c in columns] for r in data], True)

    def one(self, obj: dict[str, Any]) -> None:
        """Print one object: a Field/Value table, or the object itself in a machine format."""
        columns = self.pick([obj]) if self.columns else list(obj)
        values = [obj.get(c) for c in columns]
        if self.fmt in ("json", "yaml", "csv"):
            WRITERS[self.fmt](self.out, columns, [values], False)
        elif self.fmt == "value":
            for value in values:
                self.out.write(text_of(value) + "\n")
        else:
            _table(self.out, ["field", "value"], [[c, v] for c, v in zip(columns, values, strict=True)], True)


def _bad(message: str, option: str) -> click.BadParameter:
    """A bad option value found while printing; the error names the command (its --help)."""
    return click.BadParameter(message, ctx=click.get_current_context(silent=True), param_hint=option)


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _table(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]], is_list: bool) -> None:
    from prettytable import PrettyTable

    table = PrettyTable(field_names=list(columns))
    table.align = "l"
    for row in rows:
        table.add_row([text_of(v, "-" if is_list else "") for v in row])
    out.write(table.get_string() + "\n")


def _json(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]], is_list: bool) -> None:
    objs = [dict(zip(columns, row, strict=True)) for row in rows]
    out.write(json.dumps(objs if is_list else objs[0], indent=2, sort_keys=False, default=str) + "\n")


def _yaml(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]], is_list: bool) -> None:
    import yaml

    objs = [dict(zip(columns, row, strict=True)) for row in rows]
    out.write(yaml.safe_dump(objs if is_list else objs[0], sort_keys=False, default_flow_style=False))


def _value(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]], is_list: bool) -> None:
    for row in rows:
        out.write(" ".join(text_of(v) for v in row) + "\n")


def _csv(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]], is_list: bool) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([text_of(v) for v in row] for row in rows)


WRITERS: dict[str, Callable[[TextIO, Sequence[str], Sequence[Sequence[Any]], bool], None]] = {
    "table": _table,
    "json": _json,
    "yaml": _yaml,
    "value": _value,
    "csv": _csv,
}
