"""Recurrent layers (frontend/recurrent.py): ONNX LSTM, GRU and RNN in every direction, with and
without initial state, bias, peepholes, clip, `layout=1`; models exported by torch; TFLite float
UNIDIRECTIONAL_SEQUENCE_LSTM in its variants. Each model is compiled and run through the public
API and compared with onnxruntime, LiteRT or TFLite Micro; one also runs on Cortex-M4F in QEMU.

onnxruntime refuses `layout=1` ("batchwise recurrent operations are not supported"): such a
model is compared with onnxruntime running its `layout=0` twin on transposed inputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from int8_models import SignedTfliteWriter, tflm_reference
from support import require_module, require_program

import microexport
from microexport.errors import Error, UnsupportedOperator

RTOL, ATOL = 1e-5, 1e-5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DIRECTIONS = ["forward", "reverse", "bidirectional"]
Feeds = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# ONNX models built with onnx.helper
# --------------------------------------------------------------------------------------------


def recurrent_model(
    kind: str,
    direction: str = "forward",
    layout: int = 0,
    seq: int = 4,
    batch: int = 2,
    features: int = 3,
    hidden: int = 5,
    bias: bool = True,
    initial: bool = True,
    peephole: bool = False,
    outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"),
    sequence_lens: np.ndarray | None = None,
    opset: int = 14,
    seed: int = 0,
    **attributes: object,
) -> tuple[object, Feeds]:
    """A one-node ONNX model of `kind` with fixed-seed weights (initializers), the initial
    state as model inputs, and fixed-seed sample inputs. `outputs` names the node outputs to
    expose ("" leaves one out; Y_c only for LSTM)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    directions = 2 if direction == "bidirectional" else 1
    gates = GATES[kind]

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    x_shape = (seq, batch, features) if layout == 0 else (batch, seq, features)
    state_shape = (directions, batch, hidden) if layout == 0 else (batch, directions, hidden)
    y_shape = (seq, directions, batch, hidden) if layout == 0 else (batch, seq, directions, hidden)
    initializers = [numpy_helper.from_array(weights(directions, gates * hidden, features), "W"),
                    numpy_helper.from_array(weights(directions, gates * hidden, hidden), "R")]
    node_inputs = ["X", "W", "R"]
    if bias:
        initializers.append(numpy_helper.from_array(weights(directions, 2 * gates * hidden), "B"))
    node_inputs.append("B" if bias else "")
    if sequence_lens is not None:
        initializers.append(numpy_helper.from_array(sequence_lens.astype(np.int32), "lens"))
    node_inputs.append("" if sequence_lens is None else "lens")
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    for name in states:
        if initial:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                              state_shape))
            feeds[name] = rng.standard_normal(state_shape).astype(np.float32)
        node_inputs.append(name if initial else "")
    if peephole:
        initializers.append(numpy_helper.from_array(weights(directions, 3 * hidden), "P"))
        node_inputs.append("P")
    while node_inputs[-1] == "":
        node_inputs.pop()
    node_outputs = list(outputs[:3 if kind == "LSTM" else 2])
    graph_outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                      y_shape if index == 0 else state_shape)
        for index, name in enumerate(node_outputs) if name]
    node = helper.make_node(kind, node_inputs, node_outputs, hidden_size=hidden,
                            direction=direction, **({"layout": layout} if layout else {}),
                            **attributes)
    graph = helper.make_graph([node], f"{kind.lower()}_{direction}", graph_inputs,
                              graph_outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, feeds


def onnxruntime_outputs(model: object, feeds: Feeds) -> dict[str, np.ndarray]:
    """The model's outputs by name from onnxruntime (`layout=1`: from its layout-0 twin)."""
    ort = require_module("onnxruntime", "test")
    import onnx

    node = model.graph.node[0]
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    if layout == 1:
        twin = onnx.ModelProto()
        twin.CopyFrom(model)
        attribute = next(a for a in twin.graph.node[0].attribute if a.name == "layout")
        attribute.i = 0
        for value in [*twin.graph.input, *twin.graph.output]:  # batch-major → sequence-major
            dims = value.type.tensor_type.shape.dim
            order = [1, 2, 0, 3] if len(dims) == 4 else [1, 0, 2]
            sizes = [dims[i].dim_value for i in order]
            for dim, size in zip(dims, sizes, strict=True):
                dim.dim_value = size
        feeds = {name: np.ascontiguousarray(value.transpose(1, 0, 2))
                 for name, value in feeds.items()}
        model = twin
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    results = dict(zip(names, session.run(names, feeds), strict=True))
    if layout == 1:
        results = {name: value.transpose(2, 0, 1, 3) if value.ndim == 4
                   else value.transpose(1, 0, 2) for name, value in results.items()}
    return results


def compile_and_run(model_path: Path, feeds: Feeds, tmp_path: Path) -> dict[str, np.ndarray]:
    result = microexport.compile(model_path, tmp_path / "model.tar", name="rnn")
    return microexport.run(result.archive, feeds)


def check_onnx(model: object, feeds: Feeds, tmp_path: Path) -> None:
    """Compile `model`, run it on the host, compare every output with onnxruntime."""
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    want = onnxruntime_outputs(model, feeds)
    got = compile_and_run(path, feeds, tmp_path)
    assert list(got) == list(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", sorted(GATES))
def test_onnx_directions_with_initial_state(kind: str, direction: str, tmp_path: Path) -> None:
    model, feeds = recurrent_model(kind, direction, seed=len(kind) + len(direction))
    check_onnx(model, feeds, tmp_path)


@pytest.mark.parametrize("kind", sorted(GATES))
def test_onnx_layout_1(kind: str, tmp_path: Path) -> None:
    model, feeds = recurrent_model(kind, "bidirectional", layout=1, seq=3, batch=3)
    check_onnx(model, feeds, tmp_path)


@pytest.mark.parametrize(("kind", "options"), [
    ("LSTM", {"peephole": True}),
    ("LSTM", {"peephole": True, "clip": 0.6, "direction": "bidirectional"}),
    ("LSTM", {"input_forget": 1, "direction": "reverse"}),
    ("LSTM", {"bias": False, "initial": False, "outputs": ("", "Y_h")}),
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Tanh"], "hidden": 3}),
    ("LSTM", {"sequence_lens": np.array([4, 4]), "outputs": ("Y", "", "Y_c")}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}),
    ("GRU", {"linear_before_reset": 1, "clip": 0.5, "initial": False}),
    ("GRU", {"bias": False, "opset": 7, "outputs": ("Y",)}),
    ("RNN", {"clip": 0.3, "activations": ["Relu", "Tanh"], "direction": "bidirectional"}),
    ("RNN", {"seq": 1, "batch": 1, "initial": False}),
    ("RNN", {"activations": ["ThresholdedRelu"], "activation_alpha": [0.2]}),
    ("RNN", {"activations": ["Softplus", "Softsign"], "direction": "bidirectional"}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Elu"],
              "activation_alpha": [0.3, 0.05, 0.7], "activation_beta": [0.45]}),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}),  # alpha, beta: the defaults
    ("GRU", {"activations": ["Sigmoid", "ScaledTanh", "HardSigmoid", "Affine"],
             "activation_alpha": [0.9, 0.25, 0.5], "activation_beta": [1.2, 0.4, 0.1],
             "direction": "bidirectional"}),
])
def test_onnx_attributes_and_optional_inputs(kind: str, options: dict, tmp_path: Path) -> None:
    model, feeds = recurrent_model(kind, seed=7, **options)
    check_onnx(model, feeds, tmp_path)


