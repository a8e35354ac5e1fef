"""Integer operators as TE computations, with TFLite Micro's reference-kernel semantics.

Each function takes TE tensors (activations, int8 weights, int32 biases, per-channel int32
multiplier/shift arrays) and compile-time parameters, and returns the output tensor. They are
independent of any model format: the TFLite importer computes the parameters
(`fixedpoint`), and a faster schedule or micro-kernel can replace a kernel's inner loop without
touching the importer. The accumulation is int32 (int8 activations) and the requantization is
TFLite's MultiplyByQuantizedMultiplier, so results are bit-exact with TFLite Micro. With int16
activations (TFLite's 16x8 mode) conv, depthwise and fully connected accumulate in int64 and
requantize with TFLite's 64-bit MultiplyByQuantizedMultiplier (`Output.wide`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx

from microexport.compiler.integer import te_math as tm

Tensor = Any  # te.Tensor
Scalar = int | Tensor  # a compile-time int, or a per-channel int32[channels] tensor


@dataclass(frozen=True)
class Output:
    """How an accumulator becomes the output: requantization (a per-tensor int, or per-channel
    arrays indexed by the last axis), zero point, clamp (fused activation) and type. `wide`: the
    accumulator is int64 and (multiplier, shift) are the reduced Q0.15 multiplier and right
    shift of `fixedpoint.reduced_multiplier`."""

    multiplier: Scalar
    shift: Scalar
    zero_point: int
    low: int
    high: int
    dtype: str
    wide: bool = False
    # The per-channel `shift` array holds right shifts (TFLite's shift negated, every one known
    # to be a right shift at compile time): no left-shift arithmetic at run time.
    right_shift: bool = False

    def __call__(self, acc: tm.Expr, channel: tm.Expr) -> tm.Expr:
        multiplier = self.multiplier if isinstance(self.multiplier, int) else \
            self.multiplier[channel]
        shift = self.shift if isinstance(self.shift, int) else self.shift[channel]
        if self.right_shift and not isinstance(shift, int):
            scaled = tm.rounding_divide_by_pot(
                tm.saturating_rounding_doubling_high_mul(acc, multiplier, False), shift)
        elif self.wide:
            scaled = tm.multiply_by_quantized_multiplier_wide(acc, multiplier, shift)
        else:
            scaled = tm.multiply_by_quantized_multiplier(acc, multiplier, shift)
        return tm.clamp(scaled + tm.i32(self.zero_point), self.low, self.high).astype(self.dtype)


def _inside(index: tm.Expr, extent: int) -> tm.Expr:
    return tirx.all(index >= 0, index < extent)


def _padded_offset_input(data: Tensor, padding: Sequence[int], zero_point: int) -> Tensor:
    """`data - zero_point` as int32, with zeros where the window leaves the input (TFLite skips
    those taps, which is the same sum)."""
    batch, height, width, channels = (int(d) for d in data.shape)
    top, left, bottom, right = padding
    if not any(padding):
        return te.compute((batch, height, width, channels),
                          lambda n, y, x, c: tm.i32(data[n, y, x, c]) - tm.i32(zero_point),
                          name="offset_input")

    def value(n: Any, y: Any, x: Any, c: Any) -> Any:
        inside = tirx.all(_inside(y - top, height), _inside(x - left, width))
        return tirx.if_then_else(
            inside, tm.i32(data[n, y - top, x - left, c]) - tm.i32(zero_point), tm.i32(0))

    return te.compute((batch, height + top + bottom, width + left + right, channels), value,
                      name="padded_input")


def _out_size(size: int, kernel: int, stride: int, dilation: int, before: int, after: int
              ) -> int:
    return (size + before + after - ((kernel - 1) * dilation + 1)) // stride + 1


def _accumulate(product: tm.Expr, output: Output) -> tm.Expr:
    """A product of an activation and a weight (int32) in the accumulator's type."""
    return tm.i64(product) if output.wide else product


