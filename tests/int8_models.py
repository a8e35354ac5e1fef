"""Real int8 (and int16x8) TFLite models, quantized by a real quantizer, for the integer tests.

Every builder writes a *float* TFLite model by hand (flatbuffer object API, with a SignatureDef,
He-initialised fixed-seed weights) as `<stem>_float.tflite`, fully quantizes it with the pinned
`ai-edge-quantizer` (recipe `static_wi8_ai8`, or `static_wi8_ai16` for 16x8) calibrated on a
fixed-seed set of `CALIBRATION_SAMPLES` inputs, writes `<stem>.tflite` and returns
`(path, sample_inputs)` like `zoo.py`'s builders (`sample_inputs`: a fixed-seed draw from the
calibration distribution, quantized with the model's input parameters). Model inputs and outputs
are integers: the quantizer's INPUT/OUTPUT entries of the recipe retype them, so there is no
QUANTIZE/DEQUANTIZE at the edges.

ai-edge-quantizer 0.10.0 leaves some operators float (no recipe entry): LEAKY_RELU, a
stand-alone RELU6, SQUEEZE, EXPAND_DIMS and UNIDIRECTIONAL_SEQUENCE_LSTM.
`_integerize_float_islands` gives them
integer tensors the way TFLite's own converter does, from the float model's calibrated ranges;
the LSTM gets the converter's int8 layout (int16 cell state, the five intermediates).

Everything is deterministic: the same builder writes byte-identical files on every run.
`tflm_reference` runs a model with TFLite Micro; `INT8_MODELS` lists the builders for
parametrized tests.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zoo import Inputs, TfliteWriter, _schema

AEQ_VERSION = "0.10.0"
SIGNATURE_KEY = "serving_default"
CALIBRATION_SAMPLES = 16

_TYPES = {"float32": 0, "float16": 1, "int32": 2, "int64": 4, "bool": 6, "int16": 7, "int8": 9}


class SignedTfliteWriter(TfliteWriter):
    """`TfliteWriter` that also handles int16/int64/bool tensors, variable tensors,
    intermediates and writes a SignatureDef (ai-edge-quantizer needs one)."""

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        data: np.ndarray | None = None,
        scale: list[float] | None = None,
        zero_point: list[int] | None = None,
        axis: int = 0,
        variable: bool = False,
    ) -> int:
        """Add a tensor (a constant when `data` is given, a state tensor when `variable`)."""
        index = super().tensor(name, shape, "float32", data, scale, zero_point, axis)
        self.tensors[index].type = _TYPES[dtype]
        self.tensors[index].isVariable = variable
        return index

    def model(self, inputs: list[int], outputs: list[int]) -> object:
        """The `ModelT` with one subgraph and a SignatureDef named after the I/O tensors."""
        schema = self.schema
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs, subgraph.name = inputs, outputs, "main"
        model = schema.ModelT()
        model.version, model.description = 3, "microexport int8 test model (float source)"
        model.subgraphs, model.buffers = [subgraph], self.buffers
        model.operatorCodes = []
        for code in self.opcodes:
            opcode = schema.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode = code, min(code, 127)
            model.operatorCodes.append(opcode)
        signature = schema.SignatureDefT()
        signature.signatureKey, signature.subgraphIndex = SIGNATURE_KEY, 0
        signature.inputs = [self._tensor_map(i) for i in inputs]
        signature.outputs = [self._tensor_map(i) for i in outputs]
        model.signatureDefs = [signature]
        return model

    def _tensor_map(self, index: int) -> object:
        entry = self.schema.TensorMapT()
        entry.name, entry.tensorIndex = self.tensors[index].name, index
        return entry

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        """Serialize the model (with its SignatureDef) to `path`."""
        path.write_bytes(pack_model(self.model(inputs, outputs)))
        return path

    # Shorthands for the layers every float model below is made of.

    def const(self, name: str, data: np.ndarray) -> int:
        """A float32 (or int32, by `data`'s dtype) constant tensor."""
        return self.tensor(name, data.shape, data.dtype.name, data)

    def act(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> int:
        """A float32 activation tensor."""
        return self.tensor(name, shape, dtype)


def pack_model(model: object) -> bytes:
    """Serialize a `ModelT` with the TFL3 file identifier."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --------------------------------------------------------------------------------------------
# A float graph builder that tracks shapes
# --------------------------------------------------------------------------------------------

_ACT = {"NONE": 0, "RELU": 1, "RELU6": 3, "TANH": 4}
LSTM_CELL_CLIP = 10.0  # what TFLite's converter wrote for a Keras LSTM (mnist_lstm example)


@dataclass
class LstmWeights:
    """Float LSTM weights, gates in TFLite order (input, forget, cell, output)."""

    input: list[np.ndarray]  # (hidden, features) each
    recurrent: list[np.ndarray]  # (hidden, hidden) each
    bias: list[np.ndarray]  # (hidden,) each

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Float reference from zero state: `(outputs (batch, time, hidden), |cell| max)`."""

        def sigmoid(v: np.ndarray) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-v))

        batch, steps, _ = x.shape
        hidden = self.bias[0].shape[0]
        h = np.zeros((batch, hidden), np.float64)
        c = np.zeros((batch, hidden), np.float64)
        outputs, cell_max = [], 0.0
        for t in range(steps):
            pre = [
                x[:, t] @ wi.T + h @ wr.T + b
                for wi, wr, b in zip(self.input, self.recurrent, self.bias, strict=True)
            ]
            c = sigmoid(pre[1]) * c + sigmoid(pre[0]) * np.tanh(pre[2])
            c = np.clip(c, -LSTM_CELL_CLIP, LSTM_CELL_CLIP)
            cell_max = max(cell_max, float(np.abs(c).max()))
            h = sigmoid(pre[3]) * np.tanh(c)
            outputs.append(h)
        return np.stack(outputs, axis=1).astype(np.float32), cell_max


