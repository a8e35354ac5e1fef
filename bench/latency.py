"""Host latency: our generated C against TFLite Micro's host interpreter on the same models.

    python bench/latency.py [--models float_mlp,float_cnn,...] [--rounds 3] [--budget 0.5]

The models are every TFLite model of the benchmarks: the zoo's (`int8_tflite`, `sine_float`,
`float16_tflite`), bench/tflm_cortexm.py's (float MLP and CNN, the int8 conv / depthwise /
fully-connected layers, the real quantized models of tests/int8_models.py) and the float models
those quantized ones are made from (`*_float`, tests/int8_models.py's `<stem>_float.tflite`).

Ours is built exactly as `microexport run --board host` builds it: the host board's compiler
and flags (boards/host.yaml) and the host harness (templates/harness/host_main.c.j2), plus
`-DMICROEXPORT_BENCH_REPEAT=N`, with which the harness runs the model N times and prints the
median of one inference. TFLite Micro runs through its Python interpreter wrapper (`tflite-micro`
package: reference kernels; its figure includes the Python-to-C++ call of `invoke()`, well under
a microsecond, which matters only for tiny models such as sine_float); its inputs are set again
before every `invoke()` (TFLite Micro may reuse the input tensor's memory), outside the timing.

Both sides are measured in the same run, alternately, `--rounds` times per model; each side's
figure is its fastest round's median (on a shared machine the slowest rounds measure the other
processes), and next to it the fastest single inference of all rounds (a figure that load
inflates least: an inference longer than the scheduler's time slice is often preempted on a
busy machine, which can push a whole round's median up). N is chosen per model so that one
round lasts about `--budget` seconds. Speed-up = TFLM time / ours (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import TFLITE_MODELS, build, markdown_table
from tflm_cortexm import MODELS as CORTEXM_MODELS

import microexport
from microexport.api import import_model
from microexport.archive.glue import HARNESS_FILENAME, render_harness
from microexport.deploy.boards import load_board
from microexport.deploy.compare import sample_inputs
from microexport.deploy.platforms import get_platform
from microexport.deploy.subproc import run_command
from microexport.errors import Error


def _float_of(name: str) -> Callable[[Path], Path]:
    """The float model tests/int8_models.py quantizes into `name` (its `<stem>_float.tflite`)."""
    def build_model(directory: Path) -> Path:
        path = CORTEXM_MODELS[name](directory)
        return path.with_name(f"{path.stem}_float.tflite")

    return build_model


MODELS: dict[str, Callable[[Path], Path]] = {
    **{name: (lambda d, n=name: build(n, d)[0]) for name in TFLITE_MODELS},
    **CORTEXM_MODELS,
    **{name.replace("_int8", "_float"): _float_of(name)
       for name in ("vww_mobilenet_int8", "dscnn_kws_int8", "residual_int8", "shape_ops_int8")},
}


class Ours:
    """Our model built into the host harness with `-DMICROEXPORT_BENCH_REPEAT=repeat`."""

    def __init__(self, archive: Path, inputs: dict[str, np.ndarray], repeat: int, work: Path):
        board = load_board("host")
        platform = get_platform(board)
        project = platform.prepare(archive, work / "project")
        project.build_dir.mkdir(parents=True, exist_ok=True)
        harness = project.build_dir / HARNESS_FILENAME
        harness.write_text(render_harness(project.model), encoding="utf-8")
        command = platform.compile_command(project, harness)
        flags_end = 1 + len(board.cflags)  # after the board's cflags, as a user would add it
        command[flags_end:flags_end] = [f"-DMICROEXPORT_BENCH_REPEAT={repeat}"]
        run_command(command, check=True, what="compiling the benchmark")
        self.command = [command[command.index("-o") + 1]]
        for spec in project.model.inputs:
            path = work / f"{spec.c_name}.bin"
            path.write_bytes(np.ascontiguousarray(inputs[spec.name]).tobytes())
            self.command.append(str(path))
        self.command += [str(work / f"{spec.c_name}.out") for spec in project.model.outputs]

    def round_ns(self) -> tuple[float, float]:
        """One round: the harness's median and fastest of `repeat` inferences."""
        result = run_command(self.command, check=True, timeout=600, what="benchmark")
        fields = dict(item.split("=") for item in result.stdout.split())
        return float(fields["median_ns"]), float(fields["min_ns"])


