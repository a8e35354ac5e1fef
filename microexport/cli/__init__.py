"""Command-line front end: each command is a thin call into `microexport.api`.

User errors (`microexport.errors.Error`) print one line and exit with status 2; `-v` shows the
traceback and the commands run.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from collections.abc import Sequence
from typing import NoReturn

from microexport.cli import core, deploy, tir
from microexport.errors import Error
from microexport.version import __version__

COMMANDS = (*core.COMMANDS, *deploy.COMMANDS, *tir.COMMANDS)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (exit status 2), pointing at --help instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every command."""
    parser = _OneLineParser(
        prog="microexport",
        description="Compile neural networks to TVM-free C for microcontrollers.",
    )
    parser.add_argument("--version", action="version", version=f"microexport {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log commands run and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        for option in (*command.positionals, *command.options):
            option.add_to(p)
        p.set_defaults(handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `microexport` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="microexport: %(message)s",
    )
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed stdout shows here, not in the flush at interpreter exit
        return status
    except Error as err:
        if args.verbose:
            raise
        print(f"microexport: error: {err.one_line()}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("microexport: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():  # a pipe to a tool we run: not the reader of our output
            raise
        return _quiet_after_closed_stdout()


def _stdout_closed() -> bool:
    """True if the reader of our standard output has gone (`microexport boards | head -1`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file descriptor (tests, IDEs)
        return False


def _quiet_after_closed_stdout() -> int:
    """Exit status 1 without a word: the reader closed the pipe on purpose. Standard output is
    pointed at /dev/null so that Python's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
