"""TIR as JSON (`microexport-tir`): lossless on every zoo model and stage, byte-identical C from the
reloaded codegen module, complete and documented node table, host + device modules, bad input."""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import tvm
import tvm_ffi
from tvm import ir, tirx
from tvm.tirx.layout import S, TileLayout
from zoo import ZOO

from microexport.api import TIR_STAGES
from microexport.archive import tir_json
from microexport.archive.tir_json.nodes import NODE_SPECS
from microexport.archive.tir_json.reader import schema, walk
from microexport.archive.tir_json.schema_gen import json_schema, schema_text
from microexport.archive.tir_json.spec import ALL_KINDS
from microexport.cli import main as cli_main
from microexport.compiler.codegen import build_c, make_tvm_free
from microexport.errors import Error, TirJsonError

ZOO_IDS = [name for name, _, _ in ZOO]
FIXTURES = Path(__file__).parent / "fixtures"
COVERAGE = FIXTURES / "tir_coverage.py"
ZooCompilation = Callable[[str], tuple]
# Run Python with `import tvm` failing, to prove a code path never needs TVM.
NO_TVM = "import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None; "


def coverage_module() -> tvm.IRModule:
    return runpy.run_path(str(COVERAGE))["Coverage"]


def extra_module() -> tvm.IRModule:
    """Nodes TVMScript does not produce directly: Break/Continue statements, Let, non-finite and
    signed-zero floats, a loop step, a thread-bound loop, layouts, typed attribute values."""
    i32 = lambda v: tirx.IntImm("int32", v)  # noqa: E731
    x, f, i, v, t = (tirx.Var(n, d) for n, d in
                     (("x", "int32"), ("f", "float32"), ("i", "int32"), ("v", "float32"),
                      ("t", "int32")))
    ptr = tirx.Var("ptr", ir.PointerType(ir.PrimType("float32")))
    buf = tirx.decl_buffer((8,), "float32", "buf", data=ptr)
    col = tirx.decl_buffer((4, 4), "float32", "col", data=ptr,
                           layout=TileLayout(S[(4, 4):(1, 4)]))
    flat = tirx.decl_buffer((16,), "float32", "flat", data=ptr, layout=None)
    tx = tirx.IterVar(ir.Range.from_min_extent(i32(0), i32(32)), tirx.Var("tx", "int32"), 1,
                      "threadIdx.x")
    loop = tirx.For(i, i32(0), i32(8), tirx.ForKind.SERIAL, tirx.SeqStmt([
        tirx.IfThenElse(tirx.EQ(i, i32(3)), tirx.Break(), None),
        tirx.IfThenElse(tirx.EQ(i, i32(1)), tirx.Continue(), tirx.Evaluate(i32(0))),
        tirx.BufferStore(buf, tirx.Let(v, f, tirx.Mul(v, v)), [i]),
    ]), annotations={"pragma_unroll": i32(4), "note": "x"}, step=i32(2))
    body = tirx.SeqStmt([
        tirx.DeclBuffer(buf, data=ptr), tirx.DeclBuffer(col, data=ptr),
        tirx.DeclBuffer(flat, data=ptr), loop,
        tirx.BufferStore(buf, tirx.FloatImm("float32", math.nan), [i32(0)]),
        tirx.BufferStore(buf, tirx.FloatImm("float32", -0.0), [i32(1)]),
        tirx.BufferStore(buf, tirx.FloatImm("float32", -math.inf), [i32(2)]),
        tirx.BufferStore(col, tirx.FloatImm("float32", 1e-45), [i32(1), i32(2)]),
        tirx.BufferStore(flat, tirx.Cast("float32", tirx.IntImm("int64", 2**62 + 1)), [i32(5)]),
        tirx.AttrStmt(tx, "thread_extent", i32(32), tirx.Evaluate(i32(0))),
        tirx.For(t, i32(0), i32(32), tirx.ForKind.THREAD_BINDING, tirx.Evaluate(t),
                 thread_binding=tx),
        tirx.While(tirx.LT(x, i32(0)), tirx.Evaluate(x)),
        tirx.Bind(tirx.Var("w", "int32"), tirx.Sub(x, i32(1))),
        tirx.Return(x),
    ])
    func = tirx.PrimFunc([x, f, ptr], body, ret_type=ir.PrimType("int32")).with_attrs({
        "inf": float("inf"), "half": 0.5, "mixed": [1, 2.5, "s", True, None],
        "nested": {"k": tirx.IntImm("int64", 7), "l": [tirx.FloatImm("float32", 2.0)]},
        "target": tvm.target.Target("c"),
    })
    return tvm.IRModule({ir.GlobalVar("extra"): func})


