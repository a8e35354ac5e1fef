"""Small models built at test time (never committed as binaries), each with a fixed-seed input.

Every builder takes a directory, writes one model file into it and returns
`(path, sample_inputs)`; `sample_inputs` maps each model input name to a numpy array drawn
from a fixed seed, so reference runs are reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

Inputs = dict[str, np.ndarray]
Builder = Callable[[Path], tuple[Path, Inputs]]

ONNX_OPSET = 13
ONNX_IR_VERSION = 8


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _weights(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------------------------
# ONNX written with onnx.helper
# --------------------------------------------------------------------------------------------


def _save_onnx(graph: object, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="microexport"
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _init(name: str, array: np.ndarray) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def mlp_onnx(directory: Path) -> tuple[Path, Inputs]:
    """2-layer MLP: Gemm → Relu → MatMul → Add, input "x" of shape (1, 16), output "y" (1, 4)."""
    from onnx import TensorProto, helper

    rng = _rng(1)
    inits = [
        _init("w1", _weights(rng, 32, 16)),
        _init("b1", _weights(rng, 32)),
        _init("w2", _weights(rng, 32, 4)),
        _init("b2", _weights(rng, 4)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("MatMul", ["h_relu", "w2"], ["z"]),
        helper.make_node("Add", ["z", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    path = Path(directory) / "mlp.onnx"
    _save_onnx(graph, path)
    return path, {"x": _rng(100).standard_normal((1, 16)).astype(np.float32)}


def _cnn_nodes(rng: np.random.Generator) -> tuple[list, list]:
    """Nodes and initializers of the CNN of `cnn_onnx`."""
    from onnx import helper

    inits = [
        _init("conv1_w", _weights(rng, 8, 3, 3, 3)),
        _init("conv1_b", _weights(rng, 8)),
        _init("dw_w", _weights(rng, 8, 1, 3, 3)),
        _init("dw_b", _weights(rng, 8)),
        _init("pw_w", _weights(rng, 16, 16, 1, 1)),
        _init("fc_w", _weights(rng, 16, 5)),
        _init("fc_b", _weights(rng, 5)),
        _init("flat_shape", np.array([1, 16], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", "dw_w", "dw_b"], ["dw"], group=8, pads=[1, 1, 1, 1], strides=[1, 1]
        ),
        helper.make_node("Add", ["dw", "r1"], ["res"]),
        helper.make_node("MaxPool", ["res"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["res"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "pw_w"], ["pw"]),
        helper.make_node("GlobalAveragePool", ["pw"], ["gap"]),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return nodes, inits


def cnn_onnx(directory: Path) -> tuple[Path, Inputs]:
    """CNN with conv, depthwise conv, max/avg pool, residual add, concat and softmax.

    Input "image" (1, 3, 16, 16); outputs "probs" (1, 5) and "pooled" — the max-pool map
    (1, 8, 8, 8) — so the model also covers multiple outputs.
    """
    from onnx import TensorProto, helper

    nodes, inits = _cnn_nodes(_rng(2))
    nodes.append(helper.make_node("Identity", ["mp"], ["pooled"]))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 8, 8, 8]),
        ],
        initializer=inits,
    )
    path = Path(directory) / "cnn.onnx"
    _save_onnx(graph, path)
    return path, {"image": _rng(101).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def unsupported_onnx(directory: Path) -> tuple[Path, Inputs]:
    """A model with `LpNormalization`, an ONNX operator the TVM Relax frontend has no converter
    for and ONNX defines by no function (operators with a function body, such as Celu, are
    expanded into it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("LpNormalization", ["x"], ["y"], axis=-1, p=2)],
        "lpnormalization",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = Path(directory) / "lpnormalization.onnx"
    _save_onnx(graph, path)
    return path, {"x": _rng(102).standard_normal((1, 4)).astype(np.float32)}


