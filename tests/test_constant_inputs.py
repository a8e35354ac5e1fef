"""Inputs that are really constants: `--constant NAME=FILE.npy` / `constants={...}` freezes a model
input to a value at compile time (issue 11, point 4).

Each ONNX model below takes a shape, starts/ends, sizes or sample-rate input that the frozen value
turns into a constant; it is compiled with that value, run on the host and compared with
onnxruntime run with the same value. Bad values are one-line errors (exit status 2 on the CLI).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_program

import microexport
from microexport.api import compile_model, import_model
from microexport.cli import main
from microexport.errors import InputError

OPSET = 17
IR_VERSION = 8
SAMPLE_RATE_THEN = 16000  # the `If` of `if_model` takes its then branch for this rate


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: tuple = ()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _value(name: str, elem_type: int, shape: list | None) -> object:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def reshape_model(directory: Path) -> Path:
    """Reshape whose target shape is the input `shape` (int64 [2]), then Relu."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    return _save(directory / "reshape.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [2, 6]), _value("shape", TensorProto.INT64, [2])],
                 [_value("y", TensorProto.FLOAT, ["a", "b"])])


def slice_model(directory: Path) -> Path:
    """Slice along axis 1 with `starts` and `ends` inputs (int64 [1]), then a multiply."""
    from onnx import TensorProto, helper, numpy_helper

    inits = (numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"))
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
             helper.make_node("Mul", ["s", "three"], ["y"])]
    return _save(directory / "slice.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [2, 10]),
                  _value("starts", TensorProto.INT64, [1]),
                  _value("ends", TensorProto.INT64, [1])],
                 [_value("y", TensorProto.FLOAT, [2, "n"])], inits)