def conv2d(data: Tensor, weight: Tensor, bias: Tensor | None, output: Output, *,
           strides: Sequence[int], dilation: Sequence[int], padding: Sequence[int],
           input_zero_point: int) -> Tensor:
    """CONV_2D, NHWC input, OHWI weights (groups when I divides the input channels)."""
    batch, height, width, channels = (int(d) for d in data.shape)
    out_channels, kernel_h, kernel_w, in_per_group = (int(d) for d in weight.shape)
    groups = channels // in_per_group
    out_per_group = out_channels // groups
    top, left, bottom, right = padding
    out_h = _out_size(height, kernel_h, strides[0], dilation[0], top, bottom)
    out_w = _out_size(width, kernel_w, strides[1], dilation[1], left, right)
    padded = _padded_offset_input(data, padding, input_zero_point)
    ry = te.reduce_axis((0, kernel_h), name="ry")
    rx = te.reduce_axis((0, kernel_w), name="rx")
    rc = te.reduce_axis((0, in_per_group), name="rc")

    def channel_of(oc: Any) -> Any:
        return rc if groups == 1 else (oc // out_per_group) * in_per_group + rc

    acc = te.compute(
        (batch, out_h, out_w, out_channels),
        lambda n, y, x, oc: te.sum(_accumulate(
            padded[n, y * strides[0] + ry * dilation[0], x * strides[1] + rx * dilation[1],
                   channel_of(oc)] * tm.i32(weight[oc, ry, rx, rc]), output),
            axis=[ry, rx, rc]),
        name="conv_acc")
    return _finish(acc, bias, output)


def depthwise_conv2d(data: Tensor, weight: Tensor, bias: Tensor | None, output: Output, *,
                     strides: Sequence[int], dilation: Sequence[int], padding: Sequence[int],
                     input_zero_point: int, depth_multiplier: int) -> Tensor:
    """DEPTHWISE_CONV_2D, weights [1, H, W, C * depth_multiplier]."""
    batch, height, width, _ = (int(d) for d in data.shape)
    _, kernel_h, kernel_w, out_channels = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    out_h = _out_size(height, kernel_h, strides[0], dilation[0], top, bottom)
    out_w = _out_size(width, kernel_w, strides[1], dilation[1], left, right)
    padded = _padded_offset_input(data, padding, input_zero_point)
    ry = te.reduce_axis((0, kernel_h), name="ry")
    rx = te.reduce_axis((0, kernel_w), name="rx")
    acc = te.compute(
        (batch, out_h, out_w, out_channels),
        lambda n, y, x, oc: te.sum(_accumulate(
            padded[n, y * strides[0] + ry * dilation[0], x * strides[1] + rx * dilation[1],
                   oc // depth_multiplier] * tm.i32(weight[0, ry, rx, oc]), output),
            axis=[ry, rx]),
        name="depthwise_acc")
    return _finish(acc, bias, output)


def fully_connected(data: Tensor, weight: Tensor, bias: Tensor | None, output: Output, *,
                    input_zero_point: int, weight_zero_point: int) -> Tensor:
    """FULLY_CONNECTED: data [batches, depth], weights [units, depth]."""
    batches, depth = (int(d) for d in data.shape)
    units = int(weight.shape[0])
    rd = te.reduce_axis((0, depth), name="rd")
    acc = te.compute(
        (batches, units),
        lambda b, u: te.sum(_accumulate(
            (tm.i32(data[b, rd]) - tm.i32(input_zero_point))
            * (tm.i32(weight[u, rd]) - tm.i32(weight_zero_point)), output),
            axis=[rd]),
        name="dense_acc")
    return _finish(acc, bias, output)


def batch_matmul(lhs: Tensor, rhs: Tensor, lhs_zero_point: int, rhs_zero_point: int,
                 output: Output, adj_x: bool, adj_y: bool) -> Tensor:
    """BATCH_MATMUL of two int8 (or, with a `wide` output, int16) tensors with numpy
    broadcasting of the batch dimensions; `adj_x`/`adj_y` transpose the last two axes of an
    operand (per-tensor `output`). int16 operands accumulate in int64, as TFLite Micro does."""
    widen = tm.i64 if output.wide else tm.i32
    ls, rs = [int(d) for d in lhs.shape], [int(d) for d in rhs.shape]
    rows, depth = (ls[-1], ls[-2]) if adj_x else (ls[-2], ls[-1])
    cols = rs[-2] if adj_y else rs[-1]
    lb, rb = ls[:-2], rs[:-2]
    rank = max(len(lb), len(rb))
    batch = [max(a, b) for a, b in zip([1] * (rank - len(lb)) + lb,
                                       [1] * (rank - len(rb)) + rb, strict=True)]
    rk = te.reduce_axis((0, depth), name="rk")

    def element(tensor: Tensor, batch_index: Sequence[Any], inner: tuple[Any, Any]) -> Any:
        own = [int(d) for d in tensor.shape[:-2]]
        tail = list(batch_index[len(batch_index) - len(own):]) if own else []
        index = [0 if d == 1 else i for d, i in zip(own, tail, strict=True)]
        return tensor[(*index, *inner)]

    def value(*index: Any) -> Any:
        *b, i, j = index
        a = element(lhs, b, (rk, i) if adj_x else (i, rk))
        c = element(rhs, b, (j, rk) if adj_y else (rk, j))
        return te.sum((widen(a) - widen(lhs_zero_point)) * (widen(c) - widen(rhs_zero_point)),
                      axis=[rk])

    acc = te.compute((*batch, rows, cols), value, name="batch_matmul_acc")
    return te.compute(acc.shape, lambda *i: output(acc[i], i[-1]), name="requantize")


def _finish(acc: Tensor, bias: Tensor | None, output: Output) -> Tensor:
    """Bias, requantization and clamp over the last axis (output channels)."""
    def value(*index: Any) -> Any:
        channel = index[-1]
        total = acc[index]
        if bias is not None:
            total = total + (tm.i64(bias[channel]) if output.wide else tm.i32(bias[channel]))
        return output(total, channel)

    return te.compute(acc.shape, value, name="requantize")


def _broadcast_index(tensor: Tensor, index: Sequence[Any]) -> list[Any]:
    """`index` of a broadcast output mapped to `tensor` (numpy broadcasting)."""
    rank = len(tensor.shape)
    tail = list(index[len(index) - rank:])
    return [0 if int(d) == 1 else i for d, i in zip(tensor.shape, tail, strict=True)]


def broadcast_shape(a: Tensor, b: Tensor) -> tuple[int, ...]:
    """The numpy broadcast of the shapes of `a` and `b`."""
    sa, sb = [int(d) for d in a.shape], [int(d) for d in b.shape]
    rank = max(len(sa), len(sb))
    sa, sb = [1] * (rank - len(sa)) + sa, [1] * (rank - len(sb)) + sb
    return tuple(max(x, y) for x, y in zip(sa, sb, strict=True))


@dataclass(frozen=True)
class AddParams:
    """TFLite's ADD/SUB parameters: inputs shifted left then each rescaled to a common scale."""

    left_shift: int
    input1_offset: int
    input1_multiplier: int
    input1_shift: int
    input2_offset: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_zero_point: int
    low: int
    high: int
    dtype: str


def add_or_subtract(a: Tensor, b: Tensor, params: AddParams, subtract: bool) -> Tensor:
    """Quantized ADD (or SUB) with numpy broadcasting."""
    p = params

    def rescaled(t: Tensor, index: Sequence[Any], offset: int, multiplier: int, shift: int
                 ) -> Any:
        value = (tm.i32(t[tuple(_broadcast_index(t, index))]) + tm.i32(offset)) \
            * tm.i32(1 << p.left_shift)
        return tm.multiply_by_quantized_multiplier(value, multiplier, shift)

    def value(*index: Any) -> Any:
        x = rescaled(a, index, p.input1_offset, p.input1_multiplier, p.input1_shift)
        y = rescaled(b, index, p.input2_offset, p.input2_multiplier, p.input2_shift)
        out = tm.multiply_by_quantized_multiplier(x - y if subtract else x + y,
                                                  p.output_multiplier, p.output_shift)
        return tm.clamp(out + tm.i32(p.output_zero_point), p.low, p.high).astype(p.dtype)

    return te.compute(broadcast_shape(a, b), value, name="sub" if subtract else "add")


def multiply(a: Tensor, b: Tensor, input1_offset: int, input2_offset: int, output: Output
             ) -> Tensor:
    """Quantized MUL with numpy broadcasting (`output` is per-tensor)."""
    def value(*index: Any) -> Any:
        x = tm.i32(a[tuple(_broadcast_index(a, index))]) + tm.i32(input1_offset)
        y = tm.i32(b[tuple(_broadcast_index(b, index))]) + tm.i32(input2_offset)
        return output(x * y, index[-1])

    return te.compute(broadcast_shape(a, b), value, name="mul")


def _pool_window(data: Tensor, kernel: Sequence[int], strides: Sequence[int],
                 padding: Sequence[int]) -> tuple[tuple[int, ...], Any, Any]:
    batch, height, width, channels = (int(d) for d in data.shape)
    top, left, bottom, right = padding
    out_h = _out_size(height, kernel[0], strides[0], 1, top, bottom)
    out_w = _out_size(width, kernel[1], strides[1], 1, left, right)
    ry = te.reduce_axis((0, kernel[0]), name="ry")
    rx = te.reduce_axis((0, kernel[1]), name="rx")
    return (batch, out_h, out_w, channels), ry, rx


def average_pool2d(data: Tensor, *, kernel: Sequence[int], strides: Sequence[int],
                   padding: Sequence[int], low: int, high: int) -> Tensor:
    """AVERAGE_POOL_2D: the sum over the in-bounds part of the window divided by its size,
    rounded half away from zero (input and output share quantization)."""
    shape, ry, rx = _pool_window(data, kernel, strides, padding)
    height, width = int(data.shape[1]), int(data.shape[2])
    top, left = padding[0], padding[1]

    def tap(n: Any, y: Any, x: Any, c: Any) -> Any:
        iy, ix = y * strides[0] - top + ry, x * strides[1] - left + rx
        inside = tirx.all(_inside(iy, height), _inside(ix, width))
        return tirx.if_then_else(inside, tm.i32(data[n, iy, ix, c]), tm.i32(0))

    total = te.compute(shape, lambda n, y, x, c: te.sum(tap(n, y, x, c), axis=[ry, rx]),
                       name="pool_sum")

    def extent(origin: Any, size: int, window: int) -> Any:
        return tirx.min(tm.i32(window), tm.i32(size) - origin) - tirx.max(tm.i32(0), 0 - origin)

    def value(n: Any, y: Any, x: Any, c: Any) -> Any:
        count = extent(tm.i32(y * strides[0] - top), height, kernel[0]) * extent(
            tm.i32(x * strides[1] - left), width, kernel[1])
        acc = total[n, y, x, c]
        half = tirx.truncdiv(count, tm.i32(2))
        mean = tm.select(acc > tm.i32(0), tirx.truncdiv(acc + half, count),
                         tirx.truncdiv(acc - half, count))
        return tm.clamp(mean, low, high).astype(data.dtype)

    return te.compute(shape, value, name="average_pool")


def max_pool2d(data: Tensor, *, kernel: Sequence[int], strides: Sequence[int],
               padding: Sequence[int], low: int, high: int) -> Tensor:
    """MAX_POOL_2D over the in-bounds part of the window, then the activation clamp."""
    shape, ry, rx = _pool_window(data, kernel, strides, padding)
    height, width = int(data.shape[1]), int(data.shape[2])
    top, left = padding[0], padding[1]
    lowest = tirx.min_value(data.dtype)

    def tap(n: Any, y: Any, x: Any, c: Any) -> Any:
        iy, ix = y * strides[0] - top + ry, x * strides[1] - left + rx
        inside = tirx.all(_inside(iy, height), _inside(ix, width))
        return tirx.if_then_else(inside, data[n, iy, ix, c], lowest)

    biggest = te.compute(shape, lambda n, y, x, c: te.max(tap(n, y, x, c), axis=[ry, rx]),
                         name="pool_max")
    return te.compute(
        shape, lambda *i: tm.clamp(tm.i32(biggest[i]), low, high).astype(data.dtype),
        name="max_pool")


def pad(data: Tensor, paddings: Sequence[tuple[int, int]], value: int) -> Tensor:
    """PAD/PADV2 in the integer domain: new elements hold `value` (the zero point for PAD)."""
    shape = tuple(int(d) + before + after
                  for d, (before, after) in zip(data.shape, paddings, strict=True))

    def element(*index: Any) -> Any:
        source = [i - before for i, (before, _) in zip(index, paddings, strict=True)]
        inside = tirx.all(*[_inside(s, int(d)) for s, d in zip(source, data.shape,
                                                               strict=True)])
        return tirx.if_then_else(inside, data[tuple(source)],
                                 tirx.const(value, data.dtype))

    return te.compute(shape, element, name="pad")


def lookup(data: Tensor, table: Tensor) -> Tensor:
    """An int8 elementwise function as a 256-entry table indexed by `x + 128`."""
    return te.compute(data.shape, lambda *i: table[tm.i32(data[i]) + tm.i32(128)],
                      name="lookup")


def clamp(data: Tensor, low: int, high: int) -> Tensor:
    """Every element limited to [low, high] (RELU6 of int16: no rescaling)."""
    return te.compute(data.shape, lambda *i: tm.clamp(tm.i32(data[i]), low, high).astype(
        data.dtype), name="clamp")


def leaky_relu(data: Tensor, input_zero_point: int, identity: tuple[int, int],
               alpha: tuple[int, int], negative_alpha: bool, output_zero_point: int,
               dtype: str) -> Tensor:
    """TFLite's quantized LEAKY_RELU: `x - input_zero_point` rescaled by the identity
    (multiplier, shift) where it is ≥ 0 and by alpha's (a non-negative multiplier, negated
    afterwards for a negative alpha) below, plus the output zero point, saturated to `dtype`."""
    low, high = int(tirx.min_value(dtype).value), int(tirx.max_value(dtype).value)

    def value(*i: Any) -> Any:
        x = tm.i32(data[i]) - tm.i32(input_zero_point)
        positive = tm.multiply_by_quantized_multiplier(x, *identity)
        negative = tm.multiply_by_quantized_multiplier(x, *alpha)
        if negative_alpha:
            negative = tm.i32(0) - negative
        rescaled = tm.select(x >= tm.i32(0), positive, negative)
        return tm.clamp(rescaled + tm.i32(output_zero_point), low, high).astype(dtype)

    return te.compute(data.shape, value, name="leaky_relu")


def requantize(data: Tensor, input_zero_point: int, output: Output) -> Tensor:
    """QUANTIZE between integer types: rescale `x - input_zero_point`."""
    return te.compute(
        data.shape, lambda *i: output(tm.i32(data[i]) - tm.i32(input_zero_point), i[-1]),
        name="requantize")


def quantize(data: Tensor, scale: float, zero_point: int, dtype: str,
             ties_to_even: bool = False) -> Tensor:
    """float32 → integer: round(x / scale) in float32 (no libm), ties away from zero as TFLite
    does or to even as ONNX's QuantizeLinear does, plus the zero point, saturated."""
    info_low, info_high = int(tirx.min_value(dtype).value), int(tirx.max_value(dtype).value)

    def value(*i: Any) -> Any:
        scaled = data[i] / tirx.const(scale, "float32")
        bounded = tirx.max(tirx.min(scaled, tirx.const(1e9, "float32")),
                           tirx.const(-1e9, "float32"))
        rounded = tm.round_to_int(bounded, ties_to_even)
        return tm.clamp(rounded + tm.i32(zero_point), info_low, info_high).astype(dtype)

    return te.compute(data.shape, value, name="quantize")


def dequantize(data: Tensor, scale: float, zero_point: int) -> Tensor:
    """integer → float32: scale * (x - zero_point)."""
    return te.compute(
        data.shape,
        lambda *i: tirx.const(scale, "float32")
        * (tm.i32(data[i]) - tm.i32(zero_point)).astype("float32"),
        name="dequantize")


def mean(data: Tensor, axes: Sequence[int], keep_dims: bool, *, input_zero_point: int,
         output: Output) -> Tensor:
    """MEAN over `axes`: the int32 sum minus count * zero point, rescaled with 1/count folded
    into the (per-tensor) multiplier."""
    shape = [int(d) for d in data.shape]
    reduce_axes = {axis: te.reduce_axis((0, shape[axis]), name=f"r{axis}") for axis in axes}
    count = 1
    for axis in axes:
        count *= shape[axis]
    out_shape = [1 if i in reduce_axes else d for i, d in enumerate(shape)] if keep_dims \
        else [d for i, d in enumerate(shape) if i not in reduce_axes]

    def source(index: Sequence[Any]) -> list[Any]:
        it = iter(index)
        result = []
        for i in range(len(shape)):
            if i in reduce_axes:
                if keep_dims:
                    next(it)
                result.append(reduce_axes[i])
            else:
                result.append(next(it))
        return result

    total = te.compute(
        out_shape,
        lambda *i: te.sum(tm.i32(data[tuple(source(i))]), axis=list(reduce_axes.values())),
        name="mean_sum")
    return te.compute(
        out_shape,
        lambda *i: output(total[i] - tm.i32(input_zero_point * count), i[-1] if i else 0),
        name="mean")


def softmax(data: Tensor, exp_of: Callable[[tm.Expr], tm.Expr]) -> Tensor:
    """int8 SOFTMAX over the last axis (output scale 1/256, zero point -128): exp of each
    difference to the row maximum by `exp_of` (int32 difference <= 0 → Q0.31:
    `library.softmax_exp_s8`, or `exp_table_reader` within `te_kernels_only`), the row sum's
    reciprocal by gemmlowp's Newton-Raphson, and the rounding shift of TFLite's reference
    kernel."""
    shape = [int(d) for d in data.shape]
    rows, depth = shape[:-1], shape[-1]
    rd = te.reduce_axis((0, depth), name="rd")
    biggest = te.compute(rows, lambda *r: te.max(tm.i32(data[(*r, rd)]), axis=[rd]),
                         name="row_max")
    rs = te.reduce_axis((0, depth), name="rs")
    total = te.compute(
        rows,
        # gemmlowp's rescaling of each exp (>= 0) from Q0.31 to Q12.19: for a non-negative
        # value RoundingDivideByPOT(x, 12) is (x + 2**11) >> 12 (no sign test, one use of x)
        lambda *r: te.sum(tm.i32((tm.i64(exp_of(tm.i32(data[(*r, rs)]) - biggest[r]))
                                  + tm.i64(1 << 11)) >> tm.i64(12)), axis=[rs]),
        name="row_sum")
    headroom = _row_stage(rows, lambda *r: tm.count_leading_zeros(total[r]), "headroom")
    # gemmlowp's RoundingHalfSum(sum normalised to [1, 2) minus one, One): with the sum
    # positive and its top bit at 30 after `headroom - 1` shifts this is exactly that shift.
    half_denominator = _row_stage(
        rows, lambda *r: total[r] << (headroom[r] - tm.i32(1)), "half_denominator")
    estimate = _row_stage(rows, lambda *r: tm.reciprocal_first_guess(half_denominator[r]),
                          "reciprocal_0")
    for step in range(3):
        estimate = _newton_step(rows, half_denominator, estimate, f"reciprocal_{step + 1}")
    scale = _per_row(rows, estimate, tm.reciprocal_result, "reciprocal")

    # The output's right shift, kept per row: inlined as `35 - headroom`, TVM's analyzer bounds
    # `x >> (c - y)` to [-1, 0] and drops the clamp to 127 below (the top class of a confident
    # row came out as int8(128) = -128). A shift by a loaded value is bounded correctly.
    exponent = _row_stage(rows, lambda *r: (tm.i32(12) - headroom[r]) + tm.i32(31 - 8),
                          "output_shift")

    def value(*i: Any) -> Any:
        r = i[:-1]
        exp = exp_of(tm.i32(data[i]) - biggest[r])
        out = tm.rounding_divide_by_pot(  # exp >= 0: never the saturating INT32_MIN case
            tm.saturating_rounding_doubling_high_mul(scale[r], exp, False), exponent[r])
        return tm.clamp(out - tm.i32(128), -128, 127).astype("int8")

    return te.compute(shape, value, name="softmax")


def exp_table_reader(exp_table: Tensor) -> Callable[[tm.Expr], tm.Expr]:
    """`softmax`'s `exp_of` from a table of `fixedpoint.softmax_exp_table`."""
    return lambda diff: exp_table[diff + tm.i32(255)]


def _kept_stage(shape: Sequence[int], value: Any, name: str) -> Tensor:
    """An intermediate kept as its own loop (a unit reduction, which the C schedule does not
    inline): an expression used several times downstream is computed once per element instead
    of being copied into every use."""
    def stage(*index: Any) -> Any:
        unit = te.reduce_axis((0, 1), name="unit")
        return te.sum(value(*index), axis=[unit])

    return te.compute(shape, stage, name=name)


def _row_stage(rows: Sequence[int], value: Any, name: str) -> Tensor:
    """A per-row intermediate of softmax, kept (`_kept_stage`): inlining the Newton-Raphson
    steps into each other and into the per-element loop would copy every step's expression
    several times per use."""
    return _kept_stage(rows, value, name)


def _newton_step(rows: Sequence[int], half_denominator: Tensor, previous: Tensor, name: str
                 ) -> Tensor:
    return _row_stage(rows, lambda *r: tm.reciprocal_step(half_denominator[r], previous[r]),
                      name)


def _per_row(rows: Sequence[int], source: Tensor, function: Any, name: str) -> Tensor:
    return _row_stage(rows, lambda *r: function(source[r]), name)


def softmax_int16(data: Tensor, exp_table: Tensor, reciprocal_table: Tensor, multiplier: int,
                  shift: int) -> Tensor:
    """int16 SOFTMAX over the last axis (zero points 0, output scale 1/32768), as TFLite's
    SoftmaxInt16: each difference to the row maximum rescaled to [-10, 0] and looked up in the
    exp table, the row sum normalised and its reciprocal looked up in the 1/(1 + x) table."""
    shape = [int(d) for d in data.shape]
    rows, depth = shape[:-1], shape[-1]
    rd = te.reduce_axis((0, depth), name="rd")
    biggest = te.compute(rows, lambda *r: te.max(tm.i32(data[(*r, rd)]), axis=[rd]),
                         name="row_max")

    def exp_of(*i: Any) -> Any:
        scaled = tm.multiply_by_quantized_multiplier(tm.i32(data[i]) - biggest[i[:-1]],
                                                     multiplier, shift)
        return tm.int16_lookup(exp_table, tm.clamp(scaled + tm.i32(32767), -32768, 32767))

    exps = te.compute(shape, exp_of, name="exp")
    rs = te.reduce_axis((0, depth), name="rs")
    total = te.compute(rows, lambda *r: te.sum(exps[(*r, rs)], axis=[rs]), name="row_sum")
    headroom = _row_stage(rows, lambda *r: tm.count_leading_zeros(total[r]), "headroom")

    def reciprocal_of(*r: Any) -> Any:
        normalised = tm.i64(total[r]) << tm.i64(headroom[r] - tm.i32(1))
        shifted = tm.i32((normalised + tm.i64(1 << 13)) >> tm.i64(14))
        centred = tm.clamp(shifted - tm.i32((1 << 15) + (1 << 16)), -32768, 32767)
        return tm.int16_lookup(reciprocal_table, centred)

    reciprocal = _row_stage(rows, reciprocal_of, "reciprocal")
    # kept per row, as in `softmax`: TVM's analyzer misjudges a shift by `31 - headroom`
    output_shift = _row_stage(rows, lambda *r: tm.i32(31) - headroom[r], "output_shift")

    def value(*i: Any) -> Any:
        r = i[:-1]
        right_shift = tm.i64(output_shift[r])
        rounding = tm.i64(1) << (right_shift - tm.i64(1))
        result = tm.i32((tm.i64(exps[i]) * tm.i64(reciprocal[r]) + rounding) >> right_shift)
        return tm.clamp(result, 0, 32767).astype("int16")

    return te.compute(shape, value, name="softmax")


# --- int16 sigmoid / tanh and the integer LSTM (TFLite Micro's lstm_eval) --------------------

def int16_activation(data: Tensor, table: Tensor, multiplier: int, left_shift: int,
                     tanh: bool) -> Tensor:
    """int16 LOGISTIC or TANH (Q0.15 output) through the uint16 sigmoid table."""
    function = tm.tanh_int16 if tanh else tm.sigmoid_int16
    return te.compute(data.shape, lambda *i: function(table, data[i], multiplier, left_shift),
                      name="tanh_int16" if tanh else "logistic_int16")


@dataclass(frozen=True)
class LstmCell:
    """The compile-time parameters of an integer LSTM's state update."""

    forget_times_cell: Output  # Q0.15 × cell scale → cell scale (int16)
    input_times_candidate: Output  # Q0.15 × Q0.15 → cell scale (int16)
    cell_clip: int | None  # |cell| limit in cell-scale units; None: no clipping
    cell_tanh: tuple[int, int]  # (multiplier, left_shift) of tanh(cell)
    output_times_tanh: Output  # Q0.15 × Q0.15 → hidden state (int8, its zero point)


_GATE_SCALING = (3, 0)  # a Q3.12 gate input: sigmoid and tanh multiply it by 3, no shift


def _gate_input(from_input: Tensor, from_hidden: Tensor, b: Any, u: Any) -> tm.Expr:
    """A gate's input before its nonlinearity: its two fully connected layers' Q3.12 outputs
    summed with int16 saturation (TFLite Micro's CalculateLstmGate)."""
    return tm.clamp(tm.i32(from_input[b, u]) + tm.i32(from_hidden[b, u]), -32768, 32767)


def lstm_cell(input_x: Tensor, input_h: Tensor, forget_x: Tensor, forget_h: Tensor,
              cell_x: Tensor, cell_h: Tensor, cell: Tensor, table: Tensor, params: LstmCell
              ) -> Tensor:
    """The new cell state, int16, from the input, forget and cell gates' fully connected
    outputs (`<gate>_x` of the input, `<gate>_h` of the hidden state, Q3.12 int16 each):
    forget·cell + input·candidate, each product requantized to the cell scale and clamped to
    int16, the sum saturated to int16 and clipped. The three gates are kept stages: each
    product's requantization reads its operands more than once."""
    shape = [int(d) for d in cell.shape]

    def gate(x: Tensor, h: Tensor, function: Any, name: str) -> Tensor:
        return _kept_stage(shape, lambda b, u: function(
            table, _gate_input(x, h, b, u), *_GATE_SCALING), name)

    forget = gate(forget_x, forget_h, tm.sigmoid_int16, "forget_gate")
    gate_in = gate(input_x, input_h, tm.sigmoid_int16, "input_gate")
    candidate = gate(cell_x, cell_h, tm.tanh_int16, "cell_gate")

    def value(b: Any, u: Any) -> Any:
        kept = params.forget_times_cell(tm.i32(forget[b, u]) * tm.i32(cell[b, u]), u)
        added = params.input_times_candidate(tm.i32(gate_in[b, u]) * tm.i32(candidate[b, u]),
                                             u)
        total = tm.clamp(tm.i32(kept) + tm.i32(added), -32768, 32767)
        if params.cell_clip is not None:
            total = tm.clamp(total, -params.cell_clip, params.cell_clip)
        return total.astype("int16")

    return te.compute(shape, value, name="lstm_cell")


def lstm_hidden(output_x: Tensor, output_h: Tensor, cell: Tensor, table: Tensor,
                params: LstmCell) -> Tensor:
    """The new hidden state (the step's output), int8: sigmoid(output gate) · tanh(cell),
    requantized to the hidden state's scale and zero point (both factors kept stages)."""
    shape = [int(d) for d in cell.shape]
    gate = _kept_stage(shape, lambda b, u: tm.sigmoid_int16(
        table, _gate_input(output_x, output_h, b, u), *_GATE_SCALING), "output_gate")
    squashed = _kept_stage(shape, lambda b, u: tm.tanh_int16(table, cell[b, u],
                                                             *params.cell_tanh), "cell_tanh")
    return te.compute(shape, lambda b, u: params.output_times_tanh(
        tm.i32(squashed[b, u]) * tm.i32(gate[b, u]), u), name="lstm_hidden")
