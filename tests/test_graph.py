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


def test_kernel_params_read_and_written(zoo_compilation: ZooCompilation) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    doc = json.loads(compilation.files["src/tir-codegen.json"])
    functions = {f["name"]: f for f in doc["modules"][0]["functions"]}
    params = kernel_params(functions["tvmgen_mlp_onnx_fused_matmul_add_relu"])
    # inputs, weights, bias, output, then the kernel's scratch (its accumulator)
    assert [p.access for p in params] == ["read", "read", "read", "write", "readwrite"]
    assert params[4].name == "scratch"
    assert params[1].declared_bytes == 16 * 32 * 4
    assert find_main(doc["modules"][0])["name"] == "tvmgen_mlp_onnx___tvm_main__"


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
