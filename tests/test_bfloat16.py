"""bfloat16 in ONNX models: inputs and outputs as the bfloat16 bits (the upper half of the float32
of the same value) in `uint16_t`, bfloat16 inside computed in float32, a Cast to bfloat16
rounding to nearest even.

The conversion kernels are checked on every one of the 65,536 bfloat16 bit patterns (decode and
encode back) and on 65,536 random float32 bit patterns (Cast to bfloat16) against ml_dtypes'
conversions (the ones onnxruntime and the ONNX reference use); a model against the ONNX reference
evaluator (onnxruntime's CPU provider has no bfloat16 arithmetic) on the host and on a Cortex-M3
without FPU in QEMU.
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

    graph = helper.make_graph(nodes, "bf16", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_every_bfloat16_bit_pattern_and_random_floats(tmp_path: Path) -> None:
    """Identity on a bfloat16 tensor gives back the same bits for all 65,536 patterns (NaNs stay
    NaN, -0 comes back as +0); Cast(float32 -> bfloat16) of random float32 bit patterns (all
    binades, subnormals, infinities, NaNs) gives ml_dtypes' round-to-nearest-even bits."""
    require_module("onnx", "onnx")
    import ml_dtypes
    from onnx import TensorProto, helper

    n = 1 << 16
    path = _model(tmp_path / "identity.onnx",
                  [helper.make_node("Identity", ["x"], ["y"]),
                   helper.make_node("Cast", ["z"], ["z16"], to=TensorProto.BFLOAT16)],
                  [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [n]),
                   helper.make_tensor_value_info("z", TensorProto.FLOAT, [n])],
                  [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [n]),
                   helper.make_tensor_value_info("z16", TensorProto.BFLOAT16, [n])])
    bits = np.arange(n, dtype=np.uint32).astype(np.uint16)
    x = bits.view(ml_dtypes.bfloat16)
    rng = np.random.default_rng(17)
    z = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    z[:8] = [0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x00008000, 0x00018000,
             0x80000000, 0xFF800000]  # ties to even (down, up), overflow, subnormal ties, -0
    z = z.view(np.float32)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="bf").archive
    got = microexport.run(archive, {"x": x, "z": z}, board="host", build_dir=tmp_path / "b")
    assert got["y"].dtype == ml_dtypes.bfloat16 and got["z16"].dtype == ml_dtypes.bfloat16

    def check(got_bits: np.ndarray, want_bits: np.ndarray, nan: np.ndarray) -> None:
        want_bits = np.where(want_bits == 0x8000, np.uint16(0), want_bits)  # -0 -> +0
        mismatch = np.flatnonzero((got_bits != want_bits) & ~nan)
        pairs = zip(want_bits[mismatch[:5]], got_bits[mismatch[:5]], strict=True)
        assert mismatch.size == 0, [(hex(w), hex(g)) for w, g in pairs]
        assert np.isnan(got_bits[nan].view(ml_dtypes.bfloat16).astype(np.float32)).all()

    check(got["y"].view(np.uint16), bits, np.isnan(x.astype(np.float32)))
    with np.errstate(invalid="ignore"):
        want = z.astype(ml_dtypes.bfloat16).view(np.uint16)
    check(got["z16"].view(np.uint16), want, np.isnan(z))
    with tarfile.open(archive) as tar:
        header = next(m for m in tar.getmembers() if m.name.endswith("tvmgen_bf.h"))
        text = tar.extractfile(header).read().decode()
        metadata = json.load(tar.extractfile("./metadata.json"))
    assert "uint16_t* x;" in text and "uint16_t* z16;" in text and "__bf16" not in text
    assert metadata["inputs"][0]["dtype"] == "bfloat16"
    assert metadata["outputs"][1]["dtype"] == "bfloat16"


@pytest.mark.parametrize("board", ["host", "mps2_an385"])
def test_bfloat16_model_matches_the_onnx_reference(board: str, tmp_path: Path) -> None:
    """bfloat16 input and weights, arithmetic, Cast to bfloat16 inside, bfloat16 output:
    decoded, computed in float32 and rounded at the Cast and at the end; within two bfloat16
    ULPs of the ONNX reference (which rounds after every bfloat16 operation)."""
    require_module("onnx", "onnx")
    require_board(board)
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(18)
    w = rng.normal(size=(4, 16)).astype(ml_dtypes.bfloat16)
    path = _model(
        tmp_path / "m.onnx",
        [helper.make_node("Mul", ["x", "w"], ["h"]),
         helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
         helper.make_node("Relu", ["h32"], ["r"]),
         helper.make_node("Cast", ["r"], ["y"], to=TensorProto.BFLOAT16)],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4, 16]),
         helper.make_tensor_value_info("h32", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(w, "w")])
    x = rng.normal(size=(4, 16)).astype(ml_dtypes.bfloat16)
    want_y, want_h = ReferenceEvaluator(str(path)).run(None, {"x": x})
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="bf").archive
    got = microexport.run(archive, {"x": x}, board=board, build_dir=tmp_path / "b")
    assert got["y"].dtype == ml_dtypes.bfloat16
    # the float32 product, within one bfloat16 rounding of the reference's bfloat16 Mul
    np.testing.assert_allclose(got["h32"], want_h.astype(np.float32), rtol=2.0 ** -7)
    np.testing.assert_array_equal(got["y"].view(np.uint16),
                                  np.maximum(got["h32"], 0).astype(ml_dtypes.bfloat16)
                                  .view(np.uint16))
    np.testing.assert_allclose(got["y"].astype(np.float32), want_y.astype(np.float32),
                               rtol=2.0 ** -6, atol=0)
