"""Float max/min reductions start from -inf/+inf in TVM's legalization, constant folding included.

TVM legalizes `relax.max` (`relax.min`) to a reduction whose initial value is the lowest
(highest) *finite* float, so a max over values that are all -inf is -FLT_MAX, where ONNX, numpy
and onnxruntime give -inf. `compiler.lower` corrects the kernels it schedules
(`infinite_reduction_identities`), but Relax's `FoldConstant` legalizes and evaluates a
reduction of constants on its own, with TVM's identity: a fully masked attention row's bias
maximum folded to -FLT_MAX, the `Equal(max, -inf)` that detects the row folded to false, and the
row's softmax (NaN) was kept instead of zeros (a float16 attention with its bool mask frozen).

`install()` registers, above TVM's own, a legalization of `relax.max`/`relax.min` that is TVM's
followed by the same correction, so every legalization (the pipeline's and the constant
folder's) computes what the kernels compute. It is process-wide and idempotent.
"""

from __future__ import annotations

from typing import Any

_OPS = ("relax.max", "relax.min")
_LEVEL = 11  # above TVM's default registration (10)
_installed = False


def install() -> None:
    """Register the corrected legalizations (once per process)."""
    global _installed
    if _installed:
        return
    import tvm

    for name in _OPS:
        original = tvm.ir.Op.get(name).get_attr("FLegalize")
        tvm.ir.register_op_attr(name, "FLegalize", _corrected(original), level=_LEVEL)
    _installed = True


def _corrected(original: Any) -> Any:
    def legalize(bb: Any, call: Any) -> Any:
        from tvm import relax

        from microexport.compiler.lower import infinite_reduction_identities

        result = original(bb, call)
        if isinstance(result, relax.Call) and result.args \
                and isinstance(result.args[0], relax.GlobalVar):
            gv = result.args[0]
            func = bb.get()[gv]
            fixed = infinite_reduction_identities(func)
            if not fixed.same_as(func):
                bb.update_func(gv, fixed)
        return result

    return legalize
