"""Quantized TFLite operators imported as integer computations (no dequantize → float →
quantize).

For every operator here whose activations are int8 (and, where noted, int16), the converter
reads the quantization parameters from the flatbuffer, computes TFLite Micro's fixed-point
parameters at compile time (`compiler.integer.fixedpoint`) and emits an integer TE kernel
(`compiler.integer.kernels`) through the Relax block builder. Weights stay int8 constants,
biases int32, per-channel multipliers and shifts int32 arrays. Float operators and operators
with float activations go to TVM's converter unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from microexport.compiler.integer import fixedpoint as fp
from microexport.compiler.integer import im2col, kernels, library

_INTEGER_TYPES = ("int8", "int16")
# TFLite's ActivationFunctionType codes.
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


class QuantizationError(ValueError):
    """A quantization scheme or parameter the integer path does not support."""


@dataclass(frozen=True)
class Quantization:
    """A tensor's quantization: float32 scales, zero points, and the per-channel axis."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    @property
    def per_tensor_scale(self) -> float:
        if self.scale.size != 1:
            raise QuantizationError("a per-channel scale where one scale was expected")
        return float(self.scale[0])

    @property
    def per_tensor_zero_point(self) -> int:
        return int(self.zero_point[0]) if self.zero_point.size else 0


def quantization(tensor: Any) -> Quantization | None:
    """The quantization parameters of a TFLite TensorWrapper (None when it has none)."""
    params = tensor.tensor.Quantization()
    if params is None or not params.ScaleLength():
        return None
    scale = np.asarray(params.ScaleAsNumpy(), dtype=np.float32).reshape(-1)
    zero = (np.asarray(params.ZeroPointAsNumpy(), dtype=np.int64).reshape(-1)
            if params.ZeroPointLength() else np.zeros(1, dtype=np.int64))
    return Quantization(scale, zero, int(params.QuantizedDimension()))


def is_integer_operator(converter: Any, op: Any) -> bool:
    """True when the operator's first input is a quantized int8/int16 activation or constant,
    or (QUANTIZE) its output is."""
    inputs = converter.get_input_tensors(op)
    outputs = converter.get_output_tensors(op)
    first = inputs[0] if inputs else None
    for tensor in ([first] if first is not None else []) + outputs[:1]:
        if _dtype(converter, tensor) in _INTEGER_TYPES and quantization(tensor) is not None:
            return True
    return False


def _dtype(converter: Any, tensor: Any) -> str:
    return converter.get_tensor_type_str(tensor.tensor.Type())


def _options(op: Any, options_class: type) -> Any:
    table = op.BuiltinOptions()
    options = options_class()
    if table is not None:
        options.Init(table.Bytes, table.Pos)
    return options


def _activation(code: int) -> str:
    name = _ACTIVATIONS.get(code, str(code))
    if name in ("TANH", "SIGN_BIT") or name not in _ACTIVATIONS.values():
        raise QuantizationError(f"fused activation {name} on a quantized operator")
    return name


def _expr(converter: Any, tensor: Any) -> Any:
    """The Relax value of an activation, or a constant of the tensor's stored data."""
    from tvm import relax

    if converter.has_expr(tensor.tensor_idx):
        return converter.get_expr(tensor.tensor_idx)
    return relax.const(converter.get_tensor_value(tensor), _dtype(converter, tensor))


def _const(array: np.ndarray) -> Any:
    from tvm import relax

    return relax.const(np.ascontiguousarray(array), str(array.dtype))


