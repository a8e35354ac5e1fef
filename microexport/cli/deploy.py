"""Deploy commands: boards, project create, build, flash, size; and `run` on projects or boards.

Every command refuses what the project's platform cannot do on its board (from its
`Capabilities`) with "<platform> doesn't support <what>".
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from microexport.cli.options import (
    BOARD,
    BUILD_DIR,
    DRY_RUN,
    INPUT,
    PLATFORM,
    PORT,
    TEMPLATES,
    TIMEOUT,
    Command,
    Option,
)
from microexport.errors import InputError
from microexport.model import TensorSpec


def _size(region: Any) -> str:
    if region is None:
        return "-"
    size = region.size
    for unit, factor in (("M", 1024 * 1024), ("K", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def board_table() -> list[list[str]]:
    """One row per shipped board: name, cpu, fpu, flash, ram, platforms (header first)."""
    from microexport.deploy.boards import list_boards, load_board

    rows = [["name", "cpu", "fpu", "flash", "ram", "platforms"]]
    for name in list_boards():
        board = load_board(name)
        fpu = f"{board.fpu} ({board.float_abi})" if board.fpu else "-"
        cpu = board.cpu or ("native" if "host" in board.platforms else "-")
        rows.append([board.name, cpu, fpu, _size(board.flash),
                     _size(board.ram), ",".join(board.platforms)])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def cmd_boards(args: argparse.Namespace) -> int:
    del args
    print(format_table(board_table()))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from microexport.deploy.project import create_project, create_zephyr_module
    from microexport.errors import Error

    if args.kind == "zephyr-module":
        if args.platform not in (None, "zephyr"):
            raise Error(f"--kind zephyr-module is for the zephyr platform: drop --platform "
                        f"{args.platform}")
        module = create_zephyr_module(args.archive, args.board, args.output,
                                      templates=args.templates, force=args.force)
        print(f"created Zephyr module {module}: add it to an application with "
              f"-DZEPHYR_EXTRA_MODULES={module}")
        return 0
    opened = create_project(args.archive, args.board, args.output, platform=args.platform,
                            templates=args.templates, force=args.force)
    print(f"created {opened.directory}: model '{opened.info.model}' for board "
          f"'{opened.info.board}' on platform '{opened.info.platform}'")
    return 0


def _print_plan(invocations: Sequence[Any]) -> None:
    for invocation in invocations:
        print(f"(cd {invocation.cwd} && {invocation.command_line})")


def cmd_build(args: argparse.Namespace) -> int:
    from microexport.deploy.project import build_plan, build_project, open_project

    opened = open_project(args.project)
    if args.dry_run:
        _print_plan(build_plan(opened))
        return 0
    build = build_project(opened)
    print(f"built {build.artifact}")
    _print_size_line(opened)
    return 0


def _print_size_line(opened: Any) -> None:
    from microexport.deploy.platforms.base import SIZE_FILE
    from microexport.deploy.size import read_size_report

    path = opened.directory / SIZE_FILE
    if path.is_file():
        report = read_size_report(path)
        parts = []
        for key, title in (("flash", "flash"), ("ram", "RAM")):
            usage = report[key]
            limit = f" of {usage['available']}" if usage["available"] else ""
            parts.append(f"{title} {usage['used']}{limit} B")
        print(f"size: {', '.join(parts)} (details: microexport size {opened.directory})")


def cmd_flash(args: argparse.Namespace) -> int:
    from microexport.deploy.project import flash_project, open_project

    opened = open_project(args.project)
    if args.dry_run:
        opened.platform.require("can_flash", "flash")
        _print_plan(opened.platform.flash_plan(opened.platform.expected_build(opened.project)))
        return 0
    build = flash_project(opened)
    print(f"flashed {build.artifact} to {opened.info.board}")
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    import json

    from microexport.deploy.project import open_project, size_of_project

    report = size_of_project(open_project(args.project))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0


def read_inputs(
    specs: list[str], input_specs: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """Load `NAME=FILE.npy` / `FILE.npy` arguments, matched to the model's inputs."""
    names = [spec.name for spec in input_specs]
    arrays: dict[str, np.ndarray] = {}
    for position, item in enumerate(specs):
        name, sep, path = item.partition("=")
        if not sep:
            if position >= len(names):
                raise InputError(f"too many --input files: the model has {len(names)} inputs")
            name, path = names[position], item
        if name not in names:
            raise InputError(f"unknown input '{name}': the model's inputs are {', '.join(names)}")
        try:
            array = np.load(path, allow_pickle=False)
        except OSError as err:
            raise InputError(f"cannot read input '{name}' from {path}: "
                             f"{err.strerror or err}") from None
        except (ValueError, EOFError):  # not .npy, pickled, truncated or empty
            array = None
        if not isinstance(array, np.ndarray):  # also a .npz archive of several arrays
            if isinstance(array, np.lib.npyio.NpzFile):
                array.close()
            raise InputError(f"input '{name}': {path} is not a .npy array file "
                             "(write one with numpy.save)") from None
        arrays[name] = array
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"missing --input for {', '.join(missing)}")
    return arrays


