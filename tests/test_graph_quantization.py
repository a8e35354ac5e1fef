"""graph.json and the TIR JSON carry the quantization (scales, zero points, per-channel axis) of
every tensor of a quantized TFLite model, as the .tflite says; float models carry none.

The expected parameters come from LiteRT's interpreter (`get_tensor_details`,
`get_input_details`, `_get_ops_details`, the constant tensors' data), not from microexport's
reading of the flatbuffer.
"""

from __future__ import annotations

import base64
import copy
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import tvm
from int8_models import INT8_MODELS
from support import require_module
from zoo import mlp_onnx

import microexport
from microexport.archive import graph as graph_module
from microexport.archive import tir_json
from microexport.errors import TirJsonError

MODELS = {model.name: model for model in INT8_MODELS}
# vww: per-channel conv/depthwise weights, PAD; dscnn: FC + softmax; shape_ops: fused groups
# (slice → reshape → split, transpose → reshape), tuple results, BATCH_MATMUL.
QUANTIZED = ["vww_mobilenet_int8", "dscnn_kws_int8", "shape_ops_int8"]
QUANT_ATTR = "microexport.quantization"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """`compiled(name)` → {"tflite", "float_tflite", "graph", "tir"} of a real int8 model,
    built and compiled once per module."""
    require_module("ai_edge_quantizer", "tflite")
    require_module("ai_edge_litert", "tflite")
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            path, _ = MODELS[name].build(directory)
            archive = microexport.compile(str(path), output=directory / "m.tar",
                                          name="m").archive
            cache[name] = {"tflite": path, "float_tflite": directory / f"{name}_float.tflite",
                           **_archive_json(archive)}
        return cache[name]

    return get


