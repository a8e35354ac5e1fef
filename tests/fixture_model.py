"""A hand-written stand-in model ("fixture") for glue, package and platform tests.

`tests/fixtures/tvmgen_fixture_lib.c` implements the AOT main ABI by hand:
y = x + scale (through a workspace copy), count = bias + offsets. These helpers build the
compiled-model record, the archive contents and the expected outputs around it, as
`api.compile_model` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microexport.archive.glue import render_glue
from microexport.archive.mlf import archive_files
from microexport.model import (
    CompiledModel,
    ConstantSpec,
    CParam,
    FunctionSignature,
    KernelSpec,
    MemoryReport,
    PoolReport,
    TensorSpec,
)

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_LIB = FIXTURES / "tvmgen_fixture_lib.c"
FIXTURE_TEMPLATES = FIXTURES / "templates"
NAME = "fixture"
INPUTS = (TensorSpec("x:0", (2, 3), "float32"), TensorSpec("bias", (4,), "int32"))
OUTPUTS = (TensorSpec("y", (2, 3), "float32"), TensorSpec("count", (4,), "int32"))
CONSTANTS = (
    ConstantSpec("scale", (), "float32", 0),
    ConstantSpec("offsets", (4,), "int32", 16),
)
PARAMS = {"scale": np.array(0.5, np.float32), "offsets": np.array([1, 2, 3, 4], np.int32)}
WORKSPACE_BYTES = 32
CONSTANTS_BYTES = 32


def constant_pool() -> bytes:
    """The fixture's constant pool: every constant at its offset, little-endian."""
    pool = bytearray(CONSTANTS_BYTES)
    for spec in CONSTANTS:
        data = PARAMS[spec.name].astype(np.dtype(spec.dtype).newbyteorder("<")).tobytes()
        pool[spec.offset : spec.offset + spec.nbytes] = data
    return bytes(pool)


def fixture_main() -> FunctionSignature:
    """The AOT main's signature, as tests/fixtures/tvmgen_fixture_lib.c defines it."""
    return FunctionSignature(f"tvmgen_{NAME}___tvm_main__", (
        CParam("x_0", "float*"), CParam("bias", "int32_t*"), CParam("y", "float*"),
        CParam("count", "int32_t*"), CParam("constants", "uint8_t*"),
        CParam("workspace", "uint8_t*"),
    ))


def fixture_model(workspace_mode: str = "static", **overrides: object) -> CompiledModel:
    """The fixture's compiled-model record; keyword arguments replace fields."""
    fields: dict[str, object] = {
        "name": NAME,
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "constants": CONSTANTS,
        "memory": MemoryReport(
            workspace_bytes=WORKSPACE_BYTES,
            constants_bytes=CONSTANTS_BYTES,
            io_bytes=sum(t.nbytes for t in INPUTS + OUTPUTS),
            pools=(PoolReport("workspace", WORKSPACE_BYTES),),
        ),
        "main": fixture_main(),
        "kernels": (KernelSpec(FunctionSignature("tvmgen_fixture_double", ()), 24),),
        "workspace_mode": workspace_mode,
    }
    fields.update(overrides)
    return CompiledModel(**fields)  # type: ignore[arg-type]


def fixture_files(
    workspace_mode: str = "static", templates: Path | None = None
) -> dict[str, bytes]:
    """Every file of the fixture's archive, as `api.compile_model` assembles them."""
    model = fixture_model(workspace_mode)
    glue = render_glue(model, constant_pool(), templates)
    return archive_files(model, lib=(FIXTURE_LIB.name, FIXTURE_LIB.read_text()), glue=glue,
                         parameters=PARAMS, relax_text="# relax\n", tir_text="# tir\n")


def fixture_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right shapes and dtypes."""
    rng = np.random.default_rng(seed)
    return {
        "x:0": rng.uniform(-1, 1, (2, 3)).astype(np.float32),
        "bias": rng.integers(-1000, 1000, (4,), dtype=np.int32),
    }


def expected_outputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture model computes."""
    return {
        "y": (inputs["x:0"] * np.float32(2) / np.float32(2) + PARAMS["scale"]).astype(np.float32),
        "count": (inputs["bias"] + PARAMS["offsets"]).astype(np.int32),
    }