_SAME, _VALID = 0, 1


@dataclass
class T:
    """A float activation: tensor index and NHWC (or 2-D) shape."""

    index: int
    shape: tuple[int, ...]


class FloatNet:
    """Builds a float32 TFLite graph layer by layer with He-initialised random weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = SignedTfliteWriter()
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def input(self, name: str, shape: tuple[int, ...]) -> T:
        """A float32 model input."""
        return T(self.w.act(name, shape), shape)

    def _out(self, name: str, shape: tuple[int, ...]) -> T:
        return T(self.w.act(name, shape), shape)

    def _weights(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def _bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)

    @staticmethod
    def _spatial(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
        effective = (kernel - 1) * dilation + 1
        return -(-size // stride) if padding == _SAME else (size - effective) // stride + 1

    def conv(
        self,
        x: T,
        out: int,
        kernel: tuple[int, int],
        stride: int = 1,
        padding: int = _SAME,
        act: str = "RELU",
        dilation: int = 1,
    ) -> T:
        """CONV_2D (OHWI weights, bias) with a fused activation."""
        n, h, wd, c = x.shape
        name = self._name("conv")
        weights = self.w.const(
            name + "/w", self._weights((out, *kernel, c), kernel[0] * kernel[1] * c)
        )
        bias = self.w.const(name + "/b", self._bias(out))
        shape = (
            n,
            self._spatial(h, kernel[0], stride, padding, dilation),
            self._spatial(wd, kernel[1], stride, padding, dilation),
            out,
        )
        y = self._out(name, shape)
        options = self.w.options(
            "Conv2DOptions",
            padding=padding,
            strideW=stride,
            strideH=stride,
            dilationWFactor=dilation,
            dilationHFactor=dilation,
            fusedActivationFunction=_ACT[act],
        )
        self.w.operator("CONV_2D", [x.index, weights, bias], [y.index], options)
        return y

    def depthwise(
        self,
        x: T,
        kernel: tuple[int, int] = (3, 3),
        stride: int = 1,
        padding: int = _SAME,
        act: str = "RELU",
        multiplier: int = 1,
        dilation: int = 1,
    ) -> T:
        """DEPTHWISE_CONV_2D (1HW(C*multiplier) weights, bias) with a fused activation."""
        n, h, wd, c = x.shape
        name = self._name("dwconv")
        out = c * multiplier
        weights = self.w.const(name + "/w", self._weights((1, *kernel, out), kernel[0] * kernel[1]))
        bias = self.w.const(name + "/b", self._bias(out))
        shape = (
            n,
            self._spatial(h, kernel[0], stride, padding, dilation),
            self._spatial(wd, kernel[1], stride, padding, dilation),
            out,
        )
        y = self._out(name, shape)
        options = self.w.options(
            "DepthwiseConv2DOptions",
            padding=padding,
            strideW=stride,
            strideH=stride,
            depthMultiplier=multiplier,
            dilationWFactor=dilation,
            dilationHFactor=dilation,
            fusedActivationFunction=_ACT[act],
        )
        self.w.operator("DEPTHWISE_CONV_2D", [x.index, weights, bias], [y.index], options)
        return y

    def pad(self, x: T, pads: list[tuple[int, int]]) -> T:
        """PAD with an int32 paddings constant."""
        name = self._name("pad")
        paddings = self.w.const(name + "/paddings", np.array(pads, np.int32))
        shape = tuple(d + a + b for d, (a, b) in zip(x.shape, pads, strict=True))
        y = self._out(name, shape)
        self.w.operator("PAD", [x.index, paddings], [y.index], self.w.options("PadOptions"))
        return y

    def pool(
        self, x: T, kind: str, size: int | tuple[int, int], stride: int, padding: int = _VALID
    ) -> T:
        """AVERAGE_POOL_2D or MAX_POOL_2D with a square or (height, width) window."""
        n, h, wd, c = x.shape
        kh, kw = (size, size) if isinstance(size, int) else size
        name = self._name(kind.lower())
        shape = (
            n,
            self._spatial(h, kh, stride, padding),
            self._spatial(wd, kw, stride, padding),
            c,
        )
        y = self._out(name, shape)
        options = self.w.options(
            "Pool2DOptions",
            padding=padding,
            strideW=stride,
            strideH=stride,
            filterWidth=kw,
            filterHeight=kh,
        )
        self.w.operator(kind, [x.index], [y.index], options)
        return y

    def reshape(self, x: T, shape: tuple[int, ...]) -> T:
        """RESHAPE with an int32 shape constant."""
        name = self._name("reshape")
        new_shape = self.w.const(name + "/shape", np.array(shape, np.int32))
        y = self._out(name, shape)
        options = self.w.options("ReshapeOptions", newShape=list(shape))
        self.w.operator("RESHAPE", [x.index, new_shape], [y.index], options)
        return y

    def fc(self, x: T, out: int, act: str = "NONE", name: str | None = None) -> T:
        """FULLY_CONNECTED ((out, in) weights, bias) on a (batch, in) input."""
        name = name or self._name("fc")
        weights = self.w.const(name + "/w", self._weights((out, x.shape[-1]), x.shape[-1]))
        bias = self.w.const(name + "/b", self._bias(out))
        y = self._out(name, (x.shape[0], out))
        options = self.w.options("FullyConnectedOptions", fusedActivationFunction=_ACT[act])
        self.w.operator("FULLY_CONNECTED", [x.index, weights, bias], [y.index], options)
        return y

    def softmax(self, x: T, name: str) -> T:
        """SOFTMAX with beta 1."""
        y = self._out(name, x.shape)
        self.w.operator("SOFTMAX", [x.index], [y.index], self.w.options("SoftmaxOptions", beta=1.0))
        return y

    def unary(self, x: T, op: str, options: object = None) -> T:
        """An element-wise one-input operator (LOGISTIC, TANH, HARD_SWISH, RELU6, ...)."""
        y = self._out(self._name(op.lower()), x.shape)
        self.w.operator(op, [x.index], [y.index], options)
        return y

    def binary(self, a: T, b: T, op: str) -> T:
        """ADD, SUB or MUL of two activations of broadcastable shapes."""
        shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        y = self._out(self._name(op.lower()), shape)
        options = self.w.options(op.capitalize() + "Options")
        self.w.operator(op, [a.index, b.index], [y.index], options)
        return y

    def mean(self, x: T, axes: list[int], keep_dims: bool) -> T:
        """MEAN over `axes`."""
        name = self._name("mean")
        axis = self.w.const(name + "/axes", np.array(axes, np.int32))
        shape = tuple(
            1 if i in axes else d for i, d in enumerate(x.shape) if keep_dims or i not in axes
        )
        y = self._out(name, shape)
        options = self.w.options("ReducerOptions", keepDims=keep_dims)
        self.w.operator("MEAN", [x.index, axis], [y.index], options)
        return y

    def concat(self, parts: list[T], axis: int) -> T:
        """CONCATENATION along `axis`."""
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        y = self._out(self._name("concat"), tuple(shape))
        options = self.w.options("ConcatenationOptions", axis=axis)
        self.w.operator("CONCATENATION", [p.index for p in parts], [y.index], options)
        return y

    def lstm(self, x: T, hidden: int, name: str) -> tuple[T, LstmWeights]:
        """UNIDIRECTIONAL_SEQUENCE_LSTM (batch-major, TANH cell activation, no peephole,
        projection or layer norm: a Keras LSTM as TFLite's converter fuses it), float32 with
        zero-initialised variable state tensors; returns the output and the float weights."""
        _, _, features = x.shape
        weights = LstmWeights(
            input=[self._weights((hidden, features), 2 * features) for _ in range(4)],
            recurrent=[self._weights((hidden, hidden), 2 * hidden) for _ in range(4)],
            bias=[self._bias(hidden) + (1.0 if gate == 1 else 0.0) for gate in range(4)],
        )
        gates = "input", "forget", "cell", "output"
        i_w = [
            self.w.const(f"{name}/input_to_{g}_w", w)
            for g, w in zip(gates, weights.input, strict=True)
        ]
        r_w = [
            self.w.const(f"{name}/recurrent_to_{g}_w", w)
            for g, w in zip(gates, weights.recurrent, strict=True)
        ]
        bias = [
            self.w.const(f"{name}/{g}_gate_bias", b)
            for g, b in zip(gates, weights.bias, strict=True)
        ]
        hidden_state = self.w.tensor(f"{name}/output_state", (1, hidden), "float32", variable=True)
        cell_state = self.w.tensor(f"{name}/cell_state", (1, hidden), "float32", variable=True)
        y = self._out(name, (x.shape[0], x.shape[1], hidden))
        inputs = [x.index, *i_w, *r_w, -1, -1, -1, *bias, -1, -1, hidden_state, cell_state]
        options = self.w.options(
            "UnidirectionalSequenceLSTMOptions",
            fusedActivationFunction=_ACT["TANH"],
            cellClip=LSTM_CELL_CLIP,
            projClip=0.0,
            timeMajor=False,
        )
        self.w.operator("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs + [-1] * 4, [y.index], options)
        return y, weights

    def op(
        self,
        kind: str,
        inputs: list[T | np.ndarray],
        shapes: list[tuple[int, ...]],
        options: object = None,
    ) -> list[T]:
        """Any operator: `inputs` are activations or constant arrays (written as constants),
        `shapes` the output shapes; returns the outputs."""
        name = self._name(kind.lower())
        indices = [
            x.index if isinstance(x, T) else self.w.const(f"{name}/in{i}", x)
            for i, x in enumerate(inputs)
        ]
        outs = [self._out(name if i == 0 else f"{name}:{i}", s) for i, s in enumerate(shapes)]
        self.w.operator(kind, indices, [o.index for o in outs], options)
        return outs

    def write(self, path: Path, inputs: list[T], outputs: list[T]) -> Path:
        """Write the float model with its SignatureDef."""
        return self.w.write(path, [t.index for t in inputs], [t.index for t in outputs])


# --------------------------------------------------------------------------------------------
# Quantization with ai-edge-quantizer
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's progress report and LiteRT's warning that keeping every tensor
    (which calibration needs) is meant for debugging."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        yield


def float_ranges(float_path: Path, calibration: list[Inputs]) -> dict[str, tuple[float, float]]:
    """Calibrated (min, max) of every float activation of the float model, as ai-edge-quantizer
    calibrates: per sample (LiteRT reference kernels, all tensors kept, state reset), merged by
    the quantizer's own moving average of the per-sample extremes."""
    from ai_edge_litert import interpreter as litert
    from ai_edge_quantizer.utils import qsv_utils

    with _quiet():
        interpreter = litert.Interpreter(
            model_path=str(float_path),
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
            experimental_preserve_all_tensors=True,
        )
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    details = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    qsvs: dict[str, dict] = {}
    for sample in calibration:
        interpreter.reset_all_variables()
        runner(**sample)
        for detail in details:
            value = interpreter.get_tensor(detail["index"])
            if value.size:
                new = {"min": np.float32(value.min()), "max": np.float32(value.max())}
                qsvs[detail["name"]] = qsv_utils.moving_average_update(
                    qsvs.get(detail["name"], {}), new
                )
    return {name: (float(q["min"]), float(q["max"])) for name, q in qsvs.items()}


def aeq_quantize(float_path: Path, calibration: list[Inputs], activations: int = 8) -> bytes:
    """ai-edge-quantizer's own output for `float_path`: the `static_wi8_ai8` recipe (or, with
    `activations=16`, `static_wi8_ai16`), calibrated on `calibration` (a list of
    signature-input dicts)."""
    from ai_edge_quantizer import quantizer, recipe

    with _quiet():
        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(
            recipe.static_wi8_ai8() if activations == 8 else recipe.static_wi8_ai16()
        )
        qsvs = qt.calibrate({SIGNATURE_KEY: calibration}, num_threads=1)
        return bytes(qt.quantize(qsvs, enable_progress_report=False).quantized_model)


def quantize(
    float_path: Path,
    out_path: Path,
    calibration: list[Inputs],
    activations: int = 8,
    lstm_cell: dict[str, float] | None = None,
) -> Path:
    """Fully quantize `float_path` with `aeq_quantize`; operators the quantizer leaves float
    become integer ones (see `_integerize_float_islands`; `lstm_cell` gives the float model's
    max |cell state| per LSTM output name). Writes the quantized model to `out_path`."""
    quantized = aeq_quantize(float_path, calibration, activations)
    model = read_model_bytes(quantized)
    if _integerize_float_islands(model, float_ranges(float_path, calibration), lstm_cell or {}):
        out_path.write_bytes(pack_model(model))
    else:  # the quantizer's own bytes, untouched
        out_path.write_bytes(quantized)
    return out_path


# --------------------------------------------------------------------------------------------
# Reference runs and model inspection
# --------------------------------------------------------------------------------------------


def tflm_reference(path: Path, inputs: Inputs) -> dict[str, np.ndarray]:
    """Run `path` once with TFLite Micro's host interpreter (reference kernels); returns the
    outputs by tensor name. Inputs are matched by name and set right before the invoke (TFLM
    may reuse input memory between invokes)."""
    from tflite_micro.python.tflite_micro import runtime

    data = Path(path).read_bytes()
    model = read_model(path)
    subgraph = model.subgraphs[0]
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=max(10 * len(data), 1 << 20))
    for index, tensor_index in enumerate(subgraph.inputs):
        name = subgraph.tensors[tensor_index].name.decode()
        interpreter.set_input(np.ascontiguousarray(inputs[name]), index)
    interpreter.invoke()
    return {
        subgraph.tensors[t].name.decode(): np.array(interpreter.get_output(i))
        for i, t in enumerate(subgraph.outputs)
    }


