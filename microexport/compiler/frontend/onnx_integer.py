"""Quantized ONNX models (QDQ and QLinear operators) imported as integer kernels.

onnxruntime's quantization tool writes a quantized operator as a float operator between
DequantizeLinear and QuantizeLinear nodes (QDQ format), or as a QLinear operator (QOperator
format). TVM's frontend computes both in float32 (dequantize → float op → quantize). Before TVM's
import, `rewrite_integer` finds these patterns on the ONNX graph:

    DequantizeLinear(x_q) ─┐
    DequantizeLinear(w_q) ─┼─ Conv / MatMul / Gemm [→ Relu / Clip] → QuantizeLinear → y_q
    DequantizeLinear(b)  ──┘

(and Add, Mul, Concat, AveragePool, MaxPool, GlobalAveragePool, Softmax, BatchNormalization,
standalone Relu/Clip, elementwise functions of one input as 256-entry tables computed at
compile time; QLinearConv, QLinearMatMul, com.microsoft's QLinearAdd / QLinearAveragePool /
QLinearGlobalAveragePool / QGemm),
and replaces each by one node of the `INTEGER_DOMAIN` whose converter (installed by
`integer_converters` while TVM's frontend runs) emits the integer TE kernels of
`compiler.integer.kernels`: int32 accumulation, requantization with fixed-point multipliers and
shifts (`compiler.integer.fixedpoint`). The QuantizeLinear / DequantizeLinear nodes that feed or
read these integer nodes (the float model inputs and outputs) become integer quantize and
dequantize kernels. Data-movement operators between a DequantizeLinear and a QuantizeLinear of
the same parameters (Flatten, Reshape, …) run on the integers. Everything else stays on TVM's
float path, as before.

ONNX is NCHW and the kernels are NHWC: constant weights are transposed at compile time, and the
convolution and pooling kernels read their NCHW input and write their NCHW output through
transposes inside the kernel (the C schedule inlines them into the loops: no extra buffer).
Results are within one quantization step of onnxruntime, whose kernels round differently
(float requantization, round half to even).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from microexport.compiler.quantization import TensorQuantization
from microexport.errors import ModelError

if TYPE_CHECKING:
    import onnx

    from microexport.compiler.integer import fixedpoint as fp

INTEGER_DOMAIN = "ai.microexport.integer"
"""The domain of the nodes `rewrite_integer` puts in place of quantized patterns."""
INTEGER_OP = "IntegerKernel"

_DEFAULT_DOMAINS = ("", "ai.onnx")
_MICROSOFT = "com.microsoft"
_QUANTIZED_TYPES = ("int8", "uint8")
# Operators that only move elements: on the integers when their input's DequantizeLinear and
# their output's QuantizeLinear have the same parameters.
_DATA_MOVEMENT = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                            "Identity"})
# Elementwise functions of one input: between DequantizeLinear and QuantizeLinear, a table of
# the output for each of the 256 input values, computed at compile time by onnx's reference
# evaluator on the dequantized values and quantized as QuantizeLinear does.
_TABULATED = frozenset({"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu",
                        "Selu", "Celu", "Softplus", "Softsign", "Exp", "Erf", "Gelu", "Mish",
                        "Abs", "Neg", "Sqrt", "Reciprocal", "Log", "ThresholdedRelu", "Sin",
                        "Cos"})

Emit = Callable[[Any, list[Any]], Any]  # (block builder, relax inputs) -> relax expr


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an activation: float32 scale, zero point, integer type."""

    scale: float
    zero_point: int
    dtype: str

    def tensor_quantization(self) -> TensorQuantization:
        return TensorQuantization((self.scale,), (self.zero_point,), None)


@dataclass(frozen=True)
class Weights:
    """A constant quantized tensor: its stored integers, scales and zero points (per tensor,
    or per channel along `axis`)."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class IntegerGraph:
    """What `rewrite_integer` found: the emitter of each integer node, by key, and the
    quantization of each node's inputs and then of its output (None: a float value)."""

    emitters: dict[str, Emit]
    quantization: dict[str, tuple[TensorQuantization | None, ...]]

    def __bool__(self) -> bool:
        return bool(self.emitters)


# --------------------------------------------------------------------------------------------
# the graph rewrite
# --------------------------------------------------------------------------------------------

def rewrite_integer(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
                    ) -> tuple[onnx.ModelProto, IntegerGraph]:
    """A copy of `model` in which the quantized patterns described above are integer nodes,
    and their emitters. `input_shapes` are the static shapes of the model inputs (the kernels
    need static shapes). The model is returned unchanged (and no emitters) when nothing
    matches."""
    import onnx

    if not any(node.op_type in ("DequantizeLinear", "QLinearConv", "QLinearMatMul")
               or node.domain == _MICROSOFT for node in model.graph.node):
        return model, IntegerGraph({}, {})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in input_shapes and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in input_shapes[value.name]:
                shape.dim.add().dim_value = int(size)
    rewriter = _Rewriter(out)
    rewriter.run()
    if not rewriter.emitters:
        return model, IntegerGraph({}, {})
    if not any(o.domain == INTEGER_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(INTEGER_DOMAIN, 1))
    return out, IntegerGraph(rewriter.emitters, rewriter.quantization)


# While `integer_converters` is active: the Relax values the emitters create that stand for
# quantized tensors (weights and biases, intermediates), and their quantization. The emitters are
# built before TVM's import, which calls them; this is how they hand their values back.
_NOTED: contextvars.ContextVar[dict[Any, TensorQuantization] | None] = contextvars.ContextVar(
    "integer_quantization", default=None)


@contextlib.contextmanager
def integer_converters(graph: IntegerGraph) -> Iterator[dict[Any, TensorQuantization]]:
    """While active, TVM's ONNX frontend converts `INTEGER_OP` nodes with `graph`'s emitters.
    Yields the dict it fills with the quantization of the Relax values (`Var`s and `Constant`s)
    that stand for integer tensors, for `finish_import` (compiler/quantization.py).

    The frontend looks its converter table up through the module function `_get_convert_map`
    on every node, so the table is extended by replacing that function for the duration (the
    import runs in one thread)."""
    from tvm import ir
    from tvm.relax.frontend.onnx import onnx_frontend

    found: dict[Any, TensorQuantization] = {}
    if not graph:
        yield found
        return
    original = onnx_frontend._get_convert_map
    emitters = graph.emitters

    class IntegerKernel(onnx_frontend.OnnxOpConverter):
        """An integer node of `rewrite_integer`: its emitter builds the kernels."""

        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            key = attr["key"].decode() if isinstance(attr["key"], bytes) else attr["key"]
            # A stock converter's result (MaxPool or Transpose on the integers) is a call the
            # frontend binds only where it is used: bound here, to carry its quantization.
            args = [bb.emit(value) if isinstance(value, ir.Call) else value
                    for value in (inputs[i] for i in range(len(inputs)))]
            result = emitters[key](bb, args)
            if isinstance(result, ir.Call):
                result = bb.emit(result)
            for value, q in zip([*args, result], graph.quantization[key], strict=True):
                if q is not None and isinstance(value, ir.Var | ir.Constant):
                    found.setdefault(value, q)
            return result

    def extended() -> dict[str, Any]:
        table = dict(original())
        table[INTEGER_OP] = IntegerKernel
        return table

    onnx_frontend._get_convert_map = extended
    noted = _NOTED.set(found)
    try:
        yield found
    finally:
        _NOTED.reset(noted)
        onnx_frontend._get_convert_map = original


