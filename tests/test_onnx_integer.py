"""Quantized ONNX models (onnxruntime's QDQ and QOperator formats) compile to integer kernels.

Float models built with `onnx.helper` (conv, depthwise conv, residual Add, max/average/global
pooling, Gemm, MatMul, Relu) are quantized by `onnxruntime.quantization.quantize_static` with a
fixed-seed calibration reader: int8 and uint8 activations, per-channel and per-tensor weights,
uint8 weights with zero points, QDQ and QOperator (QLinearConv, QLinearMatMul, com.microsoft's
QLinearAdd / QLinearGlobalAveragePool / QGemm). The compiled C runs on the host (one model also
on Cortex-M3 in QEMU); its outputs are within one quantization step of onnxruntime's (whose
kernels requantize in float and round half to even), and no kernel between the float model
edges (quantize / dequantize) does float arithmetic. graph.json and the TIR JSON carry the scales
and zero points the ONNX file states for every integer tensor and quantized initializer.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_program

import microexport

SEED = 20261130
CALIBRATION_SAMPLES = 16


def _init(name: str, array: np.ndarray) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def cnn_model(path: Path) -> dict[str, tuple[int, ...]]:
    """Conv+Relu, depthwise conv, residual Add, MaxPool, AveragePool (padded),
    GlobalAveragePool, Flatten, Gemm: a small NCHW image classifier."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(SEED)
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "w3", "b3"], ["c3"], strides=[1, 1]),
        node("Add", ["c3", "r1"], ["a"]),
        node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("GlobalAveragePool", ["q"], ["g"]),
        node("Flatten", ["g"], ["f"]),
        node("Gemm", ["f", "w4", "b4"], ["y"], transB=1),
    ]
    inits = [
        _init("w1", rng.normal(size=(8, 3, 3, 3)) * 0.3), _init("b1", rng.normal(size=8) * 0.1),
        _init("w2", rng.normal(size=(8, 1, 3, 3)) * 0.3), _init("b2", rng.normal(size=8) * 0.1),
        _init("w3", rng.normal(size=(8, 8, 1, 1)) * 0.3), _init("b3", rng.normal(size=8) * 0.1),
        _init("w4", rng.normal(size=(5, 8)) * 0.3), _init("b4", rng.normal(size=5) * 0.1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"x": (1, 3, 12, 12)}


def mlp_model(path: Path) -> dict[str, tuple[int, ...]]:
    """MatMul on a 3-D input (rows of tokens) + bias + Relu, MatMul + bias."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(SEED + 1)
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["h1"]),
        node("Relu", ["h1"], ["r1"]),
        node("MatMul", ["r1", "w2"], ["m2"]),
        node("Add", ["m2", "b2"], ["y"]),
    ]
    inits = [
        _init("w1", rng.normal(size=(16, 24)) * 0.3), _init("b1", rng.normal(size=24) * 0.1),
        _init("w2", rng.normal(size=(24, 6)) * 0.3), _init("b2", rng.normal(size=6) * 0.1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"x": (1, 4, 16)}


MODELS: dict[str, Callable[[Path], dict[str, tuple[int, ...]]]] = {
    "cnn": cnn_model,
    "mlp": mlp_model,
}

# name → (format, activation type, weight type, per channel)
CONFIGS = {
    "qdq_s8_per_channel": ("QDQ", "QInt8", "QInt8", True),
    "qdq_u8_per_tensor": ("QDQ", "QUInt8", "QInt8", False),
    "qdq_u8_u8_weights": ("QDQ", "QUInt8", "QUInt8", True),
    "qoperator_u8": ("QOperator", "QUInt8", "QUInt8", False),
}


def quantize(float_path: Path, out: Path, shapes: dict[str, tuple[int, ...]], config: str
             ) -> None:
    """quantize_static with a fixed-seed calibration reader."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fmt, activations, weights, per_channel = CONFIGS[config]
    rng = np.random.default_rng(SEED + 2)
    samples = [{name: rng.normal(size=shape).astype(np.float32)
                for name, shape in shapes.items()} for _ in range(CALIBRATION_SAMPLES)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat[fmt],
                    activation_type=QuantType[activations], weight_type=QuantType[weights],
                    per_channel=per_channel)


def output_step(path: Path) -> float:
    """The scale of the DequantizeLinear computing the model's (single) output."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    output = model.graph.output[0].name
    node = next(n for n in model.graph.node if output in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    scale = next(i for i in model.graph.initializer if i.name == node.input[1])
    return float(numpy_helper.to_array(scale))


def sample_inputs(shapes: dict[str, tuple[int, ...]], count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(SEED + 3)
    return [{name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
            for _ in range(count)]


def onnxruntime_outputs(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple]:
    """`built(model, config)` → (quantized model, archive, input shapes), built once."""
    require_module("onnxruntime", "onnx")
    cache: dict[tuple[str, str], tuple[Path, Path, dict]] = {}

    def get(model: str, config: str) -> tuple[Path, Path, dict]:
        if (model, config) not in cache:
            directory = tmp_path_factory.mktemp(f"{model}_{config}")
            shapes = MODELS[model](directory / "float.onnx")
            quantized = directory / "quantized.onnx"
            quantize(directory / "float.onnx", quantized, shapes, config)
            archive = microexport.compile(str(quantized), output=directory / "m.tar",
                                          name="q").archive
            cache[model, config] = (quantized, archive, shapes)
        return cache[model, config]

    return get


CASES = [(model, config) for model in MODELS for config in CONFIGS]


@pytest.mark.parametrize(("model", "config"), CASES)
def test_within_one_step_of_onnxruntime_on_host(model: str, config: str, built: Callable
                                                 ) -> None:
    path, archive, shapes = built(model, config)
    step = output_step(path)
    for inputs in sample_inputs(shapes, 2):
        (want,) = onnxruntime_outputs(path, inputs)
        got = microexport.run(archive, inputs)["y"]
        assert got.shape == want.shape and got.dtype == np.float32
        error = float(np.abs(got - want).max())
        assert error <= step * 1.0001, f"max abs error {error} = {error / step:.2f} steps"


def _kernels(source: str) -> dict[str, str]:
    """C function name → its definition (parameters and body), for every function defined in
    `source` (a float kernel may mention `float` in its parameters only)."""
    bodies = {}
    for match in re.finditer(r"^int32_t (\w+)(\([^)]*\) \{\n.*?^\})", source, re.M | re.S):
        bodies[match.group(1)] = match.group(2)
    return bodies


@pytest.mark.parametrize(("model", "config"), CASES)
def test_no_float_between_the_edges(model: str, config: str, built: Callable) -> None:
    """Only the quantize (float input) and dequantize (float output) kernels and the AOT main
    (which passes the float buffers) mention float; weights are integer constants."""
    _, archive, _ = built(model, config)
    with tarfile.open(archive) as tar:
        metadata = json.load(tar.extractfile("./metadata.json"))
        library = tar.extractfile("./codegen/host/src/tvmgen_q_lib.c").read().decode()
    kernels = _kernels(library)
    assert kernels, library[:2000]
    floating = {name for name, body in kernels.items()
                if "float" in body or "double" in body}
    edges = {name for name in floating
             if re.search(r"_(de)?quantize\d*$", name) or name.endswith("___tvm_main__")}
    assert floating == edges, f"float arithmetic in {sorted(floating - edges)}"
    assert any(re.search(r"_quantize\d*$", name) for name in kernels)
    assert any(re.search(r"_dequantize\d*$", name) for name in kernels)
    integer = [name for name in kernels if "_int" in name]
    assert len(integer) >= 2, sorted(kernels)
    dtypes = {c["dtype"] for c in metadata["constants"]}
    assert dtypes <= {"int8", "uint8", "int16", "int32"}, dtypes


def _conv_chain_model(path: Path, middle: list, seed: int, extra: list | None = None,
                      last: str = "s") -> dict[str, tuple[int, ...]]:
    """Conv → `middle` (nodes from "c", 4 channels, to `last`) → 1x1 Conv to 3 channels, on
    an NCHW 1x2x6x6 input (`last="y"`: `middle` computes the output, no 1x1 Conv)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), *middle]
    if last != "y":
        nodes.append(helper.make_node("Conv", [last, "w2", "b2"], ["y"]))
    inits = [_init("w", rng.normal(size=(4, 2, 3, 3)) * 0.3), _init("b", np.zeros(4)),
             _init("w2", rng.normal(size=(3, 4, 1, 1)) * 0.3), _init("b2", np.zeros(3)),
             *(extra or [])]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"x": (1, 2, 6, 6)}


