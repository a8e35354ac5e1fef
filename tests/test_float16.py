"""float16 in ONNX models: inputs and outputs as IEEE binary16 bits in `uint16_t`, float16 inside
computed in float32 and each operator's result rounded to float16 (test_float16_rounding.py).

The conversion kernels are checked on every one of the 65,536 float16 bit patterns (decode) and
on float32 values around every float16 rounding boundary (encode) against numpy's conversions;
models against onnxruntime (which computes in float16, so the tolerance is float16's), on the
host and on a Cortex-M3 without FPU in QEMU.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from support import require_board, require_module

import microexport


def _model(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = ()
           ) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "half", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_every_float16_bit_pattern_round_trips(tmp_path: Path) -> None:
    """Identity on a float16 tensor: decode to float32 and encode back must give the same bits
    for all 65,536 patterns (NaNs stay NaN)."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    n = 1 << 16
    path = _model(tmp_path / "identity.onnx",
                  [helper.make_node("Identity", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [n])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [n])])
    bits = np.arange(n, dtype=np.uint32).astype(np.uint16)
    x = bits.view(np.float16)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="half").archive
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "build")["y"]
    assert got.dtype == np.float16
    nan = np.isnan(x)
    want = np.where(bits == 0x8000, np.uint16(0), bits)  # a negative zero comes back as +0
    mismatch = np.flatnonzero((got.view(np.uint16) != want) & ~nan)
    pairs = zip(bits[mismatch[:5]], got.view(np.uint16)[mismatch[:5]], strict=True)
    assert mismatch.size == 0, [(hex(b), hex(g)) for b, g in pairs]
    assert np.isnan(got[nan]).all()
    with tarfile.open(archive) as tar:
        header = next(m for m in tar.getmembers() if m.name.endswith("tvmgen_half.h"))
        text = tar.extractfile(header).read().decode()
        metadata = json.load(tar.extractfile("./metadata.json"))
    assert "uint16_t* x;" in text and "half " not in text
    assert metadata["inputs"][0]["dtype"] == "float16"


@pytest.mark.parametrize("board", ["host", "mps2_an385"])
def test_float16_model_matches_onnxruntime(board: str, tmp_path: Path) -> None:
    """float16 input, float16 weights and arithmetic, float16 output: decoded, computed in
    float32 with each operator's result rounded to float16; within float16's rounding of
    onnxruntime's float16 arithmetic. Also float32 values around every rounding boundary
    through Cast(to=FLOAT16): the encoder rounds to nearest even exactly like numpy."""
    require_module("onnx", "onnx")
    require_module("onnxruntime", "onnxruntime")
    require_board(board)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(16)
    w = rng.normal(size=(16, 8)).astype(np.float16)
    b = rng.normal(size=(8,)).astype(np.float16)
    path = _model(
        tmp_path / "mlp.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["s"]),
         helper.make_node("Relu", ["s"], ["y"]),
         helper.make_node("Cast", ["z"], ["z16"], to=TensorProto.FLOAT16),
         helper.make_node("Cast", ["z16"], ["z32"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 16]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 8]),
         helper.make_tensor_value_info("z32", TensorProto.FLOAT, [4096])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    x = rng.normal(size=(4, 16)).astype(np.float16)
    # Float32 values just below, at and just above float16 rounding boundaries (midpoints),
    # across normal and subnormal ranges, beyond the largest finite value, and zeros.
    halves = rng.integers(0, 0x7BFF, size=1000).astype(np.uint16).view(np.float16)
    low, high = halves.astype(np.float32), np.nextafter(halves, np.float16(np.inf)).astype(
        np.float32)
    middle = (low + (high - low) / 2).astype(np.float32)
    z = np.concatenate([middle, np.nextafter(middle, np.float32(0)),
                        np.nextafter(middle, np.float32(np.inf)), -middle,
                        np.array([65519.0, 65520.0, 1e6, -1e6, 0.0, -0.0, 2.0 ** -25,
                                  2.0 ** -26, 3 * 2.0 ** -26], np.float32)])
    z = np.resize(z, 4096).astype(np.float32)
    want_y, want_z = _onnxruntime(path, {"x": x, "z": z})
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="mlp").archive
    got = microexport.run(archive, {"x": x, "z": z}, board=board, build_dir=tmp_path / "b")
    assert got["y"].dtype == np.float16
    np.testing.assert_allclose(got["y"].astype(np.float32), want_y.astype(np.float32),
                               rtol=4e-3, atol=4e-3)
    assert np.array_equal(got["z32"], z.astype(np.float16).astype(np.float32))
    assert np.array_equal(got["z32"], want_z)
