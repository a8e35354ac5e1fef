"""16x8 (int16 activations) RELU, RELU6, LEAKY_RELU, BATCH_MATMUL and CONCATENATION,
bit-exact with TFLite Micro.

Each case is a single-operator int16 model run by TFLite Micro's host interpreter (the
reference) and by the compiled C, compared bit for bit. The elementwise operators see every int16
value; BATCH_MATMUL and CONCATENATION see random int16 inputs over the whole range with both
extremes in them. Quantizations: input/output scale ratios above and below 1 (and equal), LEAKY_RELU
alphas 0.2, 1.7 and a negative one, BATCH_MATMUL with adj_x/adj_y and a broadcast batch,
CONCATENATION of inputs of different scales (TFLite Micro copies int16 values as they are).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from int8_models import tflm_reference
from support import require_board, require_module
from zoo import TfliteWriter

import microexport
from microexport.errors import UnsupportedOperator

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16).reshape(256, 256)

Options = Callable[[TfliteWriter], object] | None


def _single_op(directory: Path, op: str, inputs: list[tuple[str, tuple[int, ...], float]],
               output: tuple[tuple[int, ...], float], options: Options = None,
               zero_point: int = 0, dtypes: tuple[str, str] = ("int16", "int16")) -> Path:
    """A model of one int16 operator: `inputs` as (name, shape, scale), output (shape, scale)
    named "y"; every zero point `zero_point`."""
    writer = TfliteWriter()
    tensors = [writer.tensor(name, shape, dtypes[0], None, [scale], [zero_point])
               for name, shape, scale in inputs]
    y = writer.tensor("y", output[0], dtypes[1], None, [output[1]], [zero_point])
    writer.operator(op, tensors, [y], options(writer) if options else None)
    return writer.write(directory / f"{op.lower()}.tflite", tensors, [y])


def _random_int16(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform over the whole int16 range, with -32768, 32767, 0 and -1 among the values."""
    values = np.random.default_rng(seed).integers(-32768, 32768, size=shape).astype(np.int16)
    flat = values.reshape(-1)
    flat[:4] = [-32768, 32767, 0, -1]
    return values


def _assert_matches_tflm(path: Path, inputs: dict[str, np.ndarray], directory: Path,
                         board: str = "host") -> None:
    want = tflm_reference(path, inputs)["y"]
    archive = microexport.compile(str(path), output=directory / "m.tar", name="op16").archive
    got = microexport.run(archive, inputs, board=board, build_dir=directory / "build")["y"]
    assert got.dtype == want.dtype == np.int16 and got.shape == want.shape
    differs = np.flatnonzero(got != want)
    assert differs.size == 0, (differs.size, got.ravel()[differs[:5]], want.ravel()[differs[:5]])


# --- elementwise: every int16 input -----------------------------------------------------------

# (input scale, output scale): ratio above 1, below 1, equal.
RATIOS = [(0.001, 0.0004), (0.0004, 0.0031), (0.002, 0.002)]


# RELU6: 0.001: 6 is 6000; 1e-4: 6 is past 32767 (the clamp saturates); an output scale that
# differs from the input's, which TFLite Micro's int16 RELU6 ignores.
@pytest.mark.parametrize("op,scales", [
    *(("RELU", ratio) for ratio in RATIOS),
    *(("RELU6", ratio) for ratio in [(0.001, 0.001), (0.0003, 0.0007), (1e-4, 1e-4)])])
