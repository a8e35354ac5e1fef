"""Fuzzing the TIR JSON readers: mutants of valid `microexport-tir` documents (keys deleted or
replaced, types changed, subtrees moved between places, deep nesting, huge / NaN / infinite
numbers, hex-float strings out of range, wrong dtypes, out-of-range indices and offsets, variables
and functions renamed onto each other) go to `tir_json.load`, `graph.graph_from_tir` and
`analyze.analyze`. Each must either succeed or raise `TirJsonError` whose message starts with the
JSON path of the problem; the CLI must print one line and exit with status 2.

The examples are derandomized (the same mutants on every run). `FUZZ_EXAMPLES` sets how many per
reader (default 300).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microexport.archive import tir_json
from microexport.archive.analyze import analyze, format_report
from microexport.archive.graph import graph_from_tir, graph_json
from microexport.archive.tir_json.reader import MAX_DEPTH, parse
from microexport.archive.tir_json.spec import (
    ALL_KINDS,
    BINARY_KINDS,
    FOR_KINDS,
    ITER_TYPES,
    UNARY_KINDS,
)
from microexport.cli import main as cli_main
from microexport.errors import TirJsonError

ZooCompilation = Callable[[str], tuple]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# (zoo model, stage) of the documents mutated.
BASES = (("mlp_onnx", "codegen"), ("mlp_onnx", "scheduled"), ("cnn_onnx", "codegen"),
         ("int8_tflite", "lowered"))
# A TirJsonError message: the JSON path ("$", "$.modules[0].functions[2].body", ...) first.
PATH_MESSAGE = re.compile(r"^\$(\.[A-Za-z][\w]*|\[\d+\]|\['([^'\\]|\\.)*'\])*: \S")
ENUMERATION_DEPTH = 64  # mutants are not searched deeper than this for places to mutate

HEX_FLOATS = ("0x1p+99999", "-0x1p+99999", "0x1p-99999", "0x1.fffffffffffffp+1023", "0x1p+1024",
              "nan", "-nan", "inf", "-inf", "-0x0.0p+0", "0x1.8p1", "0x1p+128", "0x1.0p-150",
              "1.5", "", "0x", "0xg", "infinity")
BAD_DTYPES = ("float33", "int0", "float32x0", "int8x99999999999", "bool8", "uint1", "handle",
              "void", "x", "float32x", "int64x4", "bfloat16", "float8_e4m3fn", "int4", "float",
              "uint65536", "int-1", "float32x-4", "int32x1", "custom[x]64", "float64x3")
HUGE_INTS = (2**31, 2**31 - 1, -(2**31) - 1, 2**63, 2**64 + 1, -(2**63) - 1, 10**30, -(10**30),
             10**400)
# Interchangeable values: node kinds with the same fields, loop kinds, iteration types, TVM ops.
KIND_GROUPS = (BINARY_KINDS, UNARY_KINDS, FOR_KINDS, ITER_TYPES,
               ("tirx.address_of", "tirx.reinterpret", "tirx.buffer_data", "tirx.call_extern",
                "tirx.call_pure_extern", "tirx.if_then_else", "tirx.likely", "tirx.ret",
                "tirx.nonexistent_op"),
               ("PrimType", "StringType", "MissingType"))
NESTINGS = (10, 60, MAX_DEPTH - 40, MAX_DEPTH + 1, 300, 1000, 5000, 50000)


# -- documents as trees of places ----------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A value in a document: `parent[key]`, at JSON path `path`, `depth` levels down."""

    parent: Any
    key: Any
    path: str
    depth: int

    @property
    def value(self) -> Any:
        return self.parent[self.key]


def places(root: Any, path: str = "$", depth: int = 1) -> Iterator[Place]:
    """Every value under `root` (iteratively, so deep mutants do not overflow the stack)."""
    stack = [(root, path, depth)]
    while stack:
        node, node_path, level = stack.pop()
        if level > ENUMERATION_DEPTH:
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node)
        children = []
        for key, value in items:
            child = f"{node_path}.{key}" if isinstance(node, dict) else f"{node_path}[{key}]"
            yield Place(node, key, child, level)
            if isinstance(value, dict | list):
                children.append((value, child, level + 1))
        stack.extend(reversed(children))


