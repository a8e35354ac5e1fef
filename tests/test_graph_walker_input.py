"""graph.json is input (users may write or edit it): `load_graph` validates the whole document
against the shipped schema and its cross-references, and the graph-walker runtime rendered from
it never turns a string of the document into live C. Names end up only as checked C identifiers
or comment-safe text, numbers as checked integers, dtypes from the known set; everything else is
a one-line TirJsonError starting with the JSON path.

The fuzz test reuses the mutations of tests/test_tir_json_fuzz.py on zoo graph.json documents,
plus renames of a string everywhere it occurs (so the document stays consistent and reaches the
templates) to hostile text."""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require_program
from test_tir_json_fuzz import PATH_MESSAGE, Mutant, mutants, places

from microexport.archive.graph import (
    GRAPH_SCHEMA_FILE,
    graph_schema,
    load_graph,
    render_graph_walker,
    walker_variables,
)
from microexport.errors import Error, TirJsonError

ZooCompilation = Callable[[str], tuple]
MODELS = ("mlp_onnx", "cnn_onnx", "int8_tflite", "sine_float")
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
# Names that would be C if printed raw. Each one that is meant to stay inert says "evil".
HOSTILE = ("x */ int evil; /*", "*/ int evil; //", "a\nint evil;", "a\r\n#define evil 1",
           "/* evil", "evil */", "??/\nint evil;", "\\\nint evil;", '"; int evil; "',
           "\u2028int evil;", "\x00evil", "caf\u00e9 */ int evil;", "int", "uint8_t", "main",
           "status", "in_x", "scratch_0", "", "1x", "x" * 300)
# C code: comments, string and character literals (in that order of precedence).
C_TOKENS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def live_code(text: str) -> str:
    """The C `text` without its comments (string literals kept: names must not reach them)."""
    return C_TOKENS.sub(lambda m: " " if m.group().startswith("/") else m.group(), text)


def assert_inert(files: dict[str, str]) -> None:
    """No hostile name became C: outside comments no token `evil`, no comment opener or closer
    left over; every file printable ASCII."""
    for filename, text in files.items():
        assert text.isascii(), filename
        assert all(ch.isprintable() or ch in "\n" for ch in text), filename
        code = live_code(text)
        assert re.search(r"\bevil\b", code) is None, (filename, code)
        assert "/*" not in code and "*/" not in code, filename


def rename(doc: Any, old: str, new: str) -> None:
    """Every string value `old` of `doc` becomes `new` (keys stay)."""
    for place in list(places(doc)):
        if isinstance(place.value, str) and place.value == old:
            place.parent[place.key] = new


@pytest.fixture(scope="module")
def graph_texts(zoo_compilation: ZooCompilation) -> list[str]:
    """graph.json of a few zoo models, as the archive holds it."""
    return [zoo_compilation(name)[0].files["src/graph.json"].decode() for name in MODELS]


@pytest.fixture(scope="module")
def mlp_text(build_model: Callable) -> str:
    """graph.json of the zoo MLP with every kernel buffer in the workspace
    (`kernel_stack_limit=0`): its kernels take a scratch argument, which several cases edit."""
    from zoo import ZOO

    from microexport.api import compile_model, import_model

    _, builder, shapes = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, _ = build_model(builder)
    compilation = compile_model(import_model(path, shapes), name="mlp_onnx",
                                kernel_stack_limit=0)
    return compilation.files["src/graph.json"].decode()


@pytest.fixture
def mlp(mlp_text: str) -> dict[str, Any]:
    return json.loads(mlp_text)


# -- C-comment injection ---------------------------------------------------------------------


