"""The ``focusseg`` command (console script ``focusseg``, ``python -m focusseg``).

Commands, by module: :mod:`~focusseg.cli.data` (check, plan, recipes, nets, demo), :mod:`~focusseg.cli.train`
(train, crossval, best), :mod:`~focusseg.cli.predict` (predict, ensemble, export, postprocess),
:mod:`~focusseg.cli.results` (evaluate, report, compare) and :mod:`~focusseg.cli.plugins` (plugins). The commands
check, plan, train, crossval and evaluate call :mod:`focusseg.api` (one code path for the CLI and Python);
``--plugin MODULE`` (before the command, repeatable) loads a plugin module. Shared options and checks are in
:mod:`~focusseg.cli.options`, the one error handler in :mod:`~focusseg.cli.errors`. Each command imports what it
uses when it runs, so starting the CLI (``focusseg evaluate``, ``--help``) imports no torch.
"""

from __future__ import annotations

import sys

import typer

from focusseg.cli import data, plugins, predict, results, train
from focusseg.cli.errors import run_handled
from focusseg.cli.options import ARGV_KEY

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="focusseg: 3D medical image segmentation whose training focuses on what is hard.")

for _command in (data.check, data.plan, train.train, results.report, results.compare, train.crossval, train.best,
                 predict.predict, predict.ensemble, predict.export, predict.postprocess, results.evaluate, data.demo,
                 data.recipes, data.nets, plugins.plugins):
    app.command()(_command)  # in this order in --help


@app.callback()
def _options(plugin: list[str] = typer.Option(
        [], "--plugin", help="Load this plugin module first (MODULE or MODULE:FUNCTION; repeat for several): it "
                             "registers networks, losses, strategies, augmentations or recipes. Installed plugins "
                             "(entry-point group focusseg.plugins) are loaded when a command needs them.")) -> None:
    """Options for every command (before the command's name)."""
    if plugin:
        from focusseg.plugins import load_plugins

        load_plugins(plugin, entry_points=False)


def main(argv: list[str] | None = None) -> int:
    """Run ``focusseg`` with ``argv`` (default: ``sys.argv[1:]``) under the one error handler
    (:func:`focusseg.cli.errors.run_handled`): an expected error prints ``error: <file>: <problem>`` (and a hint)
    on stderr; anything else one short line, its traceback only with ``--debug`` (anywhere on the command line).

    Args:
        argv: the command line after the program name.

    Returns:
        The exit code (0 on success).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    return run_handled(lambda: command.main(args=args, prog_name="focusseg", standalone_mode=False,
                                            obj={ARGV_KEY: list(args)}), debug)


__all__ = ["app", "main"]