def resize_model(directory: Path) -> Path:
    """Resize (nearest) to the `sizes` input (int64 [4])."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")]
    return _save(directory / "resize.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, 2, 4, 4]),
                  _value("sizes", TensorProto.INT64, [4])],
                 [_value("y", TensorProto.FLOAT, ["n", "c", "h", "w"])])


def if_model(directory: Path) -> Path:
    """A voice-activity-detector-like `If` on a sample-rate input `sr` (int64 scalar): at 16 kHz
    the then branch (a weight inside the branch, Mul, Relu), else the else branch (Sigmoid, Add of
    a weight of the main graph, a Reshape through a nested shape); both feed an Add with `x`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "w_then"], ["t_mul"]),
         helper.make_node("Relu", ["t_mul"], ["t_out"])],
        "then", [], [_value("t_out", TensorProto.FLOAT, [1, 16])],
        initializer=[numpy_helper.from_array(rng.uniform(-2, 2, 16).astype(np.float32),
                                             "w_then")])
    else_branch = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["e_sig"]),
         helper.make_node("Add", ["e_sig", "b"], ["e_add"]),
         helper.make_node("Reshape", ["e_add", "e_shape"], ["e_2d"]),
         helper.make_node("Reshape", ["e_2d", "e_back"], ["e_out"])],
        "else", [], [_value("e_out", TensorProto.FLOAT, [1, 16])],
        initializer=[numpy_helper.from_array(np.array([4, 4], np.int64), "e_shape"),
                     numpy_helper.from_array(np.array([1, 16], np.int64), "e_back")])
    inits = (numpy_helper.from_array(np.array(SAMPLE_RATE_THEN, np.int64), "rate"),
             numpy_helper.from_array(rng.uniform(-1, 1, 16).astype(np.float32), "b"))
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
             helper.make_node("If", ["is_16k"], ["branch"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("Add", ["branch", "x"], ["y"])]
    return _save(directory / "if.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, 16]), _value("sr", TensorProto.INT64, [])],
                 [_value("y", TensorProto.FLOAT, [1, 16])], inits)


def nested_if_model(directory: Path) -> Path:
    """An `If` on `sr >= 16000` whose else branch holds another `If` on `sr >= 8000` (outer
    values used inside both levels, the same value names in the two inner branches)."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, nodes: list, out: str, inits: tuple = ()) -> object:
        return helper.make_graph(nodes, name, [], [_value(out, TensorProto.FLOAT, [1, 16])],
                                 initializer=list(inits))

    inner = helper.make_node(
        "If", ["at_least_8k"], ["inner"],
        then_branch=branch("mid", [helper.make_node("Neg", ["x"], ["v"])], "v"),
        else_branch=branch("low", [helper.make_node("Mul", ["x", "half"], ["v"])], "v",
                           (numpy_helper.from_array(np.array(0.5, np.float32), "half"),)))
    outer = helper.make_node(
        "If", ["at_least_16k"], ["branch"],
        then_branch=branch("high", [helper.make_node("Tanh", ["x"], ["t"])], "t"),
        else_branch=branch("lower", [helper.make_node("GreaterOrEqual", ["sr", "r8k"],
                                                      ["at_least_8k"]),
                                     inner, helper.make_node("Abs", ["inner"], ["e"])], "e"))
    inits = (numpy_helper.from_array(np.array(16000, np.int64), "r16k"),
             numpy_helper.from_array(np.array(8000, np.int64), "r8k"))
    nodes = [helper.make_node("GreaterOrEqual", ["sr", "r16k"], ["at_least_16k"]), outer,
             helper.make_node("Sub", ["branch", "x"], ["y"])]
    return _save(directory / "nested_if.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, 16]), _value("sr", TensorProto.INT64, [])],
                 [_value("y", TensorProto.FLOAT, [1, 16])], inits)


CASES: list[tuple[Callable[[Path], Path], dict[str, np.ndarray]]] = [
    (reshape_model, {"shape": np.array([3, 4], np.int64)}),
    (reshape_model, {"shape": np.array([-1, 2], np.int64)}),
    (slice_model, {"starts": np.array([2], np.int64), "ends": np.array([7], np.int64)}),
    (slice_model, {"starts": np.array([-4], np.int64), "ends": np.array([100], np.int64)}),
    (resize_model, {"sizes": np.array([1, 2, 8, 8], np.int64)}),
    (resize_model, {"sizes": np.array([1, 2, 2, 2], np.int64)}),
    (if_model, {"sr": np.array(SAMPLE_RATE_THEN, np.int64)}),
    (if_model, {"sr": np.array(8000, np.int64)}),
    (nested_if_model, {"sr": np.array(16000, np.int64)}),
    (nested_if_model, {"sr": np.array(8000, np.int64)}),
    (nested_if_model, {"sr": np.array(4000, np.int64)}),
]


def _case_id(case: tuple[Callable[[Path], Path], dict[str, np.ndarray]]) -> str:
    builder, constants = case
    values = "-".join(f"{k}={'_'.join(map(str, np.ravel(v)))}" for k, v in constants.items())
    return f"{builder.__name__}-{values}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_frozen_input_matches_onnxruntime(
    case: tuple[Callable[[Path], Path], dict[str, np.ndarray]], tmp_path: Path
) -> None:
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    builder, constants = case
    path = builder(tmp_path)
    imported = import_model(path, constants=constants)
    assert [spec.name for spec in imported.inputs] == ["x"]
    assert "R.If" not in imported.mod.script() and "if " not in imported.mod.script()
    report = microexport.test(path, board="host", constants=constants)
    assert report.passed, report.summary()


def test_frozen_input_leaves_record_and_header(tmp_path: Path) -> None:
    """The frozen input is not an input of the record, the C header or `run`."""
    require_program("gcc", "gcc")
    path = if_model(tmp_path)
    result = microexport.compile(path, tmp_path / "vad.tar", name="vad",
                                 constants={"sr": np.array(8000, np.int64)})
    assert [spec.name for spec in result.model.inputs] == ["x"]
    with tarfile.open(result.archive) as archive:
        (member,) = [m for m in archive.getnames() if m.endswith("include/tvmgen_vad.h")]
        header = archive.extractfile(member)
        assert header is not None
        text = header.read().decode()
    assert "TVMGEN_VAD_X_SIZE" in text and "float* x;" in text
    assert "TVMGEN_VAD_SR_SIZE" not in text and "sr;" not in text
    x = np.random.default_rng(3).uniform(-1, 1, (1, 16)).astype(np.float32)
    (got,) = microexport.run(result.archive, {"x": x}).values()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": x, "sr": np.array(8000, np.int64)})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_relax_module_input_frozen(tmp_path: Path) -> None:
    """Outside ONNX the value is bound after import (here a Relax module; TFLite and .pt2 go the
    same way) and the compiled model takes only the other input."""
    require_program("gcc", "gcc")
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    scale = relax.Var("scale", relax.TensorType((1, 8), "float32"))
    with builder.function("main", [x, scale]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.multiply(x, relax.op.exp(scale)))
        builder.emit_func_output(out)
    value = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    imported = import_model(builder.get(), constants={"scale": value})
    assert [spec.name for spec in imported.inputs] == ["x"]
    compilation = compile_model(imported, name="scaled")
    from microexport.archive.mlf import write_archive

    archive = tmp_path / "scaled.tar"
    write_archive(archive, compilation.files)
    data = np.arange(8, dtype=np.float32).reshape(1, 8)
    (got,) = microexport.run(archive, {"x": data}).values()
    np.testing.assert_allclose(got, data * np.exp(value), rtol=1e-5, atol=1e-6)


def test_torch_program_input_frozen(tmp_path: Path) -> None:
    """A `.pt2` input is bound after import; `test` gives torch the same value."""
    torch = require_module("torch", "torch")
    require_program("gcc", "gcc")

    class Scaled(torch.nn.Module):  # type: ignore[misc, name-defined]
        def forward(self, x: object, gain: object) -> object:
            return torch.relu(x * gain + 1.0)

    program = torch.export.export(Scaled(), (torch.zeros(1, 8), torch.zeros(1, 8)))
    path = tmp_path / "scaled.pt2"
    torch.export.save(program, str(path))
    gain = np.linspace(-2, 2, 8, dtype=np.float32).reshape(1, 8)
    imported = import_model(path, constants={"gain": gain})
    assert [spec.name for spec in imported.inputs] == ["x"]
    report = microexport.test(path, board="host", constants={"gain": gain})
    assert report.passed, report.summary()


def test_tflite_input_frozen(tmp_path: Path) -> None:
    """A TFLite input is bound after import; `test` gives the reference the same value."""
    require_module("tflite", "tflite")
    require_program("gcc", "gcc")
    from zoo import TfliteWriter

    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8), "float32")
    gain = writer.tensor("gain", (1, 8), "float32")
    y = writer.tensor("y", (1, 8), "float32")
    writer.operator("MUL", [x, gain], [y], writer.options("MulOptions"))
    path = writer.write(tmp_path / "gain.tflite", [x, gain], [y])
    value = np.linspace(-2, 2, 8, dtype=np.float32).reshape(1, 8)
    imported = import_model(path, constants={"gain": value})
    assert [spec.name for spec in imported.inputs] == ["x"]
    report = microexport.test(path, board="host", constants={"gain": value})
    assert report.passed, report.summary()


def test_dynamic_dimension_takes_the_value_size(tmp_path: Path) -> None:
    """A constant for an input with a symbolic dimension fixes that dimension."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    path = _save(tmp_path / "dyn.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [2, 6]),
                  _value("shape", TensorProto.INT64, ["rank"])],
                 [_value("y", TensorProto.FLOAT, [2, 3, 2])])
    imported = import_model(path, constants={"shape": np.array([2, 3, 2], np.int64)})
    assert [(s.name, s.shape) for s in imported.outputs] == [("y", (2, 3, 2))]