def output_steps(path: Any) -> dict[str, float]:
    """The quantization step (scale) of each output of the ONNX model at `path` computed by a
    per-tensor DequantizeLinear with a constant scale: what one rounding difference from
    onnxruntime's kernels amounts to in that float output."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable here: no steps (the import says why)
        return {}
    scales = {init.name: init for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    steps = {}
    for value in model.graph.output:
        node = producers.get(value.name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2 or \
                node.input[1] not in scales:
            continue
        scale = numpy_helper.to_array(scales[node.input[1]])
        if scale.size == 1 and np.isfinite(scale).all():
            steps[value.name] = float(scale.reshape(-1)[0])
    return steps


class _Unmatched(Exception):
    """The pattern at hand is not one the integer path takes (it stays on the float path)."""


class _Rewriter:
    """One pass over a graph: matches, integer nodes, and the cleanup of orphaned Q/DQ."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        for init in self.graph.initializer:
            with contextlib.suppress(Exception):
                self.consts[init.name] = numpy_helper.to_array(init)
        # The node objects, held for the whole rewrite: nodes are told apart by id().
        self.nodes = list(self.graph.node)
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in self.graph.output}
        self.shapes = _inferred_shapes(model)
        self.emitters: dict[str, Emit] = {}
        self.quantization: dict[str, tuple[TensorQuantization | None, ...]] = {}
        self.removed: set[int] = set()  # id() of replaced nodes
        self.replacement: dict[int, list[Any]] = {}  # id(node) -> nodes in its place
        self.integer_values: set[str] = set()  # values the integer nodes produce or read
        self.counter = itertools.count()

    # -- driver ------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.nodes:
            if id(node) in self.removed:
                continue
            try:
                self._match(node)
            except (_Unmatched, KeyError, ValueError, TypeError, IndexError):
                # Not a pattern of ours, or parameters we cannot read (an unknown element
                # type, a malformed attribute): TVM's frontend converts it (or says why not).
                continue
        if not self.emitters:
            return
        self._edges()
        nodes = []
        for node in self.nodes:
            nodes.extend(self.replacement.get(id(node), []))
            if id(node) not in self.removed:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._drop_orphans()

    def _match(self, node: Any) -> None:
        op, domain = node.op_type, node.domain
        if domain in _DEFAULT_DOMAINS:
            if op == "Conv":
                self._qdq_conv(node)
            elif op in ("MatMul", "Gemm"):
                self._qdq_dense(node)
            elif op == "Add":
                self._qdq_add(node)
            elif op == "Mul":
                self._qdq_mul(node)
            elif op == "Concat":
                self._qdq_concat(node)
            elif op in ("AveragePool", "MaxPool", "GlobalAveragePool"):
                self._qdq_pool(node)
            elif op in ("Relu", "Clip"):
                self._qdq_activation(node)
            elif op in _DATA_MOVEMENT:
                self._qdq_data_movement(node)
            elif op in _TABULATED:
                self._qdq_table(node)
            elif op == "Softmax":
                self._qdq_softmax(node)
            elif op == "BatchNormalization":
                self._qdq_batch_norm(node)
            elif op == "QLinearConv":
                self._qlinear_conv(node)
            elif op == "QLinearMatMul":
                self._qlinear_matmul(node)
        elif domain == _MICROSOFT:
            if op == "QLinearAdd":
                self._qlinear_add(node)
            elif op in ("QLinearAveragePool", "QLinearGlobalAveragePool"):
                self._qlinear_pool(node)
            elif op == "QGemm":
                self._qgemm(node)

    # -- reading the graph -------------------------------------------------------------------

    def _const(self, name: str) -> np.ndarray:
        if not name or name not in self.consts:
            raise _Unmatched
        return self.consts[name]

    def _scalar_q(self, scale_name: str, zero_name: str, dtype: str | None = None) -> QParams:
        """Per-tensor parameters from constant scale and zero-point inputs."""
        scale = self._const(scale_name)
        if scale.size != 1 or scale.dtype != np.float32:
            raise _Unmatched
        if zero_name:
            zero = self._const(zero_name)
            if zero.size != 1 or str(zero.dtype) not in _QUANTIZED_TYPES:
                raise _Unmatched
            zp, dtype = int(zero.reshape(-1)[0]), str(zero.dtype)
        else:
            zp, dtype = 0, dtype or "uint8"
        if dtype not in _QUANTIZED_TYPES:
            raise _Unmatched
        value = float(scale.reshape(-1)[0])
        if not value > 0 or not np.isfinite(value):
            raise _Unmatched
        return QParams(value, zp, dtype)

    def _only_consumer(self, name: str) -> Any:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            raise _Unmatched
        return users[0]

    def _dequantized(self, name: str) -> tuple[str, QParams, Any]:
        """The quantized source of a float activation computed by a per-tensor
        DequantizeLinear: (source name, parameters, the DequantizeLinear node)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or \
                node.domain not in _DEFAULT_DOMAINS or id(node) in self.removed:
            raise _Unmatched
        source = node.input[0]
        zero = node.input[2] if len(node.input) > 2 else ""
        q = self._scalar_q(node.input[1], zero, self._dtype_of(source))
        if self._dtype_of(source) not in (None, q.dtype):
            raise _Unmatched
        return source, q, node

    def _dtype_of(self, name: str) -> str | None:
        if name in self.consts:
            return str(self.consts[name].dtype)
        producer = self.producer.get(name)
        if producer is not None and producer.op_type == "QuantizeLinear" and \
                len(producer.input) > 2 and producer.input[2] in self.consts:
            return str(self.consts[producer.input[2]].dtype)
        return self.shapes.get(name, (None, None))[1]

    def _dequantized_weights(self, name: str) -> Weights:
        """A float constant computed by DequantizeLinear of a constant (weights, bias)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or \
                node.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        values = self._const(node.input[0])
        scale = self._const(node.input[1]).astype(np.float32).reshape(-1)
        zero_name = node.input[2] if len(node.input) > 2 else ""
        zero = (self._const(zero_name).astype(np.int64).reshape(-1) if zero_name
                else np.zeros(1, np.int64))
        axis = _attr(node, "axis", 1)
        if values.ndim:
            axis %= values.ndim
        if str(values.dtype) not in (*_QUANTIZED_TYPES, "int32") or \
                _attr(node, "block_size", 0):
            raise _Unmatched
        return Weights(values, scale, zero, axis)

    def _bias_input(self, name: str) -> Weights | None:
        """A bias: DequantizeLinear of int32 constants (onnxruntime's), or float constants."""
        if not name:
            return None
        if name in self.consts:
            values = self.consts[name]
            if values.dtype != np.float32:
                raise _Unmatched
            return Weights(values, np.ones(1, np.float32), np.zeros(1, np.int64), 0)
        return self._dequantized_weights(name)

    def _quantized_output(self, name: str) -> tuple[Any, QParams, Any | None, tuple[float, float]]:
        """The QuantizeLinear reading the float result `name` (through an optional Relu or
        Clip): (the Q node, its parameters, the activation node or None, the activation's
        float range)."""
        user = self._only_consumer(name)
        activation = None
        bounds = (-np.inf, np.inf)
        if user.op_type in ("Relu", "Clip") and user.domain in _DEFAULT_DOMAINS:
            activation = user
            bounds = self._activation_bounds(user)
            user = self._only_consumer(user.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS or \
                id(user) in self.removed:
            raise _Unmatched
        if _attr(user, "saturate", 1) != 1 or _attr(user, "block_size", 0):
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q = self._scalar_q(user.input[1], zero, _output_dtype(user))
        return user, q, activation, bounds

    def _activation_bounds(self, node: Any) -> tuple[float, float]:
        if node.op_type == "Relu":
            return (0.0, np.inf)
        low, high = _attr(node, "min", -np.inf), _attr(node, "max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            low = float(self._const(node.input[1]).reshape(-1)[0])
        if len(node.input) > 2 and node.input[2]:
            high = float(self._const(node.input[2]).reshape(-1)[0])
        return (float(low), float(high))

    # -- replacing ---------------------------------------------------------------------------

    def _replace(self, first: Any, removed: Sequence[Any], inputs: list[str], output: str,
                 emit: Emit, what: str, params: Sequence[QParams | None]) -> None:
        """Put an integer node computing `output` from `inputs` in place of `first`, and drop
        the nodes `removed` (the float operator, its activation, its QuantizeLinear).
        `params` are the parameters of `inputs` and then of `output` (None: a float value)."""
        from onnx import helper

        key = f"{what}_{next(self.counter)}"
        self.emitters[key] = emit
        self.quantization[key] = tuple(None if q is None else q.tensor_quantization()
                                       for q in params)
        node = helper.make_node(INTEGER_OP, inputs, [output], name=f"{output}__{what}",
                                domain=INTEGER_DOMAIN, key=key)
        self.replacement.setdefault(id(first), []).append(node)
        for old in removed:
            self.removed.add(id(old))
        self.integer_values.update(inputs)
        self.integer_values.add(output)

    def _clamp(self, q: QParams, bounds: tuple[float, float]) -> tuple[int, int]:
        """The integer range of an output after an activation clamping to `bounds`."""
        from microexport.compiler.integer import fixedpoint as fp

        info = np.iinfo(q.dtype)
        low, high = int(info.min), int(info.max)
        if bounds[0] > -np.inf:
            low = max(low, fp.quantize_value(bounds[0], q.scale, q.zero_point))
        if bounds[1] < np.inf:
            high = min(high, fp.quantize_value(bounds[1], q.scale, q.zero_point))
        if low > high:
            raise _Unmatched
        return low, high

    # -- QDQ patterns ------------------------------------------------------------------------

    def _qdq_conv(self, node: Any) -> None:
        if len(node.input) < 2:
            raise _Unmatched
        source, q_in, _ = self._dequantized(node.input[0])
        weights = self._dequantized_weights(node.input[1])
        bias = self._bias_input(node.input[2]) if len(node.input) > 2 else None
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        emit = self._conv_emitter(node, q_in, weights, bias, q_out, bounds)
        self._replace(node, [node, q_node, *([activation] if activation else [])], [source],
                      q_node.output[0], emit, "conv", [q_in, q_out])

    def _qlinear_conv(self, node: Any) -> None:
        x, sx, zx, w, sw, zw, sy, zy = (list(node.input) + [""] * 9)[:8]
        q_in = self._scalar_q(sx, zx, self._dtype_of(x))
        q_out = self._scalar_q(sy, zy)
        weights = self._qlinear_weights(w, sw, zw, 0)
        bias = None
        if len(node.input) > 8 and node.input[8]:
            values = self._const(node.input[8])
            bias = Weights(values, np.ones(1, np.float32), np.zeros(1, np.int64), 0)
        emit = self._conv_emitter(node, q_in, weights, bias, q_out, (-np.inf, np.inf),
                                  bias_is_accumulator=True)
        self._replace(node, [node], [x], node.output[0], emit, "conv", [q_in, q_out])

    def _qlinear_weights(self, values: str, scale: str, zero: str, axis: int) -> Weights:
        array = self._const(values)
        s = self._const(scale).astype(np.float32).reshape(-1)
        z = self._const(zero).astype(np.int64).reshape(-1) if zero else np.zeros(1, np.int64)
        if str(array.dtype) not in _QUANTIZED_TYPES:
            raise _Unmatched
        return Weights(array, s, z, axis)

    def _conv_emitter(self, node: Any, q_in: QParams, weights: Weights, bias: Weights | None,
                      q_out: QParams, bounds: tuple[float, float],
                      bias_is_accumulator: bool = False) -> Emit:
        w = weights.values
        if w.ndim != 4 or str(w.dtype) not in _QUANTIZED_TYPES:
            raise _Unmatched
        out_channels = w.shape[0]
        if weights.scale.size not in (1, out_channels) or \
                (weights.scale.size > 1 and weights.axis != 0):
            raise _Unmatched
        group = _attr(node, "group", 1)
        kernel = (int(w.shape[2]), int(w.shape[3]))
        strides = tuple(_attr(node, "strides", [1, 1]))
        dilation = tuple(_attr(node, "dilations", [1, 1]))
        if len(strides) != 2 or len(dilation) != 2 or out_channels % group:
            raise _Unmatched
        shape = self.shapes.get(node.input[0], (None, None))[0]
        if shape is not None and (len(shape) != 4 or shape[1] != group * w.shape[1]):
            raise _Unmatched
        pads = _pad_spec(node)
        scales = np.broadcast_to(weights.scale, (out_channels,))
        offset = _offset_weights(w, weights.zero_point, 0)
        bias_values = _bias(bias, q_in.scale, scales, bias_is_accumulator)
        multipliers = _multipliers(q_in.scale, scales, q_out.scale)
        low, high = self._clamp(q_out, bounds)
        depthwise = group > 1 and w.shape[1] == 1
        # OIHW → OHWI (conv); [C*M, 1, H, W] → [1, H, W, C*M] (depthwise)
        layout = offset.transpose(1, 2, 3, 0) if depthwise else offset.transpose(0, 2, 3, 1)
        return _ConvEmitter(layout, bias_values, multipliers, q_out, low, high, kernel,
                            strides, dilation, pads, q_in.zero_point,
                            out_channels // group if depthwise else 0,
                            group * int(w.shape[1]),
                            _stored_weight_quantization(weights, 3 if depthwise else 0),
                            _bias_quantization(bias, q_in, weights)).emit

    def _qdq_dense(self, node: Any) -> None:
        if len(node.input) < 2:
            raise _Unmatched
        source, q_in, _ = self._dequantized(node.input[0])
        weights = self._dequantized_weights(node.input[1])
        if str(weights.values.dtype) not in _QUANTIZED_TYPES or weights.values.ndim != 2:
            raise _Unmatched
        bias = None
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or \
                    _attr(node, "beta", 1.0) != 1.0:
                raise _Unmatched
            bias = self._bias_input(node.input[2]) if len(node.input) > 2 else None
            transposed = bool(_attr(node, "transB", 0))
        else:
            transposed = False
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        emit = self._dense_emitter(node, q_in, weights, transposed, bias, q_out, bounds)
        self._replace(node, [node, q_node, *([activation] if activation else [])], [source],
                      q_node.output[0], emit, "dense", [q_in, q_out])

    def _qlinear_matmul(self, node: Any) -> None:
        a, sa, za, b, sb, zb, sy, zy = (list(node.input) + [""] * 8)[:8]
        q_in = self._scalar_q(sa, za, self._dtype_of(a))
        q_out = self._scalar_q(sy, zy)
        weights = self._qlinear_weights(b, sb, zb, 1)
        if weights.values.ndim != 2:
            raise _Unmatched
        emit = self._dense_emitter(node, q_in, weights, False, None, q_out, (-np.inf, np.inf))
        self._replace(node, [node], [a], node.output[0], emit, "dense", [q_in, q_out])

    def _qgemm(self, node: Any) -> None:
        """com.microsoft's QGemm (int32 bias in the accumulator's scale, quantized output)."""
        a, sa, za, b, sb, zb, c, sy, zy = (list(node.input) + [""] * 9)[:9]
        if not sy or _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
            raise _Unmatched
        q_in = self._scalar_q(sa, za, self._dtype_of(a))
        q_out = self._scalar_q(sy, zy)
        transposed = bool(_attr(node, "transB", 0))
        weights = self._qlinear_weights(b, sb, zb, 0 if transposed else 1)
        if weights.values.ndim != 2:
            raise _Unmatched
        bias = None
        if c:
            bias = Weights(self._const(c), np.ones(1, np.float32), np.zeros(1, np.int64), 0)
        emit = self._dense_emitter(node, q_in, weights, transposed, bias, q_out,
                                   (-np.inf, np.inf), bias_is_accumulator=True)
        self._replace(node, [node], [a], node.output[0], emit, "dense", [q_in, q_out])

    def _dense_emitter(self, node: Any, q_in: QParams, weights: Weights, transposed: bool,
                       bias: Weights | None, q_out: QParams, bounds: tuple[float, float],
                       bias_is_accumulator: bool = False) -> Emit:
        shape = self.shapes.get(node.input[0], (None, None))[0]
        w = weights.values
        units_axis = 0 if transposed else 1
        units, depth = w.shape[units_axis], w.shape[1 - units_axis]
        if shape is not None and (len(shape) < 2 or shape[-1] != depth):
            raise _Unmatched
        if shape is not None and node.op_type in ("Gemm", "QGemm") and len(shape) != 2:
            raise _Unmatched
        if weights.scale.size not in (1, units) or \
                (weights.scale.size > 1 and weights.axis != units_axis):
            raise _Unmatched
        scales = np.broadcast_to(weights.scale, (units,))
        offset = _offset_weights(w, weights.zero_point, units_axis)
        matrix = offset if transposed else offset.T  # [units, depth]
        if bias is not None and bias.values.size != units:
            raise _Unmatched
        bias_values = _bias(bias, q_in.scale, scales, bias_is_accumulator)
        multipliers = _multipliers(q_in.scale, scales, q_out.scale)
        low, high = self._clamp(q_out, bounds)
        return _DenseEmitter(np.ascontiguousarray(matrix), bias_values, multipliers, q_out,
                             low, high, q_in, _stored_weight_quantization(weights, 0),
                             _bias_quantization(bias, q_in, weights)).emit

    def _qdq_add(self, node: Any) -> None:
        sources, params = [], []
        for name in node.input:
            source, q, _ = self._dequantized(name)
            sources.append(source)
            params.append(q)
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        emit = self._add_emitter(params[0], params[1], q_out, bounds)
        self._replace(node, [node, q_node, *([activation] if activation else [])], sources,
                      q_node.output[0], emit, "add", [*params, q_out])

    def _qdq_mul(self, node: Any) -> None:
        """Mul: the product of the offset inputs rescaled by sa * sb / so (TFLite's MUL)."""
        from microexport.compiler.integer import fixedpoint as fp
        from microexport.compiler.integer import kernels

        (a, qa, _), (b, qb, _) = (self._dequantized(name) for name in node.input)
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        low, high = self._clamp(q_out, bounds)
        multiplier, shift = fp.quantize_multiplier(qa.scale * qb.scale / q_out.scale)
        out = kernels.Output(multiplier, shift, q_out.zero_point, low, high, q_out.dtype)

        def emit(bb: Any, args: list[Any]) -> Any:
            return bb.emit_te(
                lambda x, y: kernels.multiply(x, y, -qa.zero_point, -qb.zero_point, out),
                args[0], args[1], primfunc_name_hint="mul_int")

        self._replace(node, [node, q_node, *([activation] if activation else [])], [a, b],
                      q_node.output[0], emit, "mul", [qa, qb, q_out])

    def _qdq_concat(self, node: Any) -> None:
        """Concat: inputs whose parameters differ from the output's are requantized first,
        then the integers are concatenated (a copy)."""
        from microexport.compiler.integer import fixedpoint as fp

        sources, params = [], []
        for name in node.input:
            source, q, _ = self._dequantized(name)
            sources.append(source)
            params.append(q)
        user = self._only_consumer(node.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q_out = self._scalar_q(user.input[1], zero, _output_dtype(user))
        rescale: list[tuple[int, int, int] | None] = []
        for q in params:
            if q == q_out:
                rescale.append(None)
            else:
                multiplier, shift = fp.quantize_multiplier(q.scale / q_out.scale)
                rescale.append((q.zero_point, multiplier, shift))
        emit = _ConcatEmitter(_attr(node, "axis", 0), tuple(rescale), q_out).emit
        self._replace(node, [node, user], sources, user.output[0], emit, "concat",
                      [*params, q_out])

    def _qlinear_add(self, node: Any) -> None:
        a, sa, za, b, sb, zb, sy, zy = (list(node.input) + [""] * 8)[:8]
        qa = self._scalar_q(sa, za, self._dtype_of(a))
        qb = self._scalar_q(sb, zb, self._dtype_of(b))
        q_out = self._scalar_q(sy, zy, qa.dtype)
        emit = self._add_emitter(qa, qb, q_out, (-np.inf, np.inf))
        self._replace(node, [node], [a, b], node.output[0], emit, "add", [qa, qb, q_out])

    def _add_emitter(self, qa: QParams, qb: QParams, q_out: QParams,
                     bounds: tuple[float, float]) -> Emit:
        from microexport.compiler.integer import fixedpoint as fp
        from microexport.compiler.integer import kernels

        # TFLite's ADD: both inputs shifted left 20 bits and rescaled to twice the larger
        # input scale, summed, and the sum rescaled to the output.
        left_shift = 20
        twice_max = 2 * max(qa.scale, qb.scale)
        ma, sha = fp.quantize_multiplier(qa.scale / twice_max)
        mb, shb = fp.quantize_multiplier(qb.scale / twice_max)
        mo, sho = fp.quantize_multiplier(twice_max / ((1 << left_shift) * q_out.scale))
        low, high = self._clamp(q_out, bounds)
        params = kernels.AddParams(left_shift, -qa.zero_point, ma, sha, -qb.zero_point, mb,
                                   shb, mo, sho, q_out.zero_point, low, high, q_out.dtype)

        def emit(bb: Any, args: list[Any]) -> Any:
            return bb.emit_te(lambda a, b: kernels.add_or_subtract(a, b, params, False),
                              args[0], args[1], primfunc_name_hint="add_int")

        return emit

    def _qdq_pool(self, node: Any) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise _Unmatched  # MaxPool's indices
        source, q_in, _ = self._dequantized(node.input[0])
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        emit = self._pool_emitter(node, node.op_type, q_in, q_out, bounds)
        self._replace(node, [node, q_node, *([activation] if activation else [])], [source],
                      q_node.output[0], emit, "pool", [q_in, q_out])

    def _qlinear_pool(self, node: Any) -> None:
        x, sx, zx, sy, zy = (list(node.input) + [""] * 5)[:5]
        if _attr(node, "channels_last", 0):
            raise _Unmatched
        q_in = self._scalar_q(sx, zx, self._dtype_of(x))
        q_out = self._scalar_q(sy, zy, q_in.dtype)
        kind = "AveragePool" if node.op_type == "QLinearAveragePool" else "GlobalAveragePool"
        emit = self._pool_emitter(node, kind, q_in, q_out, (-np.inf, np.inf))
        self._replace(node, [node], [x], node.output[0], emit, "pool", [q_in, q_out])

    def _pool_emitter(self, node: Any, kind: str, q_in: QParams, q_out: QParams,
                      bounds: tuple[float, float]) -> Emit:
        from microexport.compiler.integer import fixedpoint as fp

        shape = self.shapes.get(node.input[0], (None, None))[0]
        if (shape is not None and len(shape) != 4) or q_in.dtype != q_out.dtype:
            raise _Unmatched
        low, high = self._clamp(q_out, bounds)
        if kind == "GlobalAveragePool":
            return _MeanEmitter(q_in, q_out, low, high).emit
        kernel = tuple(_attr(node, "kernel_shape", []))
        strides = tuple(_attr(node, "strides", [1, 1]))
        if len(kernel) != 2 or len(strides) != 2 or _attr(node, "ceil_mode", 0) or \
                tuple(_attr(node, "dilations", [1, 1])) != (1, 1):
            raise _Unmatched
        pads = _pad_spec(node)
        if kind == "AveragePool" and _attr(node, "count_include_pad", 0) and (
                pads[0] != "VALID" and (pads[0] != "NOTSET" or any(pads[1]))):
            raise _Unmatched  # the kernel divides by the in-bounds taps only
        same = np.float32(q_in.scale) == np.float32(q_out.scale) and \
            q_in.zero_point == q_out.zero_point
        requantize = None
        if not same:
            multiplier, shift = fp.quantize_multiplier(q_in.scale / q_out.scale)
            requantize = (multiplier, shift)
        return _PoolEmitter(kind == "AveragePool", kernel, strides, pads, q_in, q_out,
                            low, high, requantize).emit

    def _qdq_activation(self, node: Any) -> None:
        """A standalone Relu or Clip between DequantizeLinear and QuantizeLinear: requantize
        and clamp."""
        from microexport.compiler.integer import fixedpoint as fp

        source, q_in, _ = self._dequantized(node.input[0])
        bounds = self._activation_bounds(node)
        user = self._only_consumer(node.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q_out = self._scalar_q(user.input[1], zero, _output_dtype(user))
        low, high = self._clamp(q_out, bounds)
        multiplier, shift = fp.quantize_multiplier(q_in.scale / q_out.scale)
        emit = _RequantizeEmitter(q_in.zero_point, multiplier, shift, q_out, low, high).emit
        self._replace(node, [node, user], [source], user.output[0], emit, "clamp",
                      [q_in, q_out])

    def _qdq_table(self, node: Any) -> None:
        """DequantizeLinear → an elementwise function of one input → QuantizeLinear: a lookup
        table of the 256 results."""
        if len(node.input) != 1 or len(node.output) != 1:
            raise _Unmatched
        source, q_in, _ = self._dequantized(node.input[0])
        user = self._only_consumer(node.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q_out = self._scalar_q(user.input[1], zero, _output_dtype(user))
        table = _function_table(node, q_in, q_out, self.model.opset_import)
        self._replace(node, [node, user], [source], user.output[0],
                      _LookupEmitter(table, int(np.iinfo(q_in.dtype).min)).emit, "table",
                      [q_in, q_out])

    def _qdq_softmax(self, node: Any) -> None:
        """Softmax over the last axis: TFLite's integer softmax (exponentials of the
        differences to the row maximum from a table, a fixed-point reciprocal), whose int8
        result (scale 1/256, zero point -128) is requantized to the output's parameters."""
        from microexport.compiler.integer import fixedpoint as fp

        source, q_in, _ = self._dequantized(node.input[0])
        user = self._only_consumer(node.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q_out = self._scalar_q(user.input[1], zero, _output_dtype(user))
        shape = self.shapes.get(node.input[0], (None, None))[0]
        axis = _attr(node, "axis", -1 if _opset(self.model) >= 13 else 1)
        if shape is None or axis % len(shape) != len(shape) - 1:
            raise _Unmatched  # opset < 13 flattens from `axis`: only the last axis here
        exp = fp.softmax_exp_params(q_in.scale, 1.0)
        # TFLite's kernel writes int8 in steps of 1/256 from -128; onnxruntime quantizes the
        # output with scale 1/255 (or as calibrated): requantized from there.
        multiplier, shift = fp.quantize_multiplier((1 / 256) / q_out.scale)
        self._replace(node, [node, user], [source], user.output[0],
                      _SoftmaxEmitter(exp, q_out, multiplier, shift).emit, "softmax",
                      [q_in, q_out])

    def _qdq_batch_norm(self, node: Any) -> None:
        """BatchNormalization (inference, constant statistics) on NCHW: per channel
        `a * x + b`, with `a = scale / sqrt(var + epsilon)` and `b = bias - mean * a`, as
        a requantization per channel of `sign(a) * (x - zx) * 256 + round(256 b / (|a| sx))`
        (the offset kept in 1/256 input steps so that it is rounded once, at the end)."""
        from microexport.compiler.integer import fixedpoint as fp

        if len(node.input) != 5 or len(node.output) != 1 or _attr(node, "training_mode", 0):
            raise _Unmatched
        source, q_in, _ = self._dequantized(node.input[0])
        gamma, beta, mean, var = (self._const_or_dequantized(name).astype(np.float64)
                                  for name in node.input[1:5])
        epsilon = float(np.float32(_attr(node, "epsilon", 1e-5)))
        a = gamma / np.sqrt(var + epsilon)
        b = beta - mean * a
        if a.ndim != 1 or not (a.size == b.size) or not np.all(np.abs(a) > 1e-12):
            raise _Unmatched
        q_node, q_out, activation, bounds = self._quantized_output(node.output[0])
        low, high = self._clamp(q_out, bounds)
        offsets = np.round(256 * b / (np.abs(a) * q_in.scale))
        if np.abs(offsets).max(initial=0) >= 2**22:
            raise _Unmatched
        pairs = [fp.quantize_multiplier(float(abs(value)) * q_in.scale / (256 * q_out.scale))
                 for value in a]
        emit = _BatchNormEmitter(np.sign(a).astype(np.int32), offsets.astype(np.int32),
                                 np.array([m for m, _ in pairs], np.int32),
                                 np.array([sh for _, sh in pairs], np.int32),
                                 q_in.zero_point, q_out, low, high).emit
        self._replace(node, [node, q_node, *([activation] if activation else [])], [source],
                      q_node.output[0], emit, "batch_norm", [q_in, q_out])

    def _const_or_dequantized(self, name: str) -> np.ndarray:
        """A float constant, or the float value of DequantizeLinear of a constant."""
        if name in self.consts:
            return self.consts[name]
        weights = self._dequantized_weights(name)
        shape = [1] * weights.values.ndim
        if weights.values.ndim:
            shape[weights.axis] = -1
        scale = weights.scale.reshape(shape) if weights.scale.size > 1 else weights.scale[0]
        zero = weights.zero_point.reshape(shape) if weights.zero_point.size > 1 else \
            weights.zero_point[0]
        return (weights.values.astype(np.float64) - zero) * scale

    def _qdq_data_movement(self, node: Any) -> None:
        """DequantizeLinear → Flatten/Reshape/… → QuantizeLinear with equal parameters: the
        operator on the integers (TVM's converter, unchanged)."""
        from onnx import NodeProto

        source, q_in, _ = self._dequantized(node.input[0])
        user = self._only_consumer(node.output[0])
        if user.op_type != "QuantizeLinear" or user.domain not in _DEFAULT_DOMAINS:
            raise _Unmatched
        zero = user.input[2] if len(user.input) > 2 else ""
        q_out = self._scalar_q(user.input[1], zero, _output_dtype(user))
        if np.float32(q_in.scale) != np.float32(q_out.scale) or q_in != q_out:
            raise _Unmatched
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[0] = source
        copy.output[0] = user.output[0]
        self.replacement.setdefault(id(node), []).append(copy)
        self.removed.update({id(node), id(user)})
        self.integer_values.update({source, user.output[0]})

    # -- the edges ---------------------------------------------------------------------------

    def _edges(self) -> None:
        """QuantizeLinear nodes feeding integer values and DequantizeLinear nodes reading them
        become integer quantize / dequantize kernels."""
        for node in self.nodes:
            if id(node) in self.removed or node.domain not in _DEFAULT_DOMAINS:
                continue
            zero = node.input[2] if len(node.input) > 2 else ""
            if node.op_type == "QuantizeLinear" and node.output[0] in self.integer_values:
                if _attr(node, "saturate", 1) != 1 or _attr(node, "block_size", 0):
                    continue
                try:
                    q = self._scalar_q(node.input[1], zero, _output_dtype(node))
                except (_Unmatched, KeyError, ValueError, TypeError):
                    continue
                if self.shapes.get(node.input[0], (None, None))[1] not in (None, "float32"):
                    continue
                self._replace(node, [node], [node.input[0]], node.output[0],
                              _quantize_emitter(q), "quantize", [None, q])
            elif node.op_type == "DequantizeLinear" and node.input[0] in self.integer_values:
                try:
                    q = self._scalar_q(node.input[1], zero, self._dtype_of(node.input[0]))
                    if _output_dtype_dq(node) != "float32":
                        continue
                except (_Unmatched, KeyError, ValueError, TypeError):
                    continue

                self._replace(node, [node], [node.input[0]], node.output[0],
                              _dequantize_emitter(q), "dequantize", [q, None])

    def _drop_orphans(self) -> None:
        """Remove QuantizeLinear/DequantizeLinear nodes whose results nothing reads any more."""
        while True:
            used = {name for node in self.graph.node for name in node.input} | self.outputs
            kept = [node for node in self.graph.node
                    if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                    or any(name in used for name in node.output)]
            if len(kept) == len(self.graph.node):
                return
            del self.graph.node[:]
            self.graph.node.extend(kept)


# --------------------------------------------------------------------------------------------
# compile-time parameters
# --------------------------------------------------------------------------------------------

def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def _output_dtype(node: Any) -> str:
    """The integer type a QuantizeLinear writes (its zero point's, or `output_dtype`)."""
    from onnx import helper

    code = _attr(node, "output_dtype", 0)
    return str(helper.tensor_dtype_to_np_dtype(code)) if code else "uint8"


def _output_dtype_dq(node: Any) -> str:
    from onnx import helper

    code = _attr(node, "output_dtype", 0)
    return str(helper.tensor_dtype_to_np_dtype(code)) if code else "float32"


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, str]]:
    """(static shape or None, numpy dtype) of every value onnx's inference knows."""
    import onnx
    from onnx import helper

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is best effort; unmatched means float path
        graph = model.graph
    result: dict[str, tuple[tuple[int, ...] | None, str]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, ValueError, TypeError):
            continue
        shape = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if all(d > 0 for d in dims):
                shape = tuple(dims)
        result[value.name] = (shape, dtype)
    return result


PadSpec = tuple[str, tuple[int, ...]]  # (auto_pad, pads)


def _pad_spec(node: Any) -> PadSpec:
    """A 2-D convolution's or pool's `auto_pad` and `pads` attributes."""
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    pads = tuple(int(p) for p in _attr(node, "pads", [0, 0, 0, 0]))
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER") or len(pads) != 4 or \
            any(p < 0 for p in pads):
        raise _Unmatched
    return auto, pads


def _padding(spec: PadSpec, size: Sequence[int], kernel: Sequence[int],
             strides: Sequence[int], dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of `spec` for an input of spatial `size`."""
    auto, pads = spec
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        before, after = [], []
        for length, k, s, d in zip(size, kernel, strides, dilation, strict=True):
            out = (length + s - 1) // s
            total = max((out - 1) * s + (k - 1) * d + 1 - length, 0)
            small, big = total // 2, total - total // 2
            before.append(small if auto == "SAME_UPPER" else big)
            after.append(big if auto == "SAME_UPPER" else small)
        return (before[0], before[1], after[0], after[1])
    if auto == "VALID":
        return (0, 0, 0, 0)
    return (pads[0], pads[1], pads[2], pads[3])


def _shape(value: Any) -> list[int]:
    """The static shape of a Relax value."""
    return [int(d) for d in value.ty.shape.values]


def _offset_weights(values: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """The weights minus their zero points (per channel along `axis`), as int8 when they fit
    (always so for symmetric int8 weights), else int16: the kernels take no weight zero
    point, they widen each weight to int32."""
    if not zero_point.any():
        return values.astype(np.int8) if values.dtype == np.int8 or values.max(initial=0) < 128 \
            else values.astype(np.int16)
    shape = [1] * values.ndim
    shape[axis] = -1
    zero = zero_point.reshape(shape) if zero_point.size > 1 else zero_point.reshape(-1)[0]
    offset = values.astype(np.int32) - zero
    if offset.min(initial=0) >= -128 and offset.max(initial=0) <= 127:
        return offset.astype(np.int8)
    return offset.astype(np.int16)


def _bias(bias: Weights | None, input_scale: float, weight_scales: np.ndarray,
          accumulator: bool) -> np.ndarray | None:
    """The bias as int32 in the accumulator's scale (input scale x weight scale)."""
    if bias is None:
        return None
    channels = weight_scales.size
    values = bias.values.reshape(-1)
    if values.size != channels:
        raise _Unmatched
    if accumulator:  # QLinearConv: the bias is already int32 in the accumulator's scale
        if values.dtype != np.int32:
            raise _Unmatched
        return values.astype(np.int32)
    scale = np.broadcast_to(bias.scale, (channels,)).astype(np.float64)
    zero = np.broadcast_to(bias.zero_point, (channels,))
    wanted = float(np.float32(input_scale)) * weight_scales.astype(np.float64)
    if values.dtype == np.int32 and not zero.any() and np.allclose(scale, wanted, rtol=1e-5):
        return values.astype(np.int32)  # onnxruntime's quantized bias: taken as it is
    real = (values.astype(np.float64) - zero) * scale
    if values.dtype == np.float32:
        real = values.astype(np.float64)
    quantized = np.round(real / wanted)
    if np.abs(quantized).max(initial=0) >= 2**31:
        raise _Unmatched
    return quantized.astype(np.int32)


def _stored_weight_quantization(weights: Weights, axis: int) -> TensorQuantization:
    """The quantization of `weights` as an emitter stores them: their zero points subtracted
    (`_offset_weights`: 0), per channel along `axis` of the stored (transposed) layout."""
    scale = tuple(float(s) for s in weights.scale)
    return TensorQuantization(scale, (0,) * len(scale), axis if len(scale) > 1 else None)


def _bias_quantization(bias: Weights | None, q_in: QParams, weights: Weights
                       ) -> TensorQuantization | None:
    """The quantization of the int32 bias `_bias` stores: the accumulator's, input scale x
    weight scale (the exact product, as the multipliers use it), zero point 0."""
    if bias is None:
        return None
    scale = tuple(float(np.float32(q_in.scale)) * float(s) for s in weights.scale)
    return TensorQuantization(scale, (0,) * len(scale), 0 if len(scale) > 1 else None)


def _function_table(node: Any, q_in: QParams, q_out: QParams, opsets: Any) -> np.ndarray:
    """`node`'s function of every value of the input's integer type, dequantized, evaluated
    by onnx's reference evaluator in float32 and quantized (half to even, saturating)."""
    from onnx import NodeProto, TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    info = np.iinfo(q_in.dtype)
    values = np.arange(int(info.min), int(info.max) + 1, dtype=np.int32)
    real = ((values - q_in.zero_point).astype(np.float32) * np.float32(q_in.scale))
    copy = NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    del copy.output[:]
    copy.input.append("x")
    copy.output.append("y")
    graph = helper.make_graph([copy], "table",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    try:
        model = helper.make_model(graph, opset_imports=[o for o in opsets
                                                        if o.domain in _DEFAULT_DOMAINS])
        with np.errstate(all="ignore"):
            (result,) = ReferenceEvaluator(model).run(None, {"x": real})
    except Exception as err:  # noqa: BLE001 - the evaluator cannot: stay on the float path
        raise _Unmatched from err
    result = np.asarray(result, dtype=np.float32)
    if result.shape != real.shape or not np.isfinite(result).all():
        raise _Unmatched  # NaN or infinity (log of 0, …): leave it to the float path
    scaled = np.rint(result / np.float32(q_out.scale))  # rint: half to even, as ONNX
    out = np.iinfo(q_out.dtype)
    return np.clip(scaled + q_out.zero_point, out.min, out.max).astype(q_out.dtype)


def _multipliers(input_scale: float, weight_scales: np.ndarray, output_scale: float
                 ) -> list[tuple[int, int]]:
    """(multiplier, shift) per output channel of input x weight scale / output scale."""
    from microexport.compiler.integer import fixedpoint as fp

    return [fp.quantize_multiplier(float(np.float32(input_scale)) * float(s)
                                   / float(np.float32(output_scale))) for s in weight_scales]


# --------------------------------------------------------------------------------------------
# emitters: TE kernels on the Relax block builder
# --------------------------------------------------------------------------------------------

def _const(array: np.ndarray, quantization: TensorQuantization | None = None) -> Any:
    """A Relax constant holding `array`; `quantization`: that of a quantized initializer it
    holds (`_NOTED`), None for what we compute (multipliers, shifts, tables)."""
    from tvm import relax

    const = relax.const(np.ascontiguousarray(array), str(array.dtype))
    if quantization is not None:
        _note(const, quantization)
    return const


def _note(value: Any, quantization: TensorQuantization) -> None:
    """Record the quantization of a Relax value an emitter creates (see `_NOTED`)."""
    noted = _NOTED.get()
    if noted is not None:
        noted.setdefault(value, quantization)


def _to_nhwc(data: Any) -> Any:
    """An NCHW tensor read as NHWC (inlined into the kernel's loops by the C schedule)."""
    from tvm import te

    n, c, h, w = (int(d) for d in data.shape)
    return te.compute((n, h, w, c), lambda b, y, x, k: data[b, k, y, x], name="to_nhwc")


def _to_nchw(data: Any) -> Any:
    from tvm import te

    n, h, w, c = (int(d) for d in data.shape)
    return te.compute((n, c, h, w), lambda b, k, y, x: data[b, y, x, k], name="to_nchw")


@dataclass(frozen=True)
class _ConvEmitter:
    """Conv (groups) or depthwise conv on NCHW activations; weights OHWI or [1, H, W, C*M]."""

    weights: np.ndarray
    bias: np.ndarray | None
    multipliers: list[tuple[int, int]]
    q_out: QParams
    low: int
    high: int
    kernel: tuple[int, int]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: PadSpec
    input_zero_point: int
    depth_multiplier: int  # 0: not depthwise
    in_channels: int
    weight_quantization: TensorQuantization
    bias_quantization: TensorQuantization | None

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import fixedpoint as fp
        from microexport.compiler.integer import kernels

        shape = _shape(args[0])
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ModelError(f"a quantized Conv on an input of shape {shape} whose weights "
                             f"want {self.in_channels} NCHW channels")
        padding = _padding(self.pads, shape[2:], self.kernel, self.strides, self.dilation)
        multiplier, shift, arrays = fp.per_channel_or_scalar(self.multipliers)
        extra = [_const(self.weights, self.weight_quantization)]
        if self.bias is not None:
            extra.append(_const(self.bias, self.bias_quantization))
        extra += [_const(a) for a in arrays]
        has_bias = self.bias is not None

        def build(x: Any, w: Any, *rest: Any) -> Any:
            rest_list = list(rest)
            b = rest_list.pop(0) if has_bias else None
            m, s = (rest_list[0], rest_list[1]) if arrays else (multiplier, shift)
            out = kernels.Output(m, s, self.q_out.zero_point, self.low, self.high,
                                 self.q_out.dtype)
            data = _to_nhwc(x)
            if self.depth_multiplier:
                result = kernels.depthwise_conv2d(
                    data, w, b, out, strides=self.strides, dilation=self.dilation,
                    padding=padding, input_zero_point=self.input_zero_point,
                    depth_multiplier=self.depth_multiplier)
            else:
                result = kernels.conv2d(data, w, b, out, strides=self.strides,
                                        dilation=self.dilation, padding=padding,
                                        input_zero_point=self.input_zero_point)
            return _to_nchw(result)

        name = "depthwise_conv2d_int" if self.depth_multiplier else "conv2d_int"
        return bb.emit_te(build, args[0], *extra, primfunc_name_hint=name)


@dataclass(frozen=True)
class _DenseEmitter:
    """MatMul / Gemm with constant weights: rows of the input times [units, depth]."""

    weights: np.ndarray
    bias: np.ndarray | None
    multipliers: list[tuple[int, int]]
    q_out: QParams
    low: int
    high: int
    q_in: QParams
    weight_quantization: TensorQuantization
    bias_quantization: TensorQuantization | None

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from tvm import relax

        from microexport.compiler.integer import fixedpoint as fp
        from microexport.compiler.integer import kernels

        multiplier, shift, arrays = fp.per_channel_or_scalar(self.multipliers)
        units, depth = (int(d) for d in self.weights.shape)
        data = args[0]
        shape = _shape(data)
        if len(shape) < 2 or shape[-1] != depth:
            raise ModelError(f"a quantized MatMul/Gemm on an input of shape {shape} with "
                             f"weights of depth {depth}")
        out_shape = (*shape[:-1], units)
        # The rows reshaped in and out are the input's and output's tensors (a fused kernel
        # may begin or end with either: they carry the quantization).
        if len(shape) != 2:
            data = bb.emit(relax.op.reshape(data, (-1, depth)))
            _note(data, self.q_in.tensor_quantization())
        extra = [_const(self.weights, self.weight_quantization)]
        if self.bias is not None:
            extra.append(_const(self.bias, self.bias_quantization))
        extra += [_const(a) for a in arrays]
        has_bias = self.bias is not None

        def build(x: Any, w: Any, *rest: Any) -> Any:
            rest_list = list(rest)
            b = rest_list.pop(0) if has_bias else None
            m, s = (rest_list[0], rest_list[1]) if arrays else (multiplier, shift)
            out = kernels.Output(m, s, self.q_out.zero_point, self.low, self.high,
                                 self.q_out.dtype)
            return kernels.fully_connected(x, w, b, out,
                                           input_zero_point=self.q_in.zero_point,
                                           weight_zero_point=0)

        result = bb.emit_te(build, data, *extra, primfunc_name_hint="dense_int")
        if len(shape) != 2:
            _note(result, self.q_out.tensor_quantization())
            result = bb.normalize(relax.op.reshape(result, out_shape))
        return result


@dataclass(frozen=True)
class _PoolEmitter:
    """AveragePool / MaxPool on NCHW; a requantization when input and output differ."""

    average: bool
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: PadSpec
    q_in: QParams
    q_out: QParams
    low: int
    high: int
    requantize: tuple[int, int] | None

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import kernels

        info = np.iinfo(self.q_in.dtype)
        # Without requantization the activation clamp applies in the pool; with it, after.
        pool_low, pool_high = (self.low, self.high) if self.requantize is None else (
            int(info.min), int(info.max))
        pool = kernels.average_pool2d if self.average else kernels.max_pool2d
        shape = _shape(args[0])
        if len(shape) != 4:
            raise ModelError(f"a quantized 2-D pool on an input of shape {shape}")
        padding = _padding(self.pads, shape[2:], self.kernel, self.strides, (1, 1))

        if self.average and self.requantize is not None:
            return self._rescaled_average(bb, args[0], padding)

        def build(x: Any) -> Any:
            result = pool(_to_nhwc(x), kernel=self.kernel, strides=self.strides,
                          padding=padding, low=pool_low, high=pool_high)
            if self.requantize is not None:
                out = kernels.Output(self.requantize[0], self.requantize[1],
                                     self.q_out.zero_point, self.low, self.high,
                                     self.q_out.dtype)
                result = kernels.requantize(result, self.q_in.zero_point, out)
            return _to_nchw(result)

        name = "avg_pool_int" if self.average else "max_pool_int"
        return bb.emit_te(build, args[0], primfunc_name_hint=name)

    def _rescaled_average(self, bb: Any, data: Any, padding: tuple[int, int, int, int]) -> Any:
        """AveragePool between different input and output parameters, rounded once: the sum
        of the in-bounds taps minus their zero points, requantized with the multiplier of
        input scale / (output scale x taps) for that window's number of taps (a table over
        the possible counts). Pooling first and requantizing the rounded mean would round
        twice (a step off onnxruntime, which rounds the float mean once)."""
        from microexport.compiler.integer import fixedpoint as fp

        taps = self.kernel[0] * self.kernel[1]
        pairs = [(0, 0)] + [fp.quantize_multiplier(self.q_in.scale / (self.q_out.scale * n))
                            for n in range(1, taps + 1)]
        multipliers = np.array([m for m, _ in pairs], np.int32)
        shifts = np.array([s for _, s in pairs], np.int32)
        pool = _RescaledAveragePool(self.kernel, self.strides, padding, self.q_in.zero_point,
                                    self.q_out, self.low, self.high)
        return bb.emit_te(pool.build, data, _const(multipliers), _const(shifts),
                          primfunc_name_hint="avg_pool_int")


@dataclass(frozen=True)
class _RescaledAveragePool:
    """The TE computation of `_PoolEmitter._rescaled_average`, on NCHW."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[int, int, int, int]
    input_zero_point: int
    q_out: QParams
    low: int
    high: int

    def build(self, data: Any, multipliers: Any, shifts: Any) -> Any:
        from tvm import te, tirx

        from microexport.compiler.integer import te_math as tm

        batch, channels, height, width = (int(d) for d in data.shape)
        top, left, bottom, right = self.padding
        (kh, kw), (sh, sw) = self.kernel, self.strides
        out_h = (height + top + bottom - kh) // sh + 1
        out_w = (width + left + right - kw) // sw + 1
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")

        def tap(n: Any, c: Any, y: Any, x: Any) -> Any:
            iy, ix = y * sh - top + ry, x * sw - left + rx
            inside = tirx.all(iy >= 0, iy < height, ix >= 0, ix < width)
            return tirx.if_then_else(
                inside, tm.i32(data[n, c, iy, ix]) - tm.i32(self.input_zero_point), tm.i32(0))

        total = te.compute((batch, channels, out_h, out_w),
                           lambda n, c, y, x: te.sum(tap(n, c, y, x), axis=[ry, rx]),
                           name="pool_sum")

        def extent(origin: Any, size: int, window: int) -> Any:
            return tirx.min(tm.i32(window), tm.i32(size) - origin) - tirx.max(tm.i32(0),
                                                                              0 - origin)

        def value(n: Any, c: Any, y: Any, x: Any) -> Any:
            count = extent(tm.i32(y * sh - top), height, kh) * extent(
                tm.i32(x * sw - left), width, kw)
            scaled = tm.multiply_by_quantized_multiplier(total[n, c, y, x], multipliers[count],
                                                         shifts[count])
            return tm.clamp(scaled + tm.i32(self.q_out.zero_point), self.low,
                            self.high).astype(self.q_out.dtype)

        return te.compute((batch, channels, out_h, out_w), value, name="average_pool")


@dataclass(frozen=True)
class _MeanEmitter:
    """GlobalAveragePool: the mean over H and W (kept as 1 x 1), requantized once."""

    q_in: QParams
    q_out: QParams
    low: int
    high: int

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import fixedpoint as fp
        from microexport.compiler.integer import kernels

        shape = _shape(args[0])
        if len(shape) != 4:
            raise ModelError(f"a quantized GlobalAveragePool on an input of shape {shape}")
        multiplier, shift = fp.mean_multiplier(self.q_in.scale, self.q_out.scale,
                                               shape[2] * shape[3])
        out = kernels.Output(multiplier, shift, self.q_out.zero_point, self.low, self.high,
                             self.q_out.dtype)
        return bb.emit_te(
            lambda x: kernels.mean(x, [2, 3], True, input_zero_point=self.q_in.zero_point,
                                   output=out),
            args[0], primfunc_name_hint="global_avg_pool_int")


@dataclass(frozen=True)
class _RequantizeEmitter:
    """A standalone Relu / Clip: requantize to the output's parameters and clamp."""

    input_zero_point: int
    multiplier: int
    shift: int
    q_out: QParams
    low: int
    high: int

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import kernels

        out = kernels.Output(self.multiplier, self.shift, self.q_out.zero_point, self.low,
                             self.high, self.q_out.dtype)
        return bb.emit_te(lambda x: kernels.requantize(x, self.input_zero_point, out),
                          args[0], primfunc_name_hint="clamp_int")


# TVM's OpPatternKind: an opaque kernel is never fused with its neighbours.
_OPAQUE = 8


def _unfused(bb: Any, value: Any) -> Any:
    """Mark the kernel computing `value` opaque: the float quantize/dequantize at the model's
    edges stay kernels of their own, so every other kernel is integer-only (a dequantize fused
    into the last dense would bring float arithmetic into its loop)."""
    call = bb.lookup_binding(value)
    kernel = call.args[0]
    bb.update_func(kernel, bb.get()[kernel].with_attr("op_pattern", _OPAQUE))
    return value


@dataclass(frozen=True)
class _LookupEmitter:
    """An elementwise function as a table indexed by the input value minus its type's minimum
    (`table` has one entry per value of the input type)."""

    table: np.ndarray
    lowest: int

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from tvm import te

        from microexport.compiler.integer import te_math as tm

        def build(x: Any, table: Any) -> Any:
            return te.compute(x.shape, lambda *i: table[tm.i32(x[i]) - tm.i32(self.lowest)],
                              name="lookup")

        return bb.emit_te(build, args[0], _const(self.table), primfunc_name_hint="table_int")


@dataclass(frozen=True)
class _ConcatEmitter:
    """Concat of integer tensors, each requantized to the output's parameters where they
    differ ((input zero point, multiplier, shift), or None)."""

    axis: int
    rescale: tuple[tuple[int, int, int] | None, ...]
    q_out: QParams

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from tvm import relax

        from microexport.compiler.integer import kernels

        info = np.iinfo(self.q_out.dtype)
        parts = []
        for arg, rescale in zip(args, self.rescale, strict=True):
            if rescale is not None:
                zero, multiplier, shift = rescale
                out = kernels.Output(multiplier, shift, self.q_out.zero_point, int(info.min),
                                     int(info.max), self.q_out.dtype)
                arg = bb.emit_te(_requantizer(zero, out), arg,
                                 primfunc_name_hint="requantize_int")
                _note(arg, self.q_out.tensor_quantization())  # an input in the output's terms
            parts.append(arg)
        rank = len(_shape(args[0]))
        return bb.normalize(relax.op.concat(parts, axis=self.axis % rank))


@dataclass(frozen=True)
class _SoftmaxEmitter:
    """TFLite's int8 softmax over the last axis, requantized to `q_out`."""

    exp: fp.SoftmaxExp
    q_out: QParams
    multiplier: int
    shift: int

    def emit(self, bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import kernels

        info = np.iinfo(self.q_out.dtype)
        out = kernels.Output(self.multiplier, self.shift, self.q_out.zero_point, int(info.min),
                             int(info.max), self.q_out.dtype)
        same = self.q_out == QParams(1 / 256, -128, "int8")

        from microexport.compiler.frontend.tflite_integer import softmax_exp

        extra, exp_of = softmax_exp(self.exp)

        def build(x: Any, *table: Any) -> Any:
            result = kernels.softmax(x, exp_of(*table))
            return result if same else kernels.requantize(result, -128, out)

        return bb.emit_te(build, args[0], *extra, primfunc_name_hint="softmax_int")


@dataclass(frozen=True)
class _BatchNormEmitter:
    """Per-channel (NCHW axis 1) affine requantization of `_Rewriter._qdq_batch_norm`."""

    signs: np.ndarray
    offsets: np.ndarray
    multipliers: np.ndarray
    shifts: np.ndarray
    input_zero_point: int
    q_out: QParams
    low: int
    high: int

    def emit(self, bb: Any, args: list[Any]) -> Any:
        shape = _shape(args[0])
        if len(shape) < 2 or shape[1] != self.signs.size:
            raise ModelError(f"a quantized BatchNormalization of {self.signs.size} channels on "
                             f"an input of shape {shape}")
        return bb.emit_te(self.build, args[0], _const(self.signs), _const(self.offsets),
                          _const(self.multipliers), _const(self.shifts),
                          primfunc_name_hint="batch_norm_int")

    def build(self, x: Any, signs: Any, offsets: Any, multipliers: Any, shifts: Any) -> Any:
        from tvm import te

        from microexport.compiler.integer import te_math as tm

        def value(*i: Any) -> Any:
            c = i[1]
            t = (tm.i32(x[i]) - tm.i32(self.input_zero_point)) * signs[c] * tm.i32(256) \
                + offsets[c]
            scaled = tm.multiply_by_quantized_multiplier(t, multipliers[c], shifts[c])
            return tm.clamp(scaled + tm.i32(self.q_out.zero_point), self.low,
                            self.high).astype(self.q_out.dtype)

        return te.compute(x.shape, value, name="batch_norm")


def _requantizer(zero_point: int, output: Any) -> Callable[[Any], Any]:
    from microexport.compiler.integer import kernels

    return lambda x: kernels.requantize(x, zero_point, output)


def _quantize_emitter(q: QParams) -> Emit:
    def emit(bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import kernels

        return _unfused(bb, bb.emit_te(  # ONNX's QuantizeLinear rounds half to even
            lambda x: kernels.quantize(x, q.scale, q.zero_point, q.dtype, ties_to_even=True),
            args[0], primfunc_name_hint="quantize"))

    return emit


def _dequantize_emitter(q: QParams) -> Emit:
    def emit(bb: Any, args: list[Any]) -> Any:
        from microexport.compiler.integer import kernels

        return _unfused(bb, bb.emit_te(
            lambda x: kernels.dequantize(x, q.scale, q.zero_point), args[0],
            primfunc_name_hint="dequantize"))

    return emit