def _emit(converter: Any, name: str, args: Sequence[Any],
          build: Callable[..., Any]) -> Any:
    """Emit `build(*te_tensors)` as a TIR kernel called from Relax on `args`."""
    return converter.bb.emit_te(build, *args, primfunc_name_hint=name)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _padding(kind: int, shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
             dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of TFLite's SAME (0) or VALID (1) padding, NHWC input."""
    if kind == 1:
        return (0, 0, 0, 0)
    top, bottom = _same_padding(shape[1], kernel[0], strides[0], dilation[0])
    left, right = _same_padding(shape[2], kernel[1], strides[1], dilation[1])
    return (top, left, bottom, right)


def _io(converter: Any, op: Any) -> tuple[list[Any], Any]:
    return converter.get_input_tensors(op), converter.get_output_tensors(op)[0]


def _require(q: Quantization | None, what: str) -> Quantization:
    if q is None:
        raise QuantizationError(f"{what} has no quantization parameters")
    return q


def _output(low_high: fp.Clamp, zero_point: int, dtype: str, multiplier: Any, shift: Any
            ) -> kernels.Output:
    return kernels.Output(multiplier, shift, zero_point, low_high.low, low_high.high, dtype)


def _accumulating(converter: Any, op: Any, kind: str) -> Any:
    """CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED with int8 activations, or int16
    activations and int8 weights (16x8: int64 accumulator unless the bias is int32, as in
    TFLite Micro)."""
    from tflite.Conv2DOptions import Conv2DOptions
    from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions
    from tflite.FullyConnectedOptions import FullyConnectedOptions
    from tvm import relax

    inputs, output = _io(converter, op)
    data, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2].tensor_idx != -1 else None
    dtype = _dtype(converter, output)
    activations = _dtype(converter, data)
    if activations not in ("int8", "int16") or _dtype(converter, weight) != "int8" \
            or dtype != activations:
        raise QuantizationError(f"{activations} activations with {_dtype(converter, weight)} "
                                f"weights and {dtype} output (int8 x int8 or int16 x int8 only)")
    q_in = _require(quantization(data), "the input")
    q_w = _require(quantization(weight), "the weights")
    q_out = _require(quantization(output), "the output")
    if converter.has_expr(weight.tensor_idx):
        raise QuantizationError("weights computed at run time")
    weights = converter.get_tensor_value(weight)
    bias_values = converter.get_tensor_value(bias) if bias is not None else None
    allowed_bias = (np.int32, np.int64) if activations == "int16" else (np.int32,)
    if bias_values is not None and bias_values.dtype not in allowed_bias:
        raise QuantizationError(f"{bias_values.dtype} bias with {activations} activations")
    if activations == "int16" and (q_in.per_tensor_zero_point or q_out.per_tensor_zero_point):
        raise QuantizationError("int16 activations with a non-zero zero point")
    # 16x8 accumulates in int64 unless the bias is int32 (TFLite Micro's rule).
    wide = activations == "int16" and (bias_values is None or bias_values.dtype == np.int64)
    if kind == "depthwise" and activations == "int16" and not wide:
        raise QuantizationError("int16 DEPTHWISE_CONV_2D with an int32 bias (int64 expected)")
    options_class = {"conv": Conv2DOptions, "depthwise": DepthwiseConv2DOptions,
                     "dense": FullyConnectedOptions}[kind]
    options = _options(op, options_class)
    channels = weights.shape[0] if kind != "depthwise" else weights.shape[3]
    scales = np.broadcast_to(q_w.scale, (channels,))
    if kind == "dense" and q_w.scale.size == 1:
        # TFLite Micro's per-tensor FULLY_CONNECTED multiplies the scales in float32.
        pairs = [fp.quantize_multiplier(float(fp.f32(q_in.per_tensor_scale) * fp.f32(scales[0]))
                                        / float(q_out.per_tensor_scale))]
    else:
        pairs = [fp.quantize_multiplier(float(q_in.per_tensor_scale) * float(s)
                                        / float(q_out.per_tensor_scale)) for s in scales]
    if wide:
        pairs = [fp.reduced_multiplier(m, s) for m, s in pairs]
    multiplier, shift, arrays = fp.per_channel_or_scalar(pairs)
    shifts = arrays[1] if arrays else None
    arrays = [_const(array) for array in arrays]
    clamp = fp.activation_clamp(_activation(options.FusedActivationFunction()),
                                q_out.per_tensor_scale, q_out.per_tensor_zero_point, dtype)
    in_zero = q_in.per_tensor_zero_point
    args = [_expr(converter, data), _const(weights)]
    if bias_values is not None:
        args.append(_const(bias_values))
    args += arrays
    has_bias = bias_values is not None

    def unpack(tensors: Sequence[Any]) -> tuple[Any, Any, Any, kernels.Output]:
        rest = list(tensors[2:])
        b = rest.pop(0) if has_bias else None
        m, s = (rest[0], rest[1]) if arrays else (multiplier, shift)
        return tensors[0], tensors[1], b, kernels.Output(
            m, s, q_out.per_tensor_zero_point, clamp.low, clamp.high, dtype, wide)

    if kind == "dense":
        shape = [int(d) for d in converter.get_tensor_shape(data)]
        depth = int(weights.shape[1])
        if len(shape) != 2 or shape[1] != depth:
            args[0] = converter.bb.normalize(relax.op.reshape(args[0], (-1, depth)))
        w_zero = int(q_w.zero_point[0]) if q_w.zero_point.size else 0

        def build_dense(*tensors: Any) -> Any:
            x, w, b, out = unpack(tensors)
            return kernels.fully_connected(x, w, b, out, input_zero_point=in_zero,
                                           weight_zero_point=w_zero)

        if activations == "int8" and w_zero == 0 and _MICRO_KERNELS.get():
            result = _packed_kernel(converter, "dense_int8", args, weights, has_bias,
                                    bias_values, arrays, shifts, multiplier, shift,
                                    q_out.per_tensor_zero_point, clamp, "dense", in_zero)
        else:
            result = _emit(converter, f"dense_{activations}", args, build_dense)
        out_shape = [int(d) for d in converter.get_tensor_shape(output)]
        if [int(np.prod(shape)) // depth, int(weights.shape[0])] != out_shape:
            result = converter.bb.normalize(relax.op.reshape(result, out_shape))
        return result

    strides = (options.StrideH(), options.StrideW())
    dilation = (options.DilationHFactor(), options.DilationWFactor())
    shape = [int(d) for d in converter.get_tensor_shape(data)]
    padding = _padding(options.Padding(), shape, weights.shape[1:3], strides, dilation)
    folded = _foldable_pad(converter, data, in_zero)
    if folded is not None:  # read the PAD's input, the padding taken as part of the window
        source, (top, left, bottom, right) = folded
        args[0] = _expr(converter, source)
        padding = (padding[0] + top, padding[1] + left, padding[2] + bottom, padding[3] + right)
    if kind == "conv" and activations == "int8" and int(weights.shape[3]) == shape[3] \
            and _MICRO_KERNELS.get():
        return _packed_kernel(
            converter, "conv2d_int8", args, weights, has_bias, bias_values, arrays, shifts,
            multiplier, shift, q_out.per_tensor_zero_point, clamp, "conv", in_zero,
            out_shape=[int(d) for d in converter.get_tensor_shape(output)],
            geometry={"kernel": tuple(int(d) for d in weights.shape[1:3]), "strides": strides,
                      "dilation": dilation, "padding": padding})
    if kind == "conv":
        def build_conv(*tensors: Any) -> Any:
            x, w, b, out = unpack(tensors)
            return kernels.conv2d(x, w, b, out, strides=strides, dilation=dilation,
                                  padding=padding, input_zero_point=in_zero)

        return _emit(converter, f"conv2d_{activations}", args, build_conv)

    multiplier_depth = int(weights.shape[3]) // shape[3]
    if activations == "int8" and multiplier_depth == 1 and shape[3] % 4 == 0 \
            and _MICRO_KERNELS.get():
        return _packed_kernel(
            converter, "depthwise_conv2d_int8", args, weights, has_bias, bias_values, arrays,
            shifts, multiplier, shift, q_out.per_tensor_zero_point, clamp, "depthwise", in_zero,
            out_shape=[int(d) for d in converter.get_tensor_shape(output)],
            geometry={"kernel": tuple(int(d) for d in weights.shape[1:3]), "strides": strides,
                      "dilation": dilation, "padding": padding})

    def build_depthwise(*tensors: Any) -> Any:
        x, w, b, out = unpack(tensors)
        return kernels.depthwise_conv2d(x, w, b, out, strides=strides, dilation=dilation,
                                        padding=padding, input_zero_point=in_zero,
                                        depth_multiplier=multiplier_depth)

    return _emit(converter, f"depthwise_conv2d_{activations}", args, build_depthwise)


# Whether int8 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED import as micro-kernel calls
# (`im2col`, for our C) or as the TE kernels of `kernels`, the same integers computed the plain
# way, for TVM's own LLVM build (`--reference tvm`), which cannot call the C micro-kernels; the
# same for the functions and fixed tables of the C library (`library`).
_MICRO_KERNELS: ContextVar[bool] = ContextVar("microexport_micro_kernels", default=True)


def micro_kernels_enabled() -> bool:
    """Whether int8 layers import as micro-kernel calls here (False within `te_kernels_only`)."""
    return _MICRO_KERNELS.get()


def fixed_tables(tables: Sequence[library.LibraryTable]
                 ) -> tuple[list[Any], Callable[[Sequence[Any]], Sequence[Any]]]:
    """The fixed `tables` for a kernel: (extra Relax arguments, a function from the kernel's
    extra TE arguments to what it reads as tables). The tables of the C library, or within
    `te_kernels_only` constants (TVM's LLVM build cannot call the library)."""
    if _MICRO_KERNELS.get():
        return [], lambda extra: tables
    return [_const(table.values()) for table in tables], lambda extra: extra


def softmax_exp(params: fp.SoftmaxExp) -> tuple[list[Any], Callable[..., Any]]:
    """int8 SOFTMAX's exponentials for `kernels.softmax`: (extra Relax arguments, a function
    from the kernel's extra TE arguments to `exp_of`). Computed per element by the C library,
    or within `te_kernels_only` read from a constant table."""
    if _MICRO_KERNELS.get():
        return [], lambda: lambda diff: library.softmax_exp_s8(diff, params)
    return [_const(fp.softmax_exp_table(params))], kernels.exp_table_reader


@contextmanager
def te_kernels_only() -> Iterator[None]:
    """Within this context, quantized models import without calls into our C: no micro-kernels,
    no functions or tables of the C library (`fixed_tables`, `softmax_exp`)."""
    token = _MICRO_KERNELS.set(False)
    try:
        yield
    finally:
        _MICRO_KERNELS.reset(token)


def _packed_kernel(converter: Any, name: str, args: list[Any], weights: np.ndarray,
                   has_bias: bool, bias_values: np.ndarray | None, arrays: Sequence[Any],
                   shifts: np.ndarray | None,
                   multiplier: Any, shift: Any,
                   zero_point: int, clamp: fp.Clamp, kind: str, input_zero_point: int,
                   out_shape: Sequence[int] | None = None,
                   geometry: dict[str, Any] | None = None) -> Any:
    """An int8 CONV_2D (one group), DEPTHWISE_CONV_2D (depth multiplier 1) or FULLY_CONNECTED
    as micro-kernel calls (`im2col`); conv and fully connected weights are packed."""
    from tvm import relax

    rows = int(weights.shape[0])
    packed = None if kind == "depthwise" else im2col.pack_rows(
        weights.reshape(rows, -1), 2 if kind == "conv" else 4)
    call_args = [args[0], args[1] if packed is None else _const(packed.data), *args[2:]]
    # Per-channel shifts that are all right shifts (multipliers below one, as converters make
    # them) are passed negated, so the requantization has no left-shift arithmetic.
    if kind == "dense" and im2col.fc_reads_input_directly(int(weights.shape[1])):
        # the input is read as it is: its zero point moves into the bias at compile time
        folded = _const(im2col.fold_zero_point(weights, bias_values, input_zero_point))
        if has_bias:
            call_args[2] = folded
        else:
            call_args.insert(2, folded)
            has_bias = True
    right_shift = shifts is not None and bool((shifts <= 0).all())
    if right_shift:
        call_args[-1] = _const(-shifts)

    def output_of(m: Any, s: Any) -> kernels.Output:
        return kernels.Output(m if arrays else multiplier, s if arrays else shift, zero_point,
                              clamp.low, clamp.high, "int8", right_shift=right_shift)

    data_shape = [int(d) for d in call_args[0].ty.shape]
    if kind == "depthwise":
        assert geometry is not None and out_shape is not None
        func = im2col.depthwise_conv2d(
            name, data_shape, geometry["kernel"], out_shape, output_of, has_bias=has_bias,
            per_channel=bool(arrays), strides=geometry["strides"],
            dilation=geometry["dilation"], padding=geometry["padding"],
            input_zero_point=input_zero_point)
    elif kind == "conv":
        assert geometry is not None and out_shape is not None
        assert packed is not None
        func = im2col.conv2d(name, data_shape, packed, geometry["kernel"], out_shape, output_of,
                             has_bias=has_bias, per_channel=bool(arrays),
                             strides=geometry["strides"], dilation=geometry["dilation"],
                             padding=geometry["padding"], input_zero_point=input_zero_point)
    else:
        assert packed is not None
        out_shape = [data_shape[0], rows]
        func = im2col.fully_connected(name, data_shape, packed, out_shape, output_of,
                                      has_bias=has_bias, per_channel=bool(arrays),
                                      input_zero_point=input_zero_point)
    kernel = converter.bb.add_func(func, name)
    return converter.bb.emit(relax.call_tir(kernel, call_args,
                                            relax.TensorType(out_shape, "int8")))


def _conv2d(converter: Any, op: Any) -> Any:
    return _accumulating(converter, op, "conv")


def _depthwise_conv2d(converter: Any, op: Any) -> Any:
    return _accumulating(converter, op, "depthwise")


def _fully_connected(converter: Any, op: Any) -> Any:
    return _accumulating(converter, op, "dense")


def _scalar_params(converter: Any, tensors: Sequence[Any]) -> list[tuple[float, int]]:
    result = []
    for tensor in tensors:
        q = _require(quantization(tensor), "a tensor")
        result.append((q.per_tensor_scale, q.per_tensor_zero_point))
    return result


def _add_or_subtract(converter: Any, op: Any, subtract: bool) -> Any:
    from tflite.AddOptions import AddOptions
    from tflite.SubOptions import SubOptions

    inputs, output = _io(converter, op)
    dtype = _dtype(converter, output)
    (s1, z1), (s2, z2), (so, zo) = _scalar_params(converter, [inputs[0], inputs[1], output])
    options = _options(op, SubOptions if subtract else AddOptions)
    clamp = fp.activation_clamp(_activation(options.FusedActivationFunction()), so, zo, dtype)
    left_shift = 15 if dtype == "int16" else 20
    twice_max = 2 * float(max(fp.f32(s1), fp.f32(s2)))
    m1, sh1 = fp.quantize_multiplier(float(s1) / twice_max)
    m2, sh2 = fp.quantize_multiplier(float(s2) / twice_max)
    mo, sho = fp.quantize_multiplier(twice_max / ((1 << left_shift) * float(so)))
    params = kernels.AddParams(left_shift, -z1, m1, sh1, -z2, m2, sh2, mo, sho, zo,
                               clamp.low, clamp.high, dtype)
    return _emit(converter, "sub_int" if subtract else "add_int",
                 [_expr(converter, inputs[0]), _expr(converter, inputs[1])],
                 lambda a, b: kernels.add_or_subtract(a, b, params, subtract))


def _add(converter: Any, op: Any) -> Any:
    return _add_or_subtract(converter, op, False)


def _sub(converter: Any, op: Any) -> Any:
    return _add_or_subtract(converter, op, True)


def _mul(converter: Any, op: Any) -> Any:
    from tflite.MulOptions import MulOptions

    inputs, output = _io(converter, op)
    dtype = _dtype(converter, output)
    (s1, z1), (s2, z2), (so, zo) = _scalar_params(converter, [inputs[0], inputs[1], output])
    options = _options(op, MulOptions)
    clamp = fp.activation_clamp(_activation(options.FusedActivationFunction()), so, zo, dtype)
    m, s = fp.quantize_multiplier(float(s1) * float(s2) / float(so))
    out = _output(clamp, zo, dtype, m, s)
    return _emit(converter, "mul_int",
                 [_expr(converter, inputs[0]), _expr(converter, inputs[1])],
                 lambda a, b: kernels.multiply(a, b, -z1, -z2, out))


def _pool(converter: Any, op: Any, average: bool) -> Any:
    from tflite.Pool2DOptions import Pool2DOptions

    inputs, output = _io(converter, op)
    dtype = _dtype(converter, output)
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if fp.f32(si) != fp.f32(so) or zi != zo:
        raise QuantizationError("pooling with different input and output quantization")
    options = _options(op, Pool2DOptions)
    kernel = (options.FilterHeight(), options.FilterWidth())
    strides = (options.StrideH(), options.StrideW())
    shape = [int(d) for d in converter.get_tensor_shape(inputs[0])]
    padding = _padding(options.Padding(), shape, kernel, strides, (1, 1))
    clamp = fp.activation_clamp(_activation(options.FusedActivationFunction()), so, zo, dtype)
    pool = kernels.average_pool2d if average else kernels.max_pool2d
    return _emit(converter, "avg_pool_int" if average else "max_pool_int",
                 [_expr(converter, inputs[0])],
                 lambda x: pool(x, kernel=kernel, strides=strides, padding=padding,
                                low=clamp.low, high=clamp.high))


def _average_pool2d(converter: Any, op: Any) -> Any:
    return _pool(converter, op, True)


def _max_pool2d(converter: Any, op: Any) -> Any:
    return _pool(converter, op, False)


def _pad(converter: Any, op: Any) -> Any:
    inputs, output = _io(converter, op)
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if fp.f32(si) != fp.f32(so) or zi != zo:
        raise QuantizationError("PAD with different input and output quantization")
    if converter.has_expr(inputs[1].tensor_idx):
        raise QuantizationError("PAD with paddings computed at run time")
    paddings = [(int(a), int(b)) for a, b in converter.get_tensor_value(inputs[1])]
    value = _pad_value(converter, inputs, zo)
    padded = _emit(converter, "pad_int", [_expr(converter, inputs[0])],
                   lambda x: kernels.pad(x, paddings, value))
    _keep_unfused(converter, padded)
    return padded


def _pad_value(converter: Any, inputs: Sequence[Any], zero_point: int) -> int:
    """The value a PAD (the zero point) or PADV2 (its constant input) fills in."""
    if len(inputs) > 2 and inputs[2].tensor_idx != -1:
        return int(np.asarray(converter.get_tensor_value(inputs[2])).reshape(-1)[0])
    return zero_point


def _foldable_pad(converter: Any, data: Any, zero_point: int
                  ) -> tuple[Any, tuple[int, int, int, int]] | None:
    """When `data` (a conv's NHWC input) is the output of a PAD of height and width only, with
    the zero point as pad value: the PAD's input and its (top, left, bottom, right). A conv
    over zero-point padding sums (zero point - zero point) * weight = 0 for those taps, which
    is what the conv's own padding does, so it can read the unpadded input and skip the PAD
    kernel and its padded tensor (removed as dead code when nothing else reads it)."""
    producer = _producer(converter, data.tensor_idx)
    if producer is None or converter.get_op_code_str(producer) not in ("PAD", "PADV2"):
        return None
    inputs = converter.get_input_tensors(producer)
    if converter.has_expr(inputs[1].tensor_idx):
        return None
    paddings = [(int(a), int(b)) for a, b in converter.get_tensor_value(inputs[1])]
    value = _pad_value(converter, inputs, _scalar_params(converter, [data])[0][1])
    source_q = quantization(inputs[0])
    data_q = quantization(data)
    if (len(paddings) != 4 or paddings[0] != (0, 0) or paddings[3] != (0, 0)
            or value != zero_point or source_q is None or data_q is None
            or fp.f32(source_q.per_tensor_scale) != fp.f32(data_q.per_tensor_scale)
            or source_q.per_tensor_zero_point != data_q.per_tensor_zero_point):
        return None
    (top, bottom), (left, right) = paddings[1], paddings[2]
    return inputs[0], (top, left, bottom, right)


def _producer(converter: Any, tensor_index: int) -> Any:
    """The operator of the converter's subgraph that writes tensor `tensor_index`, or None."""
    subgraph = converter.subgraph
    for index in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(index)
        if tensor_index in [int(t) for t in op.OutputsAsNumpy()]:
            return op
    return None


# TVM's OpPatternKind: an opaque kernel is never fused with its neighbours.
_OPAQUE = 8


def _keep_unfused(converter: Any, value: Any) -> None:
    """Mark the kernel computing `value` opaque, so that operator fusion leaves it alone. A PAD
    fused behind a conv extends the conv's output domain, so the conv's requantization can no
    longer run per output element and its int32 accumulator becomes a whole tensor of scratch;
    as its own kernel the padded tensor is an int8 activation like any other."""
    call = converter.bb.lookup_binding(value)
    kernel = call.args[0]
    function = converter.bb.get()[kernel]
    converter.bb.update_func(kernel, function.with_attr("op_pattern", _OPAQUE))


def _lookup(converter: Any, op: Any, name: str, table: Callable[[float, int, float, int],
                                                                  np.ndarray]) -> Any:
    inputs, output = _io(converter, op)
    if _dtype(converter, inputs[0]) != "int8" or _dtype(converter, output) != "int8":
        raise QuantizationError(f"{_dtype(converter, inputs[0])} {name} (int8 only)")
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    values = table(si, zi, so, zo)
    return _emit(converter, f"{name.lower()}_int8", [_expr(converter, inputs[0]),
                                                     _const(values)], kernels.lookup)


def _logistic(converter: Any, op: Any) -> Any:
    if _dtype(converter, _io(converter, op)[1]) == "int16":
        return _int16_sigmoid_or_tanh(converter, op, tanh=False)
    return _lookup(converter, op, "LOGISTIC", lambda si, zi, so, zo: fp.logistic_table(si, zi))


def _tanh(converter: Any, op: Any) -> Any:
    if _dtype(converter, _io(converter, op)[1]) == "int16":
        return _int16_sigmoid_or_tanh(converter, op, tanh=True)
    return _lookup(converter, op, "TANH", lambda si, zi, so, zo: fp.tanh_table(si, zi))


def _int16_sigmoid_or_tanh(converter: Any, op: Any, tanh: bool) -> Any:
    """16x8 LOGISTIC or TANH: TFLite's interpolation in the uint16 sigmoid table, which needs
    zero points of 0 and an output scale of 2**-15 (as TFLite Micro requires)."""
    name = "TANH" if tanh else "LOGISTIC"
    inputs, output = _io(converter, op)
    if _dtype(converter, inputs[0]) != "int16":
        raise QuantizationError(f"{name} from {_dtype(converter, inputs[0])} to int16")
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    power, exact = fp.checked_log2(so)
    if zi != 0 or zo != 0 or not exact or power != -15:
        raise QuantizationError(f"int16 {name} needs zero points of 0 and an output scale of "
                                f"2**-15 (got input zero point {zi}, output scale {so:g} and "
                                f"zero point {zo})")
    scaling = fp.int16_activation_scaling(si, tanh)
    extra, tables = fixed_tables([library.SIGMOID_U16])
    return _emit(converter, f"{name.lower()}_int16", [_expr(converter, inputs[0]), *extra],
                 lambda x, *t: kernels.int16_activation(
                     x, tables(t)[0], scaling.multiplier, scaling.left_shift, tanh))


def _hard_swish(converter: Any, op: Any) -> Any:
    return _lookup(converter, op, "HARD_SWISH", fp.hard_swish_table)


def _int16_io(converter: Any, op: Any, name: str) -> tuple[Any, Any] | None:
    """(input, output) of an elementwise operator with int16 input (None for int8 input, which
    uses a 256-entry table); both must be int16."""
    inputs, output = _io(converter, op)
    source, target = _dtype(converter, inputs[0]), _dtype(converter, output)
    if source != "int16":
        return None
    if target != "int16":
        raise QuantizationError(f"{name} from int16 to {target} (int16 to int16 only)")
    return inputs[0], output


def _leaky_relu(converter: Any, op: Any) -> Any:
    from tflite.LeakyReluOptions import LeakyReluOptions

    alpha = float(_options(op, LeakyReluOptions).Alpha())
    int16 = _int16_io(converter, op, "LEAKY_RELU")
    if int16 is None:
        return _lookup(converter, op, "LEAKY_RELU",
                       lambda si, zi, so, zo: fp.leaky_relu_table(alpha, si, zi, so, zo))
    # int16: TFLite Micro's elementwise arithmetic (the int8 table's, per element at run time).
    (si, zi), (so, zo) = _scalar_params(converter, list(int16))
    params = fp.leaky_relu_params(alpha, si, so)
    return _emit(converter, "leaky_relu_int16", [_expr(converter, int16[0])],
                 lambda x: kernels.leaky_relu(x, zi, params.identity, params.alpha,
                                              params.negative_alpha, zo, "int16"))


def _relu_table(si: float, zi: int, so: float, zo: int) -> np.ndarray:
    m, s = fp.quantize_multiplier(float(fp.f32(si) / fp.f32(so)))
    low = max(-128, zo)
    return np.array([max(low, min(127, zo + fp.multiply_by_quantized_multiplier(v - zi, m, s)))
                     for v in fp.INT8_VALUES], dtype=np.int8)


def _quantized_six(si: float, zi: int) -> int:
    """6 in the input's quantization (RELU6 clamps there, without rescaling)."""
    return zi + fp.round_half_away(float(fp.f32(6.0) / fp.f32(si)))


def _relu6_table(si: float, zi: int, so: float, zo: int) -> np.ndarray:
    six = _quantized_six(si, zi)
    return np.array([min(max(v, zi), six) for v in fp.INT8_VALUES], dtype=np.int8)


def _relu(converter: Any, op: Any) -> Any:
    int16 = _int16_io(converter, op, "RELU")
    if int16 is None:
        return _lookup(converter, op, "RELU", _relu_table)
    # int16: rescale by input/output scale and clamp below at 0, TFLite Micro's ReluQuantized
    # (which, like us, refuses non-zero int16 zero points).
    (si, zi), (so, zo) = _scalar_params(converter, list(int16))
    if zi or zo:
        raise QuantizationError(f"int16 RELU needs zero points 0 (got {zi} and {zo})")
    m, s = fp.quantize_multiplier(float(fp.f32(si) / fp.f32(so)))
    out = kernels.Output(m, s, 0, 0, 32767, "int16")
    return _emit(converter, "relu_int16", [_expr(converter, int16[0])],
                 lambda x: kernels.requantize(x, 0, out))


def _relu6(converter: Any, op: Any) -> Any:
    int16 = _int16_io(converter, op, "RELU6")
    if int16 is None:
        return _lookup(converter, op, "RELU6", _relu6_table)
    # int16: TFLite Micro clamps between the input's quantized 0 and 6 and does not rescale
    # (the output's quantization is not read), so neither do we.
    (si, zi), = _scalar_params(converter, [int16[0]])
    six = min(32767, max(-32768, _quantized_six(si, zi)))
    return _emit(converter, "relu6_int16", [_expr(converter, int16[0])],
                 lambda x: kernels.clamp(x, zi, six))


def _softmax(converter: Any, op: Any) -> Any:
    from tflite.SoftmaxOptions import SoftmaxOptions

    inputs, output = _io(converter, op)
    source, target = _dtype(converter, inputs[0]), _dtype(converter, output)
    if (source, target) == ("int16", "int16"):
        return _softmax_int16(converter, op)
    if (source, target) != ("int8", "int8"):
        raise QuantizationError(f"{source} → {target} SOFTMAX (int8 → int8 or int16 → int16)")
    (si, _), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if zo != -128 or fp.f32(so) != fp.f32(1.0 / 256):
        raise QuantizationError("int8 SOFTMAX output must have scale 1/256 and zero point -128")
    beta = float(_options(op, SoftmaxOptions).Beta())
    extra, exp_of = softmax_exp(fp.softmax_exp_params(si, beta))
    return _emit(converter, "softmax_int8", [_expr(converter, inputs[0]), *extra],
                 lambda x, *table: kernels.softmax(x, exp_of(*table)))


def _softmax_int16(converter: Any, op: Any) -> Any:
    from tflite.SoftmaxOptions import SoftmaxOptions

    inputs, output = _io(converter, op)
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if zi or zo or abs(float(so) - 1.0 / 32768) > 0.001 / 32768:
        raise QuantizationError("int16 SOFTMAX needs zero points 0 and output scale 1/32768")
    beta = float(_options(op, SoftmaxOptions).Beta())
    params = fp.int16_softmax_params(si, beta)
    extra, tables = fixed_tables([library.SOFTMAX_EXP_S16, library.SOFTMAX_RECIPROCAL_S16])
    return _emit(converter, "softmax_int16", [_expr(converter, inputs[0]), *extra],
                 lambda x, *t: kernels.softmax_int16(x, *tables(t), params.multiplier,
                                                     params.shift))


def _mean(converter: Any, op: Any) -> Any:
    from tflite.ReducerOptions import ReducerOptions

    inputs, output = _io(converter, op)
    dtype = _dtype(converter, output)
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if converter.has_expr(inputs[1].tensor_idx):
        raise QuantizationError("MEAN with axes computed at run time")
    shape = [int(d) for d in converter.get_tensor_shape(inputs[0])]
    axes = sorted({int(a) % len(shape) for a in np.asarray(
        converter.get_tensor_value(inputs[1])).reshape(-1)})
    count = int(np.prod([shape[a] for a in axes]))
    m, s = fp.mean_multiplier(si, so, count)
    info = np.iinfo(dtype)
    out = kernels.Output(m, s, zo, int(info.min), int(info.max), dtype)
    keep = bool(_options(op, ReducerOptions).KeepDims())
    return _emit(converter, "mean_int", [_expr(converter, inputs[0])],
                 lambda x: kernels.mean(x, axes, keep, input_zero_point=zi, output=out))


def _quantize(converter: Any, op: Any) -> Any:
    inputs, output = _io(converter, op)
    source, dtype = _dtype(converter, inputs[0]), _dtype(converter, output)
    (so, zo), = _scalar_params(converter, [output])
    if source == "float32":
        return _emit(converter, "quantize", [_expr(converter, inputs[0])],
                     lambda x: kernels.quantize(x, so, zo, dtype))
    (si, zi), = _scalar_params(converter, [inputs[0]])
    m, s = fp.quantize_multiplier(float(si) / float(so))
    info = np.iinfo(dtype)
    out = kernels.Output(m, s, zo, int(info.min), int(info.max), dtype)
    return _emit(converter, "requantize", [_expr(converter, inputs[0])],
                 lambda x: kernels.requantize(x, zi, out))


def _dequantize(converter: Any, op: Any) -> Any:
    inputs, _ = _io(converter, op)
    (si, zi), = _scalar_params(converter, [inputs[0]])
    return _emit(converter, "dequantize", [_expr(converter, inputs[0])],
                 lambda x: kernels.dequantize(x, si, zi))


def _concatenation(converter: Any, op: Any) -> Any:
    from tflite.ConcatenationOptions import ConcatenationOptions
    from tvm import relax

    inputs, output = _io(converter, op)
    options = _options(op, ConcatenationOptions)
    if _activation(options.FusedActivationFunction()) != "NONE":
        raise QuantizationError("a fused activation on a quantized CONCATENATION")
    (so, zo), = _scalar_params(converter, [output])
    dtype = _dtype(converter, output)
    parts = []
    for tensor in inputs:
        (si, zi), = _scalar_params(converter, [tensor])
        expr = _expr(converter, tensor)
        if dtype == "int16":
            # TFLite Micro (and TFLite) copy int16 inputs as they are, whatever their scales,
            # and only require zero points of 0: so do we. int8 inputs of another quantization
            # are still requantized below (TFLite Micro refuses them).
            if zi or zo:
                raise QuantizationError("int16 CONCATENATION needs zero points 0")
        elif fp.f32(si) != fp.f32(so) or zi != zo:
            m, s = fp.quantize_multiplier(float(si) / float(so))
            info = np.iinfo(dtype)
            out = kernels.Output(m, s, zo, int(info.min), int(info.max), dtype)
            expr = _emit(converter, "requantize", [expr],
                         lambda x, zi=zi, out=out: kernels.requantize(x, zi, out))
        parts.append(expr)
    return relax.op.concat(parts, axis=options.Axis())


def _batch_matmul(converter: Any, op: Any) -> Any:
    from tflite.BatchMatMulOptions import BatchMatMulOptions

    inputs, output = _io(converter, op)
    dtype = _dtype(converter, output)
    types = [_dtype(converter, t) for t in (inputs[0], inputs[1], output)]
    if types not in (["int8"] * 3, ["int16"] * 3):
        raise QuantizationError(f"BATCH_MATMUL of {types[0]} x {types[1]} → {types[2]} "
                                "(int8 or int16 throughout only)")
    (sl, zl), (sr, zr), (so, zo) = _scalar_params(converter, [inputs[0], inputs[1], output])
    options = _options(op, BatchMatMulOptions)
    m, s = fp.quantize_multiplier(float(fp.f32(sl) * fp.f32(sr)) / float(so))
    if dtype == "int8":
        out = kernels.Output(m, s, zo, -128, 127, dtype)
    else:
        # int16 (TFLite Micro's EvalInt16): int64 accumulator, the 64-bit
        # MultiplyByQuantizedMultiplier (multiplier reduced to Q0.15, one rounding shift).
        if zl or zr or zo:
            raise QuantizationError("int16 BATCH_MATMUL needs zero points 0")
        reduced, right_shift = fp.reduced_multiplier(m, s)
        if right_shift < 1:
            raise QuantizationError("int16 BATCH_MATMUL whose input scales' product is 2**14 "
                                    "times its output scale or more: use a larger output scale")
        out = kernels.Output(reduced, right_shift, 0, -32768, 32767, dtype, wide=True)
    adj_x, adj_y = bool(options.AdjX()), bool(options.AdjY())
    return _emit(converter, f"batch_matmul_{dtype}",
                 [_expr(converter, inputs[0]), _expr(converter, inputs[1])],
                 lambda a, b: kernels.batch_matmul(a, b, zl, zr, out, adj_x, adj_y))


def _reshape_to_output(converter: Any, op: Any) -> Any:
    """EXPAND_DIMS on integers: a reshape to the output's shape (a view; TVM's converter fails
    on it)."""
    from tvm import relax

    inputs, output = _io(converter, op)
    (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
    if fp.f32(si) != fp.f32(so) or zi != zo:
        raise QuantizationError("input and output quantization differ")
    shape = [int(d) for d in converter.get_tensor_shape(output)]
    return relax.op.reshape(_expr(converter, inputs[0]), shape)


def _non_dequantizing(stock: str) -> Callable[[Any, Any], Any]:
    """Operators that only move data: TVM's converter on the integers, after checking that
    input and output quantization agree (TFLite's requirement)."""
    def convert(converter: Any, op: Any) -> Any:
        inputs, output = _io(converter, op)
        (si, zi), (so, zo) = _scalar_params(converter, [inputs[0], output])
        if fp.f32(si) != fp.f32(so) or zi != zo:
            raise QuantizationError("input and output quantization differ")
        return getattr(converter, stock)(op)

    return convert


INTEGER_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "CONV_2D": _conv2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv2d,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "SUB": _sub,
    "MUL": _mul,
    "AVERAGE_POOL_2D": _average_pool2d,
    "MAX_POOL_2D": _max_pool2d,
    "PAD": _pad,
    "PADV2": _pad,
    "LOGISTIC": _logistic,
    "TANH": _tanh,
    "HARD_SWISH": _hard_swish,
    "LEAKY_RELU": _leaky_relu,
    "RELU": _relu,
    "RELU6": _relu6,
    "SOFTMAX": _softmax,
    "MEAN": _mean,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "CONCATENATION": _concatenation,
    "BATCH_MATMUL": _batch_matmul,
    "EXPAND_DIMS": _reshape_to_output,
    "STRIDED_SLICE": _non_dequantizing("convert_strided_slice"),
    "TRANSPOSE": _non_dequantizing("convert_transpose"),
    "SQUEEZE": _non_dequantizing("convert_squeeze"),
}
"""TFLite operator name → integer converter `(converter, op) -> relax expr`."""

DATA_MOVEMENT_OPERATORS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SPLIT", "SPLIT_V",
                                     "STRIDED_SLICE", "TRANSPOSE"})
"""Quantized operators that TVM's converter handles on the integers as they are."""
