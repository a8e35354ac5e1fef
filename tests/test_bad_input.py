"""Bad input: ONE line on stderr naming the problem and the fix, exit status 2, and nothing left
behind in the output location (no partial archive, project or output files).

Usage errors found by the option parser print `microexport <command>: error: ... (see microexport
<command> --help)`; every other refusal prints `microexport: error: ...`.

What we tried, as a new user would (each row is tested below, except the one marked untested):

| command            | bad input                                              | now             |
|--------------------|--------------------------------------------------------|-----------------|
| compile            | .tflite with a byte flipped / cut short, many offsets  | compiles or     |
|                    | .onnx, .pt2 likewise                                   | one line        |
| compile            | text renamed .onnx/.tflite/.pt2, empty file, directory | one line        |
|                    | named model.onnx, .tar given as model, missing file    |                 |
| compile            | ONNX element type 999, initializer with short raw data,| one line        |
|                    | names that are not UTF-8, 2**40-element input,         |                 |
|                    | float8 input, float8 (e4m3fn, e5m2) inside the model, a|                 |
|                    | dangling tensor reference                              |                 |
| compile, test      | ONNX names with space, '/', '+', '[', ':', non-ASCII   | compile and run |
|                    | letters (input, output, node, initializer names)       | correctly       |
| compile            | two inputs whose names sanitise alike, a keyword name  | one line        |
| compile, test      | --name of 5000 characters / not an identifier / empty  | one line        |
| compile            | --workspace-alignment 2**40, 0, 3, -16, 'abc'          | one line        |
|                    | --kernel-stack-limit 10**20, -1; --input-shape with    |                 |
|                    | 99999999999x99999999999, 0 or garbage dimensions       |                 |
| compile            | -o inside a regular file, -o a directory, --templates  | one line        |
|                    | a file, --target llvm, unknown --board                 |                 |
| compile            | .tflite whose operator/buffer/opcode/input index is out| one line        |
|                    | of range, unknown type code or options type, constant  |                 |
|                    | data of the wrong size, no outputs, non-UTF-8 name     |                 |
| compile            | --workspace-pool named constants / int / 'aé' / 100    | one line        |
|                    | characters, section '.é'; board pools likewise         |                 |
| compile, graph     | -o the input file itself                               | one line        |
| run, build         | a project whose board.yaml is not UTF-8                | one line        |
| run                | --timeout nan, -1, 0, inf, 1e300, 'soon'               | one line        |
| run                | --input: empty .npy, pickled .npy, .npz, text, wrong   | one line        |
|                    | dtype/shape, a directory, missing file, unknown name   |                 |
| run, compile       | --board YAML: not UTF-8, UTF-16, not a mapping, empty, | one line        |
|                    | non-string keys, wrong field types, run_timeout .nan / |                 |
|                    | .inf / 1e300, nested 5000 deep, a directory, missing,  |                 |
|                    | pool named 'é', pool section 'a b', 2**133-byte flash  |                 |
| run                | the model instead of an archive, a text file as .tar,  | one line        |
|                    | a directory, -o an existing file, --build-dir a file   |                 |
| project, build,    | archive that is not one, existing -o, a file or a      | one line        |
| size, flash        | directory that is not a project                        |                 |
| export-tir         | --indent 1000000000                                    | one line        |
| export-tir         | a script calling sys.exit(3) / exit() / raising        | one line        |
|                    | SystemExit or a BaseException, a directory, a binary   |                 |
|                    | file, a missing file; a script raising                 | "interrupted",  |
|                    | KeyboardInterrupt                                      | status 130      |
| graph, analyze     | a text file, a directory, a missing file               | one line        |
| (graph walker)     | graph.json whose constants / kernel parameters sanitise| runtime         |
|                    | to one C name or to a keyword                          | compiles        |
| boards, analyze,   | standard output closed by the reader (`| head -0`)     | quiet, status 1 |
| --help             |                                                        |                 |
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_program
from zoo import Builder, Inputs, cnn_onnx, int8_tflite, mlp_onnx, torch_cnn_pt2

from microexport.cli import main

BuildModel = Callable[[Builder], tuple[Path, Inputs]]
ERROR_LINE = re.compile(r"^microexport(?: [a-z-]+)?: error: \S")
LONG_NAME = 5000  # characters of the longest --name we try


# -- helpers ----------------------------------------------------------------------------------


def files_under(root: Path) -> set[str]:
    """Every file and directory under `root`, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_main(args: list[object], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`microexport ARGS` in this process; (status, stdout, stderr), stderr at the fd level so
    that C++ warnings of TVM count too."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as done:  # the option parser exits
        status = done.code if isinstance(done.code, int) else 1
    captured = capfd.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, err: str, *fragments: str, exit_status: int = 2) -> None:
    """One line naming the problem, no traceback, exit status 2."""
    assert status == exit_status, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ERROR_LINE.match(lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory: relative outputs land here, and nothing else may."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mlp_archive(build_model: BuildModel, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Path]:
    """(archive of the MLP zoo model, a matching input .npy), built once."""
    from microexport import api

    model, inputs = build_model(mlp_onnx)
    directory = tmp_path_factory.mktemp("mlp-archive")
    result = api.compile(model, output=directory / "mlp.tar", name="mlp")
    np.save(directory / "x.npy", inputs["x"])
    return result.archive, directory / "x.npy"


@pytest.fixture(scope="session")
def mlp_project(mlp_archive: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> Path:
    """A host project of the MLP archive, created once."""
    from microexport.deploy.project import create_project

    directory = tmp_path_factory.mktemp("mlp-project") / "proj"
    create_project(mlp_archive[0], "host", directory)
    return directory


# -- damaged model files --------------------------------------------------------------------

_RNG = random.Random(20240601)
# Positions as fractions of the file length (the zoo builds the files at test time). TFLite and
# .pt2: anywhere; ONNX: the graph structure sits before and after the weights.
TFLITE_FLIPS = sorted(_RNG.random() for _ in range(14))
ONNX_FLIPS = sorted([_RNG.random() * 0.2 for _ in range(6)] + [0.9 + _RNG.random() * 0.1
                                                               for _ in range(4)])
PT2_FLIPS = sorted(_RNG.random() for _ in range(5))
CUTS = (0.02, 0.3, 0.7, 0.99)

DAMAGED = (
    [("tflite", "flip", f) for f in TFLITE_FLIPS] + [("tflite", "cut", f) for f in CUTS]
    + [("onnx", "flip", f) for f in ONNX_FLIPS] + [("onnx", "cut", f) for f in CUTS]
    + [("pt2", "flip", f) for f in PT2_FLIPS] + [("pt2", "cut", f) for f in CUTS[1:3]]
)
BUILDERS: dict[str, Builder] = {"tflite": int8_tflite, "onnx": cnn_onnx, "pt2": torch_cnn_pt2}


def damaged_copy(source: Path, how: str, where: float, directory: Path) -> Path:
    data = bytearray(source.read_bytes())
    offset = min(int(where * len(data)), len(data) - 1)
    if how == "flip":
        data[offset] ^= 0xFF
    else:
        del data[offset:]
    path = directory / f"damaged{source.suffix}"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("fmt", "how", "where"), DAMAGED,
                         ids=[f"{f}-{h}-{w:.3f}" for f, h, w in DAMAGED])
def test_damaged_model_compiles_or_is_one_line(
    fmt: str, how: str, where: float, build_model: BuildModel, workdir: Path,
    capfd: pytest.CaptureFixture[str]
) -> None:
    """A flipped byte in the weights still compiles; anywhere else it is one ModelError, never
    a crash in the flatbuffers/protobuf/zip reader or a C++ warning on stderr."""
    if fmt == "pt2":
        require_module("torch", "torch")
    source, _ = build_model(BUILDERS[fmt])
    inputs = workdir / "in"
    inputs.mkdir()
    model = damaged_copy(source, how, where, inputs)
    before = files_under(workdir)
    status, _, err = run_main(["compile", model, "-o", "m.tar"], capfd)
    if status == 0:
        assert err == "", err
        assert files_under(workdir) == before | {"m.tar"}
    else:
        assert_refused(status, err)
        assert files_under(workdir) == before


def test_many_tflite_flips_load_or_fail_as_model_error(build_model: BuildModel,
                                                       tmp_path: Path) -> None:
    """Import (no compilation) of the TFLite model with each of 120 bytes flipped."""
    from microexport.compiler.frontend import load_model
    from microexport.errors import ModelError

    source, _ = build_model(int8_tflite)
    data = source.read_bytes()
    rng = random.Random(7)
    for offset in sorted(rng.sample(range(len(data)), min(120, len(data)))):
        path = damaged_copy(source, "flip", offset / len(data), tmp_path)
        with contextlib.suppress(ModelError):  # any other exception fails the test
            load_model(path)


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


WRONG_FILES: list[tuple[str, bytes | str | None, str]] = [
    ("text.onnx", "this is not a model\n", "ONNX"),
    ("empty.onnx", b"", "no outputs"),
    ("zeros.onnx", b"\0" * 64, "ONNX"),
    ("text.tflite", "this is not a model\n", "TFL3"),
    ("empty.tflite", b"", "TFL3"),
    ("header-only.tflite", b"\x18\0\0\0TFL3" + b"\0" * 8, "TFLite"),
    ("text.pt2", "this is not a model\n", "zip"),
    ("dir.onnx", None, "is a directory"),
    ("missing.tflite", "", "missing.tflite"),
    ("model.h5", b"\x89HDF", ".h5"),
]


@pytest.mark.parametrize(("name", "content", "fragment"), WRONG_FILES,
                         ids=[n for n, _, _ in WRONG_FILES])
def test_wrong_model_file(name: str, content: bytes | str | None, fragment: str, workdir: Path,
                          capfd: pytest.CaptureFixture[str]) -> None:
    path = workdir / "in" / name
    if content is None:
        path.mkdir(parents=True)
    elif name.startswith("missing"):
        path.parent.mkdir()
    else:
        _write(path, content)
    before = files_under(workdir)
    status, _, err = run_main(["compile", path, "-o", "m.tar"], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


# -- hand-made TFLite models: fields out of range --------------------------------------------


def _tflite_case(kind: str, path: Path) -> Path:
    """A float FULLY_CONNECTED model with one field broken."""
    from zoo import TfliteWriter

    rng = np.random.default_rng(3)
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8), "float32")
    w = writer.tensor("w", (3, 8), "float32", rng.standard_normal((3, 8)).astype(np.float32))
    b = writer.tensor("b", (3,), "float32", rng.standard_normal(3).astype(np.float32))
    y = writer.tensor("y", (1, 3), "float32")
    writer.operator("FULLY_CONNECTED", [x, w, b], [y], writer.options("FullyConnectedOptions"))
    inputs, outputs = [x], [y]
    op, tensors = writer.operators[0], writer.tensors
    if kind == "operator-input-index":
        op.inputs = [x, 99, b]
    elif kind == "buffer-index":
        tensors[w].buffer = 99
    elif kind == "tensor-type":
        tensors[x].type = 99
    elif kind == "opcode-index":
        op.opcodeIndex = 5
    elif kind == "model-input-index":
        inputs = [42]
    elif kind == "data-size":
        tensors[w].shape = [3, 9]
    elif kind == "no-outputs":
        outputs = []
    elif kind == "name-not-utf8":
        tensors[x].name = b"x\xff"
    elif kind == "options-type":
        op.builtinOptionsType = 200
    else:
        raise AssertionError(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer.write(path, inputs, outputs)


TFLITE_CASES = [
    ("operator-input-index", "tensor index 99"), ("buffer-index", "buffer index 99"),
    ("tensor-type", "type code 99"), ("opcode-index", "operator code index 5"),
    ("model-input-index", "index 42"), ("data-size", "96 bytes of data"),
    ("no-outputs", "no outputs"), ("name-not-utf8", "utf-8"),
    ("options-type", "options type 200"),
]


@pytest.mark.parametrize(("kind", "fragment"), TFLITE_CASES, ids=[k for k, _ in TFLITE_CASES])
def test_bad_tflite_model(kind: str, fragment: str, workdir: Path,
                          capfd: pytest.CaptureFixture[str]) -> None:
    require_module("tflite", "tflite")
    model = _tflite_case(kind, workdir / "in" / f"{kind}.tflite")
    before = files_under(workdir)
    status, _, err = run_main(["compile", model, "-o", "m.tar"], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


# -- hand-made ONNX models: damaged fields, odd names ---------------------------------------


def _onnx_model(path: Path, nodes: list, inputs: list, outputs: list, inits: tuple = ()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _value(name: str, shape: tuple[int, ...] = (1, 4), elem_type: int = 1) -> object:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def _relu(x: str = "x", y: str = "y") -> object:
    from onnx import helper

    return helper.make_node("Relu", [x], [y])


def _onnx_case(kind: str, path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    if kind == "unknown-element-type":
        return _onnx_model(path, [_relu()], [_value("x", elem_type=999)], [_value("y")])
    if kind == "short-initializer":
        weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
        weight.raw_data = b"\0" * 7
        return _onnx_model(path, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                           [_value("x")], [_value("y")], (weight,))
    if kind == "huge-input":
        return _onnx_model(path, [_relu()], [_value("x", (1, 2**40))],
                           [_value("y", (1, 2**40))])
    if kind == "float8-input":
        return _onnx_model(path, [_relu()], [_value("x", elem_type=TensorProto.FLOAT8E5M2)],
                           [_value("y", elem_type=TensorProto.FLOAT8E5M2)])
    if kind in ("float8-inside", "float8e5m2-inside"):
        inner = TensorProto.FLOAT8E4M3FN if kind == "float8-inside" else TensorProto.FLOAT8E5M2
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=inner),
                 helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
        return _onnx_model(path, nodes, [_value("x")], [_value("y")])
    if kind == "dangling-reference":
        return _onnx_model(path, [_relu("nope", "y")], [_value("x")], [_value("y")])
    if kind == "names-clash":
        return _onnx_model(path, [helper.make_node("Add", ["a b", "a:b"], ["y"])],
                           [_value("a b"), _value("a:b")], [_value("y")])
    if kind == "non-ascii-names-clash":
        return _onnx_model(path, [_relu("ü", "é")], [_value("ü")], [_value("é")])
    if kind == "keyword-name":
        return _onnx_model(path, [_relu("int", "y")], [_value("int")], [_value("y")])
    if kind == "non-utf8-name":
        import onnx

        model = _onnx_model(path, [_relu("xq", "y")], [_value("xq")], [_value("y")])
        data = onnx.load(str(model)).SerializeToString().replace(b"xq", b"x\xff")
        path.write_bytes(data)
        return path
    raise AssertionError(kind)


ONNX_CASES = [
    ("unknown-element-type", "element type 999"),
    ("short-initializer", "initializer 'w'"),
    ("huge-input", "1099511627776 elements"),
    ("float8-input", "float8_e5m2"),
    ("float8-inside", "float8"),
    ("float8e5m2-inside", "computes in float8_e5m2"),
    ("dangling-reference", "'nope'"),
    ("names-clash", "'a_b'"),
    ("non-ascii-names-clash", "sanitising"),
    ("keyword-name", "'int'"),
    ("non-utf8-name", "not UTF-8"),
]


@pytest.mark.parametrize(("kind", "fragment"), ONNX_CASES, ids=[k for k, _ in ONNX_CASES])
def test_bad_onnx_model(kind: str, fragment: str, workdir: Path,
                        capfd: pytest.CaptureFixture[str]) -> None:
    require_module("onnx", "onnx")
    model = _onnx_case(kind, workdir / "in" / f"{kind}.onnx")
    before = files_under(workdir)
    status, _, err = run_main(["compile", model, "-o", "m.tar"], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


ODD_INPUT = "in put/a+[0]:é"
ODD_OUTPUTS = ("ö ut/1", "0out:2")


def odd_names_onnx(path: Path) -> Path:
    """Inputs, outputs, nodes and an initializer named with a space, '/', '+', '[', ':' and
    non-ASCII letters; intermediate tensors feed separate kernels, so the model's names become
    kernel parameter names."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(5)
    weight = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32),
                                     "w eight/1:ü")
    nodes = [
        helper.make_node("MatMul", [ODD_INPUT, "w eight/1:ü"], ["mm out/1"], name="mat mul/0"),
        helper.make_node("Softmax", ["mm out/1"], ["s+m[0]"], name="soft:max", axis=-1),
        helper.make_node("Mul", ["s+m[0]", "x/1 ü"], ["prod[1]"], name="mul+1"),
        helper.make_node("Softmax", ["prod[1]"], [ODD_OUTPUTS[0]], axis=-1),
        helper.make_node("Exp", ["s+m[0]"], [ODD_OUTPUTS[1]]),
    ]
    return _onnx_model(path, nodes, [_value(ODD_INPUT, (2, 4)), _value("x/1 ü", (2, 4))],
                       [_value(name, (2, 4)) for name in ODD_OUTPUTS], (weight,))


def test_odd_tensor_names_compile_and_run(workdir: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    require_module("onnx", "onnx")
    require_program("cc", "gcc")
    model = odd_names_onnx(workdir / "in" / "odd.onnx")
    status, out, err = run_main(["test", model, "--board", "host"], capfd)
    assert status == 0, out + err
    assert "PASS: " in out and out.count("PASS") == 3, out


def odd_names_tflite(path: Path) -> Path:
    """FULLY_CONNECTED → SOFTMAX with tensor names as TensorFlow writes them, and worse."""
    from zoo import TfliteWriter

    rng = np.random.default_rng(3)
    writer = TfliteWriter()
    x = writer.tensor("serving_default in put:0/é", (1, 8), "float32")
    w = writer.tensor("dense/w eight[0]", (3, 8), "float32",
                      rng.standard_normal((3, 8)).astype(np.float32))
    b = writer.tensor("dense/b+ias", (3,), "float32", rng.standard_normal(3).astype(np.float32))
    h = writer.tensor("dense/Mat Mul;ü", (1, 3), "float32")
    y = writer.tensor("Identity [0]:ü", (1, 3), "float32")
    writer.operator("FULLY_CONNECTED", [x, w, b], [h], writer.options("FullyConnectedOptions"))
    writer.operator("SOFTMAX", [h], [y], writer.options("SoftmaxOptions", beta=1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer.write(path, [x], [y])


def odd_names_pt2(path: Path) -> Path:
    """A torch.export program whose inputs are non-ASCII Python identifiers."""
    import torch

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, größe: torch.Tensor, ñ: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.lin(größe) * ñ.sum(), -1)

    torch.manual_seed(0)
    program = torch.export.export(Odd().eval(), (torch.zeros(1, 4), torch.zeros(1, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("fmt", ["tflite", "pt2"])
def test_odd_tensor_names_other_formats(fmt: str, workdir: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    require_module("tflite" if fmt == "tflite" else "torch", fmt if fmt == "tflite" else "torch")
    require_program("cc", "gcc")
    make = odd_names_tflite if fmt == "tflite" else odd_names_pt2
    model = make(workdir / "in" / f"odd.{fmt}")
    status, out, err = run_main(["test", model, "--board", "host"], capfd)
    assert status == 0, out + err
    assert out.strip().splitlines()[-1].startswith("PASS: "), out


def test_odd_tensor_names_give_identifiers_everywhere(workdir: Path) -> None:
    """Kernel parameters of the generated C are identifiers, and the graph-walker runtime of the
    same archive compiles with -Werror."""
    require_module("onnx", "onnx")
    gcc = require_program("gcc", "gcc")
    from microexport.api import compile_model, import_model
    from microexport.archive.graph import load_graph, render_graph_walker

    model = odd_names_onnx(workdir / "in" / "odd.onnx")
    compilation = compile_model(import_model(model), name="odd")
    lib = compilation.files["codegen/host/src/tvmgen_odd_lib.c"].decode()
    for params in re.findall(r"^int32_t tvmgen_odd_\w+\((.*)\)", lib, re.MULTILINE):
        for param in params.split(", "):
            assert re.fullmatch(r"\w+\*? \w+", param), param
    out = workdir / "walker"
    out.mkdir()
    files = render_graph_walker(load_graph(compilation.files["src/graph.json"]))
    for filename, text in files.items():
        (out / filename).write_text(text)
    (out / "tvmgen_odd_lib.c").write_text(lib)
    (out / "tvmgen_odd.h").write_bytes(compilation.files["codegen/host/include/tvmgen_odd.h"])
    sources = [str(out / f) for f in files if f.endswith(".c")]
    subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "-I", str(out),
                    *sources, str(out / "tvmgen_odd_lib.c")], cwd=out, check=True,
                   capture_output=True, text=True)


def test_graph_walker_names_that_sanitise_alike(zoo_compilation: Callable[[str], tuple],
                                                tmp_path: Path) -> None:
    """A graph.json (which users may write themselves) whose constants, and kernel parameters,
    have names that sanitise to the same C identifier or to a keyword: the rendered runtime
    still compiles."""
    gcc = require_program("gcc", "gcc")
    from microexport.archive.graph import load_graph, render_graph_walker

    compilation, _, _ = zoo_compilation("mlp_onnx")
    text = compilation.files["src/graph.json"].decode()
    for old, new in (('"constant_0"', '"c 0"'), ('"constant_1"', '"c:0"'),
                     ('"param_0"', '"int"'), ('"param_1"', '"a b"'), ('"x"', '"a:b"')):
        assert old in text
        text = text.replace(old, new)
    files = render_graph_walker(load_graph(text))
    for filename, content in files.items():
        (tmp_path / filename).write_text(content)
    lib = "tvmgen_mlp_onnx_lib.c"
    (tmp_path / lib).write_bytes(compilation.files[f"codegen/host/src/{lib}"])
    header = "tvmgen_mlp_onnx.h"
    (tmp_path / header).write_bytes(compilation.files[f"codegen/host/include/{header}"])
    sources = [str(tmp_path / f) for f in files if f.endswith(".c")]
    subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "-I", str(tmp_path),
                    *sources], cwd=tmp_path, check=True, capture_output=True, text=True)


def test_kernel_parameters_that_sanitise_alike_stay_distinct() -> None:
    from tvm import ir, tirx

    from microexport.compiler.unpacked import c_names

    first, second = tirx.Var("a b", "int32"), tirx.Var("a:b", "int32")
    keyword = tirx.Var("int", "int32")
    func = tirx.PrimFunc([first, second, keyword],
                         tirx.Return(first + second + keyword), ret_type=ir.PrimType("int32"))
    names = [p.name for p in c_names(func).params]
    assert names == ["a_b", "a_b_1", "int_"]


# -- option values ----------------------------------------------------------------------------

OPTION_CASES: list[tuple[str, list[str], str]] = [
    ("name-5000", ["--name", "x" * LONG_NAME], "at most 64"),
    ("name-space", ["--name", "a b"], "try 'a_b'"),
    ("name-empty", ["--name", ""], "not a C identifier"),
    ("name-digit", ["--name", "1abc"], "not a C identifier"),
    ("name-non-ascii", ["--name", "modèle"], "not a C identifier"),
    ("alignment-2**40", ["--workspace-alignment", "1099511627776"], "power of two"),
    ("alignment-0", ["--workspace-alignment", "0"], "power of two"),
    ("alignment-3", ["--workspace-alignment", "3"], "power of two"),
    ("alignment-negative", ["--workspace-alignment", "-16"], "power of two"),
    ("alignment-text", ["--workspace-alignment", "abc"], "not an integer"),
    ("stack-limit-huge", ["--kernel-stack-limit", "100000000000000000000"], "65536"),
    ("stack-limit-negative", ["--kernel-stack-limit", "-1"], "65536"),
    ("input-shape-huge", ["--input-shape", "x:99999999999x99999999999"], "--input-shape"),
    ("input-shape-elements", ["--input-shape", "x:65536x65536"], "elements"),
    ("input-shape-zero", ["--input-shape", "x:0x16"], "positive"),
    ("input-shape-garbage", ["--input-shape", "x:1x1e3"], "--input-shape"),
    ("pool-constants", ["--workspace-pool", "constants:1M"], "'constants'"),
    ("pool-keyword", ["--workspace-pool", "int:1M"], "C keyword"),
    ("pool-non-ascii", ["--workspace-pool", "aé:1M"], "--workspace-pool"),
    ("pool-section-non-ascii", ["--workspace-pool", "a:1M:.é"], "--workspace-pool"),
    ("pool-long-name", ["--workspace-pool", "p" * 100 + ":1M"], "at most 64"),
]


@pytest.mark.parametrize(("flags", "fragment"), [c[1:] for c in OPTION_CASES],
                         ids=[c[0] for c in OPTION_CASES])
@pytest.mark.parametrize("command", ["compile", "test"])
def test_bad_compile_option(command: str, flags: list[str], fragment: str,
                            build_model: BuildModel, workdir: Path,
                            capfd: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    output = ["-o", "m.tar"] if command == "compile" else []
    status, _, err = run_main([command, model, *output, *flags], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == set()


TIMEOUTS = ["nan", "-1", "0", "inf", "1e300", "soon"]


@pytest.mark.parametrize("timeout", TIMEOUTS)
@pytest.mark.parametrize("target", ["archive", "project"])
def test_bad_timeout(timeout: str, target: str, mlp_archive: tuple[Path, Path],
                     mlp_project: Path, workdir: Path,
                     capfd: pytest.CaptureFixture[str]) -> None:
    archive, x = mlp_archive
    where = archive if target == "archive" else mlp_project
    status, _, err = run_main(["run", where, "--input", x, "-o", "out", "--timeout", timeout],
                              capfd)
    assert_refused(status, err, "--timeout")
    assert files_under(workdir) == set()


def test_bad_export_tir_indent(workdir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _write(workdir / "in" / "m.py", "x = 1\n")
    status, _, err = run_main(["export-tir", "in/m.py", "--indent", "1000000000"], capfd)
    assert_refused(status, err, "--indent")


# -- run inputs (.npy) --------------------------------------------------------------------------


def _npy_case(kind: str, path: Path) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "npz":
        with path.open("wb") as handle:
            np.savez(handle, x=np.zeros((1, 16), np.float32))
    elif kind == "text":
        path.write_text("1 2 3\n")
    elif kind == "truncated":
        np.save(path, np.zeros((1, 16), np.float32))
        path.write_bytes(path.read_bytes()[:90])
    elif kind == "float64":
        np.save(path, np.zeros((1, 16), np.float64))
    elif kind == "shape":
        np.save(path, np.zeros((2, 16), np.float32))
    elif kind == "zero-size":
        np.save(path, np.zeros((0,), np.float32))
    elif kind == "directory":
        path.mkdir()
    elif kind != "missing":
        raise AssertionError(kind)
    return path


NPY_CASES = [("empty", "not a .npy"), ("pickled", "not a .npy"), ("npz", "not a .npy"),
             ("text", "not a .npy"), ("truncated", "not a .npy"), ("float64", "float64"),
             ("shape", "(2, 16)"), ("zero-size", "(0,)"), ("directory", "directory"),
             ("missing", "No such file")]


@pytest.mark.parametrize(("kind", "fragment"), NPY_CASES, ids=[k for k, _ in NPY_CASES])
def test_bad_input_npy(kind: str, fragment: str, mlp_archive: tuple[Path, Path], workdir: Path,
                       capfd: pytest.CaptureFixture[str]) -> None:
    archive, _ = mlp_archive
    (workdir / "in").mkdir()
    npy = _npy_case(kind, workdir / "in" / "x.npy")
    before = files_under(workdir)
    status, _, err = run_main(["run", archive, "--input", npy, "-o", "out"], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


@pytest.mark.parametrize(("spec", "fragment"), [("y={x}", "unknown input 'y'"),
                                                ("{x} {x}", "too many --input"),
                                                ("", "missing --input for x")])
def test_bad_input_arguments(spec: str, fragment: str, mlp_archive: tuple[Path, Path],
                             workdir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    archive, x = mlp_archive
    inputs = [item for word in spec.format(x=x).split() for item in ("--input", word)]
    status, _, err = run_main(["run", archive, *inputs, "-o", "out"], capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == set()


# -- board YAML files -----------------------------------------------------------------------------

HOST_BOARD = """\
name: host
platforms: [host]
compiler: cc
cflags: [-O2, -std=c99, -Wall, -Wextra, -Werror]
ldflags: [-lm]
"""

BOARD_CASES: list[tuple[str, bytes | str | None, str]] = [
    ("latin-1", (HOST_BOARD + "description: café\n").encode("latin-1"), "not UTF-8"),
    ("utf-16", HOST_BOARD.encode("utf-16"), "not UTF-8"),
    ("binary", b"\x00\x01\xff\xfe", "not UTF-8"),
    ("list", "- host\n- cc\n", "expected a YAML mapping"),
    ("scalar", "42\n", "expected a YAML mapping"),
    ("empty", "", "expected a YAML mapping"),
    ("invalid-yaml", "name: [\n", "invalid YAML"),
    ("python-tag", "!!python/object:os.system\nx: 1\n", "invalid YAML"),
    ("nested", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("integer-key", HOST_BOARD + "1: one\n", "field name 1"),
    ("unknown-field", HOST_BOARD + "colour: red\n", "unknown field"),
    ("platforms-string", HOST_BOARD.replace("[host]", "host"), "platforms"),
    ("platforms-number", HOST_BOARD.replace("[host]", "[1]"), "platforms"),
    ("compiler-number", HOST_BOARD.replace("compiler: cc", "compiler: 5"), "compiler"),
    ("cflags-string", HOST_BOARD.replace("[-O2, -std=c99, -Wall, -Wextra, -Werror]", "-O2"),
     "cflags"),
    ("name-list", HOST_BOARD.replace("name: host", "name: [x]"), "name"),
    ("timeout-nan", HOST_BOARD + "run_timeout: .nan\n", "run_timeout"),
    ("timeout-inf", HOST_BOARD + "run_timeout: .inf\n", "run_timeout"),
    ("timeout-huge", HOST_BOARD + "run_timeout: 1.0e+300\n", "run_timeout"),
    ("timeout-bool", HOST_BOARD + "run_timeout: true\n", "run_timeout"),
    ("stack-float", HOST_BOARD + "stack_size: 1.5\n", "stack_size"),
    ("flash-huge", HOST_BOARD + f"flash: {{origin: 0, size: {10**40}}}\n", "4 GiB"),
    ("pool-non-ascii", HOST_BOARD + "workspace_pools: [{name: é}]\n", "workspace_pools[0]"),
    ("pool-section", HOST_BOARD + "workspace_pools: [{name: p, section: 'a b'}]\n", "section"),
    ("pool-constants", HOST_BOARD + "workspace_pools: [{name: constants}]\n", "'constants'"),
    ("directory", None, "is a directory"),
    ("missing", "", "not found"),
]


@pytest.mark.parametrize(("kind", "content", "fragment"), BOARD_CASES,
                         ids=[k for k, _, _ in BOARD_CASES])
def test_bad_board_file(kind: str, content: bytes | str | None, fragment: str,
                        mlp_archive: tuple[Path, Path], workdir: Path,
                        capfd: pytest.CaptureFixture[str]) -> None:
    archive, x = mlp_archive
    board = workdir / "in" / "board.yaml"
    if content is None:
        board.mkdir(parents=True)
    elif kind == "missing":
        board.parent.mkdir()
    else:
        _write(board, content)
    before = files_under(workdir)
    status, _, err = run_main(["run", archive, "--board", board, "--input", x, "-o", "out"],
                              capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


def test_bad_board_file_for_compile(build_model: BuildModel, workdir: Path,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    board = _write(workdir / "in" / "board.yaml", HOST_BOARD.encode() + b"description: \xe9\n")
    before = files_under(workdir)
    status, _, err = run_main(["compile", model, "-o", "m.tar", "--board", board], capfd)
    assert_refused(status, err, "not UTF-8", "save it as UTF-8")
    assert files_under(workdir) == before


# -- export-tir scripts -------------------------------------------------------------------------

SCRIPTS: list[tuple[str, str, str, int]] = [
    ("sys-exit-3", "import sys\nsys.exit(3)\n", "sys.exit(3)", 2),
    ("exit", "exit()\n", "exited", 2),
    ("system-exit-message", "raise SystemExit('bye')\n", "'bye'", 2),
    ("base-exception", "class Stop(BaseException):\n    pass\nraise Stop('x')\n", "Stop: x", 2),
    ("syntax-error", "def f(:\n", "SyntaxError", 2),
    ("binary", "\udcff\udcfe\n", "SyntaxError", 2),
    ("no-module", "x = 1\n", "defines no IRModule", 2),
    ("keyboard-interrupt", "raise KeyboardInterrupt\n", "interrupted", 130),
]


@pytest.mark.parametrize(("kind", "script", "fragment", "exit_status"), SCRIPTS,
                         ids=[s[0] for s in SCRIPTS])
def test_bad_export_tir_script(kind: str, script: str, fragment: str, exit_status: int,
                               workdir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    del kind
    path = workdir / "in" / "module.py"
    path.parent.mkdir()
    path.write_bytes(script.encode("utf-8", "surrogateescape"))
    before = files_under(workdir)
    status, out, err = run_main(["export-tir", path, "-o", "tir.json"], capfd)
    if exit_status == 130:  # Ctrl-C and a script raising KeyboardInterrupt look the same
        assert status == 130 and err.strip() == "microexport: interrupted", err
    else:
        assert_refused(status, err, fragment)
    assert files_under(workdir) == before


# -- wrong paths and file types ---------------------------------------------------------------


@pytest.fixture
def setting(workdir: Path, mlp_archive: tuple[Path, Path], mlp_project: Path,
            build_model: BuildModel) -> Iterator[dict[str, str]]:
    """Names for the command lines below: a model, an archive, an input, a project, a plain file
    and a directory, all outside the working directory except the last two."""
    model, _ = build_model(mlp_onnx)
    (workdir / "file.txt").write_text("hello\n")
    (workdir / "adir").mkdir()
    yield {"model": str(model), "archive": str(mlp_archive[0]), "x": str(mlp_archive[1]),
           "project": str(mlp_project)}


PATH_CASES: list[tuple[str, str, str]] = [
    ("compile-output-in-a-file", "compile {model} -o file.txt/m.tar", "file.txt/m.tar"),
    ("compile-output-a-directory", "compile {model} -o adir", "adir"),
    ("compile-archive-as-model", "compile {archive} -o m.tar", "'.tar'"),
    ("compile-templates-a-file", "compile {model} -o m.tar --templates file.txt", "file.txt"),
    ("compile-llvm-target", "compile {model} -o m.tar --target llvm", "--target c"),
    ("compile-unknown-board", "compile {model} -o m.tar --board nope", "unknown board"),
    ("run-model-as-archive", "run {model} --input {x} -o out", "archive"),
    ("run-text-as-archive", "run file.txt --input {x} -o out", "file.txt"),
    ("run-directory", "run adir --input {x} -o out", "adir"),
    ("run-output-a-file", "run {archive} --input {x} -o file.txt", "file.txt"),
    ("run-build-dir-a-file", "run {archive} --input {x} -o out --build-dir file.txt",
     "file.txt"),
    ("run-unknown-platform", "run {archive} --input {x} -o out --platform nope", "nope"),
    ("run-project-other-board", "run {project} --input {x} -o out --board mps2_an385",
     "mps2_an385"),
    ("test-missing-model", "test missing.onnx", "missing.onnx"),
    ("project-text-archive", "project create file.txt --board host -o p", "file.txt"),
    ("project-output-exists", "project create {archive} --board host -o adir2 ", ""),
    ("project-into-a-file", "project create {archive} --board host -o file.txt", "file.txt"),
    ("build-not-a-project", "build adir", "not a project"),
    ("build-a-file", "build file.txt", "not a project"),
    ("size-an-archive", "size {archive}", "not a project"),
    ("flash-host", "flash {project}", "flash"),
    ("graph-text", "graph file.txt", "not valid JSON"),
    ("graph-directory", "graph adir", "adir"),
    ("analyze-missing", "analyze missing.json", "missing.json"),
    ("export-tir-directory", "export-tir adir", "directory"),
    ("export-tir-missing", "export-tir missing.py", "missing.py"),
]


@pytest.mark.parametrize(("line", "fragment"), [c[1:] for c in PATH_CASES],
                         ids=[c[0] for c in PATH_CASES])
def test_wrong_path(line: str, fragment: str, setting: dict[str, str], workdir: Path,
                    capfd: pytest.CaptureFixture[str]) -> None:
    if "adir2" in line:  # an existing, non-empty project directory without --force
        _write(workdir / "adir2" / "keep.txt", "mine\n")
    before = files_under(workdir)
    status, _, err = run_main(line.format(**setting).split(), capfd)
    assert_refused(status, err, fragment)
    assert files_under(workdir) == before


def test_compile_output_is_the_model(build_model: BuildModel, workdir: Path,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    source, _ = build_model(mlp_onnx)
    model = workdir / "mlp.onnx"
    model.write_bytes(source.read_bytes())
    status, _, err = run_main(["compile", model, "-o", model], capfd)
    assert model.read_bytes() == source.read_bytes()
    assert_refused(status, err, "mlp.onnx")


def test_graph_output_is_the_input(zoo_compilation: Callable[[str], tuple], workdir: Path,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    tir = workdir / "tir.json"
    tir.write_bytes(compilation.files["src/tir-codegen.json"])
    status, _, err = run_main(["graph", tir, "-o", tir], capfd)
    assert tir.read_bytes() == compilation.files["src/tir-codegen.json"]
    assert_refused(status, err, "tir.json")


@pytest.mark.parametrize("command", ["build", "size"])
def test_project_with_non_utf8_board_file(command: str, mlp_archive: tuple[Path, Path],
                                          workdir: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    from microexport.deploy.project import create_project

    project = workdir / "proj"
    create_project(mlp_archive[0], "host", project)
    (project / "board.yaml").write_bytes(b"name: h\xe9st\n")
    before = files_under(workdir)
    status, _, err = run_main([command, project], capfd)
    assert_refused(status, err, "board.yaml", "not UTF-8")
    assert files_under(workdir) == before


def test_output_file_that_is_a_directory(mlp_archive: tuple[Path, Path], workdir: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    archive, x = mlp_archive
    (workdir / "out" / "y.npy").mkdir(parents=True)
    before = files_under(workdir)
    status, _, err = run_main(["run", archive, "--input", x, "-o", workdir / "out"], capfd)
    assert_refused(status, err, "y.npy")
    assert files_under(workdir) == before  # no y.npy.tmp or other leftovers


def test_python_api_old_target_string_is_one_line(build_model: BuildModel,
                                                  workdir: Path) -> None:
    from microexport import api
    from microexport.errors import Error

    model, _ = build_model(mlp_onnx)
    with pytest.raises(Error) as info:
        api.compile(model, output=workdir / "m.tar", target="c -keys=cpu")
    assert "\n" not in str(info.value) and "use --target c" in str(info.value)
    assert files_under(workdir) == set()


# -- standard output closed by its reader ------------------------------------------------------


@pytest.mark.parametrize("args", [["boards"], ["--help"], ["analyze", "{tir}"]],
                         ids=["boards", "help", "analyze"])
def test_closed_stdout_is_quiet(args: list[str], tmp_path: Path,
                                zoo_compilation: Callable[[str], tuple]) -> None:
    """`microexport boards | head -0`: no traceback, no "Exception ignored" at exit."""
    compilation, _, _ = zoo_compilation("mlp_onnx")
    tir = tmp_path / "tir-codegen.json"
    tir.write_bytes(compilation.files["src/tir-codegen.json"])
    command = [sys.executable, "-m", "microexport.cli",
               *(a.format(tir=tir) for a in args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first byte
    err = process.stderr.read().decode()
    status = process.wait(timeout=120)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err == "", err
    assert status in (0, 1)