def roundtrip(mod: object, stage: str | None = None, **equal: bool) -> str:
    """dump → load is structurally equal to `mod`, and dumping the reloaded module gives the same
    bytes; returns the JSON text."""
    text = tir_json.dump(mod, stage)
    back = tir_json.load(text)
    tvm.ir.assert_structural_equal(back, mod, **equal)
    assert tir_json.dump(back, stage) == text
    return text


@pytest.mark.parametrize("stage", TIR_STAGES)
@pytest.mark.parametrize("name", ZOO_IDS)
def test_every_zoo_stage_round_trips(name: str, stage: str, zoo_compilation: ZooCompilation
                                     ) -> None:
    compilation, _, _ = zoo_compilation(name)
    text = roundtrip(compilation.stages[stage], stage)
    assert text == compilation.files[f"src/tir-{stage}.json"].decode()


@pytest.mark.parametrize("name", ZOO_IDS)
def test_reloaded_codegen_module_gives_byte_identical_c(name: str,
                                                        zoo_compilation: ZooCompilation) -> None:
    compilation, _, _ = zoo_compilation(name)
    mod = tir_json.load(compilation.files["src/tir-codegen.json"])
    target = next(iter(mod.functions.values())).attrs["target"]
    filename = f"tvmgen_{name}_lib.c"
    c = make_tvm_free(build_c(mod, target), name, filename).source
    assert c.encode() == compilation.files[f"codegen/host/src/{filename}"]


def test_json_is_deterministic_and_has_no_spans_or_addresses(
    zoo_compilation: ZooCompilation, build_model: Callable
) -> None:
    from microexport.api import compile_model, import_model

    compilation, _, _ = zoo_compilation("cnn_onnx")
    _, builder, shapes = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, _ = build_model(builder)
    again = compile_model(import_model(path, shapes), name="cnn_onnx", tir_stages=TIR_STAGES)
    for stage in TIR_STAGES:
        member = f"src/tir-{stage}.json"
        assert again.files[member] == compilation.files[member]
        text = compilation.files[member].decode()
        assert "span" not in text and "0x7f" not in text and ".py" not in text
        doc = json.loads(text)
        assert list(doc) == ["format", "version", "stage", "modules"]
        for _, node in walk(doc):
            assert next(iter(node)) == "node"  # every node starts with its kind


def test_archive_members_follow_tir_stages(zoo_compilation: ZooCompilation,
                                           build_model: Callable, tmp_path: Path) -> None:
    import microexport

    _, builder, _ = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, _ = build_model(builder)
    result = microexport.compile(path, tmp_path / "m.tar", name="m")
    with tarfile.open(result.archive) as tar:  # members are ./<path>, as in TVM's MLF
        members = {n.removeprefix("./") for n in tar.getnames() if n.startswith("./src/")}
    assert members >= {"src/tir-codegen.json", "src/graph.json"}
    assert "src/tir-lowered.json" not in members
    compilation, _, _ = zoo_compilation("mlp_onnx")
    assert {f"src/tir-{s}.json" for s in TIR_STAGES} <= set(compilation.files)
    with pytest.raises(Error, match="unknown TIR stage 'final'"):
        microexport.compile(path, tmp_path / "x.tar", tir_stages=("final",))


