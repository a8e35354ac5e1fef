"""The core commands: compile, run, test."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import (
    BOARD,
    BUILD_DIR,
    COMPILE_OPTIONS,
    INPUT,
    TEMPLATES,
    Command,
    Option,
)


def _compile_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "target": args.target,
        "input_shapes": dict(args.input_shape) or None,
        "workspace": args.workspace,
        "alignment": args.workspace_alignment,
        "templates": args.templates,
        "pools": tuple(args.pools),
        "io_in_workspace": args.io_in_workspace,
    }


def cmd_compile(args: argparse.Namespace) -> int:
    from .. import api

    result = api.compile(args.model, output=args.output, **_compile_kwargs(args))
    memory = result.metadata["memory"]
    print(
        f"wrote {result.archive}: workspace {memory['workspace_bytes']} B, "
        f"constants {memory['constants_bytes']} B, I/O {memory['io_bytes']} B"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .. import api

    outputs = api.run_files(args.archive, args.input, args.output, board=args.board,
                            build_dir=args.build_dir, templates=args.templates)
    for path in outputs:
        print(f"wrote {path}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .. import api

    report = api.test(args.model, board=args.board, build_dir=args.build_dir,
                      **_compile_kwargs(args))
    print(report.summary())
    return 0 if report.passed else 1


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


