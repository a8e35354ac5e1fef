"""Recurrent layers TVM 0.27's frontends do not convert: ONNX `LSTM`, `GRU`, `RNN` and TFLite
float `UNIDIRECTIONAL_SEQUENCE_LSTM`, as Relax operators unrolled over the static sequence
length (matmul, add, multiply, sigmoid, tanh, split, stack, ...), which the pipeline then
legalizes, fuses and schedules like any other operator.

The input projection `X·Wᵀ + bias` of every time step is one matmul over the whole sequence;
each step then adds the recurrent projection `H·Rᵀ` of the previous hidden state, splits the
gates and updates the state. Weights are sliced and transposed with Relax operators on
constants, which constant folding turns into constants.

ONNX (`onnx_converters`): every attribute of opsets 1-22 an exporter writes: direction
(forward, reverse, bidirectional), the optional inputs B, sequence_lens (only when every
length is the full sequence: the compiled model has static shapes), initial_h, initial_c and
P (peepholes), `layout` 0 and 1, `clip`, `input_forget`, GRU's `linear_before_reset`, and
every activation the spec lists (with `activation_alpha` / `activation_beta`).

TFLite (`tflite_unidirectional_sequence_lstm`): float32, time-major or batch-major, full or
coupled input-forget gates (CIFG), peepholes, projection (with or without bias), cell and
projection clipping, TANH activation; the state starts at zero on every call (TFLite Micro
resets its variable tensors once, at initialisation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from microexport.errors import ModelError, UnsupportedOperator

ONNX_RECURRENT_OPS = ("LSTM", "GRU", "RNN")

# Gates per ONNX operator, in the order of W/R/B: LSTM i o f c, GRU z r h, RNN i.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Activations per direction and their defaults (ONNX spec).
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                        "RNN": ("Tanh",)}
_DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


def _relax() -> Any:
    from tvm import relax

    return relax


def _shape(expr: Any) -> tuple[int, ...]:
    """The static shape of a Relax tensor expression."""
    return tuple(int(v) for v in expr.ty.shape.values)


def _dtype(expr: Any) -> str:
    return str(expr.ty.dtype)


def _constant(expr: Any) -> Any:
    """The numpy value of a Relax constant, None for anything else."""
    from tvm.ir.expr import Constant  # relax.const() makes one (a GenericConst)

    return expr.value.numpy() if isinstance(expr, Constant) else None


def _take(bb: Any, expr: Any, index: int, axis: int) -> Any:
    """`expr[..., index, ...]` along `axis` (the axis removed)."""
    op = _relax().op
    part = op.strided_slice(expr, axes=[axis], begin=[index], end=[index + 1])
    return bb.emit(op.squeeze(part, axis=[axis]))


def _rows(bb: Any, expr: Any, begin: int, end: int) -> Any:
    """`expr[begin:end]` along the first axis."""
    op = _relax().op
    return bb.emit(op.strided_slice(expr, axes=[0], begin=[begin], end=[end]))


def _split(bb: Any, expr: Any, parts: int, axis: int) -> list[Any]:
    """`expr` split into `parts` equal parts along `axis` (the list of parts)."""
    relax = _relax()
    if parts == 1:
        return [expr]
    pieces = bb.emit(relax.op.split(expr, parts, axis=axis))
    return [bb.emit(relax.TupleGetItem(pieces, i)) for i in range(parts)]


def _add(bb: Any, *terms: Any) -> Any:
    op = _relax().op
    total = terms[0]
    for term in terms[1:]:
        total = bb.emit(op.add(total, term))
    return total


def _mul(bb: Any, a: Any, b: Any) -> Any:
    return bb.emit(_relax().op.multiply(a, b))


def _matmul_t(bb: Any, x: Any, w: Any) -> Any:
    """`x · wᵀ` for a 2-D `w` (the transpose folds when `w` is a constant)."""
    op = _relax().op
    return bb.emit(op.matmul(x, bb.emit(op.permute_dims(w, [1, 0]))))


def _clip(bb: Any, x: Any, clip: float | None) -> Any:
    if not clip:
        return x
    return bb.emit(_relax().op.clip(x, -clip, clip))


def _zeros(shape: tuple[int, ...], dtype: str) -> Any:
    import numpy as np

    return _relax().const(np.zeros(shape, dtype=dtype), dtype)


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------

# Activations taking alpha / beta, with the defaults of the ONNX operators of the same name
# (Affine and ScaledTanh have none there: identity scaling).
_ALPHA = {"affine": 1.0, "leakyrelu": 0.01, "thresholdedrelu": 1.0, "scaledtanh": 1.0,
          "hardsigmoid": 0.2, "elu": 1.0}
_BETA = {"affine": 0.0, "scaledtanh": 1.0, "hardsigmoid": 0.5}


def _activation(name: str, alpha: float, beta: float) -> Callable[[Any], Any] | None:
    """The Relax expression builder of an ONNX recurrent activation (name case-insensitive;
    None for an unknown one)."""
    relax = _relax()
    op = relax.op

    def const(value: float, x: Any) -> Any:
        return relax.const(value, _dtype(x))

    def leaky_relu(x: Any) -> Any:
        return op.where(op.greater_equal(x, const(0.0, x)), x, op.multiply(x, const(alpha, x)))

    def elu(x: Any) -> Any:
        negative = op.multiply(const(alpha, x), op.subtract(op.exp(x), const(1.0, x)))
        return op.where(op.greater_equal(x, const(0.0, x)), x, negative)

    table: dict[str, Callable[[Any], Any]] = {
        "sigmoid": op.sigmoid,
        "tanh": op.tanh,
        "relu": op.nn.relu,
        "affine": lambda x: op.add(op.multiply(x, const(alpha, x)), const(beta, x)),
        "leakyrelu": leaky_relu,
        "thresholdedrelu": lambda x: op.where(op.greater(x, const(alpha, x)), x,
                                              const(0.0, x)),
        "scaledtanh": lambda x: op.multiply(const(alpha, x),
                                            op.tanh(op.multiply(x, const(beta, x)))),
        "hardsigmoid": lambda x: op.clip(op.add(op.multiply(x, const(alpha, x)),
                                                const(beta, x)), 0.0, 1.0),
        "elu": elu,
        "softsign": lambda x: op.divide(x, op.add(const(1.0, x), op.abs(x))),
        "softplus": lambda x: op.log(op.add(const(1.0, x), op.exp(x))),
    }
    return table.get(name.lower())


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _onnx_activations(kind: str, attr: dict[str, Any], directions: int
                      ) -> list[list[Callable[[Any], Any]]]:
    """The activation functions of each direction (`activations`, or the defaults).
    `activation_alpha` / `activation_beta` are consumed in order by the functions that take
    them (as onnxruntime reads them); a function left without one takes its default."""
    per_direction = len(_DEFAULT_ACTIVATIONS[kind])
    names = [_decode(n) for n in attr.get("activations", ())]
    if not names:
        names = list(_DEFAULT_ACTIVATIONS[kind]) * directions
    if len(names) != per_direction * directions:
        raise ModelError(f"{kind} has {len(names)} activations where its {directions} "
                         f"direction(s) need {per_direction * directions}: fix the model")
    alphas = iter(float(a) for a in attr.get("activation_alpha", ()))
    betas = iter(float(b) for b in attr.get("activation_beta", ()))
    functions = []
    for name in names:
        key = name.lower()
        alpha = next(alphas, _ALPHA[key]) if key in _ALPHA else 0.0
        beta = next(betas, _BETA[key]) if key in _BETA else 0.0
        function = _activation(name, alpha, beta)
        if function is None:
            raise UnsupportedOperator(kind, f"activations={name}: not an activation of the "
                                      "ONNX recurrent operators")
        functions.append(function)
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _check_sequence_lens(kind: str, lens: Any, seq: int, batch: int) -> None:
    """Only full lengths are supported: the compiled model has static shapes."""
    if lens is None:
        return
    values = _constant(lens)
    if values is None:
        raise UnsupportedOperator(kind, "its sequence_lens input is not a constant: drop it, "
                                  "or freeze it to the full length with --constant")
    if values.size != batch or bool((values.reshape(-1) != seq).any()):
        raise UnsupportedOperator(kind, f"sequence_lens {values.reshape(-1).tolist()} shorter "
                                  f"than the sequence length {seq}: only full lengths are "
                                  "supported (pad the sequences, drop sequence_lens)")


def _onnx_recurrent(kind: str, bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    """ONNX LSTM / GRU / RNN as unrolled Relax: the tuple (Y, Y_h[, Y_c])."""
    relax = _relax()
    op = relax.op
    padded = list(inputs) + [None] * (8 - len(inputs))
    x, w, r, b, lens, init_h = padded[:6]
    init_c, peep = (padded[6], padded[7]) if kind == "LSTM" else (None, None)
    direction = _decode(attr.get("direction", b"forward"))
    if direction not in _DIRECTIONS:
        raise UnsupportedOperator(kind, f"direction={direction}: expected forward, reverse or "
                                  "bidirectional")
    layout = int(attr.get("layout", 0))
    if layout not in (0, 1):
        raise UnsupportedOperator(kind, f"layout={layout}: expected 0 or 1")
    clip = float(attr["clip"]) if "clip" in attr else None
    input_forget = bool(attr.get("input_forget", 0))
    linear_before_reset = bool(attr.get("linear_before_reset", 0))
    reverses = _DIRECTIONS[direction]
    directions = len(reverses)
    activations = _onnx_activations(kind, attr, directions)
    gates = _GATES[kind]

    dtype = _dtype(x)
    if layout == 1:  # (batch, seq, input) → (seq, batch, input)
        x = bb.emit(op.permute_dims(x, [1, 0, 2]))
    seq, batch, features = _shape(x)
    hidden = _shape(r)[-1]
    if "hidden_size" in attr and int(attr["hidden_size"]) != hidden:
        raise ModelError(f"{kind} has hidden_size={attr['hidden_size']} but R of shape "
                         f"{_shape(r)}: fix the model")
    if _shape(w) != (directions, gates * hidden, features):
        raise ModelError(f"{kind} has W of shape {_shape(w)} where direction={direction} with "
                         f"input size {features} and hidden size {hidden} needs "
                         f"{(directions, gates * hidden, features)}: fix the model")
    _check_sequence_lens(kind, lens, seq, batch)
    state_axis = 1 if layout == 1 else 0  # of initial_h / initial_c
    flat = bb.emit(op.reshape(x, (seq * batch, features)))

    ys, last_h, last_c = [], [], []
    for d, reverse in enumerate(reverses):
        w_d, r_d = _take(bb, w, d, 0), _take(bb, r, d, 0)
        if b is not None:
            b_d = _take(bb, b, d, 0)
            wb, rb = _rows(bb, b_d, 0, gates * hidden), _rows(bb, b_d, gates * hidden,
                                                              2 * gates * hidden)
        else:
            wb = rb = _zeros((gates * hidden,), dtype)
        if kind == "GRU" and linear_before_reset:
            # Rbh stays inside the reset gate's product: only Rbz, Rbr join the input bias.
            zr = _rows(bb, rb, 0, 2 * hidden)
            input_bias = _add(bb, wb, bb.emit(op.concat([zr, _zeros((hidden,), dtype)])))
        else:
            input_bias = _add(bb, wb, rb)
        projected = _add(bb, _matmul_t(bb, flat, w_d), input_bias)  # (seq·batch, gates·hidden)
        projected = bb.emit(op.reshape(projected, (seq, 1, batch, gates * hidden)))
        steps = [bb.emit(op.squeeze(s, axis=[0, 1])) for s in _split(bb, projected, seq, 0)]

        h = (_take(bb, init_h, d, state_axis) if init_h is not None
             else _zeros((batch, hidden), dtype))
        c = None
        if kind == "LSTM":
            c = (_take(bb, init_c, d, state_axis) if init_c is not None
                 else _zeros((batch, hidden), dtype))
        # Everything a step reads of the weights is computed once per direction: each step
        # computing its own transpose would fold into one more copy of the constant.
        weights = _step_weights(kind, bb, r_d, rb, None if peep is None else _take(bb, peep, d, 0),
                                hidden, linear_before_reset)
        cell = functools.partial(_STEPS[kind], bb, weights=weights, clip=clip,
                                 act=activations[d], input_forget=input_forget)
        outputs: list[Any] = [None] * seq
        for t in (reversed(range(seq)) if reverse else range(seq)):
            h, c = cell(steps[t], h, c)
            outputs[t] = h
        ys.append(bb.emit(op.stack(outputs, axis=0)))  # (seq, batch, hidden)
        last_h.append(h)
        last_c.append(c)

    y = bb.emit(op.stack(ys, axis=1))  # (seq, directions, batch, hidden)
    y_h = bb.emit(op.stack(last_h, axis=0))  # (directions, batch, hidden)
    results = [y, y_h]
    if kind == "LSTM":
        results.append(bb.emit(op.stack(last_c, axis=0)))
    if layout == 1:
        results = [bb.emit(op.permute_dims(results[0], [2, 0, 1, 3]))] + [
            bb.emit(op.permute_dims(v, [1, 0, 2])) for v in results[1:]]
    return relax.Tuple(results)


def _transposed(bb: Any, w: Any) -> Any:
    return bb.emit(_relax().op.permute_dims(w, [1, 0]))


def _columns(bb: Any, expr: Any, begin: int, end: int) -> Any:
    """`expr[:, begin:end]`."""
    return bb.emit(_relax().op.strided_slice(expr, axes=[1], begin=[begin], end=[end]))


def _step_weights(kind: str, bb: Any, r: Any, rb: Any, peep: Any, hidden: int,
                  linear_before_reset: bool) -> dict[str, Any]:
    """What the steps of one direction read: transposed recurrent weights (GRU: split into
    the z/r gates and the h gate), LSTM peepholes, GRU's Rbh when it stays inside the reset
    gate's product."""
    r_t = _transposed(bb, r)  # (hidden, gates·hidden)
    if kind == "GRU":
        weights = {"r_zr": _columns(bb, r_t, 0, 2 * hidden),
                   "r_h": _columns(bb, r_t, 2 * hidden, 3 * hidden)}
        if linear_before_reset:
            weights["rb_h"] = _rows(bb, rb, 2 * hidden, 3 * hidden)
        return weights
    weights = {"r": r_t}
    if peep is not None:  # P holds the input, output, forget peepholes
        weights.update(zip(("p_i", "p_o", "p_f"),
                           (_rows(bb, peep, k * hidden, (k + 1) * hidden) for k in range(3)),
                           strict=True))
    return weights


