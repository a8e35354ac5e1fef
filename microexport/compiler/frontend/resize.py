"""ONNX `Resize` (opset 11+) by the exact ONNX coordinate transform, as one gather-and-weigh
kernel.

TVM 0.27's frontend maps output to input coordinates with the ratio of the sizes instead of the
scale (wrong when `scale * size` is not whole), ignores `antialias`, and fails on `axes` and on
`keep_aspect_ratio_policy`. Resizing is separable: along every resized axis, output index `o`
is a weighted sum of a few input indices (taps), whose indices and weights depend only on the
shapes and attributes. With the scales or sizes and the roi constant (initializers, or inputs
frozen with --constant), `_axis_taps` computes them at compile time as the ONNX specification
defines them (coordinate transformation modes, nearest modes, linear, cubic with `cubic_coeff_a`
and `exclude_outside`, the antialias filters when downsampling, edge clamping, tf_crop_and_resize
extrapolation); the kernel reads, for every output element, the product of the taps of all
resized axes: `y[o] = sum over taps of x[i_1(o_1, t_1), ...] * w_1(o_1, t_1) * ...`. Taps of
weight zero are dropped, so a nearest resize is a plain gather. The tables are small constants
(output length × taps per axis).

Inputs of float32 and 8/16-bit integer types (integers: the weighted sum in float32, rounded to
nearest even and saturated, as ONNX's reference casts back). A Resize whose roi is computed at
run time, or of another input type, goes to TVM's converter; run-time scales or sizes are a
one-line error naming the input to freeze.
"""

from __future__ import annotations

import math
from typing import Any

from microexport.errors import ModelError

_MODES = ("nearest", "linear", "cubic")
# Input types the kernel computes: float32, and integers whose weighted sums float32 holds
# exactly enough (rounded to nearest even and saturated, as ONNX's reference casts back).
_TYPES = ("float32", "int8", "uint8", "int16", "uint16")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")


def onnx_converters(stock: dict[str, Any]) -> dict[str, type]:
    """A converter for `Resize` that computes it by `_axis_taps` when it can (opset 11+, an
    input type of `_TYPES`, constant roi / scales / sizes) and hands every other node to TVM's
    (`stock`)."""
    if "Resize" not in stock:
        return {}
    original = stock["Resize"]

    def get_converter(cls: type, opset: int) -> Any:
        del cls
        fallback = original.get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            inputs = list(inputs)
            plan = _plan(inputs, attr) if opset >= 11 else None
            if plan is None:
                _refuse_what_tvm_gets_wrong(inputs, attr)
                return fallback(bb, inputs, attr, params)
            return _emit(bb, inputs[0], *plan)

        return convert

    return {"Resize": type("Resize", (original,), {
        "get_converter": classmethod(get_converter),
        "__doc__": "ONNX Resize by the exact ONNX coordinate transform."})}


def _refuse_what_tvm_gets_wrong(inputs: list[Any], attr: dict[str, Any]) -> None:
    """UnsupportedOperator for a Resize left to TVM's converter that it would compute wrong:
    `antialias=1` (it ignores it), linear or cubic with constant scales whose product with a
    dimension is not whole (it samples by the ratio of the sizes, not by the scale)."""
    from microexport.errors import UnsupportedOperator

    if attr.get("antialias", 0):
        raise UnsupportedOperator("Resize", "antialias=1 on an input of a type other than "
                                  "float32 and 8/16-bit integers, or with a roi computed at run "
                                  "time: make it a constant (--constant)")
    mode = _text(attr, "mode", "nearest")
    scales = _values(inputs[2]) if len(inputs) > 2 else None
    if mode == "nearest" or scales is None or scales is False:
        return
    shape = [int(d) for d in inputs[0].ty.shape.values]
    for size, scale in zip(shape, scales.astype("float64"), strict=False):
        if float(size * scale) != float(int(size * scale)):
            raise UnsupportedOperator(
                "Resize", f"{mode} with scale {scale:g} of a dimension of {size} on a "
                f"{inputs[0].ty.dtype} input (not a whole output size, where TVM's frontend "
                "samples by the size ratio instead of the scale): give `sizes` instead")


