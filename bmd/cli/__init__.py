"""The ``bmd`` command: ``serve``, ``db``, ``status`` and the operator's verbs over the HTTP API, on Click.

Exit status, the same for every command: 0 success; 1 the operation failed (an API error, an unreachable
service, a deploy or inspection that ended in error, the database); 2 bad usage (an unknown option, a bad
value, a file that is not JSON, a request the API refused as invalid, bad configuration). Every error is
one line on stderr, ``bmd: error: ...``, saying what to do. A closed stdout (``bmd node list | head -1``)
ends the command quietly.

Adding a command: see ``docs/cli.md`` ("Adding a command").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from bmd.cli.base import CliApp
from bmd.cli.client import ApiError
from bmd.cli.completion import COMPLETE_VAR
from bmd.errors import BmdError, ConfigError, InvalidInput

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "bmd"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", envvar="BMD_CONFIG", metavar="FILE", help="TOML config file ($BMD_CONFIG)")
@click.option("--url", envvar="BMD_URL", help="API URL ($BMD_URL; default from the config's api.host and api.port)")
@click.option("--token", envvar="BMD_TOKEN", help="API token ($BMD_TOKEN; default: the file api.token_file)")
@click.version_option(package_name="bmd", prog_name=PROG, message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config: str | None, url: str | None, token: str | None) -> None:
    """bmd: bare-metal management daemon, and the operator's client of its API.

    Lists take -f table|json|yaml|value|csv, -c COLUMN (repeat), --long and --sort COLUMN[:desc]; shows
    take -f and -c. Shell completion: bmd completion bash|zsh|fish (see its --help)."""
    app = ctx.ensure_object(CliApp)
    app.config, app.url, app.token = config, url, token


def _register() -> None:
    from bmd.cli import (
        capabilities,
        completion,
        db,
        flavors,
        history,  # noqa: F401 - adds node history to nodes.group
        instances,
        lab,
        nodes,
        ports,
        power,  # noqa: F401 - adds node power|boot-device|maintenance|clean to nodes.group
        pxe_ips,
        ramdisk,
        serve,
        status,
        tokens,
    )

    # the per-node capability commands, also under the node's group (the same command objects)
    nodes.group.add_command(capabilities.set_, "set-capability")
    nodes.group.add_command(capabilities.delete, "unset-capability")
    for command in (
        serve.serve,
        serve.check_config,
        db.group,
        status.status,
        nodes.group,
        ports.group,
        capabilities.group,
        flavors.group,
        instances.group,
        pxe_ips.group,
        lab.command,
        ramdisk.group,
        tokens.group,
        completion.completion,
    ):
        cli.add_command(command)


_register()


def _usage_line(err: click.UsageError) -> str:
    where = err.ctx.command_path if err.ctx is not None else PROG
    return f"{PROG}: error: {err.format_message()} (see '{where} --help')"


def _api_error_line(err: ApiError, app: CliApp) -> str:
    if err.status == 401 and not _has_token(app):
        hint = ""  # the client's message already says which token to set (bmd.cli.client.NO_TOKEN)
    elif err.status == 401:
        hint = ": the token was refused; check --token, BMD_TOKEN or the file api.token_file names"
    else:
        hint = ""
    return f"{PROG}: error: {err} (HTTP {err.status}){hint}"


def _has_token(app: CliApp) -> bool:
    try:
        return bool(app.client.token)
    except BmdError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (the ``bmd`` script and ``python -m bmd`` exit with it)."""
    if COMPLETE_VAR in os.environ:  # the shell's completion script asking what fits (bmd completion SHELL)
        from click.shell_completion import shell_complete

        return shell_complete(cli, {}, PROG, COMPLETE_VAR, os.environ[COMPLETE_VAR])
    app = CliApp(None, None, None)  # the root group fills it in from the global options
    try:
        with cli.make_context(PROG, list(sys.argv[1:] if argv is None else argv), obj=app) as ctx:
            result = cli.invoke(ctx)
        return result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as err:  # --help, --version
        return err.exit_code
    except click.exceptions.NoArgsIsHelpError as err:  # "bmd" or "bmd node" alone: the help, and usage's exit
        click.echo(err.ctx.get_help() if err.ctx else err.format_message())
        return EXIT_USAGE
    except click.UsageError as err:
        click.echo(_usage_line(err), err=True)
        return EXIT_USAGE
    except click.ClickException as err:  # e.g. a file option naming a file that cannot be opened
        click.echo(f"{PROG}: error: {err.format_message()}", err=True)
        return EXIT_FAILED
    except ConfigError as err:
        click.echo(f"{PROG}: error: {err} (the config: --config or BMD_CONFIG)", err=True)
        return EXIT_USAGE
    except InvalidInput as err:
        click.echo(f"{PROG}: error: {err} (see '{app.command_path} --help')", err=True)
        return EXIT_USAGE
    except ApiError as err:
        click.echo(_api_error_line(err, app), err=True)
        return EXIT_USAGE if err.status == 400 else EXIT_FAILED
    except BmdError as err:
        click.echo(f"{PROG}: error: {err}", err=True)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (| head): not an error. Point stdout at /dev/null so the interpreter's
        # final flush does not fail again and print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (KeyboardInterrupt, click.Abort):
        click.echo("", err=True)
        return 130