def _matmul(bb: Any, x: Any, w: Any) -> Any:
    return bb.emit(_relax().op.matmul(x, w))


def _lstm_step(bb: Any, x: Any, h: Any, c: Any, *, weights: dict[str, Any],
               clip: float | None, act: list[Callable[[Any], Any]],
               input_forget: bool) -> tuple[Any, Any]:
    """One ONNX LSTM step (gates i o f c; `x` holds X·Wᵀ + Wb + Rb)."""
    f_act, g_act, h_act = act
    i, o, f, g = _split(bb, _add(bb, x, _matmul(bb, h, weights["r"])), 4, 1)
    if "p_i" in weights:
        i = _add(bb, i, _mul(bb, weights["p_i"], c))
        f = _add(bb, f, _mul(bb, weights["p_f"], c))
    i = bb.emit(f_act(_clip(bb, i, clip)))
    if input_forget:  # coupled gates, as onnxruntime couples them: f = 1 - i
        f = bb.emit(_relax().op.subtract(_relax().const(1.0, _dtype(i)), i))
    else:
        f = bb.emit(f_act(_clip(bb, f, clip)))
    g = bb.emit(g_act(_clip(bb, g, clip)))
    c = _add(bb, _mul(bb, f, c), _mul(bb, i, g))
    if "p_o" in weights:
        o = _add(bb, o, _mul(bb, weights["p_o"], c))
    o = bb.emit(f_act(_clip(bb, o, clip)))
    return _mul(bb, o, bb.emit(h_act(c))), c