def dynamic_onnx(directory: Path) -> tuple[Path, Inputs]:
    """`mlp_onnx`-like model whose input "x" has a symbolic batch dimension "batch"."""
    from onnx import TensorProto, helper

    rng = _rng(3)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[_init("w", _weights(rng, 2, 8)), _init("b", _weights(rng, 2))],
    )
    path = Path(directory) / "dynamic.onnx"
    _save_onnx(graph, path)
    return path, {"x": _rng(103).standard_normal((1, 8)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# ONNX as torch.onnx.export writes it
# --------------------------------------------------------------------------------------------


def _exported_cnn_module() -> object:
    import torch
    from torch import nn

    class ExportedCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(6 * 8 * 8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.bn(self.conv(x))))
            x = x.reshape(x.shape[0], -1)  # Shape → Gather → Unsqueeze → Concat → Reshape
            return self.fc(x)

    torch.manual_seed(4)
    module = ExportedCnn()
    with torch.no_grad():  # non-trivial running statistics so BatchNorm matters
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 1.5)
        module.bn.weight.uniform_(0.5, 1.5)
        module.bn.bias.uniform_(-0.5, 0.5)
    return module.eval()


def exported_onnx_cnn(directory: Path) -> tuple[Path, Inputs]:
    """CNN exported by `torch.onnx.export(dynamo=False)`: BatchNorm, a reshape whose target is
    computed from `x.shape`, initializers listed as graph inputs and a dynamic batch axis.

    Importing it needs `input_shapes={"input": (1, 3, 16, 16)}`.
    """
    module = _exported_cnn_module()
    path = Path(directory) / "exported_cnn.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, on purpose here
        warnings.simplefilter("ignore", DeprecationWarning)
        _torchscript_onnx_export(module, path)
    return path, {"input": _rng(104).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def _torchscript_onnx_export(module: object, path: Path) -> None:
    import torch

    torch.onnx.export(
        module,
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        keep_initializers_as_inputs=True,
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=False,
        opset_version=13,
    )


EXPORTED_ONNX_SHAPES = {"input": (1, 3, 16, 16)}


def _shape_math_module() -> object:
    from torch import nn

    class ShapeMath(nn.Module):
        def forward(self, x: object) -> object:
            import torch

            n, c, h, w = x.shape
            y = x.reshape(n, c * 2, h // 2, w)
            y = torch.nn.functional.interpolate(y, size=(h, w // 2))
            return y.flatten(1) * (h / 4)

    return ShapeMath().eval()


def exported_onnx_shape_math(directory: Path) -> tuple[Path, Inputs]:
    """A torch.onnx.export(dynamo=False) graph full of shape arithmetic on `x.shape`
    (Shape → Gather → Mul/Div → Cast → Unsqueeze → Concat → Reshape / Resize, and a scale
    factor h / 4 computed in float), with dynamic N, H, W: needs input_shapes
    {"x": (1, 4, 8, 8)}."""
    import torch

    path = Path(directory) / "shape_math.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _shape_math_module(),
            (torch.zeros(1, 4, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}},
            opset_version=13,
        )
    return path, {"x": _rng(111).standard_normal((1, 4, 8, 8)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# TFLite written with tflite-micro's flatbuffer schema (object API)
# --------------------------------------------------------------------------------------------


def _schema() -> object:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


_TFLITE_TYPES = {"float32": 0, "float16": 1, "int32": 2, "int64": 4, "int16": 7, "int8": 9}


class TfliteWriter:
    """Collects tensors, buffers and operators of a one-subgraph TFLite model."""

    def __init__(self) -> None:
        schema = _schema()
        self.schema = schema
        self.tensors: list = []
        self.buffers: list = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.operators: list = []
        self.opcodes: list[int] = []

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        data: np.ndarray | None = None,
        scale: list[float] | None = None,
        zero_point: list[int] | None = None,
        axis: int = 0,
    ) -> int:
        """Add a tensor (a constant when `data` is given); returns its index."""
        schema = self.schema
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = name, list(shape), _TFLITE_TYPES[dtype]
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        if scale is not None:
            quant = schema.QuantizationParametersT()
            quant.scale = [float(s) for s in scale]
            quant.zeroPoint = [int(z) for z in (zero_point or [0] * len(scale))]
            quant.quantizedDimension = axis
            tensor.quantization = quant
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def operator(
        self, builtin: str, inputs: list[int], outputs: list[int], options: object = None
    ) -> None:
        """Add an operator given its BuiltinOperator name and its options object (or None)."""
        schema = self.schema
        code = getattr(schema.BuiltinOperator, builtin)
        if code not in self.opcodes:
            self.opcodes.append(code)
        op = schema.OperatorT()
        op.opcodeIndex = self.opcodes.index(code)
        op.inputs, op.outputs = inputs, outputs
        if options is not None:
            kind = type(options).__name__.removesuffix("T")
            op.builtinOptionsType = getattr(schema.BuiltinOptions, kind)
            op.builtinOptions = options
        self.operators.append(op)

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        """Serialize the model to `path` with file identifier TFL3."""
        import flatbuffers

        schema = self.schema
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs, subgraph.name = inputs, outputs, "main"
        model = schema.ModelT()
        model.version, model.description = 3, "microexport test model"
        model.subgraphs, model.buffers = [subgraph], self.buffers
        model.operatorCodes = []
        for code in self.opcodes:
            opcode = schema.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode = code, min(code, 127)
            model.operatorCodes.append(opcode)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.write_bytes(bytes(builder.Output()))
        return path

    def options(self, kind: str, **fields: object) -> object:
        """An options object, e.g. `options("Conv2DOptions", padding=0)`."""
        obj = getattr(self.schema, kind + "T")()
        for key, value in fields.items():
            setattr(obj, key, value)
        return obj


def _conv2d_nhwc(x: np.ndarray, w: np.ndarray, b: np.ndarray, depthwise: bool) -> np.ndarray:
    """Float reference of a stride-1 SAME 3x3 conv; `w` is OHWI (or 1HWC when depthwise)."""
    n, h, wd, _ = x.shape
    kh, kw = w.shape[1:3]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[3] if depthwise else w.shape[0]), np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, i : i + h, j : j + wd, :]
            if depthwise:
                out += patch * w[0, i, j, :]
            else:
                out += np.einsum("nhwc,oc->nhwo", patch, w[:, i, j, :])
    return out + b


def _act_quant(values: np.ndarray) -> tuple[float, int]:
    """Per-tensor int8 (scale, zero point) covering the range of `values` and 0."""
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def _quantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)


def _channel_scales(w: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    return np.maximum(np.abs(w).max(axis=reduce), 1e-6) / 127.0


class _Int8Cnn:
    """Float weights of the int8 CNN plus a float forward pass used to calibrate scales."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.conv_w, self.conv_b = _weights(rng, 4, 3, 3, 3), _weights(rng, 4, scale=0.1)
        self.dw_w, self.dw_b = _weights(rng, 1, 3, 3, 4), _weights(rng, 4, scale=0.1)
        self.fc_w, self.fc_b = _weights(rng, 5, 64, scale=0.2), _weights(rng, 5, scale=0.1)

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        acts = {"input": x}
        acts["conv"] = np.maximum(_conv2d_nhwc(x, self.conv_w, self.conv_b, False), 0)
        acts["dw"] = _conv2d_nhwc(acts["conv"], self.dw_w, self.dw_b, True)
        acts["add"] = acts["conv"] + acts["dw"]
        n, h, w, c = acts["add"].shape
        acts["pool"] = acts["add"].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        acts["output"] = acts["pool"].reshape(n, -1) @ self.fc_w.T + self.fc_b
        return acts


INPUT_SCALE, INPUT_ZERO_POINT = 0.02, -10


def _int8_sample(seed: int) -> np.ndarray:
    return _rng(seed).integers(-128, 128, size=(1, 8, 8, 3), dtype=np.int8)


def _calibrate(net: _Int8Cnn) -> dict[str, tuple[float, int]]:
    """Activation (scale, zero point) per tensor from a few fixed-seed inputs."""
    batch = np.concatenate([_int8_sample(s) for s in range(200, 208)]).astype(np.float32)
    acts = net.forward((batch - INPUT_ZERO_POINT) * INPUT_SCALE)
    quant = {name: _act_quant(value) for name, value in acts.items()}
    quant["input"] = (INPUT_SCALE, INPUT_ZERO_POINT)
    quant["pool"] = quant["add"]  # TFLite requires equal input/output params for pooling
    return quant


def _int8_conv_layers(writer: TfliteWriter, net: _Int8Cnn, q: dict, x: int) -> int:
    """CONV_2D (+RELU) → DEPTHWISE_CONV_2D → ADD (residual); returns the ADD output tensor."""
    conv_s = _channel_scales(net.conv_w, 0)
    conv_w = writer.tensor(
        "conv/weights",
        net.conv_w.shape,
        "int8",
        np.round(net.conv_w / conv_s[:, None, None, None]).astype(np.int8),
        list(conv_s),
    )
    conv_bs = conv_s * q["input"][0]
    conv_b = writer.tensor(
        "conv/bias", (4,), "int32", np.round(net.conv_b / conv_bs).astype(np.int32), list(conv_bs)
    )
    conv = writer.tensor("conv", (1, 8, 8, 4), "int8", None, [q["conv"][0]], [q["conv"][1]])
    writer.operator(
        "CONV_2D",
        [x, conv_w, conv_b],
        [conv],
        writer.options("Conv2DOptions", padding=0, strideW=1, strideH=1, fusedActivationFunction=1),
    )
    return _int8_depthwise_add(writer, net, q, conv)


def _int8_depthwise_add(writer: TfliteWriter, net: _Int8Cnn, q: dict, conv: int) -> int:
    """DEPTHWISE_CONV_2D (per-channel, quantized dimension 3) → ADD with its own input."""
    dw_s = _channel_scales(net.dw_w, 3)
    dw_w = writer.tensor(
        "dw/weights",
        net.dw_w.shape,
        "int8",
        np.round(net.dw_w / dw_s).astype(np.int8),
        list(dw_s),
        axis=3,
    )
    dw_bs = dw_s * q["conv"][0]
    dw_b = writer.tensor(
        "dw/bias", (4,), "int32", np.round(net.dw_b / dw_bs).astype(np.int32), list(dw_bs)
    )
    dw = writer.tensor("dw", (1, 8, 8, 4), "int8", None, [q["dw"][0]], [q["dw"][1]])
    writer.operator(
        "DEPTHWISE_CONV_2D",
        [conv, dw_w, dw_b],
        [dw],
        writer.options(
            "DepthwiseConv2DOptions", padding=0, strideW=1, strideH=1, depthMultiplier=1
        ),
    )
    add = writer.tensor("add", (1, 8, 8, 4), "int8", None, [q["add"][0]], [q["add"][1]])
    writer.operator("ADD", [conv, dw], [add], writer.options("AddOptions"))
    return add


def _int8_head(writer: TfliteWriter, net: _Int8Cnn, q: dict, add: int, reshape: bool = True) -> int:
    """AVERAGE_POOL_2D → RESHAPE → FULLY_CONNECTED (without the RESHAPE, FULLY_CONNECTED
    flattens its rank-4 input itself); returns the output tensor."""
    pool = writer.tensor("pool", (1, 4, 4, 4), "int8", None, [q["pool"][0]], [q["pool"][1]])
    writer.operator(
        "AVERAGE_POOL_2D",
        [add],
        [pool],
        writer.options(
            "Pool2DOptions", padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2
        ),
    )
    # An explicit RESHAPE to (1, 64), NHWC order, as converters emit (TVM's FULLY_CONNECTED does
    # not flatten a rank-4 input itself).
    flat = pool
    if reshape:
        shape = writer.tensor("flatten/shape", (2,), "int32", np.array([1, 64], np.int32))
        flat = writer.tensor("flatten", (1, 64), "int8", None, [q["pool"][0]], [q["pool"][1]])
        writer.operator(
            "RESHAPE", [pool, shape], [flat], writer.options("ReshapeOptions", newShape=[1, 64])
        )
    fc_s = float(np.abs(net.fc_w).max() / 127.0)
    fc_w = writer.tensor(
        "fc/weights", net.fc_w.shape, "int8", np.round(net.fc_w / fc_s).astype(np.int8), [fc_s]
    )
    fc_bs = fc_s * q["pool"][0]
    fc_b = writer.tensor(
        "fc/bias", (5,), "int32", np.round(net.fc_b / fc_bs).astype(np.int32), [fc_bs]
    )
    out = writer.tensor("output", (1, 5), "int8", None, [q["output"][0]], [q["output"][1]])
    writer.operator(
        "FULLY_CONNECTED", [flat, fc_w, fc_b], [out], writer.options("FullyConnectedOptions")
    )
    return out


def int8_tflite(directory: Path) -> tuple[Path, Inputs]:
    """Fully int8-quantized CNN: CONV_2D (per-channel, fused RELU) → DEPTHWISE_CONV_2D
    (per-channel) → ADD (residual) → AVERAGE_POOL_2D → RESHAPE → FULLY_CONNECTED (per-tensor).

    Input "input" int8 (1, 8, 8, 3) with scale 0.02 / zero point -10; output "output" int8
    (1, 5). Biases are int32 with scale input_scale × weight_scale.
    """
    net = _Int8Cnn(_rng(5))
    q = _calibrate(net)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 8, 8, 3), "int8", None, [INPUT_SCALE], [INPUT_ZERO_POINT])
    out = _int8_head(writer, net, q, _int8_conv_layers(writer, net, q, x))
    path = writer.write(Path(directory) / "int8_cnn.tflite", [x], [out])
    return path, {"input": _int8_sample(105)}


def int8_fc_rank4_tflite(directory: Path) -> tuple[Path, Inputs]:
    """`int8_tflite` without the RESHAPE: FULLY_CONNECTED takes the (1, 4, 4, 4) pool output."""
    net = _Int8Cnn(_rng(5))
    q = _calibrate(net)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 8, 8, 3), "int8", None, [INPUT_SCALE], [INPUT_ZERO_POINT])
    out = _int8_head(writer, net, q, _int8_conv_layers(writer, net, q, x), reshape=False)
    path = writer.write(Path(directory) / "int8_fc_rank4.tflite", [x], [out])
    return path, {"input": _int8_sample(105)}


def float16_tflite(directory: Path) -> tuple[Path, Inputs]:
    """Float32 FULLY_CONNECTED whose weights are stored as float16 and DEQUANTIZE'd: TFLite
    Micro cannot run it (its DEQUANTIZE takes integer inputs only), LiteRT can."""
    rng = _rng(6)
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8), "float32")
    w16 = writer.tensor("w16", (3, 8), "float16", _weights(rng, 3, 8).astype(np.float16))
    w = writer.tensor("w", (3, 8), "float32")
    b = writer.tensor("b", (3,), "float32", _weights(rng, 3))
    y = writer.tensor("y", (1, 3), "float32")
    writer.operator("DEQUANTIZE", [w16], [w])
    writer.operator("FULLY_CONNECTED", [x, w, b], [y], writer.options("FullyConnectedOptions"))
    path = writer.write(Path(directory) / "float16.tflite", [x], [y])
    return path, {"x": _rng(106).standard_normal((1, 8)).astype(np.float32)}


def dynamic_range_tflite(directory: Path) -> tuple[Path, Inputs]:
    """FULLY_CONNECTED with float input/output and int8 weights (dynamic-range quantization)."""
    rng = _rng(7)
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8), "float32")
    w = writer.tensor(
        "w", (3, 8), "int8", rng.integers(-127, 128, (3, 8), dtype=np.int8), [0.01], [0]
    )
    b = writer.tensor("b", (3,), "float32", _weights(rng, 3))
    y = writer.tensor("y", (1, 3), "float32")
    writer.operator("FULLY_CONNECTED", [x, w, b], [y], writer.options("FullyConnectedOptions"))
    path = writer.write(Path(directory) / "dynamic_range.tflite", [x], [y])
    return path, {"x": _rng(107).standard_normal((1, 8)).astype(np.float32)}


def unsupported_tflite(directory: Path) -> tuple[Path, Inputs]:
    """DYNAMIC_UPDATE_SLICE, a builtin the TVM Relax TFLite frontend has no converter for."""
    writer = TfliteWriter()
    x = writer.tensor("x", (4, 4), "float32")
    update = writer.tensor("update", (2, 2), "float32", np.ones((2, 2), np.float32))
    start = writer.tensor("start", (2,), "int32", np.array([1, 1], np.int32))
    y = writer.tensor("y", (4, 4), "float32")
    writer.operator("DYNAMIC_UPDATE_SLICE", [x, update, start], [y])
    path = writer.write(Path(directory) / "dynamic_update_slice.tflite", [x], [y])
    return path, {"x": _rng(108).standard_normal((4, 4)).astype(np.float32)}


def sine_float(directory: Path | None = None) -> tuple[Path, Inputs]:
    """tflite-micro's shipped `sine_float.tflite` (float32 (1, 1) → (1, 1)); no file is written."""
    from importlib import resources

    path = Path(str(resources.files("tflite_micro.python.tflite_micro") / "sine_float.tflite"))
    return path, {_sine_input_name(path): np.array([[0.5]], dtype=np.float32)}


def _sine_input_name(path: Path) -> str:
    schema = _schema()
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    subgraph = model.Subgraphs(0)
    return subgraph.Tensors(subgraph.Inputs(0)).Name().decode()


# --------------------------------------------------------------------------------------------
# PyTorch ExportedProgram (.pt2)
# --------------------------------------------------------------------------------------------


def _torch_cnn() -> object:
    import torch
    from torch import nn

    class TorchCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 2 * 2, 3)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(image))
            x = torch.nn.functional.max_pool2d(x, 2)
            x = self.pool(torch.relu(self.conv2(x)))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(8)
    return TorchCnn().eval()