def read_model(path: Path) -> object:
    """The `ModelT` (flatbuffer object API) of a .tflite file."""
    return read_model_bytes(Path(path).read_bytes())


def tflite_weight_bytes(path: Path) -> tuple[int, int]:
    """What a .tflite file spends on its constants: (bytes of the buffers of its constant
    tensors, bytes of their quantization parameters: a float32 scale and an int64 zero point
    per channel, from which TFLite Micro computes its per-channel multipliers and shifts)."""
    model = read_model(path)
    data = parameters = 0
    for tensor in model.subgraphs[0].tensors:
        buffer = model.buffers[tensor.buffer]
        size = len(buffer.data) if buffer is not None and buffer.data is not None else 0
        data += size
        quant = tensor.quantization
        if size and quant is not None and quant.scale is not None:
            zero_points = len(quant.zeroPoint) if quant.zeroPoint is not None else 0
            parameters += 4 * len(quant.scale) + 8 * zero_points
    return data, parameters


def read_model_bytes(data: bytes) -> object:
    """The `ModelT` (flatbuffer object API) of a serialized TFLite model."""
    return _schema().ModelT.InitFromPackedBuf(data, 0)


def operators(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """`(builtin name, input dtypes, output dtypes)` of every operator of subgraph 0 (dtypes of
    non-constant tensors only; '' for an omitted optional input)."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
    model = read_model(path)
    subgraph = model.subgraphs[0]

    def dtypes(indices: object) -> list[str]:
        result = []
        for i in [] if indices is None else list(indices):
            if i < 0:
                result.append("")
                continue
            tensor = subgraph.tensors[i]
            data = model.buffers[tensor.buffer].data
            if data is None or len(data) == 0:
                result.append(types[tensor.type])
        return result

    result = []
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        result.append((names[builtin], dtypes(op.inputs), dtypes(op.outputs)))
    return result


# --------------------------------------------------------------------------------------------
# Integer versions of the operators ai-edge-quantizer 0.10.0 leaves in float
# --------------------------------------------------------------------------------------------
#
# The quantizer has no recipe entry for LEAKY_RELU, a stand-alone RELU6, SQUEEZE, EXPAND_DIMS or
# UNIDIRECTIONAL_SEQUENCE_LSTM: it keeps them float between a DEQUANTIZE and a QUANTIZE. We give
# them integer tensors the way TFLite's own converter does, with calibrated ranges of the float
# model: LEAKY_RELU an output of its own range, RELU6/SQUEEZE/EXPAND_DIMS their input's
# parameters (TFLM's int8 RELU6 clamps without requantizing), the LSTM the converter's int8
# layout (see `_integer_lstm`). The DEQUANTIZE/QUANTIZE pair around them disappears.

_FLOAT_ISLAND_OPS = (
    "LEAKY_RELU",
    "RELU6",
    "SQUEEZE",
    "EXPAND_DIMS",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
)
# Operators whose integer output has its input's parameters (TFLM's RELU6 clamps without
# requantizing; SQUEEZE and EXPAND_DIMS only change the shape).
_SAME_AS_INPUT = ("RELU6", "SQUEEZE", "EXPAND_DIMS")


def _op_name(model: object, op: object) -> str:
    names = {v: k for k, v in vars(_schema().BuiltinOperator).items() if k.isupper()}
    code = model.operatorCodes[op.opcodeIndex]
    return names[max(code.builtinCode, code.deprecatedBuiltinCode)]


def _asymmetric_int8(low: float, high: float) -> tuple[float, int]:
    """ai-edge-quantizer's own int8 activation parameters for a calibrated range."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    zp, scale = uqt.tensor_zp_scale_from_min_max(
        np.array(low, np.float32),
        np.array(high, np.float32),
        8,
        False,
        qtyping.QuantGranularity.TENSORWISE,
    )
    return float(scale), int(zp)


