"""int8 convolution, depthwise convolution and fully connected layers as micro-kernel calls.

The TE kernels of `kernels` express one multiply-accumulate per element; the C compiler turns
that into a load, a sign extension and a multiply-add per MAC. On a Cortex-M with the DSP
extension one SMLAD does two 16-bit multiply-accumulates, and keeping two weight rows and two
input columns in registers reads each operand once per four MACs (TFLite Micro's CMSIS-NN kernels
do the same). This module builds those kernels as TIR directly, with TVM's IR builder:

- the weights are packed at compile time (`pack_rows`): depth padded to a multiple of four, rows
  interleaved in blocks per group of four depths;
- conv: per two output pixels (one for an odd last), the kernel copies the input windows into an
  int16 column buffer with the input zero point subtracted and zeros in the padding (im2col),
  each group of four depths as (k0, k2, k1, k3), the order SXTB16 unpacks a weight word in;
- per block of weight rows, `me_dot_s8s16_RxC` (templates/codegen/int8_dot.h.j2, plain C or
  ACLE intrinsics by the core's features) accumulates the R x C dot products into a small local
  array initialised with the bias; the requantization epilogue is TIR (`kernels.Output`);
- fully connected: the int8 input row read directly (`me_dot_s8s8_Rx1`, the zero point folded
  into the bias by `fold_zero_point`) when the depth is a multiple of four, else an int16 column;
- depthwise: four channels of one output pixel per call, the sums in registers: over the whole
  window unrolled (`me_dw_s8_4ch_RxC`) away from the border, over the taps inside the input
  (`me_dw_s8_4ch_window`, clipped once per pixel) at it.

Every micro-kernel call is a `call_extern` in the TIR (and so in its JSON), and the arithmetic is
the reference kernels' int32 sum, so results are bit-exact with TFLite Micro on every core.
The importer (`frontend/tflite_integer.py`) chooses these kernels; `te_kernels_only` there
imports the TE kernels instead (TVM's own LLVM build cannot call the C micro-kernels).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from microexport.compiler.integer import te_math as tm
from microexport.compiler.integer.kernels import Output

DOT_KERNEL = "me_dot_s8s16_{rows}x{cols}"
DIRECT_DOT_KERNEL = "me_dot_s8s8_{rows}x1"
TO_COLUMN = "me_s8_to_s16_col"
DEPTHWISE_WINDOW = "me_dw_s8_4ch_window"
# Depthwise windows of at most this many taps get an unrolled micro-kernel for the pixels away
# from the border (3x3: nine taps, about 40 instructions of code each on the Cortex-M4).
MAX_UNROLLED_TAPS = 9
# A call of any micro-kernel of templates/codegen/int8_dot.h.j2, in C.
MICROKERNEL_CALL = (r"\b(me_dot_s8s16_\d+x\d+|me_dot_s8s8_\d+x1|me_s8_to_s16_col"
                    r"|me_dw_s8_4ch_(?:window|\d+x\d+))\(")


@dataclass(frozen=True)
class RowBlock:
    """`rows` consecutive weight rows from `first`, interleaved at `offset` in the packed array."""

    first: int
    rows: int
    offset: int


@dataclass(frozen=True)
class PackedWeights:
    """int8 weight rows packed for the micro-kernels; `depth` is padded to `padded_depth`."""

    data: np.ndarray
    depth: int
    padded_depth: int
    blocks: tuple[RowBlock, ...]


def pack_rows(weights: np.ndarray, widest: int) -> PackedWeights:
    """Pack int8 `weights` [rows, depth]: blocks of `widest` rows, the remainder in blocks of
    halving size (4, 2, 1); rows of a block interleaved per group of four depths (each group in
    natural order: the columns carry the (k0, k2, k1, k3) order SXTB16 needs)."""
    rows, depth = weights.shape
    padded_depth = -(-depth // 4) * 4
    padded = np.zeros((rows, padded_depth), np.int8)
    padded[:, :depth] = weights
    groups = padded.reshape(rows, padded_depth // 4, 4)
    blocks: list[RowBlock] = []
    parts: list[np.ndarray] = []
    first, offset, size = 0, 0, widest
    while first < rows:
        while size > rows - first:
            size //= 2
        block = groups[first:first + size]  # [size, groups, 4] -> [groups, size, 4]
        parts.append(block.transpose(1, 0, 2).reshape(-1))
        blocks.append(RowBlock(first, size, offset))
        first += size
        offset += size * padded_depth
    return PackedWeights(np.concatenate(parts), depth, padded_depth, tuple(blocks))


def dot_kernels_used(source: str, kind: str = "s8s16") -> list[tuple[int, int]]:
    """The (rows, cols) shapes of the `me_dot_<kind>_RxC` micro-kernels that C `source`
    calls, sorted."""
    return _shapes_called(source, f"me_dot_{kind}_")


def fc_reads_input_directly(depth: int) -> bool:
    """Whether FULLY_CONNECTED reads its int8 input as it is (`me_dot_s8s8_Rx1`, the input
    zero point folded into the bias by `fold_zero_point`) instead of converting it to an int16
    column: when whole words of four cover the depth, so nothing is read past the input."""
    return depth % 4 == 0


def fold_zero_point(weights: np.ndarray, bias: np.ndarray | None, zero_point: int
                    ) -> np.ndarray:
    """bias - zero_point * (sum of each weight row), in int32: sum((x - zp) * w) + bias equals
    sum(x * w) + this, modulo 2**32 as TFLite Micro's int32 accumulator computes it."""
    sums = weights.reshape(weights.shape[0], -1).astype(np.int64).sum(axis=1)
    total = (bias.astype(np.int64) if bias is not None else 0) - zero_point * sums
    return ((total + 2**31) % 2**32 - 2**31).astype(np.int32)