@pytest.mark.parametrize(("constants", "fragment"), [
    ({"nope": np.array([3, 4], np.int64)}, "not an input"),
    ({"shape": np.array([3, 4], np.int32)}, "is int32"),
    ({"shape": np.array([3, 4, 1], np.int64)}, "has shape (3,)"),
    ({"shape": np.array(12, np.int64)}, "has shape ()"),
])
def test_bad_constant_python(constants: dict[str, np.ndarray], fragment: str,
                             tmp_path: Path) -> None:
    path = reshape_model(tmp_path)
    with pytest.raises(InputError, match=None) as raised:
        import_model(path, constants=constants)
    assert fragment in raised.value.one_line() and "\n" not in str(raised.value)


def test_constant_of_a_weight_is_refused(tmp_path: Path) -> None:
    path = slice_model(tmp_path)
    with pytest.raises(InputError, match="not an input of .*its inputs are: x, starts, ends"):
        import_model(path, constants={"axes": np.array([1], np.int64)})


def test_constant_and_input_shape_of_one_input(tmp_path: Path) -> None:
    path = reshape_model(tmp_path)
    with pytest.raises(InputError, match="drop the --input-shape"):
        import_model(path, {"shape": (2,)}, {"shape": np.array([3, 4], np.int64)})


# --- command line --------------------------------------------------------------------------------