def _set_quant(tensor: object, dtype: str, scale: list[float], zero_point: list[int]) -> None:
    quant = _schema().QuantizationParametersT()
    quant.scale = [float(s) for s in scale]
    quant.zeroPoint = [int(z) for z in zero_point]
    quant.quantizedDimension = 0
    tensor.type, tensor.quantization = _TYPES[dtype], quant


def _integerize_float_islands(
    model: object, ranges: dict[str, tuple[float, float]], lstm_cell: dict[str, float]
) -> bool:
    """Rewrite, in place, the float operators the quantizer left (see above) as integer ones.
    `ranges`: calibrated (min, max) per tensor name; `lstm_cell`: max |cell state| per LSTM
    output name."""
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors
    ops = list(subgraph.operators)
    producer = {o: op for op in ops for o in op.outputs}
    island = [op for op in ops if _op_name(model, op) in _FLOAT_ISLAND_OPS]
    alias: dict[int, int] = {}
    dead = []
    for op in ops:
        kind = _op_name(model, op)
        if kind == "DEQUANTIZE" and tensors[op.outputs[0]].type == _TYPES["float32"]:
            alias[op.outputs[0]] = op.inputs[0]
            dead.append(op)
        elif kind == "QUANTIZE" and producer.get(op.inputs[0]) in island:
            source, target = tensors[op.inputs[0]], tensors[op.outputs[0]]
            source.type, source.quantization = target.type, target.quantization
            alias[op.outputs[0]] = op.inputs[0]
            dead.append(op)
    subgraph.operators = [op for op in ops if op not in dead]
    for op in subgraph.operators:
        op.inputs = [alias.get(i, i) for i in op.inputs]
    for op in island:
        kind = _op_name(model, op)
        source, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if kind in _SAME_AS_INPUT:
            out.type, out.quantization = source.type, source.quantization
        elif kind == "LEAKY_RELU" and out.type == _TYPES["float32"]:
            scale, zp = _asymmetric_int8(*ranges[out.name.decode()])
            _set_quant(out, "int8", [scale], [zp])
        elif kind == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            _integer_lstm(model, op, lstm_cell[out.name.decode()])
    _drop_unused(model, alias)
    return True


