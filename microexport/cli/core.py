"""The core commands: compile, run, test."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from microexport.cli.deploy import RUN_OPTIONS
from microexport.cli.options import (
    BOARD,
    BUILD_DIR,
    COMPILE_OPTIONS,
    INPUT,
    REFERENCE,
    TEMPLATES,
    TVMC_OPTIONS,
    Command,
    Option,
    load_constants,
)


def _compile_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "target": args.target,
        "input_shapes": dict(args.input_shape) or None,
        "constants": load_constants(args.constants) or None,
        "workspace": args.workspace,
        "alignment": args.workspace_alignment,
        "templates": args.templates,
        "pools": tuple(args.pools),
        "io_in_workspace": args.io_in_workspace,
        "kernel_stack_limit": args.kernel_stack_limit,
        "tir_stages": tuple(dict.fromkeys(args.tir_stages)) or ("codegen",),
    }


def cmd_compile(args: argparse.Namespace) -> int:
    from microexport import api
    from microexport.cli.tvmc_compat import apply_tvmc_flags

    args = apply_tvmc_flags(args)  # microTVM tvmc flags → our options, or a one-line error

    result = api.compile(args.model, output=args.output, board=args.board,
                         **_compile_kwargs(args))
    memory = result.memory
    print(
        f"wrote {result.archive}: workspace {memory.workspace_bytes} B, "
        f"constants {memory.constants_bytes} B, I/O {memory.io_bytes} B"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from microexport.cli.deploy import run_target  # a project directory, or an archive for --board

    return run_target(args)


def cmd_test(args: argparse.Namespace) -> int:
    from microexport import api

    report = api.test(args.model, board=args.board, build_dir=args.build_dir,
                      reference=args.reference, **_compile_kwargs(args))
    print(report.summary())
    return 0 if report.passed else 1


COMMANDS = (
    Command(
        "compile",
        "compile a model (.onnx, .tflite, .pt2) to a Model Library Format archive",
        cmd_compile,
        (Option(("model",), "model file", {"type": Path}),),
        (Option(("-o", "--output"), "archive to write (.tar)", {"type": Path, "required": True}),
         Option(("--board",), "plan the workspace pools the board's file declares (e.g. DTCM "
                "then SRAM), unless --workspace-pool is given", {"default": None}),
         *COMPILE_OPTIONS, *TVMC_OPTIONS),
    ),
    Command(
        "run",
        "run a project, or an archive built for --board, on .npy inputs; write <output>.npy "
        "files (and, on Cortex-M in QEMU, the instructions per inference)",
        cmd_run,
        (Option(("archive",), "Model Library Format archive (.tar) or project directory",
                {"type": Path}),),
        (Option(("--board",), "board to run an archive on (default host; a project knows its "
                "board)", {"default": None}),
         INPUT, Option(("-o", "--output"), "directory for output .npy files",
                       {"type": Path, "required": True}), BUILD_DIR, TEMPLATES, *RUN_OPTIONS),
    ),
    Command(
        "test",
        "compile, build, run on a board and compare with a reference runtime",
        cmd_test,
        (Option(("model",), "model file", {"type": Path}),),
        (BOARD, REFERENCE, BUILD_DIR, *COMPILE_OPTIONS),
    ),
)


