"""Command-line building blocks: options declared once as data, and commands.

Each command module (`core`, and later ones) exports `COMMANDS`, a tuple of `Command`; `cli.py`
builds the argparse parser from all of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class Command:
    """A subcommand: name, help, positional arguments, shared options and its handler."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    positionals: tuple[Option, ...]
    options: tuple[Option, ...]