def _text(attr: dict[str, Any], name: str, default: str) -> str:
    value = attr.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _values(expr: Any) -> Any:
    """The numpy value of a constant input (None: absent or empty), False if not constant."""
    import numpy as np
    from tvm import ir, relax

    if expr is None:
        return None
    if isinstance(expr, ir.Constant):
        value = np.asarray(expr.value.numpy())
    elif isinstance(expr, relax.ShapeExpr):
        value = np.array([int(v) for v in expr.values], np.int64)
    else:
        return False
    return None if value.size == 0 else value.reshape(-1)


def _plan(inputs: list[Any], attr: dict[str, Any]) -> tuple[Any, ...] | None:
    """The output shape and the taps of every resized axis, or None for TVM's converter."""
    import numpy as np

    x = inputs[0]
    if str(x.ty.dtype) not in _TYPES or getattr(x.ty, "shape", None) is None:
        return None
    shape = [int(d) for d in x.ty.shape.values]
    rank = len(shape)
    roi, scales, sizes = (_values(inputs[i]) if len(inputs) > i else None for i in (1, 2, 3))
    for what, value, expr in (("scales", scales, inputs[2] if len(inputs) > 2 else None),
                              ("sizes", sizes, inputs[3] if len(inputs) > 3 else None)):
        if value is False:
            name = getattr(expr, "name", "") or what
            raise ModelError(f"Resize's {what} are computed at run time ('{name}'): the "
                             f"kernel needs them at compile time; freeze them with --constant "
                             f"{name}={what}.npy")
    if roi is False:
        return None  # TVM's converter takes a run-time roi
    mode = _text(attr, "mode", "nearest")
    transform = _text(attr, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = _text(attr, "nearest_mode", "round_prefer_floor")
    policy = _text(attr, "keep_aspect_ratio_policy", "stretch")
    antialias = bool(attr.get("antialias", 0))
    if mode not in _MODES or transform not in _TRANSFORMS:
        raise ModelError(f"Resize with mode '{mode}' and coordinate_transformation_mode "
                         f"'{transform}': ONNX defines modes {', '.join(_MODES)} and "
                         f"transformations {', '.join(_TRANSFORMS)}")
    if antialias and mode == "nearest":
        raise ModelError("Resize with antialias=1 and mode 'nearest': ONNX defines antialias "
                         "only for linear and cubic")
    if (scales is None) == (sizes is None):
        raise ModelError("Resize needs exactly one of `scales` and `sizes` (both constant)")
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in attr.get("axes", range(rank))]
    if sizes is not None and len(sizes) == rank != len(axes):  # the full output shape given
        sizes = sizes[axes]  # (reduce_axes spells a run-time `sizes` so)
    given = scales if scales is not None else sizes
    if len(given) != len(axes) or (roi is not None and len(roi) != 2 * len(axes)):
        raise ModelError(f"Resize of a rank-{rank} input with {len(axes)} axes has "
                         f"{len(given)} scales/sizes and {0 if roi is None else len(roi)} roi "
                         f"values: give one per axis (roi: two)")
    scale = {a: 1.0 for a in range(rank)}
    out = list(shape)
    if scales is not None:
        for axis, value in zip(axes, scales.astype(np.float64), strict=True):
            scale[axis] = float(value)
            out[axis] = int(value * shape[axis])
    else:
        for axis, value in zip(axes, sizes.astype(np.int64), strict=True):
            scale[axis] = int(value) / shape[axis] if shape[axis] else 1.0
            out[axis] = int(value)
        if policy in ("not_larger", "not_smaller"):
            pick = min if policy == "not_larger" else max
            common = pick(scale[a] for a in axes)
            for axis in axes:
                scale[axis] = common
                out[axis] = int(common * shape[axis] + 0.5)
        elif policy != "stretch":
            raise ModelError(f"Resize with keep_aspect_ratio_policy '{policy}': ONNX defines "
                             "stretch, not_larger and not_smaller")
    taps = {}
    extrapolation = float(attr.get("extrapolation_value", 0.0))
    for index, axis in enumerate(axes):
        window = (0.0, 1.0) if roi is None else (float(roi[index]),
                                                 float(roi[len(axes) + index]))
        if (math.isclose(scale[axis], 1.0) and out[axis] == shape[axis]
                and math.isclose(window[0], 0.0) and math.isclose(window[1], 1.0)):
            continue  # identity along this axis, as ONNX skips it
        if shape[axis] == 0 or out[axis] == 0:
            continue  # an empty input or output: nothing to sample
        taps[axis] = _axis_taps(
            mode, shape[axis], out[axis], scale[axis], window, transform, nearest_mode,
            float(attr.get("cubic_coeff_a", -0.75)), bool(attr.get("exclude_outside", 0)),
            antialias)
    return tuple(out), taps, extrapolation


