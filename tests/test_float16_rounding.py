"""float16 models round every operator's float16 result to float16, as ONNX defines them.

The ONNX reference implementation (`onnx.reference.ReferenceEvaluator`) computes each operator
in numpy float16: the operator's result is rounded to float16 (to nearest, ties to even) before
the next operator reads it. microexport computes in float32 and rounds each float16 result
(`compiler.frontend.float16`); these tests check that a chain of operators gives the reference
implementation's bits, where rounding once at the end would not, on the host and on a Cortex-M3
(no FPU: software float) in QEMU. Also the rounding kernel itself, on float32 values around every
float16 rounding boundary, against numpy's conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import require_board, require_module

import microexport


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = (),
          opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "half", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _chain(path: Path, rng: np.random.Generator) -> Path:
    """MatMul → Mul → Add → Softmax in float16, the Add's result an output too."""
    from onnx import TensorProto, helper, numpy_helper

    half = TensorProto.FLOAT16
    w = rng.normal(size=(32, 16)).astype(np.float16)
    scale = (rng.normal(size=(16,)) * 3).astype(np.float16)
    bias = rng.normal(size=(16,)).astype(np.float16)
    return _save(
        path,
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Mul", ["h", "scale"], ["m"]),
         helper.make_node("Add", ["m", "bias"], ["a"]),
         helper.make_node("Softmax", ["a"], ["y"], axis=-1)],
        [helper.make_tensor_value_info("x", half, [8, 32])],
        [helper.make_tensor_value_info("y", half, [8, 16]),
         helper.make_tensor_value_info("a", half, [8, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "scale"),
         numpy_helper.from_array(bias, "bias")])


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """How many float16 values lie between `got` and `want` (both finite float16)."""
    def ordinal(value: np.ndarray) -> np.ndarray:
        bits = value.astype(np.float16).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)

    return np.abs(ordinal(got) - ordinal(want))


@pytest.mark.parametrize("board", ["host", "mps2_an385"])
def test_float16_chain_matches_the_reference_bit_for_bit(board: str, tmp_path: Path) -> None:
    """Every operator's result is rounded: the outputs are the ONNX reference implementation's
    bits (Softmax as ONNX defines it: ReduceMax, Sub, Exp, ReduceSum, Div, each rounded), and
    differ from what rounding once at the end gives. onnxruntime's CPU provider computes this
    chain in float32 and rounds once (and its float16 Softmax differently again): within
    float16's rounding of it."""
    require_module("onnx", "onnx")
    require_module("onnxruntime", "onnxruntime")
    require_board(board)
    import onnx
    import onnxruntime
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    path = _chain(tmp_path / "chain.onnx", rng)
    x = rng.normal(size=(8, 32)).astype(np.float16)
    model = onnx.load(str(path))
    want_y, want_a = ReferenceEvaluator(model).run(None, {"x": x})
    # the same chain rounded once at the end (what computing in float32 throughout gives)
    graph = {t.name: onnx.numpy_helper.to_array(t).astype(np.float32)
             for t in model.graph.initializer}
    once_a = x.astype(np.float32) @ graph["w"] * graph["scale"] + graph["bias"]
    once_y = np.exp(once_a - once_a.max(-1, keepdims=True))
    once_y /= once_y.sum(-1, keepdims=True)
    assert (once_a.astype(np.float16) != want_a).sum() >= 10  # the test tells them apart
    assert (once_y.astype(np.float16) != want_y).sum() >= 3

    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="chain").archive
    got = microexport.run(archive, {"x": x}, board=board, build_dir=tmp_path / "build")
    assert got["a"].dtype == np.float16 and got["y"].dtype == np.float16
    assert np.array_equal(got["a"].view(np.uint16), want_a.view(np.uint16)), \
        _ulps(got["a"], want_a).max()
    assert np.array_equal(got["y"].view(np.uint16), want_y.view(np.uint16)), \
        _ulps(got["y"], want_y).max()

    ort_y, ort_a = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got["a"].astype(np.float32), ort_a.astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(got["y"].astype(np.float32), ort_y.astype(np.float32),
                               rtol=4e-2, atol=1e-4)


