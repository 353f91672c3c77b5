"""What the commands share: the app object (settings, API client), the output options, argument parsers.

A command is a Click function decorated with ``@pass_app`` (it gets the :class:`CliApp`) and, when it
prints API objects, ``@list_output(...)`` or ``@show_output(...)`` (it gets an :class:`Output` as ``out``).
It returns nothing on success or an exit code; errors are raised (``InvalidInput``: exit 2, ``ApiError``
and ``BmdError``: exit 1) and :func:`bmd.cli.main` prints them as one line.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from bmd.cli.client import Client
from bmd.cli.output import FORMATS, Output, parse_sort

__all__ = [
    "CliApp",
    "Output",
    "list_output",
    "node_argument",
    "pairs",
    "parse_value",
    "pass_app",
    "read_json_file",
    "show_output",
    "walk",
]
from bmd.errors import InvalidInput

if TYPE_CHECKING:
    from bmd.config import Settings

F = Callable[..., Any]


class CliApp:
    """What a command needs: the global options, settings (loaded on first use) and an API client."""

    def __init__(self, config: str | None, url: str | None, token: str | None) -> None:
        self.config = config
        self.url = url
        self.token = token
        self.command_path = "bmd"

    @cached_property
    def settings(self) -> Settings:
        from bmd.config import load_settings

        return load_settings(self.config)

    @cached_property
    def client(self) -> Client:
        if self.url is not None and self.url.startswith("http:") and self.token is not None:  # no config read
            return Client(self.url, self.token)
        return Client.from_settings(self.settings, self.url, self.token)

    def print(self, data: Any) -> None:
        """JSON for the few commands whose answer is not an API object (``db``, ``config``, ``lab``)."""
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def pass_app(func: F) -> F:
    """Give a command the :class:`CliApp` as its first argument (and tell the app which command runs, for
    the error line's "see 'bmd ... --help'")."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.find_object(CliApp)
        assert app is not None  # the root group made it
        app.command_path = ctx.command_path
        return func(app, *args, **kw)

    return wrapper


def _format_options(f: F, with_list: bool) -> F:
    opts = [
        click.option(
            "-f",
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="table",
            show_default=True,
            help="output format",
        ),
        click.option(
            "-c",
            "--column",
            "columns",
            multiple=True,
            metavar="COLUMN",
            help="only this column (repeat for several; any field of the API object)",
        ),
    ]
    if with_list:
        opts += [
            click.option("--long", "long_", is_flag=True, help="more columns"),
            click.option("--sort", multiple=True, metavar="COLUMN[:asc|desc]", help="sort by (repeat for several)"),
        ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def list_output(default: Sequence[str], long: Sequence[str] = ()) -> Callable[[F], F]:
    """Give a list command ``-f``, ``-c``, ``--long`` and ``--sort``; it receives ``out: Output``."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(
            *args: Any, fmt: str, columns: tuple[str, ...], long_: bool, sort: tuple[str, ...], **kw: Any
        ) -> Any:
            parse_sort(sort)  # a bad --sort is a usage error before any API call
            out = Output(fmt, columns, long_, sort, tuple(default), tuple(long) or tuple(default))
            return func(*args, out=out, **kw)

        return _format_options(wrapper, with_list=True)

    return decorate


def show_output(func: F) -> F:
    """Give a command that prints one object ``-f`` and ``-c``; it receives ``out: Output``."""

    @functools.wraps(func)
    def wrapper(*args: Any, fmt: str, columns: tuple[str, ...], **kw: Any) -> Any:
        return func(*args, out=Output(fmt, columns), **kw)

    return _format_options(wrapper, with_list=False)


def complete_nodes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a NODE argument: the names (else ids) of the nodes the API lists, through the
    root's --config/--url/--token. Completion must never fail loudly: any error completes nothing."""
    root = ctx.find_root().params
    app = CliApp(root.get("config"), root.get("url"), root.get("token"))
    try:
        names = [str(n.get("name") or n["id"]) for n in walk(app.client, "/v1/nodes", "nodes")]
    except Exception:  # noqa: BLE001 - no daemon, no token, bad config: nothing to offer
        return []
    return [n for n in names if n.startswith(incomplete)]


def node_argument(name: str = "node") -> Callable[[F], F]:
    """A NODE argument (id, uuid or name) that the shell completes with the API's node names."""
    decorate: Callable[[F], F] = click.argument(name, metavar="NODE", shell_complete=complete_nodes)
    return decorate


def parse_value(raw: str) -> Any:
    """A capability value: JSON when it parses as JSON (numbers, lists, objects), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def pairs(values: Sequence[str] | None, option: str, *, typed: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict (``typed``: values parsed as JSON when they are JSON)."""
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{option} {item!r}: expected KEY=VALUE", field=option)
        out[key] = parse_value(value) if typed else value
    return out


def read_json_file(path: str, what: str, field: str) -> Any:
    """A JSON file's content; an unreadable or broken file is bad input naming the file (exit 2)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise InvalidInput(f"{what} {path}: {err}", field=field) from err


def walk(client: Client, path: str, items: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every row of a paged list (the API's keyset ``next``), however many pages."""
    yield from client.get_all(path, items, params)