def depthwise_windows_used(source: str) -> list[tuple[int, int]]:
    """The (rows, cols) of the unrolled `me_dw_s8_4ch_RxC` micro-kernels C `source` calls."""
    return _shapes_called(source, "me_dw_s8_4ch_")


def _shapes_called(source: str, prefix: str) -> list[tuple[int, int]]:
    """The sorted (rows, cols) of the `<prefix>RxC(` calls in C `source`."""
    found = re.findall(rf"\b{prefix}(\d+)x(\d+)\(", source)
    return sorted({(int(r), int(c)) for r, c in found})


def uses_microkernels(source: str) -> bool:
    """Whether C `source` calls any micro-kernel of templates/codegen/int8_dot.h.j2."""
    return re.search(MICROKERNEL_CALL, source) is not None


def _i32(value: int) -> tirx.PrimExpr:
    return tirx.const(value, "int32")


def _pointer(buffer: Any, offset: Any, extent: int, access: str) -> tirx.PrimExpr:
    """A pointer to `extent` elements of `buffer` from `offset` for a micro-kernel, read ("r")
    or read and written ("rw"). The declared region keeps TVM's buffer compaction from shrinking
    a buffer that only micro-kernels touch, and shows in the TIR what each call reads and
    writes."""
    mask = {"r": 1, "w": 2, "rw": 3}[access]
    return tirx.tvm_access_ptr(tirx.type_annotation(buffer.dtype), buffer.data, offset,
                               extent, mask)


