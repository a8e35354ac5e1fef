"""Memory: our workspace + I/O bytes against TFLite Micro's arena and the liveness lower bound.

    python bench/memory.py

For every TFLite model of the test zoo (and tflite-micro's sine_float.tflite), prints
ours = workspace + inputs + outputs (and the workspace alone when inputs and outputs are planned
inside it, `--io-in-workspace`), TFLite Micro's arena bytes (its RecordingMicroAllocator total,
which also holds its own bookkeeping) and the lower bound (largest total of bytes live at one step
of our schedule, inputs and outputs included), with the ratios, all measured in this run.
Target: ours <= TFLite Micro on every model, and within 1.05x the lower bound on average.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import TFLITE_MODELS, build, markdown_table

from microexport.api import import_model
from microexport.compiler.lower import lower
from microexport.compiler.plan import plan_memory
from microexport.deploy.reference import tflm_arena_bytes


def measure(name: str, directory: Path) -> list[object]:
    path, shapes = build(name, directory)
    imported = import_model(path, shapes)
    lowered = lower(imported)
    plan = plan_memory(lowered.schedule, lowered.scratch)
    io_bytes = sum(t.nbytes for t in imported.inputs + imported.outputs)
    ours = plan.workspace_bytes + io_bytes
    # With --io-in-workspace the inputs and outputs share the pool, as in TFLite Micro's arena.
    shared = plan_memory(lowered.schedule, lowered.scratch, io_in_workspace=True).workspace_bytes
    arena = tflm_arena_bytes(path)
    bound = plan.lower_bound_bytes

    def ratio(value: int, base: int | None) -> str:
        return f"{value / base:.3f}" if base else "n/a"

    return [name, plan.workspace_bytes, io_bytes, ours, shared, arena or "n/a (TFLM fails)",
            ratio(ours, arena), ratio(shared, arena), bound, ratio(ours, bound),
            ratio(shared, bound), plan.strategy]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in TFLITE_MODELS]
    header = ["model", "workspace B", "I/O B", "ours B (workspace + I/O)",
              "ours B (--io-in-workspace)", "TFLM arena B", "ours/TFLM", "io-in-ws/TFLM",
              "lower bound B", "ours/bound", "io-in-ws/bound", "planner"]
    print(markdown_table(header, rows))
    for column, label in ((9, "ours"), (10, "--io-in-workspace")):
        ratios = [float(r[column]) for r in rows if r[column] != "n/a"]
        print(f"mean {label}/lower bound: {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