class Tflm:
    """TFLite Micro's host interpreter on the model; `ok` is False if it cannot run it."""

    def __init__(self, model: Path, inputs: dict[str, np.ndarray]):
        from tflite_micro.python.tflite_micro import runtime

        self.inputs = list(inputs.values())
        try:
            self.interpreter = runtime.Interpreter.from_file(str(model), arena_size=1 << 22)
            self._set_inputs()
            self.interpreter.invoke()
            self.ok = True
        except RuntimeError:
            self.ok = False

    def _set_inputs(self) -> None:
        for index, array in enumerate(self.inputs):
            self.interpreter.set_input(array, index)

    def round_ns(self, repeat: int) -> tuple[float, float]:
        """One round: the median and fastest of `repeat` timed `invoke()` calls."""
        times = []
        for _ in range(repeat):
            self._set_inputs()
            start = time.perf_counter_ns()
            self.interpreter.invoke()
            times.append(time.perf_counter_ns() - start)
        return statistics.median(times), min(times)


def repeats_for(seconds: float, budget: float, most: int) -> int:
    """How many inferences of `seconds` each fill one round of `budget` seconds (11..most)."""
    return max(11, min(most, int(budget / max(seconds, 1e-9))))


def measure(name: str, work: Path, rounds: int, budget: float, most: int) -> list[object]:
    """One table row: ours and TFLM's µs per inference and the speed-up, for model `name`."""
    path = MODELS[name](work)
    try:
        inputs = sample_inputs(tuple(import_model(path).inputs), seed=0)
        archive = microexport.compile(path, work / "model.tar", name=name).archive
    except Error as err:  # a model we cannot compile yet: say so in its row
        return [name, f"n/a: {str(err).splitlines()[0]}", "-", "-", "-", "-", "-", "-"]
    tflm = Tflm(path, inputs)
    if tflm.ok:
        start = time.perf_counter()
        tflm.round_ns(3)
        repeat = repeats_for((time.perf_counter() - start) / 3, budget, most)
    else:
        repeat = most
    ours = Ours(archive, inputs, repeat, work)
    ours_rounds, theirs_rounds = [], []
    for _ in range(rounds):  # alternately, so that both see the same machine load
        ours_rounds.append(ours.round_ns())
        if tflm.ok:
            theirs_rounds.append(tflm.round_ns(repeat))
    ours_median = min(median for median, _ in ours_rounds)
    ours_min = min(fastest for _, fastest in ours_rounds)
    row: list[object] = [name, f"{ours_median / 1000:.2f}"]
    if not theirs_rounds:
        return row + ["n/a", "n/a (TFLM cannot run it)", f"{ours_min / 1000:.2f}", "n/a", "n/a",
                      repeat]
    theirs_median = min(median for median, _ in theirs_rounds)
    theirs_min = min(fastest for _, fastest in theirs_rounds)
    return row + [f"{theirs_median / 1000:.2f}", f"{theirs_median / ours_median:.2f}x",
                  f"{ours_min / 1000:.2f}", f"{theirs_min / 1000:.2f}",
                  f"{theirs_min / ours_min:.2f}x", repeat]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate rounds per side; the fastest round counts")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="seconds of inferences per round and side (about)")
    parser.add_argument("--repeat", type=int, default=2000,
                        help="at most this many inferences per round")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model: {', '.join(unknown)} (models: {', '.join(MODELS)})")
    cflags = " ".join(load_board("host").cflags)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            rows.append(measure(name, work, args.rounds, args.budget, args.repeat))
            print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    print()
    print(markdown_table(["model", f"ours µs (cc {cflags})", "TFLM invoke µs", "speed-up",
                          "ours fastest µs", "TFLM fastest µs", "speed-up (fastest)",
                          "inferences per round"], rows))


if __name__ == "__main__":
    main()