class _Builder:
    """Shared pieces of the two kernels: the buffers, the dot calls and the epilogue."""

    def __init__(self, name: str, packed: PackedWeights | None, has_bias: bool,
                 output_of: Callable[[Any, Any], Output], per_channel: bool) -> None:
        self.name, self.packed, self.has_bias = name, packed, has_bias
        self.output_of, self.per_channel = output_of, per_channel

    def parameters(self, data_shape: Sequence[int], out_shape: Sequence[int],
                   out_dtype: str, weights_shape: Sequence[int] | None = None) -> None:
        """Declare the arguments in the order of the Relax call: data, weights (packed unless
        `weights_shape` is given), [bias], [multipliers, shifts], output."""
        channels = int(out_shape[-1])
        self.data = T.arg("data", T.Buffer(tuple(data_shape), "int8"))
        shape = tuple(weights_shape) if weights_shape is not None else (
            int(self.packed.data.size),)
        self.weights = T.arg("weights", T.Buffer(shape, "int8"))
        self.bias = T.arg("bias", T.Buffer((channels,), "int32")) if self.has_bias else None
        multiplier = shift = None
        if self.per_channel:
            multiplier = T.arg("multiplier", T.Buffer((channels,), "int32"))
            shift = T.arg("shift", T.Buffer((channels,), "int32"))
        self.output = T.arg("output", T.Buffer(tuple(out_shape), out_dtype))
        self.requantize = self.output_of(multiplier, shift)

    def dot(self, block: RowBlock, block_index: Any, columns: int, column_buffer: Any,
            acc: Any, direct: Any = None) -> Any:
        """acc[r * columns + c] = bias + the dot products of `block`'s rows (shifted by
        `block_index` whole blocks) with the `columns` columns; returns the block's first
        output channel."""
        first = block.first + block_index * block.rows
        for r in range(block.rows):
            start = self.bias[first + r] if self.bias is not None else _i32(0)
            for c in range(columns):
                T.buffer_store(acc, start, [r * columns + c])
        offset = block.offset + block_index * block.rows * self.packed.padded_depth
        # `direct`: a pointer to the int8 input itself (me_dot_s8s8), else the int16 columns
        kernel = DIRECT_DOT_KERNEL if direct is not None else DOT_KERNEL
        T.evaluate(tirx.call_extern(
            "void", kernel.format(rows=block.rows, cols=columns),
            _pointer(self.weights, offset, block.rows * self.packed.padded_depth, "r"),
            direct if direct is not None else _pointer(
                column_buffer, _i32(0), columns * self.packed.padded_depth, "r"),
            _i32(self.packed.padded_depth), _pointer(acc, _i32(0), block.rows * columns, "rw")))
        return first

    def store(self, acc: Any, index: int, channel: Any, out_index: Sequence[Any]) -> None:
        T.buffer_store(self.output, self.requantize(acc[index], channel), list(out_index))

    def row_loops(self, columns: int, column_buffer: Any, acc: Any,
                  out_index: Callable[[int, Any], Sequence[Any]], direct: Any = None) -> None:
        """Every weight row block against the columns; `out_index(c, channel)` is where the
        result of column c and output channel `channel` goes."""
        widest = self.packed.blocks[0]
        repeats = sum(1 for b in self.packed.blocks if b.rows == widest.rows)
        rest = self.packed.blocks[repeats:]

        def one(block: RowBlock, block_index: Any) -> None:
            first = self.dot(block, block_index, columns, column_buffer, acc, direct)
            for r in range(block.rows):
                for c in range(columns):
                    self.store(acc, r * columns + c, first + r, out_index(c, first + r))

        if repeats == 1:
            one(widest, _i32(0))
        else:
            with T.serial(0, repeats) as b:
                IRBuilder.name("block", b)
                one(widest, b)
        for block in rest:
            one(block, _i32(0))


def _column_index(k: Any, column: int, columns: int) -> Any:
    """Where depth `k` of column `column` goes in a buffer of `columns` interleaved columns:
    its group of four, then (k0, k2, k1, k3) within the group."""
    within = tirx.floormod(k, 4)
    # floormod/floordiv, not bitwise and/shift: TVM's simplifier folds them when k is a
    # constant (a bitwise_and of constants stays an expression, and buffer compaction then
    # sizes the column buffer by it: "dynamic size").
    position = tirx.floormod(within, 2) * 2 + tirx.floordiv(within, 2)
    return (tirx.floordiv(k, 4) * columns + column) * 4 + position


