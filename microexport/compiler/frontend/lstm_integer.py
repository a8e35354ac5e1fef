"""The int8 and 16x8 UNIDIRECTIONAL_SEQUENCE_LSTM as integer kernels, bit-exact with TFLite
Micro.

TFLite's converter writes an int8 LSTM with int8 input, output and hidden state, int8 per-tensor
weights, int32 gate biases and an int16 cell state whose scale is a power of two (16x8: int16
input, output and hidden state with zero points 0, int64 biases and accumulators). TFLite Micro
runs it (lstm_eval) in fixed point with scales of its own choosing, which this converter
reproduces:

* each gate's input is the input's fully connected layer (with the gate's bias) plus the hidden
  state's, both requantized to Q3.12 int16 (int8: the FULLY_CONNECTED micro-kernels over packed
  weights) and summed with int16 saturation;
* the gates' nonlinearities are TFLite's int16 sigmoid and tanh, which interpolate one uint16
  table (`fixedpoint.sigmoid_table_uint16`, kept in the C library: `library.SIGMOID_U16`),
  and their outputs are Q0.15;
* the cell state is forget·cell + input·candidate requantized to the cell scale, saturated and
  clipped (`kernels.lstm_cell`); the hidden state, the step's output, is
  sigmoid(output gate)·tanh(cell) requantized to the hidden state's parameters
  (`kernels.lstm_hidden`).

The time axis is unrolled (static sequence length): per step eight fully connected calls, one
cell and one hidden kernel call, the same functions for every step. The state starts from
TFLite Micro's reset values on every call: the hidden state at its zero point, the cell state
at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from microexport.compiler.frontend.recurrent import (
    _TFL_BIASES,
    _TFL_CELL_STATE,
    _TFL_INPUT,
    _TFL_INPUT_WEIGHTS,
    _TFL_LAYER_NORM,
    _TFL_OUTPUT_STATE,
    _TFL_PEEPHOLES,
    _TFL_PROJECTION_BIAS,
    _TFL_PROJECTION_WEIGHTS,
    _TFL_RECURRENT_WEIGHTS,
    _TFL_TANH,
    _lstm_options,
    _split,
)
from microexport.compiler.frontend.tflite_integer import (
    QuantizationError,
    _const,
    _dtype,
    _emit,
    _expr,
    fixed_tables,
    micro_kernels_enabled,
    quantization,
)
from microexport.compiler.integer import fixedpoint as fp
from microexport.compiler.integer import im2col, kernels, library
from microexport.compiler.quantization import TensorQuantization

NAME = "UNIDIRECTIONAL_SEQUENCE_LSTM"
_OPAQUE = 8  # TVM's OpPatternKind kOpaque: FuseOps leaves the call alone
_BIAS_TYPES = {"int8": "int32", "int16": "int64"}  # by activation type (16x8: int64 biases)
GATE_INPUT_SCALE = 2.0 ** -12  # Q3.12: what the fully connected layers produce
GATE_OUTPUT_SCALE = 2.0 ** -15  # Q0.15: what sigmoid and tanh produce
INT16 = (-32768, 32767)
_RANGES = {"int8": (-128, 127), "int16": INT16}


def unidirectional_sequence_lstm(converter: Any, op: Any) -> Any:
    """The int8 (or 16x8) UNIDIRECTIONAL_SEQUENCE_LSTM of a TFLite `converter` (TVM's
    OperatorConverter with microexport's additions) as integer kernels: the output sequence,
    of the input's type."""
    from tvm import relax

    tensors = list(converter.get_input_tensors(op)) + [None] * 24
    present = [t is not None and t.tensor_idx != -1 for t in tensors[:24]]
    _check_layout(converter, op, tensors, present)
    options = _lstm_options(op)
    x = tensors[_TFL_INPUT]
    x_q = quantization(x)
    hidden_q = quantization(tensors[_TFL_OUTPUT_STATE])
    cell_q = quantization(tensors[_TFL_CELL_STATE])
    assert x_q is not None and hidden_q is not None and cell_q is not None  # _check_layout
    x_scale, x_zero = x_q.per_tensor_scale, x_q.per_tensor_zero_point
    hidden_scale, hidden_zero = hidden_q.per_tensor_scale, hidden_q.per_tensor_zero_point
    cell_scale = cell_q.per_tensor_scale
    power, exact = fp.checked_log2(cell_scale)
    if not exact:
        raise QuantizationError(f"{NAME}: the cell state's scale {cell_scale:g} is not a power "
                                "of two (TFLite Micro requires one): requantize the model")

    activations = _dtype(converter, x)  # int8, or int16 (16x8: int64 accumulators)
    wide = activations == "int16"

    def layer(slot: int, bias_slot: int | None, scale: float, zero_point: int) -> _Projection:
        w = tensors[slot]
        q = _weight_quantization(w)
        bias = (np.asarray(converter.get_tensor_value(tensors[bias_slot]),
                           _BIAS_TYPES[activations]) if bias_slot is not None else None)
        return _Projection(np.asarray(converter.get_tensor_value(w), np.int8), bias,
                           zero_point, q.per_tensor_zero_point,
                           _int16_output(scale, q.per_tensor_scale, wide))

    # gates in TFLite's order: input, forget, cell, output; of the input and of the hidden state
    from_input = [layer(_TFL_INPUT_WEIGHTS[g], _TFL_BIASES[g], x_scale, x_zero)
                  for g in range(4)]
    from_hidden = [layer(_TFL_RECURRENT_WEIGHTS[g], None, hidden_scale, hidden_zero)
                   for g in range(4)]
    cell = _cell_params(options, cell_scale, power, hidden_scale, hidden_zero, activations)

    bb = converter.bb
    data = _expr(converter, x)
    shape = [int(d) for d in converter.get_tensor_shape(x)]
    time_axis = 0 if options.TimeMajor() else 1
    steps, batch = shape[time_axis], shape[1 - time_axis]
    units = int(converter.get_tensor_shape(tensors[_TFL_RECURRENT_WEIGHTS[0]])[0])
    table_args, tables = fixed_tables([library.SIGMOID_U16])
    hidden = relax.const(np.full((batch, units), hidden_zero, activations), activations)
    cell_state = relax.const(np.zeros((batch, units), np.int16), "int16")
    # the micro-kernels multiply int8 by int8; 16x8 layers are TE kernels
    kernels_of = _StepKernels(converter, micro_kernels_enabled() and not wide)
    outputs = []
    for part in _split(bb, data, steps, time_axis):
        step = bb.emit(relax.op.squeeze(part, axis=[time_axis]))
        for value in (part, step):  # one time step of the input: the input's quantization
            _note(converter, value, x_scale, x_zero)
        gates = []  # per gate: its input's and its hidden state's fully connected layer
        for gate in range(4):
            # The reset hidden state is its zero point, which the layer subtracts: its first
            # product is zero (a constant; a call on constants would be folded by running it).
            of_hidden = (relax.const(np.zeros((batch, units), np.int16), "int16")
                         if not outputs else kernels_of.fully_connected(
                             f"lstm_hidden_fc{gate}", hidden, from_hidden[gate]))
            pair = (kernels_of.fully_connected(f"lstm_input_fc{gate}", step, from_input[gate]),
                    of_hidden)
            for value in pair:
                _note(converter, value, GATE_INPUT_SCALE, 0)
            gates.append(pair)
        cell_state = kernels_of.call(
            "lstm_cell_int16", [*gates[0], *gates[1], *gates[2], cell_state, *table_args],
            lambda *t: kernels.lstm_cell(*t[:7], *tables(t[7:]), cell))
        _note(converter, cell_state, cell_scale, 0)
        hidden = kernels_of.call("lstm_hidden_int8", [*gates[3], cell_state, *table_args],
                                 lambda *t: kernels.lstm_hidden(*t[:3], *tables(t[3:]), cell))
        _note(converter, hidden, hidden_scale, hidden_zero)
        outputs.append(hidden)
    return relax.op.stack(outputs, axis=time_axis)


@dataclass(frozen=True)
class _Projection:
    """One gate's fully connected layer of the input or of the hidden state, to Q3.12."""

    weights: np.ndarray  # int8 [units, depth]
    bias: np.ndarray | None  # int32 [units] (the input's layer only)
    zero_point: int  # of the input it reads
    weight_zero_point: int
    output: kernels.Output


class _StepKernels:
    """Emits the kernel calls of each time step. A kernel's TIR function is built on its first
    call and called again by every later step (building it per step would cost a TE-to-TIR
    conversion each, only to be deduplicated); the constants of a layer are made once."""

    def __init__(self, converter: Any, micro_kernels: bool) -> None:
        self.converter = converter
        self.micro_kernels = micro_kernels
        self.built: dict[str, tuple[Any, Any]] = {}  # name → (function, output type)
        self.constants: dict[str, list[Any]] = {}  # fully connected layer → its constants

    def call(self, name: str, args: list[Any], build: Any) -> Any:
        """A call of the TE kernel `build(*args)`."""
        from tvm import relax

        bb = self.converter.bb
        if name not in self.built:
            value = _emit(self.converter, name, args, build)
            call = bb.lookup_binding(value)
            # Not fused with what follows (FuseOps would fuse the last step's state update
            # with the stacking of the outputs: every step's hidden state is then an input of
            # one kernel, 416 B more RAM on lstm_int8).
            bb.update_func(call.args[0], bb.get()[call.args[0]].with_attr("op_pattern",
                                                                          _OPAQUE))
            self.built[name] = (call.args[0], call.ty_args[0])
            return value
        function, output = self.built[name]
        return bb.emit(relax.call_tir(function, relax.Tuple(args), output))

    def fully_connected(self, name: str, data: Any, layer: _Projection) -> Any:
        """`layer` of `data` ([batch, depth] int8), Q3.12 int16: a micro-kernel call over
        packed weights (as int8 FULLY_CONNECTED), or the TE kernel within
        `te_kernels_only`."""
        from tvm import relax

        if not self.micro_kernels or layer.weight_zero_point != 0:
            if name not in self.constants:
                self.constants[name] = [_const(layer.weights)] + (
                    [_const(layer.bias)] if layer.bias is not None else [])
            weights, *bias = self.constants[name]
            return self.call(name, [data, weights, *bias], lambda x, w, *b: kernels.fully_connected(
                x, w, b[0] if b else None, layer.output, input_zero_point=layer.zero_point,
                weight_zero_point=layer.weight_zero_point))
        if name not in self.built:
            batch, depth = (int(d) for d in data.ty.shape)
            units = int(layer.weights.shape[0])
            packed = im2col.pack_rows(layer.weights, 4)
            bias = layer.bias
            if im2col.fc_reads_input_directly(depth):  # the zero point goes into the bias
                bias = im2col.fold_zero_point(layer.weights, bias, layer.zero_point)
            function = im2col.fully_connected(
                name, [batch, depth], packed, [batch, units], lambda m, s: layer.output,
                has_bias=bias is not None, per_channel=False, input_zero_point=layer.zero_point)
            self.built[name] = (self.converter.bb.add_func(function, name),
                                relax.TensorType([batch, units], "int16"))
            self.constants[name] = [_const(packed.data)] + (
                [_const(bias)] if bias is not None else [])
        function, output = self.built[name]
        return self.converter.bb.emit(
            relax.call_tir(function, relax.Tuple([data, *self.constants[name]]), output))


def _check_layout(converter: Any, op: Any, tensors: list[Any], present: list[bool]) -> None:
    """Refuse, in one line, what TFLite Micro's integer LSTM does not run either."""
    options = _lstm_options(op)
    if options.FusedActivationFunction() != _TFL_TANH:
        raise QuantizationError(f"{NAME} with fused activation "
                                f"{options.FusedActivationFunction()} (only TANH)")
    diagonal = getattr(options, "DiagonalRecurrentTensors", None)
    if diagonal is not None and diagonal():
        raise QuantizationError(f"{NAME} with diagonal recurrent tensors")
    missing = [slot for slot in (*_TFL_INPUT_WEIGHTS, *_TFL_RECURRENT_WEIGHTS, *_TFL_BIASES)
               if not present[slot]]
    if missing:
        raise QuantizationError(f"int8 {NAME} without inputs {missing} (coupled input-forget "
                                "gates: TFLite Micro's integer LSTM needs all four gates)")
    extras = [slot for slot in (*_TFL_PEEPHOLES, _TFL_PROJECTION_WEIGHTS, _TFL_PROJECTION_BIAS,
                                *_TFL_LAYER_NORM) if present[slot]]
    if extras:
        raise QuantizationError(f"int8 {NAME} with peepholes, projection or layer "
                                f"normalization (inputs {extras}): not supported")
    types = {"input": _dtype(converter, tensors[_TFL_INPUT]),
             "hidden state": _dtype(converter, tensors[_TFL_OUTPUT_STATE]),
             "output": _dtype(converter, converter.get_output_tensors(op)[0]),
             "cell state": _dtype(converter, tensors[_TFL_CELL_STATE]),
             "bias": _dtype(converter, tensors[_TFL_BIASES[0]])}
    activations = types["input"]
    wanted = {"input": activations, "hidden state": activations, "output": activations,
              "cell state": "int16", "bias": _BIAS_TYPES.get(activations, "int32")}
    for role, dtype in types.items():
        if dtype != wanted[role]:
            raise QuantizationError(f"{NAME} with an {dtype} {role} (the integer LSTM has int8 "
                                    "input, output and hidden state and int32 biases, or int16 "
                                    "ones and int64 biases (16x8), and an int16 cell state)")
    for slot in (*_TFL_INPUT_WEIGHTS, *_TFL_RECURRENT_WEIGHTS):
        if _dtype(converter, tensors[slot]) != "int8":
            raise QuantizationError(f"{NAME} with {_dtype(converter, tensors[slot])} weights "
                                    "(int8 only)")
        if converter.has_expr(tensors[slot].tensor_idx):
            raise QuantizationError(f"{NAME} with weights computed at run time")
    for slot, role in ((_TFL_INPUT, "input"), (_TFL_OUTPUT_STATE, "hidden state"),
                       (_TFL_CELL_STATE, "cell state")):
        q = quantization(tensors[slot])
        if q is None or q.scale.size != 1:
            raise QuantizationError(f"{NAME}: the {role} needs one scale and zero point")
    cell_q = quantization(tensors[_TFL_CELL_STATE])
    if cell_q is not None and cell_q.per_tensor_zero_point != 0:
        raise QuantizationError(f"{NAME}: the cell state's zero point must be 0")
    if activations == "int16":
        for slot, role in ((_TFL_INPUT, "input"), (_TFL_OUTPUT_STATE, "hidden state")):
            q = quantization(tensors[slot])
            if q is not None and q.per_tensor_zero_point != 0:
                raise QuantizationError(f"16x8 {NAME}: the {role}'s zero point must be 0")


def _weight_quantization(tensor: Any) -> Any:
    q = quantization(tensor)
    if q is None:
        raise QuantizationError(f"{NAME} with weights that have no quantization parameters")
    if q.scale.size != 1:
        raise QuantizationError(f"{NAME} with per-channel weights (TFLite Micro's integer LSTM "
                                "takes one scale per weight tensor)")
    return q


def _int16_output(input_scale: float, weight_scale: float, wide: bool) -> kernels.Output:
    """A gate's fully connected layer to Q3.12: TFLite Micro's multiplier of the float32
    product of the scales over 2**-12, clamped to int16; `wide` (16x8): an int64 accumulator
    rescaled with TFLite's reduced multiplier."""
    product = float(fp.f32(input_scale) * fp.f32(weight_scale))
    multiplier, shift = fp.quantize_multiplier(product / GATE_INPUT_SCALE)
    if wide:
        multiplier, shift = fp.reduced_multiplier(multiplier, shift)
    return kernels.Output(multiplier, shift, 0, *INT16, "int16", wide)


def _product_output(scale: float, output_scale: float, zero_point: int, low: int, high: int,
                    dtype: str) -> kernels.Output:
    """An elementwise product of a Q0.15 value and a value of `scale`, requantized to
    `output_scale` (TFLite Micro's CreateInterGateMulParams: scales multiplied in double)."""
    multiplier, shift = fp.quantize_multiplier(
        GATE_OUTPUT_SCALE * float(fp.f32(scale)) / float(fp.f32(output_scale)))
    return kernels.Output(multiplier, shift, zero_point, low, high, dtype)


def _cell_params(options: Any, cell_scale: float, power: int, hidden_scale: float,
                 hidden_zero: int, activations: str) -> kernels.LstmCell:
    clip = float(fp.f32(options.CellClip()))
    quantized_clip = None
    if clip > 0:  # C's conversion to int16 truncates toward zero
        quantized_clip = int(min(max(clip / float(fp.f32(cell_scale)), -32768.0), 32767.0))
    tanh = fp.lstm_tanh_scaling(power)
    return kernels.LstmCell(
        forget_times_cell=_product_output(cell_scale, cell_scale, 0, *INT16, "int16"),
        input_times_candidate=_product_output(GATE_OUTPUT_SCALE, cell_scale, 0, *INT16, "int16"),
        cell_clip=quantized_clip,
        cell_tanh=(tanh.multiplier, tanh.left_shift),
        output_times_tanh=_product_output(GATE_OUTPUT_SCALE, hidden_scale, hidden_zero,
                                          *_RANGES[activations], activations))


def _note(converter: Any, value: Any, scale: float, zero_point: int) -> None:
    """Record an LSTM intermediate's quantization (graph.json describes every tensor)."""
    converter.quantization.setdefault(value, TensorQuantization((scale,), (zero_point,), None))
