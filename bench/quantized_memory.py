"""Memory of the real quantized models: constants against the .tflite's weight data, RAM against
TFLite Micro's arena.

    python bench/quantized_memory.py [--models vww_mobilenet_int8,...]

For every int8 model of the tests and benchmarks (the float models of tests/int8_models.py
quantized by ai-edge-quantizer, the zoo's hand-quantized CNN, the single-layer models of
bench/tflm_cortexm.py) prints:

- our constant pool bytes, against the .tflite's buffer bytes (weights, biases) and against its
  buffers plus the quantization parameters of the constant tensors (float32 scale and int64
  zero point per channel: the data TFLite Micro turns into per-channel multipliers and shifts
  at init, in its arena), with the part of the pool that is per-channel int32 multipliers and
  shifts (8 B per channel of every per-channel constant);
- the bytes of the fixed tables of the C library the model's kernels read (the same for every
  model, outside the pool: compiler/integer/library.py);
- our workspace + I/O bytes against TFLite Micro's arena on the 64-bit host (its
  RecordingMicroAllocator). The arena on the Cortex-M4F, whose bookkeeping is smaller, is
  measured by `bench/tflm_cortexm.py --models <name> --boards mps2_an386`.

All figures are measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import markdown_table
from int8_models import INT8_MODELS, read_model, tflite_weight_bytes

from microexport.api import import_model
from microexport.compiler.integer import library
from microexport.compiler.lower import lower
from microexport.compiler.plan import plan_memory
from microexport.deploy.reference import tflm_arena_bytes
from microexport.errors import Error


def builders() -> dict[str, Callable[[Path], Path]]:
    """The int8 models: the real ones of tests/int8_models.py, then the zoo's hand-quantized
    CNN and the single-layer models of bench/tflm_cortexm.py."""
    from tflm_cortexm import MODELS

    found: dict[str, Callable[[Path], Path]] = {
        m.name: (lambda directory, m=m: m.build(directory)[0]) for m in INT8_MODELS}
    for name in ("int8_tflite", "conv_int8", "dw_int8", "fc_int8"):
        found[name] = MODELS[name]
    return found


def measure(name: str, build: Callable[[Path], Path], directory: Path) -> list[object]:
    directory.mkdir(parents=True, exist_ok=True)
    path = build(directory)
    data, parameters = tflite_weight_bytes(path)
    try:
        imported = import_model(path, None)
    except Error as error:
        return [name, data, parameters, f"n/a ({error})"] + ["n/a"] * 10
    lowered = lower(imported)
    plan = plan_memory(lowered.schedule, lowered.scratch)
    pool = sum(array.nbytes for array in lowered.schedule.constants.values())
    requantization = 8 * per_channel_count(path)
    text = lowered.kernels.script()
    called = {t.reader for t in library.TABLES if f"\"{t.reader}\"" in text}
    tables = sum(t.values().nbytes for t in library.TABLES if t.reader in called)
    io_bytes = sum(t.nbytes for t in imported.inputs + imported.outputs)
    ours = plan.workspace_bytes + io_bytes
    # inputs and outputs planned inside the workspace, as TFLite Micro's arena holds them
    shared = plan_memory(lowered.schedule, lowered.scratch, io_in_workspace=True).workspace_bytes
    arena = tflm_arena_bytes(path)

    def ratio(value: int) -> str:
        return f"{value / arena:.3f}" if arena else "n/a"

    return [name, data, parameters, pool, requantization, f"{pool / data:.3f}",
            f"{(pool - requantization) / data:.3f}", f"{pool / (data + parameters):.3f}", tables,
            ours, shared, arena or "n/a", ratio(ours), ratio(shared)]


INT8 = 9  # TensorType of the TFLite schema


def per_channel_count(path: Path) -> int:
    """Output channels of the per-channel quantized int8 weights of a .tflite file (each has
    a multiplier and a shift; its bias shares them)."""
    model = read_model(path)
    return sum(len(t.quantization.scale) for t in model.subgraphs[0].tensors
               if t.type == INT8 and t.quantization is not None
               and t.quantization.scale is not None and len(t.quantization.scale) > 1
               and model.buffers[t.buffer].data is not None)


def main() -> None:
    models = builders()
    names = list(models)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names))
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(names))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)} (models: {', '.join(names)})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, models[name], Path(tmp) / name)
                for name in args.models.split(",")]
    header = ["model", ".tflite buffers B", ".tflite quantization params B", "our constants B",
              "of which per-channel multipliers and shifts B", "constants/buffers",
              "(constants - per-channel multipliers and shifts)/buffers",
              "constants/(buffers + params)", "C library tables read B",
              "ours RAM B (workspace + I/O)",
              "ours RAM B (--io-in-workspace)", "TFLM host arena B", "ours/TFLM host arena",
              "io-in-ws/TFLM host arena"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