def _coefficients(mode: str, ratio: float, scale: float, nearest_mode: str, a: float,
                  antialias: bool) -> list[float]:
    """The weights of the taps of one output position, `ratio` in (0, 1] its distance from
    the tap left of it (ONNX: 1 for a position on an input index)."""
    if mode == "nearest":
        if ratio == 1.0:
            return [0.0, 1.0]
        if nearest_mode == "round_prefer_floor":
            return [float(ratio <= 0.5), float(ratio > 0.5)]
        if nearest_mode == "round_prefer_ceil":
            return [float(ratio < 0.5), float(ratio >= 0.5)]
        if nearest_mode == "floor":
            return [1.0, 0.0]
        if nearest_mode == "ceil":
            return [0.0, 1.0]
        raise ModelError(f"Resize with nearest_mode '{nearest_mode}': ONNX defines "
                         "round_prefer_floor, round_prefer_ceil, floor and ceil")
    if mode == "linear":
        if not antialias:
            return [1.0 - ratio, ratio]
        factor = min(scale, 1.0)
        start = int(math.floor(-1 / factor) + 1)
        weights = [min(max(1 - abs((i - ratio) * factor), 0.0), 1.0)
                   for i in range(start, 2 - start)]
        return [w / sum(weights) for w in weights]
    if not antialias:
        r = ratio
        return [((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                ((a + 2) * r - (a + 3)) * r * r + 1,
                ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a]
    factor = min(scale, 1.0)

    def cubic(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    start = int(math.floor(-2 / factor) + 1)
    weights = [cubic(factor * (i - ratio)) for i in range(start, 2 - start)]
    return [w / sum(weights) for w in weights]


def _source_position(transform: str, y: int, scale: float, n_in: int, n_out: int,
                     window: tuple[float, float]) -> tuple[float, bool]:
    """The input coordinate output index `y` maps to, and whether it lies outside the input
    (tf_crop_and_resize: the output is the extrapolation value there)."""
    length = scale * n_in  # the output length before flooring
    if transform == "align_corners":
        return (0.0 if length == 1 else y * (n_in - 1) / (length - 1)), False
    if transform == "asymmetric":
        return y / scale, False
    if transform == "tf_crop_and_resize":
        start, end = window
        x = ((end - start) * (n_in - 1) / 2 if length == 1
             else y * (end - start) * (n_in - 1) / (length - 1))
        x += start * (n_in - 1)
        return x, x < 0 or x > n_in - 1
    if transform == "pytorch_half_pixel":
        return (-0.5 if length == 1 else (y + 0.5) / scale - 0.5), False
    if transform == "half_pixel":
        return (y + 0.5) / scale - 0.5, False
    offset = n_in / 2 * (1 - n_out / length)  # half_pixel_symmetric
    return offset + (y + 0.5) / scale - 0.5, False


def _axis_taps(mode: str, n_in: int, n_out: int, scale: float, window: tuple[float, float],
               transform: str, nearest_mode: str, a: float, exclude_outside: bool,
               antialias: bool) -> tuple[list[list[tuple[int, float]]], list[bool]]:
    """For every output index along one axis, its taps (input index, weight), and whether it
    is extrapolated. The taps are the n input indices nearest the source position (ties to the
    smaller), clamped to the input (ONNX pads by repeating the edge), or with `exclude_outside`
    the ones inside it, reweighted to sum to one; taps of the same index are merged and those
    of weight zero dropped."""
    rows, outside = [], []
    for y in range(n_out):
        x, extrapolated = _source_position(transform, y, scale, n_in, n_out, window)
        whole = math.floor(x)
        ratio = 1.0 if x == whole else x - whole
        weights = _coefficients(mode, ratio, scale, nearest_mode, a, antialias)
        n = len(weights)
        # The n indices nearest x, ties to the smaller: a window of n consecutive indices.
        if n % 2 == 0:
            first = whole - n // 2 + (0 if x == whole else 1)
        else:
            first = whole - (n - 1) // 2 + (0 if x - whole <= 0.5 else 1)
        indices = list(range(first, first + n))
        if exclude_outside:
            weights = [w if 0 <= i < n_in else 0.0 for i, w in zip(indices, weights, strict=True)]
            total = sum(weights)
            weights = [w / total for w in weights] if total else weights
        merged: dict[int, float] = {}
        for index, weight in zip(indices, weights, strict=True):
            clamped = min(max(index, 0), n_in - 1)
            merged[clamped] = merged.get(clamped, 0.0) + weight
        rows.append([(i, w) for i, w in sorted(merged.items()) if w != 0.0])
        outside.append(extrapolated)
    return rows, outside


def _to_integer(value: Any, dtype: str) -> Any:
    """A float32 expression rounded to nearest even and saturated to integer `dtype` (ONNX's
    reference casts a resized integer tensor back so)."""
    from tvm import tirx

    from microexport.compiler.integer import te_math as tm

    low, high = int(tirx.min_value(dtype).value), int(tirx.max_value(dtype).value)
    bounded = tirx.max(tirx.min(value, tirx.const(1e9, "float32")), tirx.const(-1e9, "float32"))
    return tm.clamp(tm.round_to_int(bounded, True), low, high).astype(dtype)


def _emit(bb: Any, x: Any, out_shape: tuple[int, ...],
          taps: dict[int, tuple[list[list[tuple[int, float]]], list[bool]]],
          extrapolation: float) -> Any:
    """The kernel: for every output element, the sum over the taps of every resized axis."""
    import numpy as np
    from tvm import relax, te, tirx

    axes = sorted(taps)
    if not axes:  # no axis changes: the input itself
        return x if tuple(int(d) for d in x.ty.shape.values) == out_shape else \
            relax.op.reshape(x, out_shape)
    tables = []
    for axis in axes:
        rows, _ = taps[axis]
        width = max(1, max(len(row) for row in rows))
        index = np.zeros((len(rows), width), np.int32)
        weight = np.zeros((len(rows), width), np.float32)
        for o, row in enumerate(rows):
            for t, (i, w) in enumerate(row):
                index[o, t], weight[o, t] = i, w
        tables.append((index, weight, width))
    masks = {axis: np.array(taps[axis][1], bool) for axis in axes}
    extrapolated = any(mask.any() for mask in masks.values())
    single = all(width == 1 and np.all(weight == 1.0) for _, weight, width in tables)

    dtype = str(x.ty.dtype)

    def kernel(data: Any, *consts: Any) -> Any:
        indices, weights = consts[0:2 * len(axes):2], consts[1:2 * len(axes):2]
        reduce = [te.reduce_axis((0, width), name=f"t{axis}")
                  for axis, (_, _, width) in zip(axes, tables, strict=True)]

        def source(o: tuple[Any, ...], picks: list[Any]) -> tuple[list[Any], Any]:
            index = list(o)
            weight = None
            for n, axis in enumerate(axes):
                index[axis] = indices[n][o[axis], picks[n]]
                w = weights[n][o[axis], picks[n]]
                weight = w if weight is None else weight * w
            return index, weight

        if single:  # nearest: one tap of weight one per axis, a gather
            def value(*o: Any) -> Any:
                index, _ = source(o, [0] * len(axes))
                return data[tuple(index)]
        else:
            def value(*o: Any) -> Any:
                index, weight = source(o, reduce)
                return te.sum(data[tuple(index)].astype("float32") * weight, axis=reduce)
        result = te.compute(out_shape, value, name="resize")
        if not extrapolated and (single or dtype == "float32"):
            return result
        flags = consts[2 * len(axes):]
        fill = tirx.const(extrapolation, "float32")

        summed = str(result.dtype) == "float32"  # else a gather of the input type

        def final(*o: Any) -> Any:
            got = result[o]
            if extrapolated:
                inside = tirx.all(*[flags[n][o[axis]] == tirx.const(0, "int8")
                                    for n, axis in enumerate(axes)])
                got = tirx.Select(inside, got, fill if summed else _to_integer(fill, dtype))
            return _to_integer(got, dtype) if summed and dtype != "float32" else got

        return te.compute(out_shape, final, name="resize_cast")

    args = [x]
    for index, weight, _ in tables:
        args += [relax.const(index), relax.const(weight)]
    if extrapolated:
        args += [relax.const(masks[axis].astype(np.int8)) for axis in axes]
    return bb.emit_te(kernel, *args, primfunc_name_hint="resize")
