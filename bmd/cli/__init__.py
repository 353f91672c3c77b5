"""The ``bmd`` command: ``serve``, ``db``, and the operator's verbs over the HTTP API.

Exit status: 0 success, 1 the operation failed (API error, unreachable service, database), 2 bad usage or
bad configuration (the message names the argument or key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from bmd.cli.client import ApiError, Client
from bmd.config import Settings, load_settings
from bmd.errors import BmdError, ConfigError, InvalidInput

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliApp:
    """What a command needs: settings (loaded on first use) and an API client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.args.config)

    @cached_property
    def client(self) -> Client:
        return Client.from_settings(self.settings, self.args.url, self.args.token)

    def print(self, data: Any) -> None:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bmd: error: {message}\n")


def build_parser() -> Parser:
    from bmd.cli import db, flavors, instances, lab, nodes, ramdisk, serve, tokens

    parser = Parser(prog="bmd", description="bare-metal management daemon")
    parser.add_argument("--config", default=os.environ.get("BMD_CONFIG"), help="TOML config file ($BMD_CONFIG)")
    parser.add_argument("--url", default=os.environ.get("BMD_URL"), help="API URL (default from config)")
    parser.add_argument(
        "--token", default=os.environ.get("BMD_TOKEN"), help="API token ($BMD_TOKEN; default: api.token_file)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (serve, db, nodes, flavors, instances, lab, ramdisk, tokens):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[CliApp], int | None] = args.func
    try:
        return func(CliApp(args)) or EXIT_OK
    except (ConfigError, InvalidInput) as err:
        print(f"bmd: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as err:
        print(f"bmd: error: {err} (HTTP {err.status})", file=sys.stderr)
        return EXIT_USAGE if err.status == 400 else EXIT_FAILED
    except BmdError as err:
        print(f"bmd: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