def copy_value(value: Any) -> Any:
    """A copy of a subtree (deep values stay shared: they are never mutated in place)."""
    if isinstance(value, Deep):
        return value
    return copy.deepcopy(value) if _depth_below(value, ENUMERATION_DEPTH) else value


def _depth_below(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit or isinstance(node, Deep):
            return False
        if isinstance(node, dict):
            stack += [(v, level + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, level + 1) for v in node]
    return True


@dataclass(frozen=True)
class Deep:
    """`inner` wrapped in `depth` levels of `style` nesting; built when the mutant is rendered
    (as text by string multiplication, so no recursive encoder sees it)."""

    depth: int
    style: str
    inner: Any

    OPEN = {
        "list": "[",
        "object": '{"node":',
        "add": '{"node":"Add","dtype":"int32","b":{"node":"IntImm","dtype":"int32","value":1},'
               '"a":',
        "not": '{"node":"Not","dtype":"bool","a":',
        "seq": '{"node":"SeqStmt","seq":[',
        "value": '{"node":"Map","items":{"k":',
    }
    CLOSE = {"list": "]", "object": "}", "add": "}", "not": "}", "seq": "]}", "value": "}}"}

    def text(self, inner_text: str) -> str:
        return self.OPEN[self.style] * self.depth + inner_text + self.CLOSE[self.style] * self.depth

    def build(self, inner: Any) -> Any:
        value = inner
        for _ in range(self.depth):
            if self.style == "list":
                value = [value]
            elif self.style == "object":
                value = {"node": value}
            elif self.style == "add":
                value = {"node": "Add", "dtype": "int32",
                         "b": {"node": "IntImm", "dtype": "int32", "value": 1}, "a": value}
            elif self.style == "not":
                value = {"node": "Not", "dtype": "bool", "a": value}
            elif self.style == "seq":
                value = {"node": "SeqStmt", "seq": [value]}
            else:
                value = {"node": "Map", "items": {"k": value}}
        return value


@dataclass
class Mutant:
    """A mutated document and how it was made (its repr, shown when an example fails)."""

    doc: dict[str, Any]
    steps: list[str] = field(default_factory=list)
    as_text: bool = False

    def __repr__(self) -> str:
        form = "text" if self.as_text else "dict"
        return f"Mutant({form}: {'; '.join(self.steps)})"

    def render(self) -> str | dict[str, Any]:
        """The document as the reader gets it: a dict, or JSON text (NaN allowed)."""
        deep: list[Deep] = []

        def strip(value: Any) -> Any:  # replaces each Deep by a placeholder string
            stack = [value]
            while stack:
                node = stack.pop()
                items = (node.items() if isinstance(node, dict)
                         else enumerate(node) if isinstance(node, list) else ())
                for key, child in list(items):
                    if isinstance(child, Deep):
                        node[key] = f"\x00deep{len(deep)}"
                        deep.append(child)
                    elif isinstance(child, dict | list):
                        stack.append(child)
            return value

        doc = strip(copy_value(self.doc))
        if not self.as_text:
            return _materialise(doc, deep)
        text = json.dumps(doc, allow_nan=True, separators=(",", ":"))
        for index in reversed(range(len(deep))):
            item = deep[index]
            inner = (json.dumps(strip([item.inner])[0], allow_nan=True)
                     if not isinstance(item.inner, Deep) else '"x"')
            text = text.replace(json.dumps(f"\x00deep{index}"), item.text(inner))
        return text


def _materialise(doc: Any, deep: list[Deep]) -> Any:
    placeholders = {f"\x00deep{index}": item for index, item in enumerate(deep)}
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            if isinstance(child, str) and child in placeholders:
                item = placeholders[child]
                inner = item.inner if not isinstance(item.inner, Deep) else "x"
                node[key] = item.build(copy.deepcopy(inner) if _depth_below(inner, 64) else inner)
            elif isinstance(child, dict | list):
                stack.append(child)
    return doc


# -- mutations -------------------------------------------------------------------------------

# Attribute values that are valid JSON for the schema but odd for TVM.
ATTRIBUTE_VALUES = st.one_of(
    st.builds(lambda dtype, shape, data: {"node": "Tensor", "dtype": dtype, "shape": shape,
                                          "data": data},
              st.sampled_from(("O", "U4", "V8", "S2", "M8", "float33", "complex64", "bool",
                               "int8", "float16")),
              st.lists(st.integers(0, 4), max_size=3), st.sampled_from(("", "AAAA", "AAA=", "A"))),
    st.sampled_from(HEX_FLOATS).map(lambda value: {"node": "Float", "value": value}),
    st.sampled_from(BAD_DTYPES).map(lambda value: {"node": "DataType", "value": value}),
    st.sampled_from(({"node": "Map", "pairs": [[[1], 2]]}, {"node": "Map", "pairs": [[{}, 2]]},
                     {"node": "Map", "pairs": [[1, 2], [1, 3]]},
                     {"node": "Target", "config": {"kind": "nonexistent"}},
                     {"node": "Target", "config": {}}, {"node": "Op", "name": "nope"},
                     {"node": "GlobalVar", "name": "nope"}, 2**63, -(2**63) - 1, 10**30, 1e308,
                     [[[]]], {"node": "Var", "name": "x"})),
)
WEIRD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(HEX_FLOATS), st.sampled_from(BAD_DTYPES), st.just([]), st.just({}),
    st.sampled_from(ALL_KINDS).map(lambda kind: {"node": kind}),
    st.lists(st.integers(-3, 3), max_size=3),
    st.sampled_from(({"node": ["Var"]}, {"node": {"k": 1}}, {"node": 1}, {"node": None},
                     {"node": "Var", "name": ""}, {"node": "Var", "name": 3},
                     {"node": "IntImm", "dtype": "int32", "value": -1})),
)


