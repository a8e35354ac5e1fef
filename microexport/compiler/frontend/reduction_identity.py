"""Float max/min reductions start from -inf/+inf in TVM's legalization, constant folding included.

TVM legalizes `relax.max` (`relax.min`) to a reduction whose initial value is the lowest
(highest) *finite* float, so a max over values that are all -inf is -FLT_MAX, where ONNX, numpy
and onnxruntime give -inf. `compiler.lower` corrects the kernels it schedules
(`infinite_reduction_identities`, here), but Relax's `FoldConstant` legalizes and evaluates a
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


def _infinite_identity(block: Any) -> Any:
    """`block` with the initial value of a float max (min) reduction -inf (+inf) instead of
    TVM's lowest (highest) finite value, so that a max over -inf values is -inf as in ONNX,
    numpy and onnxruntime (a fully masked attention row tests it)."""
    import numpy as np
    from tvm import s_tir, tirx

    init, body = block.init, block.body
    if not (isinstance(init, tirx.BufferStore) and isinstance(init.value, tirx.FloatImm)
            and isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Max | tirx.Min)):
        return block
    dtype = str(init.value.ty.dtype)
    if dtype not in ("float32", "float64"):
        return block
    value, finfo = float(init.value.value), np.finfo(dtype)
    if isinstance(body.value, tirx.Max) and value == float(finfo.min):
        identity = -np.inf
    elif isinstance(body.value, tirx.Min) and value == float(finfo.max):
        identity = np.inf
    else:
        return block
    new_init = tirx.BufferStore(init.buffer, tirx.FloatImm(dtype, identity), init.indices)
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body,
                        new_init, block.alloc_buffers, block.match_buffers, block.annotations)


def infinite_reduction_identities(func: Any) -> Any:
    """The PrimFunc `func` with every float max/min reduction starting from -inf/+inf
    (`_infinite_identity`); `compiler.lower` applies it to every kernel it schedules. (TVM is
    imported here, not at module level: importing the frontend package does not import TVM.)"""
    import tvm_ffi
    from tvm import s_tir

    return tvm_ffi.structural_map(func, (s_tir.SBlock, _infinite_identity))