def run_target(args: argparse.Namespace) -> int:
    """`microexport run`: a project directory, or an archive built for --board."""
    from microexport.deploy.platforms import get_platform
    from microexport.deploy.platforms.base import RunOptions
    from microexport.deploy.project import (
        is_project,
        open_project,
        resolve_board,
        run_project,
        write_outputs,
    )
    from microexport.errors import Error

    options = RunOptions(timeout=args.timeout, port=args.port)
    target = Path(args.archive)
    if is_project(target):
        opened = open_project(target)
        if args.board not in (None, opened.info.board):
            raise Error(f"{target} is a project for board '{opened.info.board}': drop "
                        f"--board {args.board} or create a project for that board")
        for flag, value in (("--templates", args.templates), ("--build-dir", args.build_dir)):
            if value is not None:
                raise Error(f"{flag} does not apply to a project (its templates and build "
                            f"directory were fixed by 'project create'): drop {flag}")
        if args.platform not in (None, opened.info.platform):
            raise Error(f"{target} is a project for platform '{opened.info.platform}': drop "
                        f"--platform {args.platform} or create another project")
        platform = opened.platform
        if args.dry_run:
            _print_plan(platform.run_plan(platform.expected_build(opened.project), options))
            return 0
        model = opened.project.model
        inputs = read_inputs(args.input, model.inputs)
        result = run_project(opened, inputs, options)
    else:
        from microexport.archive.mlf import read_model

        platform = get_platform(resolve_board(args.board or "host"), args.platform,
                                templates=args.templates)
        platform.check_options(options)
        if args.dry_run:
            raise Error("--dry-run needs a project directory: create one with "
                        "'microexport project create'")
        model = read_model(target)
        inputs = read_inputs(args.input, model.inputs)
        with tempfile.TemporaryDirectory(prefix="microexport-") as tmp:
            work = Path(args.build_dir) if args.build_dir is not None else Path(tmp)
            result = platform.execute_archive(target, inputs, work, options)
    for path in write_outputs(model, result.outputs, args.output):
        print(f"wrote {path}")
    if result.stats.summary():
        print(result.stats.summary())
    return 0


RUN_OPTIONS = (PLATFORM, PORT, TIMEOUT, DRY_RUN)

PROJECT = Option(("project",), "project directory (made by `microexport project create`)",
                 {"type": Path})

COMMANDS = (
    Command("boards", "list the boards: name, cpu, fpu, flash, ram, platforms", cmd_boards,
            (), ()),
    Command(
        "project",
        "create a project for a board from an archive: "
        "microexport project create ARCHIVE --board BOARD -o DIR",
        cmd_project,
        (Option(("action",), "what to do with the project", {"choices": ["create"]}),
         Option(("archive",), "Model Library Format archive (.tar)", {"type": Path})),
        (Option(("--board",), "board name or board YAML file (see `microexport boards`)",
                {"required": True}),
         Option(("-o", "--output"), "project directory to create", {"type": Path,
                                                                     "required": True}),
         PLATFORM, TEMPLATES,
         Option(("--force",), "replace an existing project directory", {"action": "store_true"}),
         Option(("--kind",), "what to create: a complete application for the board (app), or "
                "the model as a Zephyr module for an existing application (zephyr-module)",
                {"choices": ["app", "zephyr-module"], "default": "app"})),
    ),
    Command("build", "build a project (bare metal: arm-none-eabi-gcc; Zephyr: west build)",
            cmd_build, (PROJECT,), (DRY_RUN,)),
    Command("flash", "flash a project's firmware to its board (Zephyr: west flash)", cmd_flash,
            (PROJECT,), (DRY_RUN,)),
    Command("size", "flash and RAM of a project's firmware by section, kind and function "
                    "(also written to <project>/size.json)", cmd_size, (PROJECT,),
            (Option(("--json",), "print the JSON report", {"action": "store_true"}),)),
)

# `run` itself is declared in core.py; it takes these options too.
__all__ = ["BOARD", "BUILD_DIR", "COMMANDS", "INPUT", "RUN_OPTIONS", "run_target"]
