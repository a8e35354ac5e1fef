"""A custom runtime from graph.json alone: the graph-walker templates call the kernels over their
own static buffers (no AOT main) and give the same outputs as the generated main, on every model
of the zoo."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support import require_program
from zoo import ZOO

import microexport
from microexport.archive.graph import load_graph, render_graph_walker

ZOO_IDS = [name for name, _, _ in ZOO]
ZooCompilation = Callable[[str], tuple]
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"]


def build_walker(compilation: object, name: str, directory: Path,
                 templates: Path | None = None) -> tuple[Path, dict]:
    graph = load_graph(compilation.files["src/graph.json"])
    files = render_graph_walker(graph, templates)
    for filename, text in files.items():
        (directory / filename).write_text(text)
    lib = directory / f"tvmgen_{name}_lib.c"
    lib.write_bytes(compilation.files[f"codegen/host/src/tvmgen_{name}_lib.c"])
    header = f"tvmgen_{name}.h"  # the kernel library includes the interface header
    (directory / header).write_bytes(compilation.files[f"codegen/host/include/{header}"])
    program = directory / f"{name}_walker"
    sources = [str(directory / f) for f in files if f.endswith(".c")]
    subprocess.run([require_program("gcc", "gcc"), *FLAGS, "-I", str(directory), *sources,
                    str(lib), "-lm", "-o", str(program)], check=True, capture_output=True,
                   text=True)
    return program, files


@pytest.mark.parametrize("name", ZOO_IDS)
def test_walker_outputs_equal_the_generated_main(name: str, zoo_compilation: ZooCompilation,
                                                 tmp_path: Path) -> None:
    compilation, archive, inputs = zoo_compilation(name)
    program, files = build_walker(compilation, name, tmp_path)
    for text in files.values():
        assert "__tvm_main__" not in text
    graph = load_graph(compilation.files["src/graph.json"])
    meta = compilation.metadata
    args = []
    for index, spec in enumerate(meta["inputs"]):
        path = tmp_path / f"in{index}.bin"
        array = inputs[spec["name"]].astype(np.dtype(spec["dtype"]).newbyteorder("<"))
        path.write_bytes(np.ascontiguousarray(array).tobytes())
        args.append(str(path))
    outs = [tmp_path / f"out{index}.bin" for index in range(len(graph["outputs"]))]
    subprocess.run([str(program), *args, *map(str, outs)], check=True, capture_output=True,
                   text=True, timeout=120)
    expected = microexport.run(archive, inputs)
    for spec, path in zip(meta["outputs"], outs, strict=True):
        got = np.frombuffer(path.read_bytes(), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
        np.testing.assert_array_equal(got.reshape(spec["shape"]), expected[spec["name"]])


def test_walker_templates_can_be_overridden(zoo_compilation: ZooCompilation,
                                            tmp_path: Path) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "walker_main.c.j2").write_text(
        '#include "{{ header_name }}"\n/* custom harness */\nint main(void) { return 0; }\n')
    _, files = build_walker(compilation, "mlp_onnx", tmp_path, custom)
    assert "custom harness" in files["mlp_onnx_walker_main.c"]
    assert "mlp_onnx_walker_run" in files["mlp_onnx_walker.c"]


def softmax_module() -> object:
    """A Relax model whose kernel needs a scratch area (row maxima and sums of 8 rows)."""
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Softmax:
        @R.function
        def main(x: R.Tensor((8, 16), "float32")) -> R.Tensor((8, 16), "float32"):
            with R.dataflow():
                y = R.nn.softmax(x, axis=-1)
                z = R.add(y, y)
                R.output(z)
            return z

    return Softmax


def test_walker_passes_scratch_areas(tmp_path: Path) -> None:
    from microexport.api import compile_model, import_model
    from microexport.archive.analyze import analyze
    from microexport.archive.mlf import write_archive

    # every kernel buffer in the workspace, so that the kernel takes a scratch argument
    compilation = compile_model(import_model(softmax_module()), name="sm", kernel_stack_limit=0)
    graph = load_graph(compilation.files["src/graph.json"])
    (node,) = graph["nodes"]
    scratch = [a for a in node["args"] if a["kind"] == "scratch"]
    workspace = compilation.metadata["memory"]["functions"][node["kernel"]]["workspace_bytes"]
    assert scratch and scratch[0]["size"] == workspace > 0
    report = analyze(compilation.files["src/tir-codegen.json"])
    assert report["kernels"][0]["scratch_bytes"] == workspace
    program, _ = build_walker(compilation, "sm", tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    subprocess.run([str(program), str(tmp_path / "x.bin"), str(tmp_path / "z.bin")], check=True,
                   capture_output=True, timeout=60)
    archive = tmp_path / "sm.tar"
    write_archive(archive, compilation.files)
    (expected,) = microexport.run(archive, {"x": x}).values()
    got = np.frombuffer((tmp_path / "z.bin").read_bytes(), np.float32).reshape(8, 16)
    np.testing.assert_array_equal(got, expected)