def _names(doc: dict[str, Any]) -> list[str]:
    """Strings of the document worth renaming things to: names, dtypes, kinds, ops."""
    found: set[str] = set()
    for place in places(doc):
        if isinstance(place.value, str) and place.key in ("name", "dtype", "hint", "node"):
            found.add(place.value)
    return sorted(found)


def _region(draw: st.DrawFn, doc: dict[str, Any]) -> list[Place]:
    """The places one mutation chooses from: anywhere, the AOT main, or near the top."""
    everything = list(places(doc))
    region = draw(st.sampled_from(("any", "main", "main", "top", "main-top")))
    if region == "any":
        return everything
    mains = [p.path for p in everything if isinstance(p.value, dict)
             and str(p.value.get("name", "")).endswith("___tvm_main__")
             and p.value.get("node") == "PrimFunc"]
    if region == "top":
        chosen = [p for p in everything if p.depth <= 6]
    elif not mains:
        chosen = everything
    else:
        main = mains[0]
        limit = 12 if region == "main" else 8
        chosen = [p for p in everything if p.path.startswith(main) and p.depth <= limit]
    return chosen or everything


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex_float(place: Place) -> bool:
    return (place.key == "value" and isinstance(place.parent, dict)
            and place.parent.get("node") in ("FloatImm", "Float"))