def _cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as done:  # the option parser exits
        status = int(done.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line_error(status: int, err: str, fragment: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]


def test_cli_compile_and_test_with_constant(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    path = slice_model(tmp_path)
    np.save(tmp_path / "starts.npy", np.array([1], np.int64))
    np.save(tmp_path / "ends.npy", np.array([9], np.int64))
    flags = ["--constant", f"starts={tmp_path / 'starts.npy'}",
             "--constant", f"ends={tmp_path / 'ends.npy'}"]
    status, out, err = _cli(["compile", path, "-o", tmp_path / "s.tar", *flags], capsys)
    assert status == 0, err
    status, out, err = _cli(["test", path, "--board", "host", *flags], capsys)
    assert status == 0, out + err
    assert "PASS" in out


@pytest.mark.parametrize(("value", "fragment"), [
    ("shape", "expected NAME=FILE.npy"),
    ("=x.npy", "expected NAME=FILE.npy"),
    ("shape=", "expected NAME=FILE.npy"),
    ("shape={tmp}/missing.npy", "cannot read --constant 'shape'"),
    ("shape={tmp}/text.npy", "is not a .npy array file"),
    ("nope={tmp}/good.npy", "--constant names 'nope', not an input"),
    ("shape={tmp}/int32.npy", "is int32, input 'shape'"),
    ("shape={tmp}/long.npy", "has shape (3,), input 'shape'"),
])
def test_cli_bad_constant(value: str, fragment: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = reshape_model(tmp_path)
    np.save(tmp_path / "good.npy", np.array([3, 4], np.int64))
    np.save(tmp_path / "int32.npy", np.array([3, 4], np.int32))
    np.save(tmp_path / "long.npy", np.array([3, 4, 1], np.int64))
    (tmp_path / "text.npy").write_text("3 4\n")
    for command in ("compile", "test"):
        output = ["-o", tmp_path / "m.tar"] if command == "compile" else []
        status, _, err = _cli([command, path, *output, "--constant",
                               value.format(tmp=tmp_path)], capsys)
        _one_line_error(status, err, fragment)
        assert not (tmp_path / "m.tar").exists()


def test_cli_constant_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = reshape_model(tmp_path)
    np.save(tmp_path / "good.npy", np.array([3, 4], np.int64))
    flag = f"shape={tmp_path / 'good.npy'}"
    status, _, err = _cli(["compile", path, "-o", tmp_path / "m.tar", "--constant", flag,
                           "--constant", flag], capsys)
    _one_line_error(status, err, "given twice")