def test_cli_tir_stage_option(build_model: Callable, tmp_path: Path) -> None:
    _, builder, _ = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, _ = build_model(builder)
    archive = tmp_path / "m.tar"
    assert cli_main(["compile", str(path), "-o", str(archive), "--tir-stage", "scheduled",
                     "--tir-stage", "lowered"]) == 0
    with tarfile.open(archive) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"src/tir-scheduled.json", "src/tir-lowered.json", "src/graph.json"} <= names
    assert "src/tir-codegen.json" not in names


def test_coverage_module_round_trips_with_every_node_kind() -> None:
    texts = [roundtrip(coverage_module()), roundtrip(extra_module())]
    kinds = {node["node"] for text in texts for _, node in walk(json.loads(text))}
    expected = {
        "IRModule", "PrimFunc", "SeqStmt", "For", "While", "IfThenElse", "Evaluate", "Bind",
        "AssertStmt", "AttrStmt", "BufferStore", "DeclBuffer", "AllocBuffer", "Return", "Break",
        "Continue", "SBlockRealize", "SBlock", "IntImm", "FloatImm", "StringImm", "Var", "Add",
        "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max", "EQ", "LT", "GE", "GT",
        "And", "Or", "Not", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "LShift",
        "RShift", "Cast", "Select", "Ramp", "Broadcast", "Shuffle", "Let", "Call", "BufferLoad",
        "PrimType", "PointerType", "TupleType", "BufferType", "IterVar", "Range", "BufferRegion",
        "MatchBufferRegion", "Op", "Map", "Target", "Float", "TileLayout", "Iter",
    }
    assert expected <= kinds, expected - kinds
    assert kinds <= set(ALL_KINDS)


def test_floats_are_exact() -> None:
    text = roundtrip(extra_module())
    values = {node["value"] for _, node in walk(json.loads(text)) if node["node"] == "FloatImm"}
    assert {"nan", "-0x0.0p+0", "-inf", (1e-45).hex()} <= values


def test_every_reflected_tvm_field_is_mapped() -> None:
    """No field of a TVM node is silently dropped: each is a JSON field, or implied."""
    from tvm_ffi.core import _lookup_or_register_type_info_from_type_key as type_info

    for spec in NODE_SPECS:
        info, fields = type_info(spec.type_key), []
        while info is not None:
            fields += [f.name for f in info.fields]
            info = info.parent_type_info
        mapped = {f.attr or f.key for f in spec.fields} | set(spec.implied) | {"span"}
        assert set(fields) <= mapped, (spec.kind, set(fields) - mapped)


def test_shipped_schema_is_generated_from_the_table() -> None:
    shipped = FIXTURES.parent.parent / "microexport/archive/tir_json/schema/tir.schema.json"
    assert shipped.read_text() == schema_text()
    assert schema() == json_schema()
    jsonschema.Draft202012Validator.check_schema(schema())


def test_documents_validate_against_the_plain_schema(zoo_compilation: ZooCompilation) -> None:
    """The shipped schema, read by a standard validator (no speed-up), accepts real documents."""
    validator = jsonschema.Draft202012Validator(schema())
    compilation, _, _ = zoo_compilation("mlp_onnx")
    for stage in ("scheduled", "codegen"):
        validator.validate(json.loads(compilation.files[f"src/tir-{stage}.json"]))
    validator.validate(tir_json.to_dict(extra_module()))
    bad = tir_json.to_dict(extra_module())
    bad["modules"][0]["functions"][0]["body"]["seq"][3]["kind"] = "sideways"
    assert not validator.is_valid(bad)


def test_unknown_node_kind_is_an_error_naming_it() -> None:
    body = tirx.Evaluate(ir.Tuple([tirx.IntImm("int32", 1)]))
    mod = tvm.IRModule({ir.GlobalVar("f"): tirx.PrimFunc([], body)})
    with pytest.raises(TirJsonError, match=r"^\$\.modules\[0\]\.functions\[0\]\.body\.value: "
                                           r"unsupported TIR node kind 'ir\.Tuple'"):
        tir_json.dump(mod)


