"""Host latency: our generated C (gcc -O2) against TFLite Micro's `invoke()` on the same models.

    python bench/latency.py [--repeat 2000]

Both sides run the model `--repeat` times in one process on the same input and report the median
of one inference: ours through the host harness built with -DMICROEXPORT_BENCH_REPEAT, TFLite Micro
through its Python interpreter wrapper (so its figure includes the Python-to-C++ call overhead of
`invoke()`, well under a microsecond, which dominates only for tiny models such as sine_float).
Target: ours faster on every model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TFLITE_MODELS, build, markdown_table

import microexport
from microexport.archive.glue import render_harness
from microexport.archive.mlf import extract_archive, read_model
from microexport.deploy.compare import sample_inputs
from microexport.deploy.subproc import run_command


def ours_ns(archive: Path, inputs: dict[str, np.ndarray], repeat: int, work: Path) -> float:
    root = extract_archive(archive, work / "archive")
    model = read_model(root)
    harness = work / "bench_main.c"
    harness.write_text(render_harness(model), encoding="utf-8")
    program = work / "bench"
    sources = sorted(str(p) for p in (root / "codegen/host/src").glob("*.c"))
    run_command(["cc", "-O2", "-std=c99", f"-DMICROEXPORT_BENCH_REPEAT={repeat}",
                 f"-I{root / 'codegen/host/include'}", "-o", str(program), *sources,
                 str(harness), "-lm"], check=True, what="compiling the benchmark")
    args = []
    for spec in model.inputs:
        path = work / f"{spec.c_name}.bin"
        path.write_bytes(np.ascontiguousarray(inputs[spec.name]).tobytes())
        args.append(str(path))
    args += [str(work / f"{spec.c_name}.out") for spec in model.outputs]
    result = run_command([str(program), *args], check=True, timeout=600, what="benchmark")
    return float(result.stdout.split("median_ns=")[1].split()[0])


def tflm_ns(model: Path, inputs: dict[str, np.ndarray], repeat: int) -> float | None:
    from tflite_micro.python.tflite_micro import runtime

    try:
        interpreter = runtime.Interpreter.from_file(str(model), arena_size=1 << 20)
        for index, array in enumerate(inputs.values()):
            interpreter.set_input(array, index)
        interpreter.invoke()
    except RuntimeError:
        return None
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in TFLITE_MODELS:
            work = Path(tmp) / name
            work.mkdir()
            path, shapes = build(name, work)
            result = microexport.compile(path, work / "model.tar", name=name, input_shapes=shapes)
            imported_inputs = sample_inputs(
                tuple(microexport.api.import_model(path, shapes).inputs), seed=0
            )
            ours = ours_ns(result.archive, imported_inputs, args.repeat, work)
            theirs = tflm_ns(path, imported_inputs, args.repeat)
            ratio = f"{theirs / ours:.2f}x" if theirs else "n/a (TFLM cannot run it)"
            rows.append([name, f"{ours / 1000:.2f}",
                         f"{theirs / 1000:.2f}" if theirs else "n/a", ratio])
    print(markdown_table(["model", "ours µs (gcc -O2)", "TFLM invoke µs", "speed-up"], rows))


if __name__ == "__main__":
    main()
