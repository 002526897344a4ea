"""The ``robustx`` parser and entry point: one subcommand per module of :mod:`robustx.commands`.

Add a command by writing ``robustx/commands/<name>.py`` with ``HELP`` and ``DESCRIPTION``,
``add_arguments(parser)`` (a command that writes files ends with
:func:`robustx.commands.common.add_output`, else ``set_defaults(run=run)``) and ``run(args)``,
which calls the library with plain arguments and returns an exit status, and listing the
module in :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from robustx.commands import clever, compare, demo, evaluate, landscape, metrics

__all__ = ["main", "build_parser", "COMMANDS", "USER_ERRORS"]

#: the subcommands, in the order ``robustx --help`` lists them
COMMANDS = (demo, evaluate, compare, metrics, clever, landscape)

#: The errors main() prints as one line: what the library raises for a bad argument, a bad or
#: missing file, a failed import, an unavailable device or a failed user factory
#: (:class:`robustx.pipeline.sources.UserCodeError` is a RuntimeError). Anything else
#: (AttributeError, AssertionError, IndexError, ...) is a bug in robustx and keeps its
#: traceback, to be reported; KeyboardInterrupt and SystemExit pass through.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    """The ``robustx`` parser: --debug and one subparser per command."""
    parser = argparse.ArgumentParser(prog="robustx", description="Fast, paper-faithful robustness evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        name = command.__name__.rsplit(".", 1)[1]
        command.add_arguments(subparsers.add_parser(name, help=command.HELP, description=command.DESCRIPTION))
    return parser


def _importable_working_directory() -> None:
    """Put the working directory first on ``sys.path`` when it is not there, as ``python -m``
    does, so ``--model mymodels:factory`` finds ``./mymodels.py`` under the installed
    ``robustx`` command too (whose ``sys.path`` starts with its own bin folder)."""
    import os
    import sys

    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``robustx`` console script and ``python -m robustx``.

    An error of :data:`USER_ERRORS` prints one line, ``robustx COMMAND: error: MESSAGE``
    (a multi-line message joined), and exits with 2; ``--debug`` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _importable_working_directory()
    try:
        return args.run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        parser.exit(2, f"robustx {args.command}: error: {' '.join(str(message).split())}\n")
