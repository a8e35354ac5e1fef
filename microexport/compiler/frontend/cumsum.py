"""Cumulative sum (ONNX `CumSum`, Relax `relax.cumsum`) as one plain-loop kernel.

TVM 0.27 registers no legalization for `relax.cumsum`, and `topi.cumsum` is a parallel loop
(`TVMBackendParallelLaunch` in C) with div/mod index arithmetic. `cumsum_te` is a serial running
sum instead: for every index before the axis, the first element along the axis (or zero when
exclusive), then every further element as the previous output plus one input element, with the
dimensions after the axis innermost so that both reads and the write walk memory contiguously.
`reverse` runs the axis from its end, so ONNX's reverse needs no flips around the kernel.

`install()` registers the kernel as the legalization of `relax.cumsum` (for every frontend that
emits it, and for constant folding); `onnx_converters()` gives an ONNX `CumSum` converter that
calls the kernel directly, with `exclusive` and `reverse`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from microexport.errors import ModelError

_LEVEL = 11  # above TVM's default registration (10; cumsum has none in TVM 0.27)
_installed = False


def cumsum_te(data: Any, axis: int | None, dtype: str | None = None, exclusive: bool = False,
              reverse: bool = False) -> Any:
    """A TE tensor: the running sum of the TE tensor `data` along `axis` (None: over the
    flattened tensor, a 1-D result), accumulated and returned in `dtype` (default: `data`'s).

    `exclusive`: element i is the sum of the elements before i (the first is 0); `reverse`: the
    sum runs from the end of the axis (element i sums i to the end, or i+1 to the end when
    exclusive).
    """
    from tvm import te, tirx, topi

    dtype = str(dtype or data.dtype)
    if axis is None:
        data = topi.reshape(data, (math.prod(int(d) for d in data.shape),))
        axis = 0
    shape = [int(d) for d in data.shape]
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise ModelError(f"cumsum axis {axis} is out of range for a tensor of rank {len(shape)}: "
                         f"give an axis in [{-len(shape)}, {len(shape) - 1}]")
    src_buffer = tirx.decl_buffer(data.shape, data.dtype, "cumsum_in")
    dst_buffer = tirx.decl_buffer(shape, dtype, "cumsum_out")
    if 0 in shape:  # nothing to sum: an empty kernel (the output has no elements either)
        return te.extern([shape], [data], lambda ins, outs: tirx.Evaluate(0), dtype=dtype,
                         in_buffers=[src_buffer], out_buffers=[dst_buffer], name="cumsum",
                         tag="cumsum")
    length = shape[axis]

    def body(ins: Any, outs: Any) -> Any:
        first = _part(ins[0], outs[0], shape, axis, dtype, exclusive, reverse, 0)
        if length == 1:
            return first
        return tirx.SeqStmt([first, _part(ins[0], outs[0], shape, axis, dtype, exclusive,
                                          reverse, length - 1)])

    return te.extern([shape], [data], body, dtype=dtype, in_buffers=[src_buffer],
                     out_buffers=[dst_buffer], name="cumsum", tag="cumsum")


def _part(src: Any, dst: Any, shape: list[int], axis: int, dtype: str, exclusive: bool,
          reverse: bool, steps: int) -> Any:
    """The loops of one part of the kernel: `steps == 0` writes the first element along the
    axis, `steps > 0` the `steps` further ones, each from the one written before it."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    length = shape[axis]
    first = length - 1 if reverse else 0
    with IRBuilder() as builder, contextlib.ExitStack() as loops:
        outer = [loops.enter_context(T.serial(0, d)) for d in shape[:axis]]
        step = loops.enter_context(T.serial(0, steps)) if steps else None
        inner = [loops.enter_context(T.serial(0, d)) for d in shape[axis + 1:]]

        def at(index: Any) -> list[Any]:
            return [*outer, index, *inner]

        if step is None:
            value = (tirx.const(0, dtype) if exclusive
                     else src[tuple(at(first))].astype(dtype))
            T.buffer_store(dst, value, at(first))
        else:
            index = length - 2 - step if reverse else step + 1
            previous = index + 1 if reverse else index - 1
            added = src[tuple(at(previous if exclusive else index))].astype(dtype)
            T.buffer_store(dst, dst[tuple(at(previous))] + added, at(index))
    return builder.get()


def _legalize(bb: Any, call: Any) -> Any:
    """The legalization of `relax.cumsum`: a call of the `cumsum_te` kernel."""
    attrs = call.attrs
    axis = None if attrs.axis is None else int(attrs.axis)
    dtype = str(attrs.dtype) if attrs.dtype is not None else None
    exclusive = bool(attrs.exclusive) if attrs.exclusive is not None else False
    return bb.call_te(cumsum_te, call.args[0], axis, dtype, exclusive, primfunc_name_hint="cumsum")


def install() -> None:
    """Register `relax.cumsum`'s legalization (once per process)."""
    global _installed
    if _installed:
        return
    import tvm

    tvm.ir.register_op_attr("relax.cumsum", "FLegalize", _legalize, level=_LEVEL)
    _installed = True


def onnx_converters() -> dict[str, type]:
    """An ONNX `CumSum` converter for TVM's Relax ONNX frontend (`OnnxOpConverter` subclass):
    the `cumsum_te` kernel with the node's `exclusive` and `reverse`, the axis from a constant
    input (a run-time axis is a one-line error: freeze it with --constant)."""
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    def impl(cls: type, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        del cls, params
        import numpy as np
        from tvm import ir

        data, axis_input = inputs[0], inputs[1]
        if not isinstance(axis_input, ir.Constant):
            name = getattr(axis_input, "name", "") or "NAME"
            raise ModelError(f"CumSum's axis is computed at run time ('{name}'): the kernel "
                             f"needs it at compile time; freeze it with --constant "
                             f"{name}=axis.npy")
        axis = np.asarray(axis_input.value.numpy())
        if axis.size != 1:
            raise ModelError(f"CumSum's axis has shape {list(axis.shape)}: it must be one "
                             "integer")
        return bb.emit_te(cumsum_te, data, int(axis.reshape(-1)[0]), None,
                          bool(attr.get("exclusive", 0)), bool(attr.get("reverse", 0)),
                          primfunc_name_hint="cumsum")

    converter = type("CumSum", (OnnxOpConverter,), {
        "_impl_v1": classmethod(impl), "__doc__": "ONNX CumSum, one running-sum kernel."})
    return {"CumSum": converter}