def _archive_json(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        graph = json.load(tar.extractfile("./src/graph.json"))
        tir = tar.extractfile("./src/tir-codegen.json").read().decode()
    return {"graph": graph, "tir": tir}


def _params(q: dict[str, Any]) -> tuple[tuple[float, ...], tuple[int, ...], int | None]:
    """LiteRT's quantization_parameters as (scales, zero points, axis or None)."""
    scales = tuple(float(s) for s in q["scales"])
    zeros = tuple(int(z) for z in q["zero_points"])
    return scales, zeros, (int(q["quantized_dimension"]) if len(scales) > 1 else None)


def _graph_params(tensor: dict[str, Any]) -> tuple[tuple[float, ...], tuple[int, ...],
                                                   int | None] | None:
    q = tensor.get("quantization")
    if q is None:
        return None
    return tuple(q["scale"]), tuple(q["zero_point"]), q["axis"]


def _litert(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


@pytest.mark.parametrize("name", QUANTIZED)
def test_inputs_and_outputs_carry_the_tflite_quantization(name: str, compiled: Callable
                                                          ) -> None:
    model = compiled(name)
    graph, interpreter = model["graph"], _litert(model["tflite"])
    tensors = {t["name"]: t for t in graph["tensors"]}
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    assert len(graph["inputs"]) == len(inputs) and len(graph["outputs"]) == len(outputs)
    for names, details in ((graph["inputs"], inputs), (graph["outputs"], outputs)):
        for tensor_name, detail in zip(names, details, strict=True):
            want = _params(detail["quantization_parameters"])
            assert want[0], f"{detail['name']} is not quantized in the .tflite"
            assert _graph_params(tensors[tensor_name]) == want, tensor_name


@pytest.mark.parametrize("name", QUANTIZED)
def test_intermediates_carry_the_quantization_of_the_operator_output(
        name: str, compiled: Callable) -> None:
    """Every tensor between kernels is quantized as a TFLite operator output of the same element
    count, and the kernels' outputs follow the operators' outputs in execution order (a fused
    kernel's output is the last operator's of its group)."""
    model = compiled(name)
    graph, interpreter = model["graph"], _litert(model["tflite"])
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    op_outputs = [(int(np.prod(details[i]["shape"])),
                   _params(details[i]["quantization_parameters"]))
                  for op in interpreter._get_ops_details() for i in op["outputs"]]
    tensors = {t["name"]: t for t in graph["tensors"]}
    produced = []
    for node in graph["nodes"]:
        for output in node["outputs"]:
            tensor = tensors[output]
            params = _graph_params(tensor)
            assert params is not None, f"{output} (written by {node['kernel']}) has none"
            key = (int(np.prod(tensor["shape"])), params)
            assert key in op_outputs, (output, key)
            produced.append(key)
    position = 0  # `produced` is a subsequence of `op_outputs`
    for key in produced:
        position = op_outputs.index(key, position) + 1


@pytest.mark.parametrize("name", QUANTIZED)
def test_weights_have_their_own_quantization_and_synthesised_constants_none(
        name: str, compiled: Callable) -> None:
    """A constant holding exactly the data of a quantized TFLite constant tensor (int8 weights,
    int32 biases) carries that tensor's quantization, per channel where the .tflite has it;
    constants with other data (fixed-point multipliers and shifts, tables) carry none."""
    model = compiled(name)
    graph, interpreter = model["graph"], _litert(model["tflite"])
    tflite_constants = []
    for detail in interpreter.get_tensor_details():
        params = _params(detail["quantization_parameters"])
        if not params[0]:
            continue
        try:
            data = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        tflite_constants.append((data, params))
    tensors = {t["name"]: t for t in graph["tensors"]}
    matched = 0
    for const in graph["constants"]:
        data = base64.b64decode(const["data"])
        candidates = {params for array, params in tflite_constants
                      if str(array.dtype) == const["dtype"]
                      and list(array.shape) == const["shape"] and array.tobytes() == data}
        got = _graph_params(tensors[const["name"]])
        if candidates:
            assert got in candidates, const["name"]
            matched += 1
        else:
            assert got is None, (const["name"], got)
    assert matched >= 2
    if name != "dscnn_kws_int8":  # per-channel weights (depthwise: axis 3)
        axes = {_graph_params(tensors[c["name"]])[2] for c in graph["constants"]
                if _graph_params(tensors[c["name"]]) is not None}
        assert {0, 3} <= axes, axes


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantization_survives_tir_json_and_validates(name: str, compiled: Callable) -> None:
    """The main's `microexport.quantization` attribute reloads losslessly, graph.json is derived
    from the TIR JSON alone, and it validates against the shipped schema."""
    model = compiled(name)
    text, graph = model["tir"], model["graph"]
    back = tir_json.load(text)
    assert tir_json.dump(back, "codegen") == text
    main = next(f for gv, f in back.functions.items() if gv.name_hint.endswith("___tvm_main__"))
    assert QUANT_ATTR in main.attrs
    tvm.ir.assert_structural_equal(tir_json.load(tir_json.dump(back, "codegen")), back)
    assert graph_module.graph_from_tir(text) == graph
    jsonschema.validate(graph, graph_module.graph_schema())
    graph_module.load_graph(graph)


def test_bad_quantization_entries_are_one_line_errors(compiled: Callable) -> None:
    graph = compiled("vww_mobilenet_int8")["graph"]
    weight = next(i for i, t in enumerate(graph["tensors"])
                  if (t.get("quantization") or {}).get("axis") is not None)
    cases = [
        ("axis", 7, "scales along axis 7"),
        ("zero_point", [0], "zero points for"),
        ("axis", None, "null (per tensor)"),
        ("scale", [], "should be non-empty"),
    ]
    for key, value, message in cases:
        bad = copy.deepcopy(graph)
        bad["tensors"][weight]["quantization"][key] = value
        with pytest.raises(TirJsonError, match=rf"^\$\.tensors\[{weight}\]") as err:
            graph_module.load_graph(bad)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_float_models_carry_no_quantization(compiled: Callable, build_model: Callable,
                                            tmp_path: Path) -> None:
    float_tflite = compiled("dscnn_kws_int8")["float_tflite"]
    onnx_path, _ = build_model(mlp_onnx)
    for index, path in enumerate((float_tflite, onnx_path)):
        archive = microexport.compile(str(path), output=tmp_path / f"{index}.tar").archive
        model = _archive_json(archive)
        assert all("quantization" not in t for t in model["graph"]["tensors"])
        assert QUANT_ATTR not in model["tir"]


def test_bad_quantization_attribute_in_tir_json_is_an_error_with_its_path(
        compiled: Callable) -> None:
    """graph_from_tir checks the main's `microexport.quantization` entries (TIR from
    elsewhere may be hand-written)."""
    doc = json.loads(compiled("dscnn_kws_int8")["tir"])
    main = next(f for f in doc["modules"][0]["functions"] if f["name"].endswith("___tvm_main__"))
    items = main["attrs"][QUANT_ATTR]["items"]
    name = next(iter(items))
    cases = [
        ({"node": "Map", "items": {"scale": [1.0]}}, "expected a Map of scale, zero_point"),
        ({"node": "Map", "items": {"scale": [1.0], "zero_point": [0, 1], "axis": None}},
         "zero_point: expected one integer per scale"),
        ({"node": "Map", "items": {"scale": ["x"], "zero_point": [0], "axis": None}},
         "scale: expected a list of finite floats"),
        ({"node": "Map", "items": {"scale": [1.0, 2.0], "zero_point": [0, 0], "axis": None}},
         "null (per tensor) with 2 scales"),
    ]
    for value, message in cases:
        bad = copy.deepcopy(doc)
        bad_main = next(f for f in bad["modules"][0]["functions"] if f["name"] == main["name"])
        bad_main["attrs"][QUANT_ATTR]["items"][name] = value
        path = r"^\$\.modules\[0\]\.functions\[\d+\]\.attrs"
        with pytest.raises(TirJsonError, match=path) as err:
            graph_module.graph_from_tir(bad)
        assert message in str(err.value), str(err.value)


def test_fused_call_maps_back_to_the_last_binding_of_its_group() -> None:
    """FuseOps binds a fused call to a new variable; `fusion_origins` maps it to the binding
    of the group's result (here relu after matmul), and leaves kept variables alone."""
    from tvm import relax

    from microexport.compiler.lower import relax_pipeline
    from microexport.compiler.quantization import fusion_origins, fusion_recorder

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.exp(x))
            c = bb.emit(relax.op.multiply(a, relax.const(2.0, "float32")))
            d = bb.emit(relax.op.matmul(a, relax.op.permute_dims(c)))
            e = bb.emit(relax.op.nn.relu(d))
            out = bb.emit_output(relax.Tuple([e, c]))
        bb.emit_func_output(out)
    recorder, seen = fusion_recorder()
    with tvm.target.Target("c"), tvm.transform.PassContext(instruments=[recorder]):
        scheduled = relax_pipeline()(bb.get())
    origins = fusion_origins(seen["before"], seen["after"])
    calls = {b.value.args[0].name_hint: b.var for block in scheduled["main"].body.blocks
             for b in block.bindings if isinstance(b.value, relax.Call)
             and b.value.op.name == "relax.call_tir"}
    fused = calls["fused_matmul_relu"]
    assert origins[fused].same_as(e)
    assert calls["multiply"].same_as(c) and calls["multiply"] not in origins
