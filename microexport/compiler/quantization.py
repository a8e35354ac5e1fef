"""Quantization parameters of the model's tensors, carried from the TFLite flatbuffer to the AOT
main (and from there into the TIR JSON and graph.json).

The TFLite frontend records, for every Relax value that stands for a quantized TFLite tensor (a
model input, an operator's output, a constant weight or bias), the tensor's scales, zero points
and per-channel axis as read from the flatbuffer (`TensorQuantization`), keyed by the Relax `Var`
or `Constant` object. Those objects survive the Relax passes except where FuseOps replaces a group
of bindings by one call: `FusionOrigins` (a pass instrument) maps the variables FuseOps creates
back to the bindings they replace, so the tensor between two fused kernels gets the parameters of
the last TFLite operator of the producing group. Constants we synthesise ourselves (fixed-point
multipliers and shifts, lookup tables) were never TFLite tensors and carry none. The integer
path of quantized ONNX models (`frontend/onnx_integer.py`) records its tensors the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANTIZATION_ATTR = "microexport.quantization"  # the AOT main's attribute: tensor name → params


@dataclass(frozen=True)
class TensorQuantization:
    """`real = scale * (q - zero_point)`, per tensor (one scale, `axis` None) or per channel
    along `axis` (one scale and zero point per index of that dimension)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None

    def as_attr(self) -> dict[str, Any]:
        """The value of this tensor's entry in the main's `microexport.quantization` attribute."""
        return {"scale": list(self.scale), "zero_point": list(self.zero_point),
                "axis": self.axis}


def tflite_quantization(tensor: Any) -> TensorQuantization | None:
    """The quantization of a flatbuffer `tflite.Tensor`; None if it has no scales.

    Scales are TFLite's float32 values (exactly representable as Python floats); a missing
    zero-point vector means zero points of 0; `axis` is the quantized dimension when there is more
    than one scale, else None (one scale is per-tensor whatever the dimension field says)."""
    params = tensor.Quantization()
    if params is None or not params.ScaleLength():
        return None
    scale = tuple(float(s) for s in np.asarray(params.ScaleAsNumpy(), np.float32).reshape(-1))
    zero_point = (tuple(int(z) for z in np.asarray(params.ZeroPointAsNumpy()).reshape(-1))
                  if params.ZeroPointLength() else (0,) * len(scale))
    if len(zero_point) == 1 and len(scale) > 1:
        zero_point = zero_point * len(scale)
    axis = int(params.QuantizedDimension()) if len(scale) > 1 else None
    return TensorQuantization(scale, zero_point, axis)


def same_data(array: np.ndarray, const: Any) -> bool:
    """True when the Relax constant `const` holds exactly `array` (dtype, shape and bytes);
    False for a constant that is no tensor (a scalar `PrimValue`, a shape)."""
    value = getattr(const, "value", None)
    if not hasattr(value, "numpy"):
        return False
    value = value.numpy()
    return (value.dtype == array.dtype and value.shape == array.shape
            and value.tobytes() == np.ascontiguousarray(array).tobytes())


def fusion_origins(before: Any, after: Any) -> dict[Any, Any]:
    """Each binding variable of `after`'s Relax `main` (FuseOps' result) that is not one of
    `before`'s, mapped to the variable of `before` it replaces.

    FuseOps keeps the variables of bindings it leaves alone and of those inside a fused function
    except the function's result, and binds each call of a fused function to a new variable. A
    new variable is matched to the binding of `before` that computes the same thing: the fused
    function's last binding (or a rewritten binding of the main) with the function's parameters
    replaced by the call's arguments and new variables by their origins has the callee and the
    arguments of exactly one binding of `before`.
    """
    from tvm import ir, relax

    old: list[tuple[Any, Any]] = [(b.var, b.value) for block in before["main"].body.blocks
                                  for b in block.bindings]
    old_vars = {var for var, _ in old}
    origins: dict[Any, Any] = {}

    def resolve(expr: Any, params: Mapping[Any, Any]) -> Any:
        if isinstance(expr, relax.Var) and expr in params:
            expr = params[expr]
        return origins.get(expr, expr) if isinstance(expr, relax.Var) else expr

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, relax.Tuple) and isinstance(b, relax.Tuple):
            return len(a.fields) == len(b.fields) and all(
                same(x, y) for x, y in zip(a.fields, b.fields, strict=True))
        return a.same_as(b)

    def key(value: Any, params: Mapping[Any, Any]) -> tuple[str, Any, list[Any]] | None:
        """(kind, callee, resolved args) of a call or tuple item; None for anything else."""
        if isinstance(value, ir.TupleGetItem):
            return ("item", value.index, [resolve(value.tuple_value, params)])
        if isinstance(value, ir.Call):
            args = [relax.Tuple([resolve(f, params) for f in a.fields])
                    if isinstance(a, relax.Tuple) else resolve(a, params) for a in value.args]
            return ("call", value.op, args)
        return None

    def old_key(value: Any) -> tuple[str, Any, list[Any]] | None:
        return key(value, {})

    def find(target: tuple[str, Any, list[Any]] | None) -> Any:
        if target is None:
            return None
        kind, head, args = target
        found = []
        for var, value in old:
            candidate = old_key(value)
            if candidate is None or candidate[0] != kind or len(candidate[2]) != len(args):
                continue
            if kind == "item" and candidate[1] != head:
                continue
            if kind == "call" and not candidate[1].same_as(head):
                continue
            if all(same(x, y) for x, y in zip(candidate[2], args, strict=True)):
                found.append(var)
        return found[0] if len(found) == 1 else None

    fields: dict[Any, list[Any]] = {}  # fused call returning a tuple → its resolved fields
    for block in after["main"].body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if var in old_vars:
                continue
            target = key(value, {})
            if (isinstance(value, ir.TupleGetItem) and value.tuple_value in fields
                    and value.index < len(fields[value.tuple_value])):
                # an item of a fused group's tuple of results: that result's binding
                origins[var] = fields[value.tuple_value][value.index]
                continue
            if (isinstance(value, ir.Call) and isinstance(value.op, ir.GlobalVar)
                    and isinstance(after[value.op], relax.Function)):
                function = after[value.op]
                params = dict(zip(function.params, value.args, strict=False))
                body = function.body
                result = body.body
                last = [b for blk in body.blocks for b in blk.bindings]
                target = None
                if last and isinstance(result, relax.Var) and last[-1].var.same_as(result):
                    target = key(last[-1].value, params)
                elif isinstance(result, relax.Tuple):
                    fields[var] = [resolve(f, params) for f in result.fields]
            origin = find(target)
            if origin is not None:
                origins[var] = origin
    return origins


def fusion_recorder() -> tuple[Any, dict[str, Any]]:
    """A pass instrument and the dict it fills with the modules just before (`before`) and just
    after (`after`) FuseOps, for `fusion_origins`."""
    import tvm

    seen: dict[str, Any] = {}

    @tvm.instrument.pass_instrument
    class _FuseOpsRecorder:
        def run_before_pass(self, mod: Any, info: Any) -> None:
            if info.name == "FuseOps":
                seen["before"] = mod

        def run_after_pass(self, mod: Any, info: Any) -> None:
            if info.name == "FuseOps":
                seen["after"] = mod

    return _FuseOpsRecorder(), seen