def torch_cnn_pt2(directory: Path) -> tuple[Path, Inputs]:
    """PyTorch CNN (conv, relu, max/avg pool, linear) exported with `torch.export` and saved
    with `torch.export.save`: input "image" (1, 1, 16, 16), one output (1, 3)."""
    import torch

    example = torch.zeros(1, 1, 16, 16)
    program = torch.export.export(_torch_cnn(), (example,))
    path = Path(directory) / "torch_cnn.pt2"
    torch.export.save(program, str(path))
    return path, {"image": _rng(109).standard_normal((1, 1, 16, 16)).astype(np.float32)}


def dynamic_torch_pt2(directory: Path) -> tuple[Path, Inputs]:
    """The CNN of `torch_cnn_pt2` exported with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(
        _torch_cnn(), (torch.zeros(2, 1, 16, 16),), dynamic_shapes={"image": {0: batch}}
    )
    path = Path(directory) / "dynamic_torch_cnn.pt2"
    torch.export.save(program, str(path))
    return path, {"image": _rng(110).standard_normal((1, 1, 16, 16)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# The zoo: models every stage is tested with
# --------------------------------------------------------------------------------------------

ZooEntry = tuple[str, Builder, dict[str, tuple[int, ...]] | None]

ZOO: list[ZooEntry] = [
    ("mlp_onnx", mlp_onnx, None),
    ("cnn_onnx", cnn_onnx, None),
    ("exported_onnx_cnn", exported_onnx_cnn, EXPORTED_ONNX_SHAPES),
    ("int8_tflite", int8_tflite, None),
    ("float16_tflite", float16_tflite, None),
    ("sine_float", sine_float, None),
    ("torch_cnn_pt2", torch_cnn_pt2, None),
    ("dynamic_torch_pt2", dynamic_torch_pt2, {"image": (1, 1, 16, 16)}),
]

# Models that must be refused: (name, builder, input_shapes, error class name, message part).
BROKEN: list[tuple[str, Builder, dict[str, tuple[int, ...]] | None, str, str]] = [
    ("unsupported_onnx", unsupported_onnx, None, "UnsupportedOperator", "'LpNormalization'"),
    (
        "unsupported_tflite",
        unsupported_tflite,
        None,
        "UnsupportedOperator",
        "'DYNAMIC_UPDATE_SLICE'",
    ),
    ("dynamic_onnx", dynamic_onnx, None, "DynamicShape", "--input-shape x:1x8"),
    ("exported_onnx_cnn", exported_onnx_cnn, None, "DynamicShape", "--input-shape input:1x3x16x16"),
    ("dynamic_torch_pt2", dynamic_torch_pt2, None, "DynamicShape", "--input-shape image:1x1x16x16"),
    ("dynamic_range_tflite", dynamic_range_tflite, None, "ModelError", "dynamic-range quantized"),
]
