"""ONNX QuantizeLinear / DequantizeLinear with blocked quantization (`block_size` > 0, opset 21+),
which TVM 0.27's ONNX frontend refuses.

With blocked quantization the scale (and zero point) has the input's shape except along `axis`,
where it has one entry per block of `block_size` consecutive elements: element `i` along the axis
uses entry `i // block_size`. Each converter is one elementwise kernel that indexes the scale and
zero point so (no repeated copy of them): QuantizeLinear computes `saturate(rint(x / scale) +
zero_point)` (ties to even, as ONNX), DequantizeLinear `(x - zero_point) * scale`, both in
float32 as onnx's reference does. Without `block_size` the node goes to TVM's own converter.
"""

from __future__ import annotations

from typing import Any

from microexport.errors import ModelError

_INTEGER_TYPES = ("int8", "uint8", "int16", "uint16")


def onnx_converters(stock: dict[str, Any]) -> dict[str, type]:
    """Converters for `QuantizeLinear` and `DequantizeLinear` that handle `block_size` and hand
    every other node to the classes of `stock` (TVM's converter map)."""
    return {op: _wrapped(op, stock[op]) for op in ("QuantizeLinear", "DequantizeLinear")
            if op in stock}


def _wrapped(op: str, original: type) -> type:
    def get_converter(cls: type, opset: int) -> Any:
        del cls
        fallback = original.get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            if not attr.get("block_size", 0):
                return fallback(bb, inputs, attr, params)
            return _blocked(op, bb, list(inputs), attr)

        return convert

    return type(op, (original,), {"get_converter": classmethod(get_converter),
                                  "__doc__": f"ONNX {op}, blocked quantization included."})


def _shape(expr: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in expr.ty.shape.values)


def _blocked(op: str, bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    """The kernel of a blocked QuantizeLinear / DequantizeLinear node."""
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    block = int(attr["block_size"])
    shape = _shape(x)
    axis = int(attr.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape) or block < 0:
        raise ModelError(f"{op} with block_size {block} along axis {attr.get('axis', 1)} of a "
                         f"tensor of shape {list(shape)}: give an axis of the tensor and a "
                         "positive block size")
    want = tuple(-(-d // block) if i == axis else d for i, d in enumerate(shape))
    for name, value in (("scale", scale), ("zero point", zero_point)):
        if value is not None and _shape(value) != want:
            raise ModelError(f"{op}'s {name} has shape {list(_shape(value))}; with block_size "
                             f"{block} along axis {axis} of an input of shape {list(shape)} it "
                             f"must have shape {list(want)}")
    if op == "QuantizeLinear":
        return _quantize(bb, x, scale, zero_point, attr, axis, block)
    return _dequantize(bb, x, scale, zero_point, axis, block)


def _blocked_index(index: tuple[Any, ...], axis: int, block: int) -> tuple[Any, ...]:
    return tuple(i // block if n == axis else i for n, i in enumerate(index))


def _quantize(bb: Any, x: Any, scale: Any, zero_point: Any, attr: dict[str, Any], axis: int,
              block: int) -> Any:
    from onnx import helper
    from tvm import te, tirx

    from microexport.compiler.integer import te_math as tm

    if attr.get("output_dtype", 0):
        out_dtype = str(helper.tensor_dtype_to_np_dtype(attr["output_dtype"]))
    else:
        out_dtype = "uint8" if zero_point is None else str(zero_point.ty.dtype)
    if out_dtype not in _INTEGER_TYPES or str(x.ty.dtype) != "float32":
        raise ModelError(f"blocked QuantizeLinear from {x.ty.dtype} to {out_dtype}: only "
                         f"float32 to {', '.join(_INTEGER_TYPES)} compiles to C")
    low, high = int(tirx.min_value(out_dtype).value), int(tirx.max_value(out_dtype).value)

    def kernel(data: Any, scales: Any, *zero: Any) -> Any:
        def value(*i: Any) -> Any:
            j = _blocked_index(i, axis, block)
            scaled = data[i] / scales[j]
            # Bounded before the conversion to an integer (which overflows past 2**31).
            bounded = tirx.max(tirx.min(scaled, tirx.const(1e9, "float32")),
                               tirx.const(-1e9, "float32"))
            rounded = tm.round_to_int(bounded, True)  # ties to even, as ONNX
            shifted = rounded + tm.i32(zero[0][j]) if zero else rounded
            return tm.clamp(shifted, low, high).astype(out_dtype)

        return te.compute(data.shape, value, name="quantize_blocked")

    args = [x, scale] + ([zero_point] if zero_point is not None else [])
    return bb.emit_te(kernel, *args, primfunc_name_hint="quantize_blocked")


def _dequantize(bb: Any, x: Any, scale: Any, zero_point: Any, axis: int, block: int) -> Any:
    from tvm import te

    from microexport.compiler.integer import te_math as tm

    if str(x.ty.dtype) not in _INTEGER_TYPES or str(scale.ty.dtype) != "float32":
        raise ModelError(f"blocked DequantizeLinear from {x.ty.dtype} with a {scale.ty.dtype} "
                         f"scale: only {', '.join(_INTEGER_TYPES)} with a float32 scale "
                         "compiles to C")

    def kernel(data: Any, scales: Any, *zero: Any) -> Any:
        def value(*i: Any) -> Any:
            j = _blocked_index(i, axis, block)
            shifted = tm.i32(data[i]) - tm.i32(zero[0][j]) if zero else tm.i32(data[i])
            return shifted.astype("float32") * scales[j]

        return te.compute(data.shape, value, name="dequantize_blocked")

    args = [x, scale] + ([zero_point] if zero_point is not None else [])
    return bb.emit_te(kernel, *args, primfunc_name_hint="dequantize_blocked")