def _gru_step(bb: Any, x: Any, h: Any, c: Any, *, weights: dict[str, Any],
              clip: float | None, act: list[Callable[[Any], Any]],
              input_forget: bool) -> tuple[Any, Any]:
    """One ONNX GRU step (gates z r h; `x` holds X·Wᵀ + Wb + Rbz,Rbr[,Rbh])."""
    del c, input_forget
    relax = _relax()
    f_act, g_act = act
    x_z, x_r, x_h = _split(bb, x, 3, 1)
    rec_z, rec_r = _split(bb, _matmul(bb, h, weights["r_zr"]), 2, 1)
    z = bb.emit(f_act(_clip(bb, _add(bb, x_z, rec_z), clip)))
    reset = bb.emit(f_act(_clip(bb, _add(bb, x_r, rec_r), clip)))
    if "rb_h" in weights:  # linear_before_reset
        rec_h = _add(bb, _matmul(bb, h, weights["r_h"]), weights["rb_h"])
        candidate = _add(bb, x_h, _mul(bb, reset, rec_h))
    else:
        candidate = _add(bb, x_h, _matmul(bb, _mul(bb, reset, h), weights["r_h"]))
    candidate = bb.emit(g_act(_clip(bb, candidate, clip)))
    keep = bb.emit(relax.op.subtract(relax.const(1.0, _dtype(z)), z))
    return _add(bb, _mul(bb, keep, candidate), _mul(bb, z, h)), None


