"""`microexport analyze`: loop trip counts, MACs, bytes and scratch from the TIR JSON alone. MAC
counts are checked against counts computed independently from the ONNX models' layer shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from microexport.archive.analyze import analyze, format_report
from microexport.cli import main as cli_main

ZooCompilation = Callable[[str], tuple]
NO_TVM = "import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None; "


def onnx_macs(path: Path) -> int:
    """MACs of an ONNX model from its layer shapes: Conv N·Cout·H·W·(Cin/groups)·Kh·Kw, Gemm and
    MatMul M·K·N (shapes from ONNX shape inference)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({t.name: list(numpy_helper.to_array(t).shape) for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            cout, cin_per_group, kh, kw = shapes[node.input[1]]
            n, _, h, w = shapes[node.output[0]]
            total += n * cout * h * w * cin_per_group * kh * kw
        elif node.op_type in ("Gemm", "MatMul"):
            m, k = shapes[node.input[0]]
            total += m * k * int(np.prod(shapes[node.output[0]])) // m
    return total


@pytest.mark.parametrize("stage", ["scheduled", "lowered", "codegen"])
@pytest.mark.parametrize("name", ["mlp_onnx", "cnn_onnx"])
def test_macs_match_the_layer_shapes(name: str, stage: str, zoo_compilation: ZooCompilation,
                                     build_model: Callable) -> None:
    from zoo import ZOO

    compilation, _, _ = zoo_compilation(name)
    _, builder, _ = next(entry for entry in ZOO if entry[0] == name)
    path, _ = build_model(builder)
    expected = {"mlp_onnx": 16 * 32 + 32 * 4,
                "cnn_onnx": 8 * 16 * 16 * 3 * 9 + 8 * 16 * 16 * 1 * 9 + 16 * 8 * 8 * 16 + 16 * 5}
    assert onnx_macs(path) == expected[name]
    report = analyze(compilation.files[f"src/tir-{stage}.json"])
    assert report["totals"]["macs"] == expected[name]
    assert not any(k["approximate"] for k in report["kernels"])


def test_mlp_loops_bytes_and_scratch(zoo_compilation: ZooCompilation) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    report = analyze(compilation.files["src/tir-codegen.json"])
    kernels = {k["name"]: k for k in report["kernels"]}
    first = kernels["tvmgen_mlp_onnx_fused_matmul_add_relu"]
    assert first["calls"] == 1 and first["macs"] == 16 * 32
    # register blocking: four outputs (i1_0: 32 / 4) accumulate together, and the reduction
    # over k (16) is unrolled by 4 around them
    assert any(nest.startswith("i1_0:8 > k_0:4") for nest in first["loop_nests"])
    # every input and weight element is read at least once; the output is written
    assert first["bytes_read"] >= (16 + 16 * 32 + 32) * 4
    assert first["bytes_written"] >= 32 * 4
    memory = compilation.metadata["memory"]["functions"]
    for kernel in report["kernels"]:
        assert kernel["scratch_bytes"] == memory[kernel["name"]]["workspace_bytes"]
    totals = report["totals"]
    assert totals["bytes_read"] == sum(k["bytes_read"] for k in report["kernels"])
    text = format_report(report)
    assert "tvmgen_mlp_onnx_fused_matmul_add_relu" in text and "total" in text


def test_analyze_cli_json_runs_without_tvm(zoo_compilation: ZooCompilation,
                                           tmp_path: Path) -> None:
    compilation, _, _ = zoo_compilation("cnn_onnx")
    tir = tmp_path / "tir.json"
    tir.write_bytes(compilation.files["src/tir-codegen.json"])
    code = NO_TVM + (
        "from microexport.cli import main; "
        f"status = main(['analyze', {str(tir)!r}, '--json']); "
        "assert sys.modules.get('tvm') is None; sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    report = json.loads(result.stdout)
    assert report["format"] == "microexport-analysis" and report["stage"] == "codegen"
    assert report["totals"]["macs"] == 90192


def test_analyze_cli_table(zoo_compilation: ZooCompilation, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    compilation, _, _ = zoo_compilation("mlp_onnx")
    tir = tmp_path / "tir.json"
    tir.write_bytes(compilation.files["src/tir-scheduled.json"])
    assert cli_main(["analyze", str(tir)]) == 0
    out = capsys.readouterr().out
    assert "MACs" in out and " 640 " in out


def test_branches_on_a_loop_variable_count_their_iterations(
        zoo_compilation: ZooCompilation) -> None:
    """The concatenation's loop is unswitched on `8 <= ax1`: each branch runs for half of ax1's
    16 iterations, so the kernel writes every output element once, exactly."""
    compilation, _, _ = zoo_compilation("cnn_onnx")
    report = analyze(compilation.files["src/tir-codegen.json"])
    concat = next(k for k in report["kernels"] if k["name"].endswith("_concatenate"))
    assert not concat["approximate"]
    assert concat["bytes_written"] == 16 * 8 * 8 * 4
    assert concat["bytes_read"] == 16 * 8 * 8 * 4