def _drop_unused(model: object, alias: dict[int, int]) -> None:
    """Point every reference through `alias`, then remove tensors and operator codes that no
    operator uses any more (renumbering the rest)."""
    subgraph = model.subgraphs[0]
    subgraph.inputs = [alias.get(i, i) for i in subgraph.inputs]
    subgraph.outputs = [alias.get(i, i) for i in subgraph.outputs]
    for signature in model.signatureDefs or []:
        for entry in [*signature.inputs, *signature.outputs]:
            entry.tensorIndex = alias.get(entry.tensorIndex, entry.tensorIndex)
    used = {*subgraph.inputs, *subgraph.outputs}
    for op in subgraph.operators:
        used.update(i for i in [*op.inputs, *op.outputs, *(op.intermediates or [])] if i >= 0)
    renumber = {old: new for new, old in enumerate(sorted(used))}
    subgraph.tensors = [subgraph.tensors[old] for old in sorted(used)]

    def remap(indices: object) -> list[int]:
        return [renumber[i] if i >= 0 else i for i in indices]

    for op in subgraph.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = remap(op.intermediates)
    subgraph.inputs, subgraph.outputs = remap(subgraph.inputs), remap(subgraph.outputs)
    for signature in model.signatureDefs or []:
        for entry in [*signature.inputs, *signature.outputs]:
            entry.tensorIndex = renumber[entry.tensorIndex]
    codes = sorted({op.opcodeIndex for op in subgraph.operators})
    model.operatorCodes = [model.operatorCodes[c] for c in codes]
    for op in subgraph.operators:
        op.opcodeIndex = codes.index(op.opcodeIndex)