def test_primfunc_and_any_module_dump() -> None:
    func = coverage_module()["blocks"]
    doc = tir_json.to_dict(func)
    assert [f["name"] for f in doc["modules"][0]["functions"]] == ["blocks"]
    tvm.ir.assert_structural_equal(tir_json.load(doc)["blocks"], func)


def test_host_and_device_modules() -> None:
    from microexport.archive.tir_json.device import lower_for_target

    mod = runpy.run_path(str(FIXTURES / "tir_cuda.py"))["Module"]
    target = tvm.target.Target("cuda", host="c")
    modules = lower_for_target(mod, target)
    doc = tir_json.to_dict(modules, "codegen")
    assert [(m["name"], m["target"]["config"]["kind"]) for m in doc["modules"]] == [
        ("c", "c"), ("cuda", "cuda")]
    back = tir_json.load(tir_json.encode(doc))
    assert list(back) == ["c", "cuda"]
    for original, reloaded in zip(modules, back.values(), strict=True):
        # the host function's AttrStmt names buffers it never declares: free variables
        tvm.ir.assert_structural_equal(reloaded, original, map_free_vars=True)
    cuda = tvm.get_global_func("target.build.cuda")
    device_target = next(iter(modules[1].functions.values())).attrs["target"]
    assert (cuda(back["cuda"], device_target).inspect_source()
            == cuda(modules[1], device_target).inspect_source())
    assert "__global__" in cuda(back["cuda"], device_target).inspect_source()


def test_export_tir_cli(tmp_path: Path) -> None:
    out = tmp_path / "coverage.json"
    assert cli_main(["export-tir", str(COVERAGE), "-o", str(out), "--stage", "mine"]) == 0
    doc = json.loads(out.read_text())
    assert doc["stage"] == "mine"
    tvm.ir.assert_structural_equal(tir_json.load(doc), coverage_module())
    cuda_out = tmp_path / "cuda.json"
    assert cli_main(["export-tir", str(FIXTURES / "tir_cuda.py"), "--target", "cuda",
                     "-o", str(cuda_out)]) == 0
    assert [m["name"] for m in json.loads(cuda_out.read_text())["modules"]] == ["c", "cuda"]