def test_every_float16_product_is_rounded_like_numpy(tmp_path: Path) -> None:
    """Mul of two float16 tensors (every exponent pair, subnormals, overflow to infinity,
    infinities and NaN) then Add: each result is numpy's float16 result, bit for bit."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    half = TensorProto.FLOAT16
    n = 1 << 16
    rng = np.random.default_rng(2)
    x = rng.integers(0, 1 << 16, size=n).astype(np.uint16).view(np.float16)
    y = rng.integers(0, 1 << 16, size=n).astype(np.uint16).view(np.float16)
    z = rng.integers(0, 1 << 16, size=n).astype(np.uint16).view(np.float16)
    path = _save(tmp_path / "mul.onnx",
                 [helper.make_node("Mul", ["x", "y"], ["p"]),
                  helper.make_node("Add", ["p", "z"], ["s"])],
                 [helper.make_tensor_value_info(name, half, [n]) for name in "xyz"],
                 [helper.make_tensor_value_info("p", half, [n]),
                  helper.make_tensor_value_info("s", half, [n])])
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="mul").archive
    got = microexport.run(archive, {"x": x, "y": y, "z": z}, board="host",
                          build_dir=tmp_path / "build")
    with np.errstate(all="ignore"):
        product = x * y
        total = product + z
    for name, want in (("p", product), ("s", total)):
        bits, want_bits = got[name].view(np.uint16), want.view(np.uint16)
        nan = np.isnan(want)
        # a zero result of a negative value is -0 in both; -0 itself is read as +0 by the
        # output encoder (see test_float16.py)
        wrong = (bits != np.where(want_bits == 0x8000, np.uint16(0), want_bits)) & ~nan
        assert not wrong.any(), (name, np.flatnonzero(wrong)[:5])
        assert np.isnan(got[name][nan]).all()


def test_rounding_matches_numpy_around_every_float16_boundary(tmp_path: Path) -> None:
    """Cast(to=FLOAT16) rounds with the same kernel: float32 values at, just below and just
    above every midpoint between adjacent float16 values (normal and subnormal, both signs),
    the largest finite values, overflow, infinities, NaN, float32 subnormals."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    single = TensorProto.FLOAT
    halves = np.arange(0, 0x7C00, dtype=np.uint32).astype(np.uint16).view(np.float16)
    low = halves.astype(np.float32)
    with np.errstate(over="ignore"):  # above 65504 is infinity: its midpoint is 65520
        high = np.nextafter(halves, np.float16(np.inf)).astype(np.float32)
    high[-1] = 65536.0
    middle = (low + (high - low) / 2).astype(np.float32)
    special = np.array([np.inf, np.nan, 65504.0, 65519.99, 65520.0, 65536.0, 1e30, 2.0 ** -25,
                        3 * 2.0 ** -26, 2.0 ** -26, 1e-40, 0.0], np.float32)
    z = np.concatenate([middle, np.nextafter(middle, np.float32(0)),
                        np.nextafter(middle, np.float32(np.inf)), low, special])
    z = np.concatenate([z, -z]).astype(np.float32)
    path = _save(tmp_path / "cast.onnx",
                 [helper.make_node("Cast", ["z"], ["h"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["h"], ["y"], to=single)],
                 [helper.make_tensor_value_info("z", single, [z.size])],
                 [helper.make_tensor_value_info("y", single, [z.size])])
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="cast").archive
    got = microexport.run(archive, {"z": z}, board="host", build_dir=tmp_path / "build")["y"]
    with np.errstate(over="ignore"):
        want = z.astype(np.float16).astype(np.float32)
    nan = np.isnan(want)
    negative_zero = (z == 0) & np.signbit(z)  # -0 itself comes out as +0
    want = np.where(negative_zero, np.float32(0), want)
    wrong = (got.view(np.uint32) != want.view(np.uint32)) & ~nan
    assert not wrong.any(), list(zip(z[wrong][:5], got[wrong][:5], want[wrong][:5], strict=True))
    assert np.isnan(got[nan]).all()


def test_which_results_are_rounded() -> None:
    """The rewrite rounds the results of arithmetic, not of operators whose float16 result is
    one of their inputs (Reshape, Relu, Max...), and not a model output nothing else reads
    (its encoder rounds it); Softmax becomes the operators ONNX defines it as."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    from microexport.compiler.frontend.float16 import HALF_DOMAIN, ROUND_OP, widen_float16

    half = TensorProto.FLOAT16
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["s"]),
         helper.make_node("Mul", ["s", "s"], ["m"]),
         helper.make_node("Softmax", ["m"], ["y"], axis=-1)],
        "half", [helper.make_tensor_value_info("x", half, [2, 3])],
        [helper.make_tensor_value_info("y", half, [3, 2])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    widened, edges = widen_float16(model)
    rounded = [n.input[0] for n in widened.graph.node
               if n.domain == HALF_DOMAIN and n.op_type == ROUND_OP]
    ops = [n.op_type for n in widened.graph.node if n.domain != HALF_DOMAIN]
    # Add, Mul, and Softmax's Sub, Exp and ReduceSum; its Div is the output
    assert rounded == ["a__unrounded", "m__unrounded", "y__softmax_sub__unrounded",
                       "y__softmax_exp__unrounded", "y__softmax_sum__unrounded"]
    assert edges.rounded_results == 5
    assert ops == ["Add", "Relu", "Reshape", "Mul", "ReduceMax", "Sub", "Exp", "ReduceSum",
                   "Div"]


def test_a_result_the_frontend_folds_is_rounded(tmp_path: Path) -> None:
    """Operators on constants too large for our ONNX folding are folded by TVM's frontend: their
    rounding is folded with them (numpy's float16 rounding of the constant)."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    half, n = TensorProto.FLOAT16, 2048
    c1 = (np.arange(n) / 7).astype(np.float16)
    c2 = np.full(n, 1.1, np.float16)
    path = _save(tmp_path / "folded.onnx",
                 [helper.make_node("Mul", ["c1", "c2"], ["p"]),
                  helper.make_node("Add", ["p", "x"], ["y"])],
                 [helper.make_tensor_value_info("x", half, [n])],
                 [helper.make_tensor_value_info("y", half, [n])],
                 [numpy_helper.from_array(c1, "c1"), numpy_helper.from_array(c2, "c2")])
    x = np.ones(n, np.float16)
    once = (c1.astype(np.float32) * c2.astype(np.float32) + 1).astype(np.float16)
    import onnx

    want = ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": x})[0]
    assert (once != want).sum() >= 5  # rounding the product matters here
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="folded").archive
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
