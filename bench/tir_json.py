"""TIR as JSON vs TVM's own serializer, on the largest zoo model (by TIR size), every stage.

    python bench/tir_json.py [--repeat 20]

Export: `microexport.archive.tir_json.dump` vs `tvm.ir.save_json`. Load:
`microexport.archive.tir_json.load` (schema validation included) vs `tvm.ir.load_json`; the
validation alone is shown too. Size: bytes of the JSON text (ours compact). Every ratio divides
figures measured in the same run (ours / TVM's: below 1 means ours is faster or smaller). Times
are medians of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tvm
from common import build, markdown_table, zoo_names

from microexport.api import TIR_STAGES, compile_model, import_model
from microexport.archive import tir_json
from microexport.archive.tir_json.reader import parse


def median_ms(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def largest_model(directory: Path) -> tuple[str, dict[str, tvm.IRModule]]:
    """The zoo model whose codegen-stage TIR is largest (by tvm.ir.save_json bytes)."""
    best: tuple[int, str, dict[str, tvm.IRModule]] | None = None
    for name in zoo_names():
        work = directory / name
        work.mkdir()
        path, shapes = build(name, work)
        stages = compile_model(import_model(path, shapes), name=name).stages
        size = len(tvm.ir.save_json(stages["codegen"]))
        if best is None or size > best[0]:
            best = (size, name, stages)
    assert best is not None
    return best[1], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        name, stages = largest_model(Path(tmp))
    rows = []
    for stage in TIR_STAGES:
        mod = stages[stage]
        ours, theirs = tir_json.dump(mod, stage), tvm.ir.save_json(mod)
        export_ours = median_ms(lambda m=mod, s=stage: tir_json.dump(m, s), args.repeat)
        export_tvm = median_ms(lambda m=mod: tvm.ir.save_json(m), args.repeat)
        load_ours = median_ms(lambda t=ours: tir_json.load(t), args.repeat)
        validate = median_ms(lambda t=ours: parse(t), args.repeat)
        load_tvm = median_ms(lambda t=theirs: tvm.ir.load_json(t), args.repeat)
        rows.append([
            f"{name} {stage}",
            f"{export_ours:.1f}", f"{export_tvm:.1f}", f"{export_ours / export_tvm:.2f}",
            f"{load_ours:.1f} ({validate:.1f})", f"{load_tvm:.1f}", f"{load_ours / load_tvm:.2f}",
            f"{len(ours) / 1024:.1f}", f"{len(theirs) / 1024:.1f}",
            f"{len(ours) / len(theirs):.2f}",
        ])
    print(markdown_table(
        ["model stage", "export ms", "save_json ms", "export ratio", "load ms (validate ms)",
         "load_json ms", "load ratio", "JSON KiB", "save_json KiB", "size ratio"],
        rows,
    ))


if __name__ == "__main__":
    main()