# Mutation → (weight, which places it applies to). Most keep the document valid against the
# schema (renames, numbers, dtypes, nodes moved to where the same key holds one) so that they
# reach the readers behind the validator.
OPERATIONS: dict[str, tuple[int, Callable[[Place], bool]]] = {
    "delete": (2, lambda p: True),
    "replace": (1, lambda p: True),
    "retype": (1, lambda p: True),
    "transplant": (1, lambda p: True),
    "swap": (1, lambda p: True),
    "transplant-alike": (4, lambda p: isinstance(p.key, str)),
    "duplicate": (2, lambda p: isinstance(p.parent, list)),
    "nest": (1, lambda p: True),
    "rename": (3, lambda p: p.key in ("name", "hint")),
    "number": (5, lambda p: _is_number(p.value) or _is_hex_float(p)),
    "dtype": (3, lambda p: p.key == "dtype"),
    "kind": (3, lambda p: any(p.value in group for group in KIND_GROUPS)),
    "attribute": (2, lambda p: ".attrs" in p.path or ".annotations" in p.path),
    "declaration": (2, lambda p: isinstance(p.value, dict) and p.value.get("node") == "Var"),
}
WEIGHTED_OPERATIONS = tuple(name for name, (weight, _) in OPERATIONS.items()
                            for _ in range(weight))


def _mutate(draw: st.DrawFn, mutant: Mutant) -> None:
    doc = mutant.doc
    operation = draw(st.sampled_from(WEIGHTED_OPERATIONS))
    region = _region(draw, doc)
    candidates = [p for p in region if OPERATIONS[operation][1](p)]
    if not candidates:
        operation, candidates = "delete", region
    floats = [p for p in candidates if _is_hex_float(p)]
    if operation == "number" and floats and draw(st.booleans()):
        candidates = floats  # floats are rare next to integers
    place = candidates[draw(st.integers(0, len(candidates) - 1))]
    parent, key, value = place.parent, place.key, place.value
    note = f"{operation} {place.path}"
    if operation == "delete":
        del parent[key]
    elif operation == "replace":
        parent[key] = draw(WEIRD_VALUES)
        note += f" = {parent[key]!r}"[:80]
    elif operation == "retype":
        form = draw(st.sampled_from(("list", "object", "string", "node")))
        parent[key] = {"list": [value], "object": {"value": value}, "string": str(value)[:16],
                       "node": {"node": value}}[form]
    elif operation in ("transplant", "swap", "transplant-alike"):
        others = list(places(doc))
        if operation == "transplant-alike":
            others = [p for p in others if p.key == key] or others
        other = others[draw(st.integers(0, len(others) - 1))]
        other_value = copy_value(other.value)
        note += f" <-> {other.path}" if operation == "swap" else f" <- {other.path}"
        if operation == "swap" and not other.path.startswith(place.path):
            other.parent[other.key] = copy_value(value)
        parent[key] = other_value
    elif operation == "duplicate":
        parent.insert(key, copy_value(value))
    elif operation == "nest":
        depth = draw(st.sampled_from(NESTINGS))
        style = draw(st.sampled_from(tuple(Deep.OPEN)))
        parent[key] = Deep(depth, style, copy_value(value))
        note += f" in {depth} x {style}"
    elif operation == "rename":
        parent[key] = draw(st.sampled_from(_names(doc)))
        note += f" = {parent[key]!r}"
    elif operation == "number" and _is_number(value):
        parent[key] = draw(st.sampled_from((value + 1, value - 1, -value, 0, -1, value * 4096,
                                            *HUGE_INTS)))
        note += f" = {parent[key]}"
    elif operation == "number":
        parent[key] = draw(st.sampled_from(HEX_FLOATS))
        note += f" = {parent[key]!r}"
    elif operation == "dtype":
        parent[key] = draw(st.sampled_from((*BAD_DTYPES, "int32", "int8", "uint8", "float32",
                                            "float16", "int64", "bool", "float32x4")))
        note += f" = {parent[key]!r}"
    elif operation == "attribute":
        parent[key] = draw(ATTRIBUTE_VALUES)
        note += f" = {parent[key]!r}"[:80]
    elif operation == "kind":
        group = next(group for group in KIND_GROUPS if value in group)
        parent[key] = draw(st.sampled_from(group))
        note += f" = {parent[key]!r}"
    else:  # declaration: a declared variable loses its type, a use gains one
        note = f"declaration {value.get('name')!r}"
        if "type" in value:
            del value["type"]
        else:
            value["type"] = {"node": "PrimType", "dtype": draw(st.sampled_from(
                ("int32", "float32", "handle", "uint8")))}
    mutant.steps.append(note)