def _integer_lstm(model: object, op: object, cell_max: float) -> None:
    """Quantize a float UNIDIRECTIONAL_SEQUENCE_LSTM in place as TFLite's converter lays out an
    int8 one (compare tflite-micro's examples/mnist_lstm/trained_lstm_int8.tflite): int8 input
    and output (the calibrated parameters the quantizer gave them), int8 symmetric per-tensor
    weights, int32 gate biases at input scale × input-weight scale, an int8 hidden-state
    variable with the output's parameters, an int16 cell-state variable with a power-of-two
    scale covering the calibrated |cell| range, and the five converter intermediates (four
    per-gate float placeholders, the effective hidden scale)."""
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors
    x, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
    in_scale = float(x.quantization.scale[0])
    weight_scales = {}
    for slot in range(1, 9):
        tensor = tensors[op.inputs[slot]]
        buffer = model.buffers[tensor.buffer]
        w = np.frombuffer(bytes(buffer.data), np.float32).reshape(tensor.shape)
        scale = max(float(np.abs(w).max()), 1e-9) / 127.0
        buffer.data = np.frombuffer(
            np.clip(np.round(w / scale), -127, 127).astype(np.int8).tobytes(), np.uint8
        )
        _set_quant(tensor, "int8", [scale], [0])
        weight_scales[slot] = scale
    for gate, slot in enumerate(range(12, 16)):
        tensor = tensors[op.inputs[slot]]
        buffer = model.buffers[tensor.buffer]
        b = np.frombuffer(bytes(buffer.data), np.float32)
        scale = in_scale * weight_scales[1 + gate]
        buffer.data = np.frombuffer(np.round(b / scale).astype(np.int32).tobytes(), np.uint8)
        _set_quant(tensor, "int32", [scale], [0])
    out_q = out.quantization
    _set_quant(tensors[op.inputs[18]], "int8", list(out_q.scale), list(out_q.zeroPoint))
    cell_scale = 2.0 ** int(np.ceil(np.log2(max(cell_max, 2.0**-15)))) / 32768.0
    _set_quant(tensors[op.inputs[19]], "int16", [cell_scale], [0])
    schema = _schema()
    intermediates = []
    for name in ("input_to_input", "input_to_forget", "input_to_cell", "input_to_output"):
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = f"{name}_intermediate", [0], _TYPES["float32"]
        tensors.append(tensor)
        intermediates.append(len(tensors) - 1)
    hidden = schema.TensorT()
    hidden.name, hidden.shape = "effective_hidden_scale_intermediate", [0]
    _set_quant(hidden, "int8", list(out_q.scale), list(out_q.zeroPoint))
    tensors.append(hidden)
    op.intermediates = [*intermediates, len(tensors) - 1]


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------