@pytest.mark.parametrize(("options", "message"), [
    ({"sequence_lens": np.array([4, 2])}, "sequence_lens [4, 2] shorter than the sequence"),
    ({"activations": ["Gelu", "Tanh", "Tanh"]}, "activations=Gelu"),
])
def test_onnx_unsupported_values_are_one_line_errors(options: dict, message: str,
                                                     tmp_path: Path) -> None:
    import onnx

    model, _ = recurrent_model("LSTM", **options)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOperator) as caught:
        microexport.compile(path, tmp_path / "model.tar")
    text = caught.value.one_line()
    assert message in text and text.startswith("unsupported operator 'LSTM'")
    assert text.count("unsupported operator") == 1


def test_onnx_sequence_lens_as_input_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    model, _ = recurrent_model("RNN", initial=False)
    node = model.graph.node[0]
    node.input.extend(["lens"])
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOperator, match="sequence_lens input is not a constant"):
        microexport.compile(path, tmp_path / "model.tar")


@pytest.mark.parametrize(("kind", "options"), [
    ("LSTM", {"peephole": True, "direction": "bidirectional"}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"direction": "reverse"}),
    ("RNN", {}),
])
def test_weights_are_stored_once_whatever_the_sequence_length(kind: str, options: dict,
                                                               tmp_path: Path) -> None:
    """Unrolling repeats the steps, not the weights: the constant pool of a 6-step model is
    that of a 2-step one, no larger than the model's initializers."""
    import onnx

    sizes = []
    for seq in (2, 6):
        model, _ = recurrent_model(kind, seq=seq, hidden=8, **options)
        path = tmp_path / f"seq{seq}.onnx"
        onnx.save(model, str(path))
        result = microexport.compile(path, tmp_path / f"seq{seq}.tar")
        sizes.append(result.memory.constants_bytes)
    weights = sum(np.prod(init.dims) * 4 for init in model.graph.initializer)
    assert sizes[0] == sizes[1] <= weights