def _element(buffer: Any, indices: Sequence[Any]) -> Any:
    """The flat offset of `buffer[indices]`."""
    (offset,) = buffer.offset_of(list(indices))
    return offset


def _to_column(source: Any, indices: Sequence[Any], column_buffer: Any, start: Any, count: int,
               columns: int, input_zero_point: int) -> None:
    """`count` (a multiple of 4) int8 values of `source` from `indices` minus the zero point
    into the column buffer from element `start` (a group's first slot)."""
    stride = 4 * columns
    T.evaluate(tirx.call_extern(
        "void", TO_COLUMN, _pointer(source, _element(source, indices), count, "r"),
        _pointer(column_buffer, start, (count // 4 - 1) * stride + 4, "w"),
        _i32(count), _i32(stride), _i32(-input_zero_point)))


def conv2d(name: str, data_shape: Sequence[int], packed: PackedWeights, kernel: Sequence[int],
           out_shape: Sequence[int], output_of: Callable[[Any, Any], Output], *,
           has_bias: bool, per_channel: bool, strides: Sequence[int],
           dilation: Sequence[int], padding: Sequence[int], input_zero_point: int
           ) -> tirx.PrimFunc:
    """CONV_2D (NHWC int8 input, one group) as pairs of output pixels against pairs of output
    channels. `output_of(multiplier, shift)` gives the requantization (the per-channel
    arguments are None when per-tensor)."""
    batch, height, width, channels = (int(d) for d in data_shape)
    _, out_h, out_w, _ = (int(d) for d in out_shape)
    kernel_h, kernel_w = kernel
    top, left = padding[0], padding[1]
    pixels = out_h * out_w
    depth, padded_depth = packed.depth, packed.padded_depth
    builder = _Builder(name, packed, has_bias, output_of, per_channel)
    with IRBuilder() as ib, T.prim_func():
        T.func_name(name)
        builder.parameters(data_shape, out_shape, output_of(None, None).dtype)
        column_buffer = T.alloc_buffer((2 * padded_depth,), "int16")
        acc = T.alloc_buffer((4,), "int32")
        IRBuilder.name("columns", column_buffer)
        IRBuilder.name("acc", acc)

        def fill(n: Any, pixel_of: Callable[[int], Any], columns: int) -> None:
            for c in range(columns):
                pixel = pixel_of(c)
                y, x = tirx.floordiv(pixel, out_w), tirx.floormod(pixel, out_w)
                with T.serial(0, kernel_h) as ry, T.serial(0, kernel_w) as rx:
                    IRBuilder.name("ry", ry)
                    IRBuilder.name("rx", rx)
                    iy = y * strides[0] + ry * dilation[0] - top
                    ix = x * strides[1] + rx * dilation[1] - left
                    inside = tirx.all(iy >= 0, iy < height, ix >= 0, ix < width)
                    if channels % 4 == 0:  # a tap's channels are whole groups: one call
                        tap = ((ry * kernel_w + rx) * (channels // 4) * columns + c) * 4
                        with T.If(inside):
                            with T.Then():
                                _to_column(builder.data, [n, iy, ix, 0], column_buffer, tap,
                                           channels, columns, input_zero_point)
                            with T.Else(), T.serial(0, channels // 4) as g, \
                                    T.serial(0, 4) as j:
                                T.buffer_store(column_buffer, tirx.const(0, "int16"),
                                               [tap + g * 4 * columns + j])
                    else:
                        with T.serial(0, channels) as rc:
                            IRBuilder.name("rc", rc)
                            k = (ry * kernel_w + rx) * channels + rc
                            value = tirx.if_then_else(
                                inside,
                                (tm.i32(builder.data[n, iy, ix, rc])
                                 - _i32(input_zero_point)).astype("int16"),
                                tirx.const(0, "int16"))
                            T.buffer_store(column_buffer, value,
                                           [_column_index(k, c, columns)])
                for k in range(depth, padded_depth):
                    T.buffer_store(column_buffer, tirx.const(0, "int16"),
                                   [_column_index(_i32(k), c, columns)])

        def out_index(n: Any, pixel: Any) -> Callable[[int, Any], Sequence[Any]]:
            def where(c: int, channel: Any) -> Sequence[Any]:
                p = pixel(c)
                return [n, tirx.floordiv(p, out_w), tirx.floormod(p, out_w), channel]
            return where

        with T.serial(0, batch) as n:
            IRBuilder.name("n", n)
            if pixels >= 2:
                with T.serial(0, pixels // 2) as pair:
                    IRBuilder.name("pair", pair)

                    def pixel(c: int, pair: Any = pair) -> Any:
                        return pair * 2 + c

                    fill(n, pixel, 2)
                    builder.row_loops(2, column_buffer, acc, out_index(n, pixel))
            if pixels % 2:
                def last(c: int) -> Any:
                    return _i32(pixels - 1 + c)

                fill(n, last, 1)
                builder.row_loops(1, column_buffer, acc, out_index(n, last))
    return ib.get().with_attr("op_pattern", _OPAQUE)


def fully_connected(name: str, data_shape: Sequence[int], packed: PackedWeights,
                    out_shape: Sequence[int], output_of: Callable[[Any, Any], Output], *,
                    has_bias: bool, per_channel: bool, input_zero_point: int
                    ) -> tirx.PrimFunc:
    """FULLY_CONNECTED against blocks of four weight rows (then two, then one). When
    `fc_reads_input_directly`, each batch row is read as it is (int8; the bias argument must
    then be `fold_zero_point`'s and `input_zero_point` is not used): no column buffer, no RAM
    beyond the input and output. Otherwise each row is converted once to an int16 column."""
    batches, depth = (int(d) for d in data_shape)
    padded_depth = packed.padded_depth
    direct = fc_reads_input_directly(depth)
    builder = _Builder(name, packed, has_bias, output_of, per_channel)
    with IRBuilder() as ib, T.prim_func():
        T.func_name(name)
        builder.parameters(data_shape, out_shape, output_of(None, None).dtype)
        column_buffer = None if direct else T.alloc_buffer((padded_depth,), "int16")
        acc = T.alloc_buffer((4,), "int32")
        if column_buffer is not None:
            IRBuilder.name("column", column_buffer)
        IRBuilder.name("acc", acc)
        with T.serial(0, batches) as b:
            IRBuilder.name("b", b)
            if direct:
                row = _pointer(builder.data, _element(builder.data, [b, 0]), depth, "r")
                builder.row_loops(1, None, acc, lambda c, channel, b=b: [b, channel], row)
            else:
                with T.serial(0, depth) as k:
                    IRBuilder.name("k", k)
                    T.buffer_store(column_buffer, (tm.i32(builder.data[b, k]) - _i32(
                        input_zero_point)).astype("int16"), [_column_index(k, 0, 1)])
                for k in range(depth, padded_depth):
                    T.buffer_store(column_buffer, tirx.const(0, "int16"),
                                   [_column_index(_i32(k), 0, 1)])
                builder.row_loops(1, column_buffer, acc,
                                  lambda c, channel, b=b: [b, channel])
    return ib.get().with_attr("op_pattern", _OPAQUE)


def depthwise_conv2d(name: str, data_shape: Sequence[int], kernel: Sequence[int],
                     out_shape: Sequence[int], output_of: Callable[[Any, Any], Output], *,
                     has_bias: bool, per_channel: bool, strides: Sequence[int],
                     dilation: Sequence[int], padding: Sequence[int], input_zero_point: int
                     ) -> tirx.PrimFunc:
    """DEPTHWISE_CONV_2D with a depth multiplier of 1 and channels a multiple of four: per output
    pixel and group of four channels, one micro-kernel call: `me_dw_s8_4ch_RxC` (unrolled)
    when the whole window lies inside the input and has at most `MAX_UNROLLED_TAPS` taps, else
    `me_dw_s8_4ch_window` over the taps inside the input (rows and columns clipped once per
    pixel, as TFLite Micro does, instead of a bounds test per tap). Weights [1, H, W, C] are
    used as they are."""
    batch, height, width, channels = (int(d) for d in data_shape)
    _, out_h, out_w, _ = (int(d) for d in out_shape)
    kernel_h, kernel_w = kernel
    top, left = padding[0], padding[1]
    builder = _Builder(name, None, has_bias, output_of, per_channel)
    with IRBuilder() as ib, T.prim_func():
        T.func_name(name)
        builder.parameters(data_shape, out_shape, output_of(None, None).dtype,
                           weights_shape=(1, kernel_h, kernel_w, channels))
        acc = T.alloc_buffer((4,), "int32")
        IRBuilder.name("acc", acc)

        def first_tap(origin: Any, dilation: int) -> Any:
            # the first r with origin + r * dilation >= 0
            return tirx.max(tirx.floordiv(_i32(dilation - 1) - origin, dilation), 0)

        def end_tap(origin: Any, size: int, extent: int, dilation: int) -> Any:
            # one past the last r with origin + r * dilation < size
            return tirx.min(tirx.floordiv(_i32(size + dilation - 1) - origin, dilation),
                            extent)

        with T.serial(0, batch) as n, T.serial(0, out_h) as y, T.serial(0, out_w) as x:
            for var, label in ((n, "n"), (y, "y"), (x, "x")):
                IRBuilder.name(label, var)
            origin_y = y * strides[0] - top
            origin_x = x * strides[1] - left

            def groups(first_y: Any, first_x: Any, window: Sequence[Any]) -> None:
                # `window`: the clipped (rows, cols) for me_dw_s8_4ch_window, or none for the
                # unrolled whole-window kernel
                with T.serial(0, channels // 4) as group:
                    IRBuilder.name("group", group)
                    channel = group * 4
                    for j in range(4):
                        start = builder.bias[channel + j] if builder.bias is not None \
                                else _i32(0)
                        T.buffer_store(acc, start, [j])
                    T.evaluate(tirx.call_extern(
                        "void", DEPTHWISE_WINDOW if window
                        else f"me_dw_s8_4ch_{kernel_h}x{kernel_w}",
                        _pointer(builder.data, _element(builder.data, [
                            n, origin_y + first_y * dilation[0],
                            origin_x + first_x * dilation[1], channel]), 4, "r"),
                        _i32(channels * dilation[1]), _i32(width * channels * dilation[0]),
                        _pointer(builder.weights, _element(
                            builder.weights, [0, first_y, first_x, channel]), 4, "r"),
                        _i32(channels), _i32(kernel_w * channels), *window,
                        _i32(-input_zero_point), _pointer(acc, _i32(0), 4, "rw")))
                    for j in range(4):
                        builder.store(acc, j, channel + j, [n, y, x, channel + j])

            first_y = first_tap(origin_y, dilation[0])
            first_x = first_tap(origin_x, dilation[1])
            rows = end_tap(origin_y, height, kernel_h, dilation[0]) - first_y
            cols = end_tap(origin_x, width, kernel_w, dilation[1]) - first_x
            if kernel_h * kernel_w > MAX_UNROLLED_TAPS:
                groups(first_y, first_x, [rows, cols])
            else:
                # A pixel whose whole window lies inside the input: the unrolled micro-kernel,
                # every tap a load at a fixed offset. At the borders the window is clipped
                # once per pixel.
                inside = tirx.all(origin_y >= 0,
                                  origin_y + (kernel_h - 1) * dilation[0] < height,
                                  origin_x >= 0, origin_x + (kernel_w - 1) * dilation[1] < width)
                with T.If(inside):
                    with T.Then():
                        groups(_i32(0), _i32(0), [])
                    with T.Else():
                        groups(first_y, first_x, [rows, cols])
    return ib.get().with_attr("op_pattern", _OPAQUE)


# TVM's OpPatternKind: an opaque kernel is never fused with its neighbours.
_OPAQUE = 8