def _rnn_step(bb: Any, x: Any, h: Any, c: Any, *, weights: dict[str, Any],
              clip: float | None, act: list[Callable[[Any], Any]],
              input_forget: bool) -> tuple[Any, Any]:
    """One ONNX RNN step (`x` holds X·Wᵀ + Wb + Rb)."""
    del c, input_forget
    return bb.emit(act[0](_clip(bb, _add(bb, x, _matmul(bb, h, weights["r"])), clip))), None


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


@functools.cache
def onnx_converters() -> dict[str, type]:
    """Converter classes for TVM's Relax ONNX frontend (`OnnxOpConverter` subclasses, one
    implementation for every opset) of the operators in `ONNX_RECURRENT_OPS`."""
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    def converter(kind: str) -> type:
        def impl(cls: type, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            del cls, params
            return _onnx_recurrent(kind, bb, list(inputs), attr)

        return type(kind, (OnnxOpConverter,), {"_impl_v1": classmethod(impl),
                                                "__doc__": f"ONNX {kind}, unrolled."})

    return {kind: converter(kind) for kind in ONNX_RECURRENT_OPS}


# --------------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------------

# UNIDIRECTIONAL_SEQUENCE_LSTM input tensor indices (TFLite's lstm_shared.h).
_TFL_INPUT = 0
_TFL_INPUT_WEIGHTS = (1, 2, 3, 4)  # input, forget, cell, output gates
_TFL_RECURRENT_WEIGHTS = (5, 6, 7, 8)
_TFL_PEEPHOLES = (9, 10, 11)  # input, forget, output
_TFL_BIASES = (12, 13, 14, 15)
_TFL_PROJECTION_WEIGHTS, _TFL_PROJECTION_BIAS = 16, 17
_TFL_OUTPUT_STATE, _TFL_CELL_STATE = 18, 19
_TFL_LAYER_NORM = (20, 21, 22, 23)
_TFL_TANH = 4  # ActivationFunctionType.TANH


def _lstm_options(op: Any) -> Any:
    from tflite.UnidirectionalSequenceLSTMOptions import UnidirectionalSequenceLSTMOptions

    table = op.BuiltinOptions()
    if table is None:
        raise ModelError("UNIDIRECTIONAL_SEQUENCE_LSTM has no options table: fix the model")
    options = UnidirectionalSequenceLSTMOptions()
    options.Init(table.Bytes, table.Pos)
    return options


def tflite_unidirectional_sequence_lstm(converter: Any, op: Any) -> Any:
    """Float32 UNIDIRECTIONAL_SEQUENCE_LSTM for TVM's Relax TFLite frontend (`converter` is its
    OperatorConverter): the output sequence, unrolled over the static time axis."""
    relax = _relax()
    rop = relax.op
    bb = converter.bb
    name = "UNIDIRECTIONAL_SEQUENCE_LSTM"
    tensors = converter.get_input_tensors(op)
    tensors = list(tensors) + [None] * (24 - len(tensors))

    def present(index: int) -> bool:
        return tensors[index] is not None and tensors[index].tensor_idx != -1

    def expr(index: int) -> Any:
        return converter.get_tensor_expr(tensors[index])

    options = _lstm_options(op)
    if options.FusedActivationFunction() != _TFL_TANH:
        raise UnsupportedOperator(name, f"fused activation {options.FusedActivationFunction()}"
                                  ": only TANH is supported")
    if any(present(i) for i in _TFL_LAYER_NORM):
        raise UnsupportedOperator(name, "layer normalization is not supported")
    diagonal = getattr(options, "DiagonalRecurrentTensors", None)
    if diagonal is not None and diagonal():
        raise UnsupportedOperator(name, "diagonal_recurrent_tensors is not supported")
    x = expr(_TFL_INPUT)
    if _dtype(x) != "float32":
        raise UnsupportedOperator(name, f"input of type {_dtype(x)}: only float32 is supported")
    cifg = not present(_TFL_INPUT_WEIGHTS[0])
    if cifg and present(_TFL_RECURRENT_WEIGHTS[0]):
        raise ModelError(f"{name} has recurrent_to_input weights but no input_to_input "
                         "weights: fix the model")
    cell_clip, proj_clip = float(options.CellClip()), float(options.ProjClip())

    if options.TimeMajor():  # (time, batch, features)
        steps_count, batch, features = _shape(x)
    else:
        batch, steps_count, features = _shape(x)
        x = bb.emit(rop.permute_dims(x, [1, 0, 2]))
    gate_ids = [g for g in range(4) if not (cifg and g == 0)]
    weights = [expr(_TFL_INPUT_WEIGHTS[g]) for g in gate_ids]
    recurrent = [expr(_TFL_RECURRENT_WEIGHTS[g]) for g in gate_ids]
    units = _shape(weights[0])[0]
    biases = [expr(_TFL_BIASES[g]) if present(_TFL_BIASES[g]) else _zeros((units,), "float32")
              for g in gate_ids]
    w_all = bb.emit(rop.concat(weights, axis=0))  # (gates·units, features)
    r_all = bb.emit(rop.concat(recurrent, axis=0))  # (gates·units, outputs)
    b_all = bb.emit(rop.concat(biases, axis=0))
    outputs_size = _shape(r_all)[1]
    peep = {g: expr(_TFL_PEEPHOLES[k]) for k, g in enumerate((0, 1, 3))
            if present(_TFL_PEEPHOLES[k])}
    proj_w = expr(_TFL_PROJECTION_WEIGHTS) if present(_TFL_PROJECTION_WEIGHTS) else None
    proj_b = expr(_TFL_PROJECTION_BIAS) if present(_TFL_PROJECTION_BIAS) else None

    r_t = _transposed(bb, r_all)  # once: every step transposing it would fold into a copy
    proj_t = None if proj_w is None else _transposed(bb, proj_w)
    flat = bb.emit(rop.reshape(x, (steps_count * batch, features)))
    projected = _add(bb, _matmul_t(bb, flat, w_all), b_all)
    projected = bb.emit(rop.reshape(projected, (steps_count, 1, batch, len(gate_ids) * units)))
    steps = [bb.emit(rop.squeeze(s, axis=[0, 1])) for s in _split(bb, projected, steps_count, 0)]

    def state(index: int, size: int) -> Any:
        # A variable tensor: zero-initialised (TFLite Micro resets it at initialisation).
        tensor = tensors[index]
        if tensor is not None and tensor.tensor_idx != -1 and converter.has_expr(
                tensor.tensor_idx):
            return converter.get_expr(tensor.tensor_idx)
        return _zeros((batch, size), "float32")

    h, c = state(_TFL_OUTPUT_STATE, outputs_size), state(_TFL_CELL_STATE, units)
    one = relax.const(1.0, "float32")
    outputs = []
    for step in steps:
        pre = dict(zip(gate_ids, _split(bb, _add(bb, step, _matmul(bb, h, r_t)),
                                        len(gate_ids), 1), strict=True))
        for g in (0, 1):
            if g in pre and g in peep:
                pre[g] = _add(bb, pre[g], _mul(bb, peep[g], c))
        forget = bb.emit(rop.sigmoid(pre[1]))
        gate_in = (bb.emit(rop.subtract(one, forget)) if cifg
                   else bb.emit(rop.sigmoid(pre[0])))
        candidate = bb.emit(rop.tanh(pre[2]))
        c = _clip(bb, _add(bb, _mul(bb, forget, c), _mul(bb, gate_in, candidate)), cell_clip)
        if 3 in peep:
            pre[3] = _add(bb, pre[3], _mul(bb, peep[3], c))
        h = _mul(bb, bb.emit(rop.sigmoid(pre[3])), bb.emit(rop.tanh(c)))
        if proj_t is not None:
            h = _matmul(bb, h, proj_t)
            if proj_b is not None:
                h = _add(bb, h, proj_b)
            h = _clip(bb, h, proj_clip)
        outputs.append(h)
    axis = 0 if options.TimeMajor() else 1
    return bb.emit(rop.stack(outputs, axis=axis))