def test_names_cannot_inject_c(zoo_compilation: ZooCompilation, tmp_path: Path) -> None:
    """Tensor and constant names closing the comment they are printed in: the runtime still
    compiles with -Werror, and none of it is live C."""
    gcc = require_program("gcc", "gcc")
    compilation, _, _ = zoo_compilation("mlp_onnx")
    graph = json.loads(compilation.files["src/graph.json"])
    renames = {"x": "x */ int evil; /*", "y": "y */ int evil_y; //", "lv": "lv\nint evil;",
               "constant_0": "c0 */ #define evil /*", "constant_1": "c1 */ int evil; /* ??/",
               "param_0": "p0 */ int evil; /*"}
    for old, new in renames.items():
        rename(graph, old, new)
    files = render_graph_walker(json.dumps(graph))
    assert_inert(files)
    walker = files["mlp_onnx_walker.c"] + files["mlp_onnx_walker.h"]
    assert "int evil" in walker  # in comments, made safe
    assert 'tensor "lv?int evil;"' in walker and 'input "x *_/ int evil; /_*"' in walker
    for filename, text in files.items():
        (tmp_path / filename).write_text(text)
    for name in ("codegen/host/src/tvmgen_mlp_onnx_lib.c",
                 "codegen/host/include/tvmgen_mlp_onnx.h"):
        (tmp_path / Path(name).name).write_bytes(compilation.files[name])
    sources = [str(tmp_path / f) for f in files if f.endswith(".c")]
    result = subprocess.run([gcc, *FLAGS, "-I", str(tmp_path), *sources,
                             str(tmp_path / "tvmgen_mlp_onnx_lib.c"), "-lm", "-o",
                             str(tmp_path / "walker")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["x */ int evil; /*", "a b", "int", "uint8_t", "9lives",
                                  "status", "main", "in_x", "mlp_onnx_walker_run",
                                  "MLP_ONNX_WALKER_H_",
                                  "f\n", ""])
def test_kernel_names_must_be_c_identifiers(mlp: dict[str, Any], name: str) -> None:
    rename(mlp, mlp["kernels"][1]["name"], name)
    load_graph(mlp)  # a valid document: the walker refuses it
    with pytest.raises(TirJsonError, match=r"^\$\.kernels\[1\]\.name: kernel name "):
        render_graph_walker(mlp)


def test_dtypes_come_from_the_known_set(mlp: dict[str, Any]) -> None:
    for path, mutate in (
        (r"\$\.kernels\[0\]\.params\[0\]\.dtype", lambda g: g["kernels"][0]["params"][0].update(
            dtype="float32 */ int evil; /*")),
        (r"\$\.kernels\[0\]\.returns", lambda g: g["kernels"][0].update(returns="handle")),
        (r"\$\.tensors\[4\]\.dtype", lambda g: g["tensors"][4].update(dtype="uint16x2")),
        (r"\$\.constants\[0\]\.dtype", lambda g: [g[key][index].update(dtype="int16x2")
                                                   for key, index in (("constants", 0),
                                                                      ("tensors", 2))]),
    ):
        graph = copy.deepcopy(mlp)
        mutate(graph)
        load_graph(graph)
        with pytest.raises(TirJsonError, match=rf"^{path}: dtype '.*' has no C type"):
            render_graph_walker(graph)


# -- malformed documents ---------------------------------------------------------------------


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(graph: dict[str, Any]) -> None:
        *parents, last = key.split("/")
        node: Any = graph
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return mutate


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing key", lambda g: g.pop("tensors"), r"\$: 'tensors' is a required property"),
    ("missing tensor key", lambda g: g["tensors"][1].pop("size"), r"\$\.tensors\[1\]: 'size'"),
    ("unknown key", _set("nodes/0/extra", 1), r"\$\.nodes\[0\]: Additional properties"),
    ("args not a list", _set("nodes/0/args", "x"), r"\$\.nodes\[0\]\.args: 'x' is not of type"),
    ("shape of strings", _set("tensors/0/shape", ["1", "16"]), r"\$\.tensors\[0\]\.shape\[[01]\]"),
    ("negative offset", _set("tensors/4/offset", -4), r"\$\.tensors\[4\]\.offset"),
    ("float size", _set("pools/0/size", 1.5), r"\$\.pools\[0\]\.size"),
    ("huge size", _set("tensors/0/size", 2**64), r"\$\.tensors\[0\]\.size"),
    ("bool version", _set("version", True), r"\$\.version: microexport-graph version True"),
    ("unknown dtype", _set("tensors/0/dtype", "handle"), r"\$\.tensors\[0\]\.dtype"),
    ("dtype with a newline", _set("tensors/0/dtype", "float32\n"), r"\$\.tensors\[0\]\.dtype"),
    ("unknown arg kind", _set("nodes/0/args/0/kind", "pointer"), r"\$\.nodes\[0\]\.args\[0\]"),
    ("tensor arg without tensor", lambda g: g["nodes"][0]["args"][0].pop("tensor"),
     r"\$\.nodes\[0\]\.args\[0\]: 'tensor' is a required property"),
    ("bad access", _set("kernels/0/params/0/access", "rw"),
     r"\$\.kernels\[0\]\.params\[0\]\.access"),
    ("pool not a param", _set("pools/1/name", "heap"), r"\$\.pools\[1\]\.name: pool 'heap'"),
    ("two tensors named alike", _set("tensors/4/name", "x"),
     r"\$\.tensors\[4\]\.name: two tensors named 'x'"),
    ("size not the shape's", _set("tensors/0/size", 65), r"\$\.tensors\[0\]\.size: 65 bytes"),
    ("tensor outside its pool", _set("tensors/4/offset", 100),
     r"\$\.tensors\[4\]: 128 bytes at offset 100 do not fit"),
    ("tensor in no pool", _set("tensors/4/pool", "heap"), r"\$\.tensors\[4\]\.pool: 'heap'"),
    ("io tensor param", _set("tensors/0/param", "nope"), r"\$\.tensors\[0\]\.param: 'nope'"),
    ("producer out of range", _set("tensors/4/producer", 2), r"\$\.tensors\[4\]\.producer"),
    ("consumer out of range", _set("tensors/4/consumers/0", 9),
     r"\$\.tensors\[4\]\.consumers\[0\]"),
    ("unknown input", _set("inputs/0", "nope"),
     r"\$\.inputs\[0\]: 'nope' is not a tensor of the graph"),
    ("unknown node output", _set("nodes/1/outputs/0", "nope"), r"\$\.nodes\[1\]\.outputs\[0\]"),
    ("constant not a constant", _set("constants/0/name", "lv"),
     r"\$\.constants\[0\]\.name: 'lv' is not a tensor of a constants pool"),
    ("constant missing", lambda g: g["constants"].pop(1),
     r"\$\.tensors\[3\]: constant 'constant_1' has no entry"),
    ("constant shape", _set("constants/0/shape", [32, 16]), r"\$\.constants\[0\]\.shape"),
    ("constant data short", lambda g: g["constants"][0].update(
        data=base64.b64encode(b"\0" * 8).decode()),
     r"\$\.constants\[0\]\.data: 8 bytes for a constant of 2048 bytes"),
    ("constant data not base64", _set("constants/0/data", "A"),
     r"\$\.constants\[0\]\.data: not base64"),
    ("kernel twice", lambda g: g["kernels"].append(g["kernels"][0]),
     r"\$\.kernels\[2\]\.name: kernel '.*' is listed twice"),
    ("node index", _set("nodes/1/index", 0), r"\$\.nodes\[1\]\.index: 0 is not"),
    ("node kernel", _set("nodes/0/kernel", "nope"), r"\$\.nodes\[0\]\.kernel: 'nope'"),
    ("argument missing", lambda g: g["nodes"][0]["args"].pop(),
     r"\$\.nodes\[0\]\.args: 4 arguments for the 5 parameters"),
    ("argument of another param", _set("nodes/0/args/1/param", "param_1"),
     r"\$\.nodes\[0\]\.args\[1\]\.param: parameter 1 of"),
    ("argument tensor", _set("nodes/0/args/0/tensor", "nope"),
     r"\$\.nodes\[0\]\.args\[0\]\.tensor: 'nope'"),
    ("scratch pool", _set("nodes/0/args/4/pool", "nope"), r"\$\.nodes\[0\]\.args\[4\]\.pool"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_graphs_are_one_line_errors(case: tuple, mlp: dict[str, Any]) -> None:
    _, mutate, message = case
    mutate(mlp)
    for doc in (mlp, json.dumps(mlp)):
        with pytest.raises(TirJsonError, match=f"^{message}") as info:
            load_graph(doc)
        assert len(str(info.value).splitlines()) == 1
        with pytest.raises(TirJsonError, match=f"^{message}"):
            render_graph_walker(doc)


@pytest.mark.parametrize("text, message", [
    ("", r"\$: not valid JSON"), ("[]", r"\$: expected a JSON object, got list"),
    ('{"format": NaN}', r"\$\.format: nan is not a JSON number"),
    ('{"format": "microexport-tir", "version": 1}', r"\$\.format: expected 'microexport-graph'"),
    ('{"format": "microexport-graph", "version": 1, "a": ' + "[" * 200 + "]" * 200 + "}",
     r"\$\.a(\[0\])*: nesting deeper than"),
    (b"\xff", r"\$: not valid JSON"),
])
def test_not_a_graph_document(text: str | bytes, message: str) -> None:
    with pytest.raises(TirJsonError, match=f"^{message}"):
        load_graph(text)


def test_a_value_argument_is_refused_by_the_walker(mlp: dict[str, Any]) -> None:
    mlp["nodes"][0]["args"][4] = {"kind": "value", "param": "scratch",
                                  "value": {"node": "IntImm", "dtype": "int32", "value": 0}}
    load_graph(mlp)
    with pytest.raises(TirJsonError, match=r"^\$\.nodes\[0\]\.args\[4\]: argument 'scratch'"):
        render_graph_walker(mlp)


def test_constant_without_data_is_refused_by_the_walker(mlp: dict[str, Any]) -> None:
    mlp["constants"][1]["data"] = None
    load_graph(mlp)
    with pytest.raises(TirJsonError, match=r"^\$\.constants\[1\]\.data: constant 'constant_1' "
                                           "carries no data"):
        render_graph_walker(mlp)


def test_each_scratch_argument_has_its_own_area(mlp: dict[str, Any]) -> None:
    """A kernel with two scratch parameters gets two areas of their own sizes."""
    kernel, node = mlp["kernels"][0], mlp["nodes"][0]
    kernel["params"].append({**kernel["params"][4], "name": "scratch_b", "declared_bytes": 300})
    node["args"].append({**node["args"][4], "param": "scratch_b", "size": 300, "offset": 200})
    variables = walker_variables(mlp)
    assert variables["calls"][0]["scratch_areas"] == [("scratch_0", node["args"][4]["size"]),
                                                      ("scratch_0_5", 300)]
    sizes = {s["c_name"]: s["size"] for s in variables["scratch"]}
    assert sizes["scratch_0_5"] == 300 and "scratch_0" in sizes
    walker = render_graph_walker(mlp)["mlp_onnx_walker.c"]
    assert "scratch_0.bytes, scratch_0_5.bytes);" in walker


def test_names_distinct_only_in_case_get_distinct_macros(mlp: dict[str, Any]) -> None:
    mlp["tensors"].append({**mlp["tensors"][0], "name": "X"})
    mlp["inputs"].append("X")
    header = render_graph_walker(mlp)["mlp_onnx_walker.h"]
    macros = re.findall(r"#define (\w+)", header)
    assert len(macros) == len(set(macros)) == 4  # the guard, two inputs, one output


def test_the_schema_ships_next_to_the_tir_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(graph_schema())
    assert GRAPH_SCHEMA_FILE == "schema/graph.schema.json"
    path = Path(__file__).parents[1] / "microexport/archive/tir_json" / GRAPH_SCHEMA_FILE
    assert json.loads(path.read_text()) == graph_schema()


def test_zoo_graphs_load_and_render(graph_texts: list[str]) -> None:
    for text in graph_texts:
        graph = load_graph(text)
        assert graph == json.loads(text)
        assert render_graph_walker(graph) == render_graph_walker(text)


# -- fuzzing -----------------------------------------------------------------------------------


@st.composite
def graph_mutants(draw: st.DrawFn, bases: list[str]) -> Mutant:
    """A zoo graph.json with mutations of test_tir_json_fuzz, or one of its strings renamed
    everywhere to a hostile or colliding name, or both."""
    how = draw(st.sampled_from(("mutate", "rename", "both")))
    mutant = (draw(mutants(bases)) if how != "rename"
              else Mutant(json.loads(draw(st.sampled_from(bases)))))
    if how != "mutate":
        strings = sorted({p.value for p in places(mutant.doc) if isinstance(p.value, str)
                          and p.key not in ("format", "data")})
        if strings:
            old = draw(st.sampled_from(strings))
            new = draw(st.sampled_from((*HOSTILE, *strings)))
            rename(mutant.doc, old, new)
            mutant.steps.append(f"rename {old!r} -> {new!r} everywhere"[:100])
    return mutant


def test_mutated_graphs_render_or_give_a_json_path_error(graph_texts: list[str]) -> None:
    @FUZZ
    @given(mutant=graph_mutants(graph_texts))
    def run(mutant: Mutant) -> None:
        try:
            files = render_graph_walker(load_graph(mutant.render()))
        except TirJsonError as err:
            message = str(err)
            assert PATH_MESSAGE.match(message), message
            assert len(message.splitlines()) == 1, message
            return
        except Error as err:
            assert len(str(err).splitlines()) == 1, str(err)
            return
        assert_inert(files)

    run()
