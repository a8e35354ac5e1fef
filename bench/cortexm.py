"""Cortex-M cost: instructions per inference (QEMU -icount, deterministic) and code bytes
excluding weights, per zoo model and per board.

    python bench/cortexm.py [--boards mps2_an385,mps2_an386,mps2_an500]

"model code B" is the code of the model's own functions (kernels, AOT main, run wrapper);
"image code B" all executable bytes of the linked image (startup, newlib, harness included);
weights (the constant pool) are counted in neither.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import build, markdown_table, zoo_names

import microexport
from microexport.api import import_model
from microexport.deploy.boards import load_board
from microexport.deploy.compare import sample_inputs
from microexport.deploy.platforms import RunOptions, get_platform
from microexport.deploy.size import size_report

DEFAULT_BOARDS = "mps2_an385,mps2_an386,mps2_an500"


def measure(archive: Path, inputs: dict, board_name: str, work: Path) -> list[object]:
    board = load_board(board_name)
    platform = get_platform(board)
    project = platform.prepare(archive, work)
    built = platform.build(project)
    result = platform.execute(built, inputs, RunOptions())
    report = size_report(built.elf, board, project.model)
    return [result.stats.instructions, sum(report.functions.values()),
            report.flash.by_kind["code"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default=DEFAULT_BOARDS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in zoo_names():
            work = Path(tmp) / name
            work.mkdir()
            path, shapes = build(name, work)
            archive = microexport.compile(path, work / "m.tar", name=name,
                                          input_shapes=shapes).archive
            inputs = sample_inputs(import_model(path, shapes).inputs, seed=0)
            for board in args.boards.split(","):
                instructions, model_code, image_code = measure(archive, inputs, board,
                                                               work / board)
                rows.append([name, board, instructions, model_code, image_code])
    print(markdown_table(["model", "board", "instructions/inference", "model code B",
                          "image code B"], rows))


if __name__ == "__main__":
    main()