# The ONNX backend node tests of the three operators (expected outputs from onnx's own
# reference implementation), run as bench/onnx_conformance.py runs the whole suite.
NODE_TESTS = [
    f"test_{op}_{case}" for op in ("gru", "lstm")
    for case in ("defaults", "with_initial_bias", "batchwise", "reverse", "bidirectional")
] + ["test_gru_seq_length", "test_rnn_seq_length"] + [
    f"test_simple_rnn_{case}"
    for case in ("defaults", "with_initial_bias", "batchwise", "reverse", "bidirectional")]


@pytest.fixture(scope="module")
def node_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recurrent node tests laid out as the suite lays them out."""
    from onnx import TensorProto, numpy_helper
    from onnx.backend.test.case import node as node_cases

    root = tmp_path_factory.mktemp("onnx-node")
    wanted = set(NODE_TESTS) | {"test_lstm_with_peepholes"}
    with warnings.catch_warnings():  # the generators' own warnings
        warnings.simplefilter("ignore")
        cases = [case for case in node_cases.collect_testcases() if case.name in wanted]
    assert {case.name for case in cases} == wanted
    for case in cases:
        data = root / case.name / "test_data_set_0"
        data.mkdir(parents=True)
        (root / case.name / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        for kind, arrays, values in (("input", inputs, case.model.graph.input),
                                     ("output", outputs, case.model.graph.output)):
            for i, (array, value) in enumerate(zip(arrays, values, strict=False)):
                tensor = (array if isinstance(array, TensorProto)
                          else numpy_helper.from_array(np.asarray(array), value.name))
                (data / f"{kind}_{i}.pb").write_bytes(tensor.SerializeToString())
    return root


def _conformance() -> object:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import onnx_conformance

    return onnx_conformance


@pytest.mark.parametrize("name", NODE_TESTS)
def test_onnx_node_tests_pass(node_tests: Path, name: str) -> None:
    conformance = _conformance()
    result = conformance.run_one(node_tests / name)
    assert result["status"] == conformance.PASS, result


def test_onnx_node_test_with_sequence_lens_input_is_refused(node_tests: Path) -> None:
    """test_lstm_with_peepholes feeds sequence_lens as a model input: it could be shorter."""
    conformance = _conformance()
    result = conformance.run_one(node_tests / "test_lstm_with_peepholes")
    assert result["status"].startswith(conformance.ERROR_PREFIX), result
    assert "sequence_lens input is not a constant" in result["detail"]
    assert "\n" not in result["detail"]


# --------------------------------------------------------------------------------------------
# ONNX models exported by torch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GATES))
def test_torch_exported_stacked_bidirectional(kind: str, tmp_path: Path) -> None:
    """torch.nn.LSTM/GRU/RNN (2 layers, bidirectional, batch_first) as torch.onnx exports them
    (GRU with linear_before_reset=1), against onnxruntime and torch itself."""
    torch = require_module("torch", "test")
    require_module("onnxruntime", "test")
    import onnx

    torch.manual_seed(3)
    module = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x, h0, c0 = torch.randn(2, 5, 3), torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    args = (x, (h0, c0)) if kind == "LSTM" else (x, h0)
    names = ["x", "h0", "c0"] if kind == "LSTM" else ["x", "h0"]
    outputs = ["y", "h_n", "c_n"] if kind == "LSTM" else ["y", "h_n"]
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it still works
        torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs,
                          dynamo=False)
    assert kind in [node.op_type for node in onnx.load(str(path)).graph.node]
    feeds = dict(zip(names, [t.numpy() for t in (x, h0, c0)], strict=False))
    with torch.no_grad():
        y, state = module(*args)
    reference = [y, *(state if kind == "LSTM" else (state,))]
    model = onnx.load(str(path))
    want = onnxruntime_outputs(model, feeds)
    got = compile_and_run(path, feeds, tmp_path)
    for name, from_torch in zip(outputs, reference, strict=True):
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(got[name], from_torch.numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Cortex-M4F in QEMU
# --------------------------------------------------------------------------------------------


def test_bidirectional_lstm_on_cortex_m4f(tmp_path: Path) -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    import onnx

    from microexport.deploy.boards import load_board
    from microexport.deploy.platforms import get_platform

    model, feeds = recurrent_model("LSTM", "bidirectional", peephole=True, seq=6, hidden=8)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    want = onnxruntime_outputs(model, feeds)
    result = microexport.compile(path, tmp_path / "model.tar", name="lstm")
    platform = get_platform(load_board("mps2_an386"))
    run = platform.execute_archive(result.archive, feeds, tmp_path / "qemu")
    assert list(run.outputs) == list(want)
    for name, expected in want.items():
        np.testing.assert_allclose(run.outputs[name], expected, rtol=RTOL, atol=ATOL,
                                   err_msg=name)


# --------------------------------------------------------------------------------------------
# TFLite UNIDIRECTIONAL_SEQUENCE_LSTM
# --------------------------------------------------------------------------------------------


def tflite_lstm(
    path: Path,
    time_major: bool = False,
    cifg: bool = False,
    peephole: bool = False,
    projection: bool = False,
    projection_bias: bool = True,
    cell_clip: float = 0.0,
    proj_clip: float = 0.0,
    batch: int = 2,
    steps: int = 5,
    features: int = 3,
    units: int = 4,
    projected: int = 3,
    layer_norm: bool = False,
    seed: int = 0,
) -> Feeds:
    """Write a float UNIDIRECTIONAL_SEQUENCE_LSTM model (flatbuffer object API, fixed-seed
    weights, zero-initialised variable state tensors, TANH); returns fixed-seed inputs."""
    rng = np.random.default_rng(seed)
    writer = SignedTfliteWriter()
    size = projected if projection else units
    x_shape = (steps, batch, features) if time_major else (batch, steps, features)
    y_shape = (steps, batch, size) if time_major else (batch, steps, size)
    x = writer.tensor("x", x_shape, "float32")

    def const(name: str, *shape: int) -> int:
        data = (rng.standard_normal(shape) * 0.6).astype(np.float32)
        return writer.tensor(name, shape, "float32", data)

    def gate(name: str, *shape: int, present: bool = True) -> int:
        return const(name, *shape) if present else -1

    gates = ["input", "forget", "cell", "output"]
    full = [not (cifg and g == "input") for g in gates]
    pairs = list(zip(gates, full, strict=True))
    inputs = [x]
    inputs += [gate(f"input_to_{g}", units, features, present=p) for g, p in pairs]
    inputs += [gate(f"recurrent_to_{g}", units, size, present=p) for g, p in pairs]
    inputs += [gate(f"cell_to_{g}", units, present=peephole and not (cifg and g == "input"))
               for g in ("input", "forget", "output")]
    inputs += [gate(f"{g}_bias", units, present=p) for g, p in pairs]
    inputs += [gate("projection_weights", projected, units, present=projection),
               gate("projection_bias", projected, present=projection and projection_bias)]
    inputs += [writer.tensor("output_state", (batch, size), "float32", variable=True),
               writer.tensor("cell_state", (batch, units), "float32", variable=True)]
    inputs += [gate(f"{g}_layer_norm", units, present=layer_norm and p)
               for g, p in pairs]
    y = writer.tensor("y", y_shape, "float32")
    options = writer.options("UnidirectionalSequenceLSTMOptions", fusedActivationFunction=4,
                             cellClip=cell_clip, projClip=proj_clip, timeMajor=time_major)
    writer.operator("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs, [y], options)
    writer.write(path, [x], [y])
    return {"x": rng.standard_normal(x_shape).astype(np.float32)}


def litert_outputs(path: Path, feeds: Feeds) -> dict[str, np.ndarray]:
    """Outputs by name from LiteRT's interpreter (full TFLite kernels)."""
    litert = require_module("ai_edge_litert.interpreter", "test")
    interpreter = litert.interpreter.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"])
            for d in interpreter.get_output_details()}