def _compile_and_compare(tmp_path: Path, middle: list, config: str, extra: list | None = None,
                         last: str = "s") -> dict[str, str]:
    """Quantize and compile a `_conv_chain_model`, check it against onnxruntime within one
    step; returns the C kernels (name → body)."""
    require_module("onnxruntime", "onnx")
    shapes = _conv_chain_model(tmp_path / "float.onnx", middle, SEED + 4, extra, last)
    quantize(tmp_path / "float.onnx", tmp_path / "q.onnx", shapes, config)
    archive = microexport.compile(str(tmp_path / "q.onnx"), output=tmp_path / "m.tar",
                                  name="q").archive
    step = output_step(tmp_path / "q.onnx")
    for inputs in sample_inputs(shapes, 2):
        (want,) = onnxruntime_outputs(tmp_path / "q.onnx", inputs)
        got = microexport.run(archive, inputs)["y"]
        assert float(np.abs(got - want).max()) <= step * 1.0001
    with tarfile.open(archive) as tar:
        return _kernels(tar.extractfile("./codegen/host/src/tvmgen_q_lib.c").read().decode())


def test_unmatched_operator_stays_float(tmp_path: Path) -> None:
    """A quantized operator the integer path does not take (Pow) computes through float as
    before, between integer kernels; outputs still agree with onnxruntime."""
    from onnx import helper, numpy_helper

    middle = [helper.make_node("Pow", ["c", "two"], ["s"])]
    kernels = _compile_and_compare(
        tmp_path, middle, "qdq_s8_per_channel",
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    assert sum("conv2d_int" in name for name in kernels) == 2, list(kernels)
    floating = [name for name, body in kernels.items() if "float" in body]
    assert any("power" in name for name in floating), floating


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qoperator_u8"])
def test_auto_pad_and_strides(config: str, tmp_path: Path) -> None:
    """auto_pad SAME_UPPER with stride 2 on a conv, SAME_LOWER on an average pool, a strided
    max pool (as converters from TensorFlow write them; onnxruntime refuses dilation with
    auto_pad). The pool is the model's output: a 2x2 average has many ties, which
    onnxruntime's float mean rounds either way, and a conv after it could turn a one-step
    difference into two."""
    from onnx import helper

    node = helper.make_node
    rng = np.random.default_rng(SEED + 7)
    middle = [node("Conv", ["c", "w3", "b3"], ["d"], auto_pad="SAME_UPPER", strides=[2, 2]),
              node("AveragePool", ["d"], ["p"], kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
              node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                   auto_pad="SAME_UPPER")]
    extra = [_init("w3", rng.normal(size=(4, 4, 3, 3)) * 0.3), _init("b3", np.zeros(4))]
    kernels = _compile_and_compare(tmp_path, middle, config, extra, last="y")
    main = next(body for name, body in kernels.items() if name.endswith("___tvm_main__"))
    for kernel in ("conv2d_int", "avg_pool_int"):
        assert kernel in main, main
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qdq_u8_per_tensor"])
def test_mul_and_concat(config: str, tmp_path: Path) -> None:
    """Mul (a gate: conv output times its sigmoid) and Concat of tensors with different
    quantization (requantized to the output's) are integer."""
    from onnx import helper

    node = helper.make_node
    middle = [node("Sigmoid", ["c"], ["g"]), node("Mul", ["c", "g"], ["m"]),
              node("Relu", ["c"], ["r"]), node("Concat", ["m", "r"], ["k"], axis=1),
              node("Conv", ["k", "w3", "b3"], ["s"])]
    rng = np.random.default_rng(SEED + 6)
    extra = [_init("w3", rng.normal(size=(4, 8, 1, 1)) * 0.3), _init("b3", np.zeros(4))]
    kernels = _compile_and_compare(tmp_path, middle, config, extra)
    main = next(body for name, body in kernels.items() if name.endswith("___tvm_main__"))
    assert "mul_int" in main, main
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qdq_u8_per_tensor"])
def test_elementwise_functions_as_tables(config: str, tmp_path: Path) -> None:
    """Sigmoid, Tanh, LeakyRelu and HardSigmoid between DequantizeLinear and QuantizeLinear
    become 256-entry tables computed at compile time: no float kernel between the edges."""
    from onnx import helper

    node = helper.make_node
    middle = [node("Sigmoid", ["c"], ["s1"]), node("Tanh", ["c"], ["t1"]),
              node("Add", ["s1", "t1"], ["a1"]), node("LeakyRelu", ["a1"], ["l1"], alpha=0.2),
              node("HardSigmoid", ["l1"], ["s"])]
    kernels = _compile_and_compare(tmp_path, middle, config)
    main = next(body for name, body in kernels.items() if name.endswith("___tvm_main__"))
    assert main.count("table_int") == 4, main  # one call each (equal kernels are shared)
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qoperator_u8"])
def test_qdq_model_in_qemu(config: str, built: Callable, tmp_path: Path) -> None:
    """The CNN (int8 QDQ per channel; uint8 QOperator) on Cortex-M3 (no FPU; float only in the
    edge kernels, in software): same outputs as on the host, within one step of onnxruntime."""
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, archive, shapes = built("cnn", config)
    (inputs,) = sample_inputs(shapes, 1)
    got = microexport.run(archive, inputs, board="mps2_an385", build_dir=tmp_path / "build")
    host = microexport.run(archive, inputs)
    assert np.array_equal(got["y"], host["y"])
    (want,) = onnxruntime_outputs(path, inputs)
    assert float(np.abs(got["y"] - want).max()) <= output_step(path) * 1.0001


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qoperator_u8"])
def test_microexport_test_allows_one_output_step(config: str, built: Callable) -> None:
    """`microexport test` compares a quantized ONNX model's float outputs with onnxruntime's
    within one step of the output's DequantizeLinear scale (and reports the error)."""
    path, _, _ = built("cnn", config)
    report = microexport.test(str(path), board="host")
    assert report.reference == "onnxruntime"
    assert report.passed, report.summary()
    assert all(o.max_abs_error <= output_step(path) * 1.0001 for o in report.outputs)


def test_hand_written_qdq_activations(tmp_path: Path) -> None:
    """QDQ written by hand (quantize_static folds Relu and Clip into the QuantizeLinear's
    range): Conv → Relu → QuantizeLinear with the Relu kept, a standalone Clip between
    DequantizeLinear and QuantizeLinear of different scales, a Reshape between equal ones, and
    MatMul → Clip → QuantizeLinear; all integer, within one step of onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    require_module("onnxruntime", "onnx")
    rng = np.random.default_rng(SEED + 5)
    weight_scales = rng.uniform(0.005, 0.01, 4).astype(np.float32)

    def const(name: str, value: object, dtype: object) -> object:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    node = helper.make_node
    nodes = [
        node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0),
        node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("QuantizeLinear", ["r", "sr", "zr"], ["rq"]),
        node("DequantizeLinear", ["rq", "sr", "zr"], ["rd"]),
        node("Clip", ["rd", "lo", "hi"], ["k"]),
        node("QuantizeLinear", ["k", "sk", "zk"], ["kq"]),
        node("DequantizeLinear", ["kq", "sk", "zk"], ["kd"]),
        node("Reshape", ["kd", "shape"], ["f"]),
        node("QuantizeLinear", ["f", "sk", "zk"], ["fq"]),
        node("DequantizeLinear", ["fq", "sk", "zk"], ["fd"]),
        node("DequantizeLinear", ["mq", "sm", "zm"], ["md"], axis=1),
        node("MatMul", ["fd", "md"], ["mm"]),
        node("Clip", ["mm", "lo2", "hi2"], ["mc"]),
        node("QuantizeLinear", ["mc", "sy", "zy"], ["yq"]),
        node("DequantizeLinear", ["yq", "sy", "zy"], ["y"]),
    ]
    inits = [
        const("sx", 0.02, np.float32), const("zx", 3, np.int8),
        const("wq", rng.integers(-127, 128, (4, 2, 3, 3)), np.int8),
        const("sw", weight_scales, np.float32), const("zw", np.zeros(4), np.int8),
        # the bias scale is input scale x weight scale, as onnxruntime's fusion expects
        const("bq", rng.integers(-500, 500, 4), np.int32),
        const("sb", np.float32(0.02) * weight_scales, np.float32),
        const("sr", 0.03, np.float32), const("zr", -128, np.int8),
        const("lo", 0.5, np.float32), const("hi", 3.0, np.float32),
        const("sk", 0.025, np.float32), const("zk", -100, np.int8),
        const("shape", [1, 4, 36], np.int64),
        const("mq", rng.integers(-127, 128, (36, 5)), np.int8),
        const("sm", rng.uniform(0.002, 0.004, 5), np.float32), const("zm", np.zeros(5), np.int8),
        const("lo2", -1.0, np.float32), const("hi2", 1.5, np.float32),
        const("sy", 0.015, np.float32), const("zy", 10, np.int8),
    ]
    graph = helper.make_graph(
        nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "acts.onnx"
    onnx.save(model, str(path))
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="q").archive
    with tarfile.open(archive) as tar:
        library = tar.extractfile("./codegen/host/src/tvmgen_q_lib.c").read().decode()
    kernels = _kernels(library)
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating
    assert any("clamp_int" in name for name in kernels), sorted(kernels)
    for inputs in sample_inputs({"x": (1, 2, 6, 6)}, 2):
        inputs = {"x": inputs["x"] * 1.5}
        (want,) = onnxruntime_outputs(path, inputs)
        got = microexport.run(archive, inputs)["y"]
        assert float(np.abs(got - want).max()) <= 0.015 * 1.0001


def test_torch_exported_cnn(tmp_path: Path) -> None:
    """A CNN exported by torch.onnx.export (Conv, Relu, BatchNorm, MaxPool, a reshape target
    computed from x.shape, Gemm, a dynamic batch axis), quantized by quantize_static: all
    integer between the edges, within one step of onnxruntime."""
    require_module("torch", "torch")
    require_module("onnxruntime", "onnx")
    from zoo import EXPORTED_ONNX_SHAPES, exported_onnx_cnn

    float_path, inputs = exported_onnx_cnn(tmp_path)
    quantized = tmp_path / "quantized.onnx"
    quantize(float_path, quantized, EXPORTED_ONNX_SHAPES, "qdq_s8_per_channel")
    archive = microexport.compile(str(quantized), output=tmp_path / "m.tar", name="q",
                                  input_shapes=EXPORTED_ONNX_SHAPES).archive
    with tarfile.open(archive) as tar:
        library = tar.extractfile("./codegen/host/src/tvmgen_q_lib.c").read().decode()
    kernels = _kernels(library)
    names = " ".join(kernels)
    for kernel in ("conv2d_int", "batch_norm_int", "max_pool_int", "dense_int"):
        assert kernel in names, names
    # The convolution's requantization inlined into the batch norm's is computed once per
    # output (schedules.bind_repeated_loads): repeated in the batch norm's rounding shifts and
    # clamps it was 144 copies, 60 KB of C and nine minutes of CPU, nearly all in TVM's
    # LowerIntrin.
    (fused,) = (body for name, body in kernels.items() if "conv2d_int_batch_norm_int" in name)
    assert len(fused) < 8000, len(fused)
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating
    (want,) = onnxruntime_outputs(quantized, inputs)
    got = microexport.run(archive, inputs)["logits"]
    assert float(np.abs(got - want).max()) <= output_step(quantized) * 1.0001


@pytest.mark.parametrize("config", ["qdq_s8_per_channel", "qdq_u8_per_tensor"])
def test_softmax(config: str, tmp_path: Path) -> None:
    """A classifier head: Gemm → Softmax, computed with TFLite's integer softmax (steps of
    1/256) requantized to the output onnxruntime calibrates (scale 1/255)."""
    import onnx
    from onnx import TensorProto, helper

    require_module("onnxruntime", "onnx")
    rng = np.random.default_rng(SEED + 8)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=-1)]
    inits = [_init("w", rng.normal(size=(10, 32)) * 0.4), _init("b", rng.normal(size=10) * 0.2)]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "float.onnx"))
    shapes = {"x": (1, 32)}
    quantize(tmp_path / "float.onnx", tmp_path / "q.onnx", shapes, config)
    archive = microexport.compile(str(tmp_path / "q.onnx"), output=tmp_path / "m.tar",
                                  name="q").archive
    with tarfile.open(archive) as tar:
        kernels = _kernels(tar.extractfile("./codegen/host/src/tvmgen_q_lib.c").read().decode())
    assert any("softmax_int" in name for name in kernels), list(kernels)
    floating = {name for name, body in kernels.items() if "float" in body}
    assert all(re.search(r"(_(de)?quantize\d*|___tvm_main__)$", n) for n in floating), floating
    step = output_step(tmp_path / "q.onnx")
    for inputs in sample_inputs(shapes, 3):
        (want,) = onnxruntime_outputs(tmp_path / "q.onnx", inputs)
        got = microexport.run(archive, inputs)["y"]
        assert float(np.abs(got - want).max()) <= step * 1.0001


# --------------------------------------------------------------------------------------------
# the quantization in graph.json and the TIR JSON, read back from the ONNX file
# --------------------------------------------------------------------------------------------

Params = tuple[tuple[float, ...], tuple[int, ...], int | None]  # scales, zero points, axis

# QLinear operator → (value, scale, zero point) positions: an input index, or "y" for output 0;
# then the input index of its int32 bias (None: none), of its input and of its weights.
_QLINEAR: dict[str, list[tuple[int | str, int, int]]] = {
    "QLinearConv": [(0, 1, 2), (3, 4, 5), ("y", 6, 7)],
    "QLinearMatMul": [(0, 1, 2), (3, 4, 5), ("y", 6, 7)],
    "QLinearAdd": [(0, 1, 2), (3, 4, 5), ("y", 6, 7)],
    "QLinearAveragePool": [(0, 1, 2), ("y", 3, 4)],
    "QLinearGlobalAveragePool": [(0, 1, 2), ("y", 3, 4)],
    "QGemm": [(0, 1, 2), (3, 4, 5), ("y", 7, 8)],
}
_QLINEAR_BIAS = {"QLinearConv": 8, "QGemm": 6}


def _onnx_quantization(path: Path) -> tuple[dict[str, tuple[Params, str]],
                                            dict[str, np.ndarray], dict[str, Params]]:
    """What the quantized ONNX file itself says: every value's quantization as its
    QuantizeLinear, DequantizeLinear or QLinear nodes state it ((scales, zero points, per-channel
    axis or None), integer type), the initializers, and each int32 bias's quantization (input
    scale x weight scale, zero point 0) from the scales of the operator that adds it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    stated: dict[str, tuple[Params, str]] = {}

    def state(name: str, scale: str, zero: str, axis: int | None) -> None:
        s = tuple(float(v) for v in inits[scale].reshape(-1))
        z = inits[zero].reshape(-1)
        if len(s) == 1:
            axis = None
        elif axis is not None and name in inits:
            axis %= inits[name].ndim
        entry = ((s, tuple(int(v) for v in z), axis), str(z.dtype))
        assert stated.setdefault(name, entry) == entry, (name, stated[name], entry)

    biases: dict[str, Params] = {}

    def bias(name: str, x_scale: str, w_scale: str) -> None:
        w = tuple(float(v) for v in inits[w_scale].reshape(-1))
        x = float(inits[x_scale].reshape(-1)[0])
        biases[name] = (tuple(x * s for s in w), (0,) * len(w), 0 if len(w) > 1 else None)

    for node in model.graph.node:
        op, args = node.op_type, list(node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if op == "QuantizeLinear":
            state(node.output[0], args[1], args[2], axis)
        elif op == "DequantizeLinear":
            state(args[0], args[1], args[2], axis)
        elif op in _QLINEAR:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            weight_axis = {"QLinearConv": 0, "QGemm": 0 if trans_b else 1}.get(op, 1)
            for value, scale, zero in _QLINEAR[op]:
                name = node.output[0] if value == "y" else args[value]
                state(name, args[scale], args[zero], weight_axis if value == 3 else None)
            position = _QLINEAR_BIAS.get(op)
            if position is not None and len(args) > position and args[position]:
                bias(args[position], args[1], args[4])
        elif op in ("Conv", "Gemm") and len(args) > 2:
            # QDQ: the int32 bias's DequantizeLinear, after those of the input and weights
            b, x, w = (producers[name] for name in (args[2], args[0], args[1]))
            if inits[b.input[0]].dtype == np.int32:
                bias(b.input[0], x.input[1], w.input[1])
                stated_scale = inits[b.input[1]].reshape(-1)
                np.testing.assert_allclose(biases[b.input[0]][0], stated_scale, rtol=1e-6)
    return stated, inits, biases


def _onnx_value_sizes(path: Path, names: list[str], dtypes: list[str],
                      inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """The element count of each named value, from onnxruntime (every one made an output)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    for name, dtype in zip(names, dtypes, strict=True):
        model.graph.output.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return {name: int(value.size) for name, value in
            zip(names, session.run(names, inputs), strict=True)}


def _dequantized(values: np.ndarray, params: Params) -> np.ndarray:
    scale, zero, axis = params
    shape = [1] * values.ndim
    if axis is not None:
        shape[axis] = -1
    return (values.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape)


def _graph_params(tensor: dict) -> Params | None:
    q = tensor.get("quantization")
    return None if q is None else (tuple(q["scale"]), tuple(q["zero_point"]), q["axis"])


def _archive_graph(archive: Path) -> tuple[dict, str]:
    with tarfile.open(archive) as tar:
        graph = json.load(tar.extractfile("./src/graph.json"))
        tir = tar.extractfile("./src/tir-codegen.json").read().decode()
    return graph, tir


QUANTIZATION_CASES = [("cnn", "qdq_s8_per_channel"), ("cnn", "qdq_u8_u8_weights"),
                      ("cnn", "qoperator_u8"), ("mlp", "qdq_s8_per_channel"),
                      ("mlp", "qoperator_u8")]


@pytest.mark.parametrize(("model", "config"), QUANTIZATION_CASES)
def test_graph_json_carries_the_onnx_quantization(model: str, config: str,
                                                  built: Callable) -> None:
    """Every integer tensor between the kernels has the scale and zero point the ONNX file
    states for the value it holds (its element count and type the same, in execution order; a
    fused kernel's output is its last operator's); float tensors have none. graph.json is
    derived from the TIR JSON alone."""
    _check_tensors(*built(model, config))


@pytest.mark.parametrize(("model", "config"), QUANTIZATION_CASES)
def test_constants_carry_the_quantization_of_their_initializers(model: str, config: str,
                                                                built: Callable) -> None:
    """A constant holding a quantized initializer (transposed, its zero points subtracted or
    not) carries scales and zero points that dequantize it to exactly the initializer's real
    values, per channel along the channel axis of the constant as stored; an int32 bias the
    accumulator's quantization, input scale x weight scale and zero point 0. Constants
    microexport computes (multipliers, shifts, tables) carry none."""
    path, archive, _ = built(model, config)
    _check_constants(path, archive)


def test_concat_and_transpose_carry_the_onnx_quantization(tmp_path: Path) -> None:
    """Concat's inputs requantized to its output's parameters, a Mul, a table, and a Transpose
    on the integers (TVM's converter) fused after them: all carry the ONNX quantization."""
    from onnx import helper

    require_module("onnxruntime", "onnx")
    node = helper.make_node
    middle = [node("Sigmoid", ["c"], ["g"]), node("Mul", ["c", "g"], ["m"]),
              node("Relu", ["c"], ["r"]), node("Concat", ["m", "r"], ["k"], axis=1),
              node("Transpose", ["k"], ["t"], perm=[0, 1, 3, 2]),
              node("Conv", ["t", "w3", "b3"], ["s"])]
    rng = np.random.default_rng(SEED + 6)
    extra = [_init("w3", rng.normal(size=(4, 8, 1, 1)) * 0.3), _init("b3", np.zeros(4))]
    shapes = _conv_chain_model(tmp_path / "float.onnx", middle, SEED + 4, extra)
    quantize(tmp_path / "float.onnx", tmp_path / "q.onnx", shapes, "qdq_s8_per_channel")
    archive = microexport.compile(str(tmp_path / "q.onnx"), output=tmp_path / "m.tar",
                                  name="q").archive
    kernels = _check_tensors(tmp_path / "q.onnx", archive, shapes)
    assert any("concatenate_transpose" in kernel for kernel in kernels), kernels
    _check_constants(tmp_path / "q.onnx", archive)


def _check_tensors(path: Path, archive: Path, shapes: dict[str, tuple[int, ...]]
                   ) -> list[str]:
    """The checks of `test_graph_json_carries_the_onnx_quantization`; the kernels called."""
    import jsonschema
    import onnx

    from microexport.archive import graph as graph_module

    graph, tir = _archive_graph(archive)
    stated, inits, _ = _onnx_quantization(path)
    activations = [name for name in stated if name not in inits]
    sizes = _onnx_value_sizes(path, activations, [stated[n][1] for n in activations],
                              sample_inputs(shapes, 1)[0])
    order = [name for node in onnx.load(str(path)).graph.node for name in node.output
             if name in sizes]
    keys = [(sizes[name], stated[name][1], stated[name][0]) for name in order]
    tensors = {t["name"]: t for t in graph["tensors"]}
    produced = []
    for node in graph["nodes"]:
        for output in node["outputs"]:
            tensor = tensors[output]
            if tensor["dtype"] not in ("int8", "uint8"):
                assert "quantization" not in tensor, output
                continue
            key = (int(np.prod(tensor["shape"])), tensor["dtype"], _graph_params(tensor))
            assert key in keys, (output, node["kernel"], key)
            produced.append(key)
    assert len(produced) >= 5, produced
    position = 0  # `produced` is a subsequence of the ONNX values in graph order
    for key in produced:
        position = keys.index(key, position) + 1
    for name in (*graph["inputs"], *graph["outputs"]):  # the float edges
        assert "quantization" not in tensors[name]
    assert graph_module.graph_from_tir(tir) == graph
    assert '"microexport.quantization"' in tir
    jsonschema.validate(graph, graph_module.graph_schema())
    return [node["kernel"] for node in graph["nodes"]]


def _check_constants(path: Path, archive: Path) -> None:
    """The checks of `test_constants_carry_the_quantization_of_their_initializers`."""
    graph, _ = _archive_graph(archive)
    stated, inits, biases = _onnx_quantization(path)
    weights = {name: (inits[name], stated[name][0]) for name in stated  # int32: biases
               if name in inits and inits[name].dtype != np.int32}
    tensors = {t["name"]: t for t in graph["tensors"]}
    matched = set()
    for const in graph["constants"]:
        data = np.frombuffer(base64.b64decode(const["data"]), const["dtype"]).reshape(
            const["shape"])
        got = _graph_params(tensors[const["name"]])
        found = []
        for name, (values, params) in weights.items():
            shape = [1] * values.ndim
            if params[2] is not None:
                shape[params[2]] = -1
            offset = values.astype(np.int64) - np.reshape(params[1], shape)
            for order in itertools.permutations(range(values.ndim)):
                for stored in (values.astype(np.int64), offset):
                    if stored.transpose(order).shape == data.shape and np.array_equal(
                            stored.transpose(order), data):
                        found.append((name, params, order))
        for name, (scale, zero, axis) in biases.items():
            if const["dtype"] == "int32" and np.array_equal(inits[name].reshape(-1),
                                                            data.reshape(-1)):
                found.append((name, (scale, zero, axis), None))
        if not found:
            assert got is None, (const["name"], got)
            continue
        assert got is not None, (const["name"], [name for name, _, _ in found])
        for name, (scale, zero, axis), order in found:
            if order is None:  # a bias: exactly the accumulator's quantization
                ok = got == (scale, zero, axis)
            else:
                ok = got[0] == scale and (axis is None) == (got[2] is None) and (
                    axis is None or got[2] == order.index(axis)) and np.array_equal(
                    _dequantized(data, got),
                    _dequantized(inits[name], (scale, zero, axis)).transpose(order))
            if ok:
                matched.add(name)
                break
        else:
            raise AssertionError((const["name"], got, found))
    assert matched == {*weights, *biases}, sorted({*weights, *biases} - matched)


def test_integer_model_edges_carry_their_quantization(tmp_path: Path) -> None:
    """A model taking and returning integers (uint8 → DequantizeLinear → Conv →
    QuantizeLinear → int8): the input has its DequantizeLinear's parameters, the output its
    QuantizeLinear's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED + 9)

    def const(name: str, value: object, dtype: object) -> object:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    node = helper.make_node
    nodes = [node("DequantizeLinear", ["x", "sx", "zx"], ["xd"]),
             node("DequantizeLinear", ["wq", "sw"], ["wd"]),
             node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             node("QuantizeLinear", ["c", "sy", "zy"], ["y"])]
    inits = [const("sx", 0.02, np.float32), const("zx", 131, np.uint8),
             const("wq", rng.integers(-127, 128, (3, 2, 3, 3)), np.int8),
             const("sw", 0.004, np.float32),
             const("sy", 0.05, np.float32), const("zy", -7, np.int8)]
    graph = helper.make_graph(
        nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 3, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "edges.onnx"))
    archive = microexport.compile(str(tmp_path / "edges.onnx"), output=tmp_path / "m.tar",
                                  name="q").archive
    graph_json, _ = _archive_graph(archive)
    tensors = {t["name"]: t for t in graph_json["tensors"]}
    (x,), (y,) = graph_json["inputs"], graph_json["outputs"]
    assert _graph_params(tensors[x]) == ((float(np.float32(0.02)),), (131,), None)
    assert _graph_params(tensors[y]) == ((float(np.float32(0.05)),), (-7,), None)
    (weights,) = (c for c in graph_json["constants"] if c["dtype"] == "int8")
    assert _graph_params(tensors[weights["name"]]) == ((float(np.float32(0.004)),), (0,), None)