def test_int16_relu_and_relu6_match_tflm_on_every_input(op: str, scales: tuple[float, float],
                                                        tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    path = _single_op(tmp_path, op, [("x", ALL_INT16.shape, scales[0])],
                      (ALL_INT16.shape, scales[1]))
    _assert_matches_tflm(path, {"x": ALL_INT16}, tmp_path)


@pytest.mark.parametrize("scales", RATIOS[:2])
@pytest.mark.parametrize("alpha", [0.2, 1.7, -0.3])
def test_int16_leaky_relu_matches_tflm_on_every_input(alpha: float, scales: tuple[float, float],
                                                      tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    path = _single_op(tmp_path, "LEAKY_RELU", [("x", ALL_INT16.shape, scales[0])],
                      (ALL_INT16.shape, scales[1]),
                      lambda w: w.options("LeakyReluOptions", alpha=alpha))
    _assert_matches_tflm(path, {"x": ALL_INT16}, tmp_path)


# --- BATCH_MATMUL: int64 accumulation ---------------------------------------------------------

def _batch_matmul_model(directory: Path, lhs: tuple[int, ...], rhs: tuple[int, ...],
                        out: tuple[int, ...], adj_x: bool, adj_y: bool,
                        scales: tuple[float, float, float]) -> Path:
    """`scales`: lhs, rhs, and the output's as a multiple of the product of the two."""
    output_scale = scales[0] * scales[1] * scales[2]
    return _single_op(directory, "BATCH_MATMUL",
                      [("a", lhs, scales[0]), ("b", rhs, scales[1])], (out, output_scale),
                      lambda w: w.options("BatchMatMulOptions", adjX=adj_x, adjY=adj_y))


# Output scales: the inputs' scale product times about 2**17 (a depth-6 sum of full-range
# products mostly in range: right shifts of about 32 bits), and times 0.4 (a rescale of 2.5,
# above 1: full-range outputs saturate, the small inputs of the test after next do not).
BATCH_MATMULS = {
    "plain": ((2, 4, 6), (2, 6, 5), (2, 4, 5), False, False, (0.002, 0.0005, 1.5e5)),
    "adj_x": ((2, 6, 4), (2, 6, 5), (2, 4, 5), True, False, (0.003, 0.001, 2.1e5)),
    "adj_y": ((2, 4, 6), (2, 5, 6), (2, 4, 5), False, True, (0.001, 0.001, 9.7e4)),
    "adj_xy": ((3, 6, 4), (3, 5, 6), (3, 4, 5), True, True, (0.004, 0.002, 0.4)),
    "broadcast": ((3, 1, 4, 6), (2, 6, 5), (3, 2, 4, 5), False, False,
                  (0.001, 0.002, 1.2e5)),
}


@pytest.mark.parametrize("case", BATCH_MATMULS)
def test_int16_batch_matmul_matches_tflm(case: str, tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    lhs, rhs, out, adj_x, adj_y, scales = BATCH_MATMULS[case]
    path = _batch_matmul_model(tmp_path, lhs, rhs, out, adj_x, adj_y, scales)
    _assert_matches_tflm(path, {"a": _random_int16(1, lhs), "b": _random_int16(2, rhs)},
                         tmp_path)


def test_int16_batch_matmul_small_products_above_unit_rescale(tmp_path: Path) -> None:
    """A rescale of 2.5 on small inputs: the outputs stay in range (a left-shifting
    requantization, exact in both)."""
    require_module("tflite_micro", "tflite")
    lhs, rhs, out, adj_x, adj_y, scales = BATCH_MATMULS["adj_xy"]
    path = _batch_matmul_model(tmp_path, lhs, rhs, out, adj_x, adj_y, scales)
    rng = np.random.default_rng(3)
    inputs = {"a": rng.integers(-40, 41, size=lhs).astype(np.int16),
              "b": rng.integers(-40, 41, size=rhs).astype(np.int16)}
    _assert_matches_tflm(path, inputs, tmp_path)


def test_int16_batch_matmul_bit_exact_in_qemu(tmp_path: Path) -> None:
    """Cortex-M3: the int64 accumulation and 64-bit requantization give TFLite Micro's bits."""
    require_module("tflite_micro", "tflite")
    require_board("mps2_an385")
    lhs, rhs, out, adj_x, adj_y, scales = BATCH_MATMULS["broadcast"]
    path = _batch_matmul_model(tmp_path, lhs, rhs, out, adj_x, adj_y, scales)
    _assert_matches_tflm(path, {"a": _random_int16(4, lhs), "b": _random_int16(5, rhs)},
                         tmp_path, board="mps2_an385")


# --- CONCATENATION: int16 values copied, whatever the scales ----------------------------------

@pytest.mark.parametrize("axis,output_scale", [(1, 0.001), (-1, 0.0002), (0, 0.01)])
def test_int16_concatenation_of_different_scales_matches_tflm(axis: int, output_scale: float,
                                                              tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    shapes = {0: [(2, 3, 4), (1, 3, 4), (3, 3, 4)], 1: [(2, 3, 4), (2, 1, 4), (2, 5, 4)],
              -1: [(2, 3, 4), (2, 3, 2), (2, 3, 7)]}[axis]
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    inputs = [(f"x{i}", shape, scale) for i, (shape, scale)
              in enumerate(zip(shapes, [0.001, 0.0004, 0.003], strict=True))]
    path = _single_op(tmp_path, "CONCATENATION", inputs, (tuple(out), output_scale),
                      lambda w: w.options("ConcatenationOptions", axis=axis))
    _assert_matches_tflm(path, {name: _random_int16(10 + i, shape)
                                for i, (name, shape, _) in enumerate(inputs)}, tmp_path)


# --- what TFLite Micro (or we) cannot do: one line --------------------------------------------

def _assert_one_line(path: Path, *words: str) -> None:
    with pytest.raises(UnsupportedOperator) as err:
        microexport.compile(str(path))
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_int16_relu_with_a_zero_point_is_one_line(tmp_path: Path) -> None:
    path = _single_op(tmp_path, "RELU", [("x", (1, 8), 0.001)], ((1, 8), 0.001), zero_point=5)
    _assert_one_line(path, "RELU", "zero points 0")


def test_int16_batch_matmul_with_too_large_a_rescale_is_one_line(tmp_path: Path) -> None:
    path = _batch_matmul_model(tmp_path, (1, 2, 3), (1, 3, 2), (1, 2, 2), False, False,
                               (0.5, 0.5, 4e-5))
    _assert_one_line(path, "BATCH_MATMUL", "output scale")


def test_int16_to_int8_leaky_relu_is_one_line(tmp_path: Path) -> None:
    path = _single_op(tmp_path, "LEAKY_RELU", [("x", (1, 8), 0.001)], ((1, 8), 0.01),
                      lambda w: w.options("LeakyReluOptions", alpha=0.2),
                      dtypes=("int16", "int8"))
    _assert_one_line(path, "LEAKY_RELU", "int16 to int8")