@st.composite
def mutants(draw: st.DrawFn, bases: list[str]) -> Mutant:
    """A valid document (one of `bases`, JSON text) with one to three mutations."""
    mutant = Mutant(json.loads(draw(st.sampled_from(bases))))
    for _ in range(draw(st.integers(1, 3))):
        _mutate(draw, mutant)
    mutant.as_text = draw(st.booleans())
    return mutant


# -- the readers -----------------------------------------------------------------------------


def _graph(doc: Any) -> None:
    graph_json(graph_from_tir(doc))


def _analyze(doc: Any) -> None:
    format_report(analyze(doc))


def _load(doc: Any) -> None:
    tir_json.load(doc)


READERS = {"load": _load, "graph": _graph, "analyze": _analyze}


def check_reader(reader: Callable[[Any], None], doc: Any) -> None:
    """`reader(doc)` succeeds or raises TirJsonError starting with a JSON path, on one line."""
    try:
        reader(doc)
    except TirJsonError as err:
        message = str(err)
        assert PATH_MESSAGE.match(message), message
        assert "\n" not in message, message


@pytest.fixture(scope="module")
def bases(zoo_compilation: ZooCompilation) -> list[str]:
    """The JSON text of the documents mutated."""
    return [zoo_compilation(name)[0].files[f"src/tir-{stage}.json"].decode()
            for name, stage in BASES]


@pytest.mark.parametrize("reader", list(READERS))
def test_mutants_give_success_or_a_json_path_error(reader: str, bases: list[str]) -> None:
    @FUZZ
    @given(mutant=mutants(bases))
    def run(mutant: Mutant) -> None:
        check_reader(READERS[reader], mutant.render())

    run()


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2000, 200_000])
def test_deep_nesting_is_bounded(reader: str, depth: int, bases: list[str]) -> None:
    base = json.loads(bases[0])
    for as_text in (False, True):
        mutant = Mutant(copy.deepcopy(base), as_text=as_text)
        body = mutant.doc["modules"][0]["functions"][1]["body"]
        mutant.doc["modules"][0]["functions"][1]["body"] = Deep(depth, "seq", body)
        body_path = r"^\$\.modules\[0\]\.functions\[1\]\.body(\.seq|\[0\])*"
        with pytest.raises(TirJsonError, match=rf"{body_path}: nesting deeper than {MAX_DEPTH}$"):
            READERS[reader](mutant.render())
    with pytest.raises(TirJsonError, match=rf"^\$\.a(\[0\])*: nesting deeper than {MAX_DEPTH}$"):
        parse('{"a": ' + "[" * depth + "]" * depth + "}")


def test_nesting_up_to_the_limit_is_read() -> None:
    """A document nested exactly MAX_DEPTH levels deep is not refused for its depth."""
    doc: dict[str, Any] = {"format": "microexport-tir", "version": 1, "stage": None,
                           "modules": [{"node": "IRModule", "name": "m", "target": None,
                                        "attrs": {}, "functions": []}]}
    value: Any = 1
    for _ in range(MAX_DEPTH - 4):
        value = [value]
    doc["modules"][0]["attrs"]["deep"] = value  # $ > modules > [0] > attrs > deep ...
    parse(doc)
    for reader in READERS.values():
        check_reader(reader, doc)


@pytest.mark.parametrize("value", ["0x1p+99999", "-0x1p+99999", "0x1p+1024", "nan", "-nan"])
def test_out_of_range_hex_floats(value: str, bases: list[str]) -> None:
    doc = json.loads(bases[1])
    floats = [p for p in places(doc) if p.key == "value" and isinstance(p.parent, dict)
              and p.parent.get("node") == "FloatImm"]
    floats[0].parent["value"] = value
    for reader in READERS.values():
        check_reader(reader, doc)


