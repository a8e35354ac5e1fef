"""The run-time fixed-point operations of the integer kernels (`compiler.integer.te_math`), as
generated C, against TFLite's arithmetic written out in Python integers (`fixedpoint`).

Each operation is compiled as a kernel of a small Relax model through the whole pipeline (TVM's
simplifier, our schedules, C) and run on the host on random operands and the edge cases
(INT32_MIN/MAX, 0, ±1, ±2**30, every shift). The kernels compute TFLite Micro's results only if
these hold bit for bit; a simplifier rewrite of one of them once shifted some results by one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import microexport
from microexport.compiler.integer import fixedpoint as fp
from microexport.compiler.integer import te_math as tm

N = 4096
EDGES = [fp.INT32_MIN, fp.INT32_MIN + 1, -(1 << 30), -65536, -3, -2, -1, 0, 1, 2, 3, 65535,
         1 << 30, fp.INT32_MAX - 1, fp.INT32_MAX]


def _operands(seed: int, low: int, high: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.array([e for e in EDGES if low <= e <= high], np.int64),
                             rng.integers(low, high, size=N, endpoint=True),
                             rng.integers(-300, 300, size=N // 4)])
    return np.clip(values[:N], low, high).astype(np.int32)


def _run(tmp_path: Path, build: Callable[..., Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Compile `build(*te_tensors)` as the one kernel of a Relax model and run it on `arrays`."""
    from tvm import relax

    from microexport.api import compile_model, import_model
    from microexport.archive.mlf import write_archive

    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(array.shape, str(array.dtype)))
              for name, array in arrays.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(build, *params, primfunc_name_hint="fixed_point"))
        bb.emit_func_output(out)
    compilation = compile_model(import_model(bb.get()), name="fx")
    archive = tmp_path / "fx.tar"
    write_archive(archive, compilation.files)
    (result,) = microexport.run(archive, arrays, build_dir=tmp_path / "build").values()
    return result


def _elementwise(function: Callable[..., Any]) -> Callable[..., Any]:
    from tvm import te

    def build(*tensors: Any) -> Any:
        return te.compute(tensors[0].shape, lambda i: function(*[t[i] for t in tensors]),
                          name="op")

    return build


def test_saturating_rounding_doubling_high_mul(tmp_path: Path) -> None:
    a, b = _operands(1, fp.INT32_MIN, fp.INT32_MAX), _operands(2, fp.INT32_MIN, fp.INT32_MAX)
    b[:len(EDGES)] = a[:len(EDGES)]  # includes INT32_MIN * INT32_MIN, the saturating case
    got = _run(tmp_path, _elementwise(tm.saturating_rounding_doubling_high_mul),
               {"a": a, "b": b})
    want = [fp.saturating_rounding_doubling_high_mul(int(x), int(y)) for x, y in zip(a, b,
                                                                                     strict=True)]
    assert np.array_equal(got, np.array(want, np.int32))


@pytest.mark.parametrize("exponent", [1, 2, 7, 13, 30, 31])
def test_rounding_divide_by_pot_constant_exponent(exponent: int, tmp_path: Path) -> None:
    x = _operands(exponent, fp.INT32_MIN, fp.INT32_MAX)
    got = _run(tmp_path, _elementwise(lambda v: tm.rounding_divide_by_pot(v, exponent)),
               {"x": x})
    want = [fp.rounding_divide_by_pot(int(v), exponent) for v in x]
    assert np.array_equal(got, np.array(want, np.int32))


def test_rounding_divide_by_pot_per_element_exponent(tmp_path: Path) -> None:
    """The per-channel form, the exponent read from an array (0 included: no rounding)."""
    x = _operands(3, fp.INT32_MIN, fp.INT32_MAX)
    exponent = np.resize(np.arange(0, 32, dtype=np.int32), N)
    got = _run(tmp_path, _elementwise(tm.rounding_divide_by_pot), {"x": x, "e": exponent})
    want = [fp.rounding_divide_by_pot(int(v), int(e)) for v, e in zip(x, exponent, strict=True)]
    assert np.array_equal(got, np.array(want, np.int32))


@pytest.mark.parametrize("real", [0.0007, 0.3, 0.99999, 1.7, 40.0])
def test_multiply_by_quantized_multiplier(real: float, tmp_path: Path) -> None:
    """Positive and negative shifts, operands in the range an int8/int16 accumulator reaches."""
    multiplier, shift = fp.quantize_multiplier(real)
    x = _operands(4, -(1 << 24), 1 << 24)
    got = _run(tmp_path, _elementwise(
        lambda v: tm.multiply_by_quantized_multiplier(v, multiplier, shift)), {"x": x})
    want = [fp.multiply_by_quantized_multiplier(int(v), multiplier, shift) for v in x]
    assert np.array_equal(got, np.array(want, np.int32))


@pytest.mark.parametrize("real", [0.0007, 0.3, 0.99999, 1.7])
def test_multiply_by_quantized_multiplier_wide(real: float, tmp_path: Path) -> None:
    """The 16x8 form on int64 accumulators up to 2**40."""
    multiplier, shift = fp.quantize_multiplier(real)
    reduced, right = fp.reduced_multiplier(multiplier, shift)
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.integers(-(1 << 40), 1 << 40, size=N - 7),
                        [-(1 << 40), -1, 0, 1, 1 << 40, 12345, -12345]]).astype(np.int64)
    got = _run(tmp_path, _elementwise(
        lambda v: tm.multiply_by_quantized_multiplier_wide(v, reduced, right)), {"x": x})
    want = [fp.multiply_by_quantized_multiplier_wide(int(v), multiplier, shift) for v in x]
    assert np.array_equal(got, np.array(want, np.int32))