def test_export_tir_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert cli_main(["export-tir", str(empty)]) == 2
    assert "defines no IRModule" in capsys.readouterr().err
    assert cli_main(["export-tir", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom')\n")
    assert cli_main(["export-tir", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "boom" in err and len(err.strip().splitlines()) == 1


def _mutated(doc: dict, mutate: Callable[[dict], None]) -> dict:
    copy = json.loads(json.dumps(doc))
    mutate(copy)
    return copy


def _body(doc: dict) -> list:
    return doc["modules"][0]["functions"][0]["body"]["seq"]


BAD_INPUTS: list[tuple[str, Callable[[dict], object], str]] = [
    ("malformed", lambda d: '{"format": "microexport-tir", "version": 1, ', r"^\$: not valid JSON"),
    ("not an object", lambda d: "[1, 2]", r"^\$: expected a JSON object"),
    ("wrong format", lambda d: _mutated(d, lambda x: x.update(format="tvm")), r"^\$\.format: "),
    ("wrong version", lambda d: _mutated(d, lambda x: x.update(version=2)),
     r"^\$\.version: microexport-tir version 2 is not supported"),
    ("unknown kind", lambda d: _mutated(d, lambda x: _body(x)[2].update(node="Goto")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[2\]\.node: "),
    ("missing field", lambda d: _mutated(d, lambda x: _body(x)[2].pop("buffer")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[2\]: 'buffer' is a required property"),
    ("extra field", lambda d: _mutated(d, lambda x: _body(x)[2].update(extra=1)),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[2\]: Additional properties"),
    ("expression for a statement",
     lambda d: _mutated(d, lambda x: _body(x).__setitem__(2, {"node": "IntImm", "dtype": "int32",
                                                               "value": 1})),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[2\]\.node: "),
    ("bad float", lambda d: _mutated(d, lambda x: _body(x)[4]["value"].update(value="1.5")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[4\]\.value\.value: "),
    ("undeclared variable",
     lambda d: _mutated(d, lambda x: _body(x)[3]["loop_var"].pop("type")),
     r"variable 'i' is used before it is declared"),
    ("dtype mismatch",
     lambda d: _mutated(d, lambda x: _body(x)[3]["body"]["seq"][0]["condition"].update(
         dtype="int8")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[3\]\.body\.seq\[0\]\.condition\.dtype: "),
    ("declared twice", lambda d: _mutated(d, lambda x: _body(x)[12]["var"].update(name="x")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[12\]\.var: variable 'x' is declared twice"),
    ("parameter not declared",
     lambda d: _mutated(d, lambda x: x["modules"][0]["functions"][0]["params"].append(
         {"node": "Var", "name": "x"})),
     r"^\$\.modules\[0\]\.functions\[0\]\.params\[3\]: parameter 'x' is not a declaration"),
    ("not a buffer",
     lambda d: _mutated(d, lambda x: _body(x)[4].update(buffer={"node": "Var", "name": "x"})),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[4\]\.buffer: 'x' is not a buffer \(its "
     r"type is a PrimType\)"),
    ("integer out of its dtype",
     lambda d: _mutated(d, lambda x: _body(x)[4]["indices"][0].update(value=2**31)),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[4\]\.indices\[0\]\.value: 2147483648 is "
     r"out of the range of int32"),
    ("float out of range",
     lambda d: _mutated(d, lambda x: _body(x)[7]["value"].update(value="0x1p+1024")),
     r"^\$\.modules\[0\]\.functions\[0\]\.body\.seq\[7\]\.value\.value: 0x1p\+1024 is out of "
     r"the range of a double"),
    ("not a JSON number",
     lambda d: _mutated(d, lambda x: None) | {"stage": math.nan},
     r"^\$\.stage: nan is not a JSON number"),
    ("function defined twice",
     lambda d: _mutated(d, lambda x: x["modules"][0]["functions"].append(
         x["modules"][0]["functions"][0])),
     r"^\$\.modules\[0\]\.functions\[1\]\.name: function 'extra' is defined twice"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_one_line_error_with_its_json_path(case: tuple) -> None:
    _, make, pattern = case
    bad = make(tir_json.to_dict(extra_module()))
    with pytest.raises(TirJsonError, match=pattern) as info:
        tir_json.load(bad)
    assert isinstance(info.value, Error) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", BAD_INPUTS[:9], ids=[c[0] for c in BAD_INPUTS[:9]])
def test_cli_rejects_invalid_documents_with_status_2(
    case: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, make, pattern = case
    bad = make(tir_json.to_dict(extra_module()))
    path = tmp_path / "bad.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    for command in ("graph", "analyze"):
        assert cli_main([command, str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"microexport: error: {path}: $")


def test_validate_and_reader_need_no_tvm(zoo_compilation: ZooCompilation, tmp_path: Path) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    path = tmp_path / "tir.json"
    path.write_bytes(compilation.files["src/tir-codegen.json"])
    code = NO_TVM + (
        "from microexport.archive import tir_json; from pathlib import Path; "
        f"doc = tir_json.validate(Path({str(path)!r}).read_text()); "
        "assert 'tvm' not in sys.modules or sys.modules['tvm'] is None; print(doc['stage'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "codegen"


def test_tvm_ffi_structural_equality_is_strict() -> None:
    """The round-trip check would notice a changed constant."""
    mod = extra_module()
    doc = tir_json.to_dict(mod)
    _body(doc)[7]["value"]["value"] = (2e-45).hex()
    assert not tvm_ffi.structural_equal(tir_json.load(doc), mod)