def test_float_attribute_that_is_not_hex(bases: list[str]) -> None:
    """An attribute value `{"node": "Float", "value": ""}`: the schema lets it through, the
    document checks refuse it with a path (it once escaped as a ValueError)."""
    doc = json.loads(bases[1])
    function = doc["modules"][0]["functions"][0]
    function["attrs"] = {"node": "Float", "value": ""}
    for reader in READERS.values():
        check_reader(reader, doc)


def test_a_key_with_a_newline_stays_on_one_line_in_the_path() -> None:
    from microexport.archive.tir_json.reader import json_path

    assert json_path("$", "a\nb") == "$['a\\nb']"
    assert "\n" not in json_path("$", "x\ry\nz")


@pytest.mark.parametrize("text", ['{"format": NaN}', '{"format": "microexport-tir", '
                                  '"version": 1, "stage": Infinity, "modules": []}'])
def test_non_json_numbers_are_refused(text: str) -> None:
    with pytest.raises(TirJsonError, match=r"^\$"):
        parse(text)


ALL = ("graph", "analyze")
# (id, mutation of the mlp_onnx codegen document, the commands that must refuse the result)
CLI_MUTANTS: list[tuple[str, Callable[[dict[str, Any]], object], tuple[str, ...]]] = [
    ("deep", lambda doc: doc.update(stage=Deep(100_000, "list", 1)), ALL),
    ("node kind is a list", lambda doc: _main(doc)["body"].update(node=["SeqStmt"]), ALL),
    ("parameter not declared", lambda doc: _main(doc)["params"][0].pop("type"), ALL),
    ("offset out of int32", lambda doc: _pool_index(doc).update(value=10**30), ALL),
    ("hex float out of range", lambda doc: _first_float(doc).update(value="0x1p+99999"), ALL),
    ("call with an argument missing", lambda doc: _first_call(doc)["args"].pop(), ("graph",)),
    ("address beyond the pool", lambda doc: _pool_index(doc).update(value=100_000), ("graph",)),
    ("unknown dtype", lambda doc: _kernel(doc)["body"]["seq"][1]["buffer"]["type"].update(
        dtype="handle"), ("graph",)),
    ("main calls itself", lambda doc: _first_call(doc)["op"].update(name=_main(doc)["name"]),
     ("graph",)),
]


def _main(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["modules"][0]["functions"][0]


def _kernel(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["modules"][0]["functions"][1]


def _first_call(doc: dict[str, Any]) -> dict[str, Any]:
    return next(s["value"] for s in _main(doc)["body"]["seq"]
                if s["node"] == "Bind" and s["value"]["op"]["node"] == "GlobalVar")


def _pool_index(doc: dict[str, Any]) -> dict[str, Any]:
    """The index of the first `address_of(pool[index])` of the main."""
    return next(p.value for p in places(_main(doc)["body"]) if p.key == "indices")[0]


def _first_float(doc: dict[str, Any]) -> dict[str, Any]:
    return next(p.parent for p in places(doc) if p.key == "node" and p.value == "FloatImm")


@pytest.mark.parametrize("case", CLI_MUTANTS, ids=[c[0] for c in CLI_MUTANTS])
def test_cli_prints_one_line_and_exits_2(case: tuple, bases: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    _, mutate, refusing = case
    doc = json.loads(bases[0])
    assert _main(doc)["name"].endswith("___tvm_main__")
    mutate(doc)
    path = tmp_path / "mutant.json"
    path.write_text(Mutant(doc, as_text=True).render())
    for command in (["graph"], ["analyze"], ["analyze", "--json"]):
        status = cli_main([command[0], str(path), *command[1:]])
        err = capsys.readouterr().err
        if command[0] in refusing:
            assert status == 2, command
            assert re.match(rf"microexport: error: ({re.escape(str(path))}: )?\$", err), err
            assert len(err.strip().splitlines()) == 1, err
        else:
            assert status == 0 and not err, (command, err)
    check_reader(_load, path.read_text())  # `load` (Python API): succeeds or one-line error
    if refusing == ALL:
        with pytest.raises(TirJsonError):
            tir_json.load(path.read_text())
