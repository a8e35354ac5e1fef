"""Comparing a model's outputs with a reference runtime's: tolerances, seeded inputs, reports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from microexport.model import TensorSpec

FLOAT_RTOL = 1e-4
FLOAT_ATOL = 1e-5
QUANTIZED_MAX_DIFF = 1


@dataclass(frozen=True)
class OutputComparison:
    """One output compared with the reference runtime."""

    name: str
    max_abs_error: float
    passed: bool


@dataclass(frozen=True)
class TestReport:
    """Result of `test`: per-output comparison against the reference runtime."""

    model: str
    board: str
    reference: str
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        lines = [
            f"{o.name}: max abs error {o.max_abs_error:.3g} {'PASS' if o.passed else 'FAIL'}"
            for o in self.outputs
        ]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {self.model} on {self.board} vs {self.reference}")
        if not self.passed and self.reference == "tvm":
            lines.append("tvm is TVM's own LLVM build of the same imported module: the "
                         "difference is in microexport's pipeline (lowering, memory plan, C), "
                         "not in the import")
        return "\n".join(lines)


def sample_inputs(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs: uniform in [-1, 1) for floats, full range for integers."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays[spec.name] = rng.integers(info.min, info.max, spec.shape, endpoint=True,
                                             dtype=dtype)
        elif dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 1, spec.shape, endpoint=True).astype(bool)
        else:
            arrays[spec.name] = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
    return arrays


def compare(name: str, got: np.ndarray, want: np.ndarray,
            max_integer_diff: int = QUANTIZED_MAX_DIFF, step: float | None = None
            ) -> OutputComparison:
    """Compare one output: float32 with rtol/atol, integers off by at most `max_integer_diff`
    (0 against TFLite Micro, whose integer kernels ours reproduce bit for bit). A float output
    dequantized from integers with scale `step` (a quantized ONNX model's) may differ by
    `max_integer_diff` steps: onnxruntime's integer kernels round differently from ours."""
    if got.shape != want.shape:
        return OutputComparison(name, float("inf"), False)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_err = float(diff.max()) if diff.size else 0.0
    if np.issubdtype(want.dtype, np.integer):
        return OutputComparison(name, max_err, max_err <= max_integer_diff)
    atol = FLOAT_ATOL
    if step is not None:  # float32 rounding of the dequantized values on top of the steps
        atol = max(atol, max_integer_diff * step * (1 + FLOAT_RTOL))
    ok = bool(np.allclose(got, want, rtol=FLOAT_RTOL, atol=atol))
    return OutputComparison(name, max_err, ok)
