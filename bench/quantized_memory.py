"""Memory of the real quantized models: constants against the .tflite's weight data, RAM against
TFLite Micro's arena.

    python bench/quantized_memory.py [--models vww_mobilenet_int8,...]

For every model of tests/int8_models.py (float models quantized by ai-edge-quantizer) prints:

- our constant pool bytes by type, against the .tflite's buffer bytes (weights, biases) and
  against its buffers plus the quantization parameters of the constant tensors (float32 scale
  and int64 zero point per channel: the data TFLite Micro turns into per-channel multipliers
  and shifts at init, in its arena);
- our workspace + I/O bytes against TFLite Micro's arena on the 64-bit host (its
  RecordingMicroAllocator). The arena on the Cortex-M4F, whose bookkeeping is smaller, is
  measured by `bench/tflm_cortexm.py --models <name> --boards mps2_an386`.

All figures are measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import markdown_table
from int8_models import INT8_MODELS, read_model

from microexport.api import import_model
from microexport.compiler.lower import lower
from microexport.compiler.plan import plan_memory
from microexport.deploy.reference import tflm_arena_bytes
from microexport.errors import Error


def tflite_weight_bytes(path: Path) -> tuple[int, int]:
    """(buffer bytes of the constant tensors, bytes of their quantization parameters)."""
    model = read_model(path)
    data = parameters = 0
    for tensor in model.subgraphs[0].tensors:
        buffer = model.buffers[tensor.buffer]
        size = len(buffer.data) if buffer is not None and buffer.data is not None else 0
        data += size
        quant = tensor.quantization
        if size and quant is not None and quant.scale is not None:
            zero_points = len(quant.zeroPoint) if quant.zeroPoint is not None else 0
            parameters += 4 * len(quant.scale) + 8 * zero_points
    return data, parameters


def measure(name: str, directory: Path) -> list[object]:
    model = {m.name: m for m in INT8_MODELS}[name]
    directory.mkdir(parents=True, exist_ok=True)
    path, _ = model.build(directory)
    data, parameters = tflite_weight_bytes(path)
    try:
        imported = import_model(path, None)
    except Error as error:
        return [name, data, parameters, f"n/a ({error})"] + ["n/a"] * 8
    lowered = lower(imported)
    plan = plan_memory(lowered.schedule, lowered.scratch)
    pool = sum(array.nbytes for array in lowered.schedule.constants.values())
    io_bytes = sum(t.nbytes for t in imported.inputs + imported.outputs)
    ours = plan.workspace_bytes + io_bytes
    # inputs and outputs planned inside the workspace, as TFLite Micro's arena holds them
    shared = plan_memory(lowered.schedule, lowered.scratch, io_in_workspace=True).workspace_bytes
    arena = tflm_arena_bytes(path)

    def ratio(value: int) -> str:
        return f"{value / arena:.3f}" if arena else "n/a"

    return [name, data, parameters, pool, f"{pool / data:.3f}",
            f"{pool / (data + parameters):.3f}", ours, shared, arena or "n/a", ratio(ours),
            ratio(shared)]


def main() -> None:
    names = [m.name for m in INT8_MODELS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names))
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(names))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)} (models: {', '.join(names)})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp) / name) for name in args.models.split(",")]
    header = ["model", ".tflite buffers B", ".tflite quantization params B", "our constants B",
              "constants/buffers", "constants/(buffers + params)", "ours RAM B (workspace + I/O)",
              "ours RAM B (--io-in-workspace)", "TFLM host arena B", "ours/TFLM host arena",
              "io-in-ws/TFLM host arena"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
