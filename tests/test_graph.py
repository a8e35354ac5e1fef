"""graph.json derived from the TIR JSON alone: equal to the archive's, consistent with the compiled
model (tensors, pools, offsets, producers, consumers, constants), and computed without TVM."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO

from microexport.archive import tir_json
from microexport.archive.graph import (
    find_main,
    graph_from_tir,
    graph_json,
    kernel_params,
    load_graph,
)
from microexport.errors import TirJsonError
from microexport.model import PoolSpec

ZOO_IDS = [name for name, _, _ in ZOO]
ZooCompilation = Callable[[str], tuple]
NO_TVM = "import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None; "


@pytest.mark.parametrize("name", ZOO_IDS)
def test_graph_from_json_equals_the_archive_graph(name: str, zoo_compilation: ZooCompilation
                                                  ) -> None:
    compilation, _, _ = zoo_compilation(name)
    derived = graph_from_tir(compilation.files["src/tir-codegen.json"])
    assert graph_json(derived).encode() == compilation.files["src/graph.json"]


@pytest.mark.parametrize("name", ZOO_IDS)
def test_graph_describes_the_compiled_model(name: str, zoo_compilation: ZooCompilation) -> None:
    compilation, _, _ = zoo_compilation(name)
    graph = load_graph(compilation.files["src/graph.json"])
    meta = compilation.metadata
    assert graph["model"] == name and graph["main"] == f"tvmgen_{name}___tvm_main__"
    assert graph["inputs"] == [t["c_name"] for t in meta["inputs"]]
    assert graph["outputs"] == [t["c_name"] for t in meta["outputs"]]
    lib = compilation.files[f"codegen/host/src/tvmgen_{name}_lib.c"].decode()
    main = re.search(r"___tvm_main__\(.*?\) \{(.*?)\n\}", lib, re.S).group(1)
    assert [n["kernel"] for n in graph["nodes"]] == re.findall(rf"(tvmgen_{name}_\w+)\(", main)
    pools = {p["name"]: p for p in graph["pools"]}
    assert pools.get("constants", {}).get("size", 0) == meta["memory"]["constants_bytes"]
    for report in meta["memory"]["pools"]:
        if report["bytes"]:
            assert pools[report["name"]]["size"] == report["bytes"]
    tensors = {t["name"]: t for t in graph["tensors"]}
    for tensor in graph["tensors"]:
        assert tensor["size"] == int(np.prod(tensor["shape"])) * np.dtype(tensor["dtype"]).itemsize
        if tensor["pool"] in pools:
            assert tensor["offset"] + tensor["size"] <= pools[tensor["pool"]]["size"]
        if tensor["producer"] is not None:
            assert all(c > tensor["producer"] for c in tensor["consumers"])
        elif tensor["pool"] != "constants":
            assert tensor["name"] in graph["inputs"]
    for node in graph["nodes"]:
        for arg in node["args"]:
            if arg["kind"] == "tensor":
                assert arg["tensor"] in tensors
        assert node["outputs"], node
    npz = np.load(io.BytesIO(compilation.files[f"parameters/{name}.npz"]))
    assert len(graph["constants"]) == len(npz.files)
    for const in graph["constants"]:
        data = np.frombuffer(base64.b64decode(const["data"]), dtype=const["dtype"])
        np.testing.assert_array_equal(data.reshape(const["shape"]), npz[const["name"]])
        assert tensors[const["name"]]["pool"] == "constants"


def test_kernel_params_read_and_written(zoo_compilation: ZooCompilation,
                                       build_model: Callable, tmp_path: Path) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    doc = json.loads(compilation.files["src/tir-codegen.json"])
    functions = {f["name"]: f for f in doc["modules"][0]["functions"]}
    params = kernel_params(functions["tvmgen_mlp_onnx_fused_matmul_add_relu"])
    # inputs, weights, bias, output; the accumulator is a C local (default --kernel-stack-limit)
    assert [p.access for p in params] == ["read", "read", "read", "write"]
    assert params[1].declared_bytes == 16 * 32 * 4
    assert find_main(doc["modules"][0])["name"] == "tvmgen_mlp_onnx___tvm_main__"
    # With every kernel buffer in the workspace the accumulator is scratch, read and written.
    from microexport.api import compile_model, import_model

    _, builder, shapes = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, _ = build_model(builder)
    scratch = compile_model(import_model(path, shapes), name="mlp_onnx", kernel_stack_limit=0)
    doc = json.loads(scratch.files["src/tir-codegen.json"])
    functions = {f["name"]: f for f in doc["modules"][0]["functions"]}
    params = kernel_params(functions["tvmgen_mlp_onnx_fused_matmul_add_relu"])
    assert [p.access for p in params] == ["read", "read", "read", "write", "readwrite"]
    assert params[4].name == "scratch"


def test_graph_cli_runs_without_tvm(zoo_compilation: ZooCompilation, tmp_path: Path) -> None:
    compilation, _, _ = zoo_compilation("cnn_onnx")
    tir = tmp_path / "tir.json"
    tir.write_bytes(compilation.files["src/tir-codegen.json"])
    out = tmp_path / "graph.json"
    code = NO_TVM + (
        "from microexport.cli import main; "
        f"status = main(['graph', {str(tir)!r}, '-o', {str(out)!r}]); "
        "assert sys.modules.get('tvm') is None; sys.exit(status)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.read_bytes() == compilation.files["src/graph.json"]


@pytest.mark.parametrize("io_in_workspace", [False, True])
def test_graph_with_workspace_pools(io_in_workspace: bool, build_model: Callable) -> None:
    from microexport.api import compile_model, import_model

    _, builder, _ = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, _ = build_model(builder)
    pools = (PoolSpec("fast", 128), PoolSpec("slow"))
    compilation = compile_model(import_model(path), name="mlp", pools=pools,
                                io_in_workspace=io_in_workspace)
    graph = json.loads(compilation.files["src/graph.json"])
    assert graph["inputs"] == ["x"] and graph["outputs"] == ["y"]
    names = {p["name"] for p in graph["pools"]}
    assert names <= {"constants", "fast", "slow"} and "constants" in names
    tensors = {t["name"]: t for t in graph["tensors"]}
    if io_in_workspace:
        assert tensors["x"]["pool"] in ("fast", "slow")
        assert graph["params"] == ["constants", *sorted(names - {"constants"},
                                                        key=["fast", "slow"].index)]
    else:
        assert (tensors["x"]["pool"], tensors["y"]["pool"]) == ("input", "output")


def test_graph_needs_an_aot_main() -> None:
    import runpy

    mod = runpy.run_path(str(Path(__file__).parent / "fixtures/tir_coverage.py"))["Coverage"]
    with pytest.raises(TirJsonError, match="cannot tell the AOT main"):
        graph_from_tir(tir_json.dump(mod))


def test_load_graph_checks_format_and_version() -> None:
    with pytest.raises(TirJsonError, match=r"^\$\.version: microexport-graph version 7"):
        load_graph({"format": "microexport-graph", "version": 7})
    with pytest.raises(TirJsonError, match=r"^\$\.format"):
        load_graph('{"format": "microexport-tir", "version": 1}')


def test_graph_io_in_workspace_keeps_every_output(build_model: Callable) -> None:
    """An output that a later kernel also reads is still an output (from `microexport.io`)."""
    from microexport.api import compile_model, import_model

    _, builder, _ = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, _ = build_model(builder)
    compilation = compile_model(import_model(path), name="cnn", io_in_workspace=True)
    graph = json.loads(compilation.files["src/graph.json"])
    metadata = compilation.metadata
    assert graph["inputs"] == [t["c_name"] for t in metadata["inputs"]]
    assert graph["outputs"] == [t["c_name"] for t in metadata["outputs"]]
    assert len(graph["outputs"]) > 1


# -- the AOT main conventions (docs/tir-json.md, "How the AOT main is read") are checked ------

MAIN = r"^\$\.modules\[0\]\.functions\[0\]"
INT32_ZERO = {"node": "IntImm", "dtype": "int32", "value": 0}


def _main(doc: dict) -> dict:
    main = doc["modules"][0]["functions"][0]
    assert main["name"].endswith("___tvm_main__")
    return main


def _declaring(doc: dict, name: str) -> dict:
    """The statement of the main declaring variable `name` (a DeclBuffer or a Bind)."""
    return next(s for s in _main(doc)["body"]["seq"]
                if s.get("buffer", s.get("var", {})).get("name") == name)


def _first_call(doc: dict) -> dict:
    return _declaring(doc, "status_0")["value"]


def _pool_index(doc: dict, pointer: str) -> dict:
    """The IntImm index of `address_of(pool[index])` in the Bind of pointer variable `pointer`."""
    node = _declaring(doc, pointer)["value"]
    while node["node"] == "Call":
        node = node["args"][0]
    return node["indices"][0]


def _pool_size(doc: dict, pool: str) -> int:
    return _declaring(doc, f"{pool}_bytes")["buffer"]["type"]["shape"][0]["value"]


def _nest_first_call(doc: dict) -> None:
    body = _main(doc)["body"]["seq"]
    index = body.index(_declaring(doc, "status_0"))
    body[index] = {"node": "IfThenElse", "condition": {"node": "IntImm", "dtype": "bool",
                                                       "value": 1},
                   "then_case": body[index], "else_case": None}


def _loop_first_call(doc: dict) -> None:
    body = _main(doc)["body"]["seq"]
    index = body.index(_declaring(doc, "status_0"))
    loop_var = {"node": "Var", "name": "i", "type": {"node": "PrimType", "dtype": "int32"}}
    body[index] = {"node": "For", "loop_var": loop_var,
                   "min": {"node": "IntImm", "dtype": "int32", "value": 0},
                   "extent": {"node": "IntImm", "dtype": "int32", "value": 1},
                   "kind": "serial", "body": body[index], "thread_binding": None,
                   "annotations": {}, "step": None}


def _set_constant(doc: dict, name: str, value: object) -> None:
    _main(doc)["attrs"]["microexport.constants"]["items"][name] = value


MAIN_VIOLATIONS: list[tuple[str, Callable[[dict], object], str]] = [
    ("parameter not a pointer",
     lambda d: _main(d)["params"][0].update(type={"node": "PrimType", "dtype": "int32"}),
     r"\.params\[0\]: parameter 'x' of the AOT main is not a pointer"),
    ("unsupported pointer", lambda d: _declaring(d, "x_1").update(data=INT32_ZERO),
     r"\.body\.seq\[\d+\]\.data: unsupported pointer expression"),
    ("address beyond the pool", lambda d: _pool_index(d, "constant_0").update(value=10**6),
     r"\.body\.seq\[\d+\]\.value(\.args\[0\])+\.indices: not one constant index within "
     r"'constants_bytes' \(0 to \d+\)"),
    ("tensor outside its pool",
     lambda d: _pool_index(d, "lv").update(value=_pool_size(d, "workspace")),
     r"\.body: tensor 'lv' \(128 bytes at offset \d+\) does not fit in pool 'workspace'"),
    ("shape not constant",
     lambda d: _declaring(d, "lv_1")["buffer"]["type"]["shape"].__setitem__(
         0, {"node": "Var", "name": "x"}),
     r"\.body\.seq\[\d+\]\.buffer: tensor 'lv_1' has a shape that is not constant"),
    ("unknown dtype", lambda d: _declaring(d, "lv_1")["buffer"]["type"].update(dtype="handle"),
     r"\.body\.seq\[\d+\]\.buffer\.type\.dtype: unknown dtype 'handle'"),
    ("argument missing", lambda d: _first_call(d)["args"].pop(),
     r"\.body\.seq\[\d+\]\.value: 'tvmgen_mlp_onnx_fused_matmul_add_relu' takes 4 arguments, "
     r"the main passes 3"),
    ("main calls itself", lambda d: _first_call(d)["op"].update(name=_main(d)["name"]),
     r"\.body\.seq\[\d+\]\.value: the AOT main calls itself"),
    ("kernel missing", lambda d: _first_call(d)["op"].update(name="tvmgen_nothing"),
     r"\.body\.seq\[\d+\]\.value: the main calls 'tvmgen_nothing', which the module lacks"),
    ("call nested", _nest_first_call,
     r"\.body\.seq\[\d+\]\.condition: an If around kernel calls must test element 0 of a "
     r"tensor declared before"),
    ("call in a loop", _loop_first_call,
     r"\.body\.seq\[\d+\]: kernel call nested in a For: not an AOT main"),
    ("constant not a tensor",
     lambda d: _set_constant(d, "constant_0", {"node": "Map", "items": {}}),
     r"\.attrs\['microexport\.constants'\]\.items\.constant_0: expected a Tensor"),
    ("constant of the wrong size",
     lambda d: _set_constant(d, "constant_0", {"node": "Tensor", "dtype": "uint8", "shape": [3],
                                               "data": "AAAA"}),
     r"\.attrs\['microexport\.constants'\]\.items\.constant_0\.data: 3 bytes for constant "
     r"'constant_0' of 2048 bytes"),
    ("io not lists",
     lambda d: _main(d)["attrs"]["microexport.io"]["items"].update(inputs="x"),
     r"\.attrs\['microexport\.io'\]\.items: expected inputs and outputs as lists"),
]


@pytest.mark.parametrize("case", MAIN_VIOLATIONS, ids=[c[0] for c in MAIN_VIOLATIONS])
def test_aot_main_conventions_are_checked(case: tuple, zoo_compilation: ZooCompilation) -> None:
    from microexport.archive.tir_json.reader import parse

    _, mutate, pattern = case
    compilation, _, _ = zoo_compilation("mlp_onnx")
    doc = json.loads(compilation.files["src/tir-codegen.json"])
    mutate(doc)
    parse(doc)  # still a valid document: only an AOT main convention is broken
    with pytest.raises(TirJsonError, match=MAIN + pattern):
        graph_from_tir(doc)


def test_graph_ignores_an_io_attribute_naming_no_tensor(zoo_compilation: ZooCompilation
                                                        ) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    doc = json.loads(compilation.files["src/tir-codegen.json"])
    _main(doc)["attrs"]["microexport.io"]["items"]["inputs"] = ["nothing"]
    graph = graph_from_tir(doc)
    assert (graph["inputs"], graph["outputs"]) == (["x"], ["y"])  # from the parameters


def test_pointer_idioms(zoo_compilation: ZooCompilation) -> None:
    """A pointer variable standing where a tensor starts is that tensor; reinterpret changes no
    address; an address computed in the call is scratch, even where a tensor starts."""
    compilation, _, _ = zoo_compilation("mlp_onnx")
    doc = json.loads(compilation.files["src/tir-codegen.json"])
    expected = graph_json(graph_from_tir(doc))
    lv_bind = _declaring(doc, "lv")
    address = lv_bind["value"]
    _first_call(doc)["args"][3] = {"node": "Var", "name": "lv"}  # was buffer_data(lv_1)
    lv_bind["value"] = {"node": "Call", "type": address["type"],
                        "op": {"node": "Op", "name": "tirx.reinterpret"}, "args": [address]}
    assert graph_json(graph_from_tir(doc)) == expected
    _first_call(doc)["args"][3] = address  # the same address, computed in the call
    arg = graph_from_tir(doc)["nodes"][0]["args"][3]
    assert (arg["kind"], arg["pool"], arg["offset"]) == ("scratch", "workspace",
                                                         _pool_index(doc, "lv")["value"])