@pytest.mark.parametrize("time_major", [False, True])
def test_tflite_lstm_matches_tflite_micro(time_major: bool, tmp_path: Path) -> None:
    """The variant TFLite Micro runs (full gates, no peephole or projection), as Keras' LSTM
    converts, with a cell clip."""
    require_module("tflite_micro", "test")
    path = tmp_path / "lstm.tflite"
    feeds = tflite_lstm(path, time_major=time_major, cell_clip=0.8, seed=int(time_major))
    want = tflm_reference(path, feeds)
    got = compile_and_run(path, feeds, tmp_path)
    assert got["y"].shape == want["y"].shape
    np.testing.assert_allclose(got["y"], want["y"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("options", [
    {"cifg": True},
    {"peephole": True, "time_major": True},
    {"peephole": True, "cifg": True},
    {"projection": True, "proj_clip": 0.4},
    {"projection": True, "projection_bias": False, "peephole": True, "cell_clip": 0.5},
    {"steps": 1, "batch": 1},
], ids=lambda options: "-".join(options))
def test_tflite_lstm_variants_match_litert(options: dict, tmp_path: Path) -> None:
    """Variants TFLite Micro refuses to prepare, against LiteRT."""
    path = tmp_path / "lstm.tflite"
    feeds = tflite_lstm(path, **options)
    want = litert_outputs(path, feeds)
    got = compile_and_run(path, feeds, tmp_path)
    assert got["y"].shape == want["y"].shape
    np.testing.assert_allclose(got["y"], want["y"], rtol=RTOL, atol=ATOL)


def test_tflite_layer_norm_lstm_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "lstm.tflite"
    tflite_lstm(path, layer_norm=True)
    with pytest.raises(Error) as caught:
        microexport.compile(path, tmp_path / "model.tar")
    text = caught.value.one_line()
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in text and "layer normalization" in text
    assert text.count("unsupported operator") == 1


def test_tflite_lstm_weights_are_stored_once(tmp_path: Path) -> None:
    """As for ONNX: a longer sequence does not grow the constant pool."""
    sizes = []
    for steps in (2, 6):
        path = tmp_path / f"steps{steps}.tflite"
        tflite_lstm(path, steps=steps, peephole=True, projection=True)
        sizes.append(microexport.compile(path, tmp_path / f"steps{steps}.tar")
                     .memory.constants_bytes)
    assert sizes[0] == sizes[1]


def test_onnx_node_test_with_sequence_lens_frozen_passes(node_tests: Path,
                                                         tmp_path: Path) -> None:
    """The same test with its (full) sequence_lens frozen by `constants` (`--constant`)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    directory = node_tests / "test_lstm_with_peepholes"
    model = onnx.load(str(directory / "model.onnx"))

    def arrays(kind: str, values: object) -> dict[str, np.ndarray]:
        tensors = {}
        for i, value in enumerate(values):
            tensor = TensorProto()
            tensor.ParseFromString((directory / "test_data_set_0" / f"{kind}_{i}.pb")
                                   .read_bytes())
            tensors[value.name] = numpy_helper.to_array(tensor)
        return tensors

    inputs, want = arrays("input", model.graph.input), arrays("output", model.graph.output)
    lens = inputs.pop("sequence_lens")
    result = microexport.compile(directory / "model.onnx", tmp_path / "model.tar",
                                 constants={"sequence_lens": lens})
    got = microexport.run(result.archive, inputs)
    np.testing.assert_allclose(got["Y_h"], want["Y_h"], rtol=1e-3, atol=1e-7)
