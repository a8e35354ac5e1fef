"""Command-line front end: each command is a thin call into `microexport.api`.

User errors (`microexport.errors.Error`) print one line and exit with status 2; `-v` shows the
traceback and the commands run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import Error


@dataclass(frozen=True)
class Option:
    """One command-line option, declared once and shared by the commands that take it."""

    flags: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, help=self.help, **self.kwargs)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:1x3x48x192` → ("NAME", (1, 3, 48, 192))."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"bad --input-shape '{text}': expected NAME:DIMxDIM..., e.g. input:1x3x48x192"
        )
    return name, shape


NAME = Option(("--name",), "model name used in C symbols (tvmgen_<name>_...)",
              {"default": "model"})
TARGET = Option(("--target",), "TVM target; only C targets are supported", {"default": "c"})
INPUT_SHAPE = Option(
    ("--input-shape",),
    "fix a dynamic input dimension, NAME:1x3x48x192 (repeatable)",
    {"type": parse_input_shape, "action": "append", "default": [], "metavar": "NAME:SHAPE"},
)
WORKSPACE = Option(
    ("--workspace",),
    "where the workspace pool lives: a static array in the generated glue, or passed by the "
    "caller to tvmgen_<name>_run",
    {"choices": ["static", "external"], "default": "static"},
)
ALIGNMENT = Option(
    ("--workspace-alignment",),
    "byte alignment of pools and of every buffer inside them (power of two)",
    {"type": int, "default": 16},
)
TEMPLATES = Option(
    ("--templates",),
    "directory of Jinja templates overriding the packaged ones by file name",
    {"type": Path, "metavar": "DIR"},
)
BOARD = Option(("--board",), "board to run on (see boards/)", {"default": "host"})
INPUT = Option(
    ("--input",),
    "input tensor as .npy, NAME=FILE or FILE in model input order (repeatable)",
    {"action": "append", "default": [], "metavar": "[NAME=]FILE.npy"},
)
BUILD_DIR = Option(("--build-dir",), "keep build files here (default: a temporary directory)",
                   {"type": Path})
COMPILE_OPTIONS = (NAME, TARGET, INPUT_SHAPE, WORKSPACE, ALIGNMENT, TEMPLATES)


def _compile_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "target": args.target,
        "input_shapes": dict(args.input_shape) or None,
        "workspace": args.workspace,
        "alignment": args.workspace_alignment,
        "templates": args.templates,
    }


def cmd_compile(args: argparse.Namespace) -> int:
    from . import api

    result = api.compile(args.model, output=args.output, **_compile_kwargs(args))
    memory = result.metadata["memory"]
    print(
        f"wrote {result.archive}: workspace {memory['workspace_bytes']} B, "
        f"constants {memory['constants_bytes']} B, I/O {memory['io_bytes']} B"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import api

    outputs = api.run_files(args.archive, args.input, args.output, board=args.board,
                            build_dir=args.build_dir, templates=args.templates)
    for path in outputs:
        print(f"wrote {path}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from . import api

    report = api.test(args.model, board=args.board, build_dir=args.build_dir,
                      **_compile_kwargs(args))
    print(report.summary())
    return 0 if report.passed else 1


@dataclass(frozen=True)
class Command:
    """A subcommand: name, help, positional arguments, shared options and its handler."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    positionals: tuple[Option, ...]
    options: tuple[Option, ...]


COMMANDS = (
    Command(
        "compile",
        "compile a model (.onnx, .tflite, .pt2) to a Model Library Format archive",
        cmd_compile,
        (Option(("model",), "model file", {"type": Path}),),
        (Option(("-o", "--output"), "archive to write (.tar)", {"type": Path, "required": True}),
         *COMPILE_OPTIONS),
    ),
    Command(
        "run",
        "build an archive for a board, run it on .npy inputs, write <output>.npy files",
        cmd_run,
        (Option(("archive",), "Model Library Format archive (.tar)", {"type": Path}),),
        (BOARD, INPUT, Option(("-o", "--output"), "directory for output .npy files",
                              {"type": Path, "required": True}), BUILD_DIR, TEMPLATES),
    ),
    Command(
        "test",
        "compile, build, run on a board and compare with a reference runtime",
        cmd_test,
        (Option(("model",), "model file", {"type": Path}),),
        (BOARD, BUILD_DIR, *COMPILE_OPTIONS),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every command."""
    parser = argparse.ArgumentParser(
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
        return args.handler(args)
    except Error as err:
        if args.verbose:
            raise
        print(f"microexport: error: {err.one_line()}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("microexport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