def _images(seed: int, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    """Image-like float inputs in [-1, 1] (smooth, as normalised pixels are)."""
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    out = []
    for _ in range(count):
        coarse = rng.uniform(-1, 1, (n, h // 4 + 1, w // 4 + 1, c))
        image = coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w]
        image = image + rng.normal(0, 0.15, shape)
        out.append(np.clip(image, -1, 1).astype(np.float32))
    return out


def _features(seed: int, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    """Feature-like float inputs (e.g. MFCC frames): normal, per-coefficient spread."""
    rng = np.random.default_rng(seed)
    spread = np.linspace(2.0, 0.5, shape[-1 if len(shape) == 3 else 2], dtype=np.float32)
    if len(shape) == 4:
        spread = spread[:, None]
    return [(rng.standard_normal(shape) * spread).astype(np.float32) for _ in range(count)]


def _quantize_input(model_path: Path, name: str, value: np.ndarray) -> np.ndarray:
    """`value` quantized with the integer model's parameters of input `name`."""
    subgraph = read_model(model_path).subgraphs[0]
    for index in subgraph.inputs:
        tensor = subgraph.tensors[index]
        if tensor.name.decode() == name:
            scale, zp = float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
            dtype = np.int16 if tensor.type == _TYPES["int16"] else np.int8
            info = np.iinfo(dtype)
            return np.clip(np.round(value / scale) + zp, info.min, info.max).astype(dtype)
    raise KeyError(name)


def _finish(
    net: FloatNet,
    directory: Path,
    stem: str,
    io: tuple[list[T], list[T]],
    data: Callable[[int, int], list[np.ndarray]],
    activations: int = 8,
    lstm_cell: dict[str, float] | None = None,
) -> tuple[Path, Inputs]:
    """Write `<stem>_float.tflite`, quantize it to `<stem>.tflite` with a fixed-seed
    calibration set, and return the integer model with a fixed-seed sample input (a new draw
    from the same distribution, quantized with the model's input parameters)."""
    directory = Path(directory)
    inputs, outputs = io
    name = net.w.tensors[inputs[0].index].name
    float_path = net.write(directory / f"{stem}_float.tflite", inputs, outputs)
    calibration = [{name: v} for v in data(1000, CALIBRATION_SAMPLES)]
    path = quantize(float_path, directory / f"{stem}.tflite", calibration, activations, lstm_cell)
    sample = data(2000, 1)[0]
    return path, {name: _quantize_input(path, name, sample)}


def vww_mobilenet_int8(directory: Path) -> tuple[Path, Inputs]:
    """MobileNetV1-0.25-style visual-wake-words net, int8 (per-channel weights): input "image"
    int8 (1, 48, 48, 3); PAD + CONV_2D stride 2 (RELU6), DEPTHWISE_CONV_2D + 1x1 CONV_2D pairs
    (stride-2 depthwise after an explicit PAD, as Keras' ZeroPadding2D writes them),
    AVERAGE_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX; output "probs" int8 (1, 2)."""
    net = FloatNet(91)
    image = net.input("image", (1, 48, 48, 3))
    x = net.pad(image, [(0, 0), (0, 1), (0, 1), (0, 0)])
    x = net.conv(x, 8, (3, 3), stride=2, padding=_VALID, act="RELU6")
    for channels, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
        if stride == 2:
            x = net.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
            x = net.depthwise(x, stride=2, padding=_VALID, act="RELU6")
        else:
            x = net.depthwise(x, act="RELU6")
        x = net.conv(x, channels, (1, 1), act="RELU6")
    x = net.pool(x, "AVERAGE_POOL_2D", x.shape[1], 1)
    x = net.reshape(x, (1, 64))
    probs = net.softmax(net.fc(x, 2), "probs")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _images(seed, image.shape, count)

    return _finish(net, directory, "vww_mobilenet_int8", ([image], [probs]), data)


def dscnn_kws_int8(directory: Path) -> tuple[Path, Inputs]:
    """DS-CNN keyword spotting (MLPerf Tiny's shape), int8: input "mfcc" int8 (1, 49, 10, 1);
    CONV_2D 10x4 stride 2 (64 channels, RELU), 4x (DEPTHWISE_CONV_2D 3x3 + 1x1 CONV_2D, RELU),
    AVERAGE_POOL_2D 25x5, RESHAPE, FULLY_CONNECTED 12, SOFTMAX; output "probs" int8 (1, 12)."""
    net = FloatNet(92)
    mfcc = net.input("mfcc", (1, 49, 10, 1))
    x = net.conv(mfcc, 64, (10, 4), stride=2)
    for _ in range(4):
        x = net.conv(net.depthwise(x), 64, (1, 1))
    x = net.pool(x, "AVERAGE_POOL_2D", (x.shape[1], x.shape[2]), 1)
    x = net.reshape(x, (1, 64))
    probs = net.softmax(net.fc(x, 12), "probs")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _features(seed, mfcc.shape, count)

    return _finish(net, directory, "dscnn_kws_int8", ([mfcc], [probs]), data)


def residual_int8(directory: Path) -> tuple[Path, Inputs]:
    """A MobileNetV3-style residual net, int8: CONV_2D (fused RELU6), MAX_POOL_2D, an inverted
    residual with HARD_SWISH and squeeze-excite (MEAN, LOGISTIC, broadcast MUL) closed by ADD,
    then a TANH branch and a SUB branch joined by CONCATENATION, LEAKY_RELU, RELU6, MEAN,
    RESHAPE, FULLY_CONNECTED. Input "image" int8 (1, 24, 24, 3), output "logits" int8 (1, 10).
    LEAKY_RELU and the stand-alone RELU6 are quantized by `_integerize_float_islands`."""
    net = FloatNet(93)
    image = net.input("image", (1, 24, 24, 3))
    x = net.conv(image, 16, (3, 3), act="RELU6")
    skip = net.pool(x, "MAX_POOL_2D", 2, 2)
    e = net.unary(net.conv(skip, 32, (1, 1), act="NONE"), "HARD_SWISH")
    d = net.unary(net.depthwise(e, act="NONE"), "HARD_SWISH")
    se = net.mean(d, [1, 2], keep_dims=True)
    se = net.conv(net.conv(se, 8, (1, 1)), 32, (1, 1), act="NONE")
    d = net.binary(d, net.unary(se, "LOGISTIC"), "MUL")
    r = net.binary(net.conv(d, 16, (1, 1), act="NONE"), skip, "ADD")
    a = net.unary(net.conv(r, 16, (3, 3), act="NONE"), "TANH")
    b = net.binary(r, net.conv(r, 16, (1, 1), act="NONE"), "SUB")
    c = net.concat([a, b], axis=3)
    c = net.unary(c, "LEAKY_RELU", net.w.options("LeakyReluOptions", alpha=0.2))
    c = net.unary(c, "RELU6")
    g = net.reshape(net.mean(c, [1, 2], keep_dims=True), (1, 32))
    logits = net.fc(g, 10, name="logits")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _images(seed, image.shape, count)

    return _finish(net, directory, "residual_int8", ([image], [logits]), data)


def int16x8_model(directory: Path) -> tuple[Path, Inputs]:
    """16x8 (int16 activations, int8 weights, `static_wi8_ai16`): CONV_2D (RELU), stride-2
    DEPTHWISE_CONV_2D (RELU), 1x1 CONV_2D, ADD, AVERAGE_POOL_2D, RESHAPE, FULLY_CONNECTED,
    SOFTMAX. Input "image" int16 (1, 16, 16, 3), output "probs" int16 (1, 5)."""
    net = FloatNet(94)
    image = net.input("image", (1, 16, 16, 3))
    x = net.conv(image, 16, (3, 3))
    x = net.depthwise(x, stride=2)
    x = net.binary(x, net.conv(x, 16, (1, 1), act="NONE"), "ADD")
    x = net.pool(x, "AVERAGE_POOL_2D", x.shape[1], 1)
    x = net.reshape(x, (1, 16))
    probs = net.softmax(net.fc(x, 5), "probs")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _images(seed, image.shape, count)

    return _finish(net, directory, "int16x8_model", ([image], [probs]), data, activations=16)


def lstm_int8(directory: Path) -> tuple[Path, Inputs]:
    """int8 UNIDIRECTIONAL_SEQUENCE_LSTM (hidden 20, int16 cell state) over 49 frames of 10
    features, then RESHAPE, FULLY_CONNECTED 12, SOFTMAX (the shape of tflite-micro's mnist_lstm
    example). Input "frames" int8 (1, 49, 10), output "probs" int8 (1, 12).

    ai-edge-quantizer 0.10.0 cannot quantize the LSTM (it has no UNIDIRECTIONAL_SEQUENCE_LSTM
    entry and leaves it float between DEQUANTIZE and QUANTIZE); it quantizes the rest and
    calibrates the LSTM's input and output, and `_integer_lstm` lays the LSTM out as TFLite's
    converter does."""
    net = FloatNet(95)
    frames = net.input("frames", (1, 49, 10))
    seq, weights = net.lstm(frames, 20, "lstm")
    x = net.reshape(seq, (1, 49 * 20))
    probs = net.softmax(net.fc(x, 12), "probs")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _features(seed, frames.shape, count)

    cell = max(weights.forward(v)[1] for v in data(1000, CALIBRATION_SAMPLES))
    return _finish(net, directory, "lstm_int8", ([frames], [probs]), data, lstm_cell={"lstm": cell})


def shape_ops_int8(directory: Path) -> tuple[Path, Inputs]:
    """Data-movement and matrix operators, int8: PADV2, DEPTHWISE_CONV_2D with depth multiplier
    2, STRIDED_SLICE (stride 2), SPLIT, TRANSPOSE, RESHAPE, SOFTMAX over the last axis of a
    rank-3 tensor, BATCH_MATMUL of two activations (attention-like: softmax weights × values),
    SQUEEZE, EXPAND_DIMS, RELU, FULLY_CONNECTED. Input "x" int8 (1, 12, 12, 4), output "y" int8
    (1, 3). SQUEEZE and EXPAND_DIMS are quantized by `_integerize_float_islands`."""
    net = FloatNet(96)
    x = net.input("x", (1, 12, 12, 4))
    pads = np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32)
    (p,) = net.op("PADV2", [x, pads, np.array(0.0, np.float32)], [(1, 14, 14, 4)])
    d = net.depthwise(p, padding=_VALID, multiplier=2)
    begin, end, strides = ([0, 1, 1, 0], [1, 11, 11, 8], [1, 2, 2, 1])
    (s,) = net.op(
        "STRIDED_SLICE",
        [d, *(np.array(v, np.int32) for v in (begin, end, strides))],
        [(1, 5, 5, 8)],
        net.w.options("StridedSliceOptions"),
    )
    a, b = net.op(
        "SPLIT",
        [np.array(3, np.int32), s],
        [(1, 5, 5, 4)] * 2,
        net.w.options("SplitOptions", numSplits=2),
    )
    (a,) = net.op("TRANSPOSE", [a, np.array([0, 3, 1, 2], np.int32)], [(1, 4, 5, 5)])
    a, b = net.softmax(net.reshape(a, (1, 4, 25)), "attention"), net.reshape(b, (1, 25, 4))
    (m,) = net.op("BATCH_MATMUL", [a, b], [(1, 4, 4)], net.w.options("BatchMatMulOptions"))
    (m,) = net.op("SQUEEZE", [m], [(4, 4)], net.w.options("SqueezeOptions", squeezeDims=[0]))
    (m,) = net.op("EXPAND_DIMS", [m, np.array([0], np.int32)], [(1, 4, 4)])
    m = net.unary(m, "RELU")
    y = net.fc(net.reshape(m, (1, 16)), 3, name="y")

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _images(seed, x.shape, count)

    return _finish(net, directory, "shape_ops_int8", ([x], [y]), data)


@dataclass(frozen=True)
class Int8Model:
    """A registry entry: builder, activation width, and the operators the model must contain
    (`operator_list`, space-separated)."""

    name: str
    build: Callable[[Path], tuple[Path, Inputs]]
    activation_bits: int
    operator_list: str

    @property
    def operators(self) -> frozenset[str]:
        """The TFLite builtin operators the model must contain."""
        return frozenset(self.operator_list.split())


INT8_MODELS: list[Int8Model] = [
    Int8Model(
        "vww_mobilenet_int8",
        vww_mobilenet_int8,
        8,
        "PAD CONV_2D DEPTHWISE_CONV_2D AVERAGE_POOL_2D RESHAPE FULLY_CONNECTED SOFTMAX",
    ),
    Int8Model(
        "dscnn_kws_int8",
        dscnn_kws_int8,
        8,
        "CONV_2D DEPTHWISE_CONV_2D AVERAGE_POOL_2D RESHAPE FULLY_CONNECTED SOFTMAX",
    ),
    Int8Model(
        "residual_int8",
        residual_int8,
        8,
        (
            "CONV_2D MAX_POOL_2D HARD_SWISH DEPTHWISE_CONV_2D MEAN LOGISTIC MUL ADD TANH SUB "
            "CONCATENATION LEAKY_RELU RELU6 RESHAPE FULLY_CONNECTED"
        ),
    ),
    Int8Model(
        "int16x8_model",
        int16x8_model,
        16,
        "CONV_2D DEPTHWISE_CONV_2D ADD AVERAGE_POOL_2D RESHAPE FULLY_CONNECTED SOFTMAX",
    ),
    Int8Model(
        "lstm_int8",
        lstm_int8,
        8,
        "UNIDIRECTIONAL_SEQUENCE_LSTM RESHAPE FULLY_CONNECTED SOFTMAX",
    ),
    Int8Model(
        "shape_ops_int8",
        shape_ops_int8,
        8,
        (
            "PADV2 DEPTHWISE_CONV_2D STRIDED_SLICE SPLIT TRANSPOSE RESHAPE SOFTMAX BATCH_MATMUL "
            "SQUEEZE EXPAND_DIMS RELU FULLY_CONNECTED"
        ),
    ),
]
