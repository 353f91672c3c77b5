"""``bmd completion bash|zsh|fish``: the shell's completion script for bmd (Click's own mechanism).

Install, e.g. for bash: ``bmd completion bash > ~/.local/share/bash-completion/completions/bmd``; zsh:
``bmd completion zsh > "${fpath[1]}/_bmd"``; fish: ``bmd completion fish > ~/.config/fish/completions/bmd.fish``
(or ``eval "$(bmd completion bash)"`` in the shell's rc file). The script calls ``bmd`` back with
``_BMD_COMPLETE`` set, which :func:`bmd.cli.main` answers with the commands and options that fit.
"""

from __future__ import annotations

import click

COMPLETE_VAR = "_BMD_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish); see docs/cli.md to install it."""
    from click.shell_completion import get_completion_class

    from bmd.cli import PROG, cli

    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of Click's
    click.echo(cls(cli, {}, PROG, COMPLETE_VAR).source())
