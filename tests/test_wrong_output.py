"""Regression tests for a silent wrong answer (issue 11, point 1).

A reduction (MAX_POOL_2D) whose consumer is a channel PAD inlined into an ADD: the epilogue fusion
in `schedules.py` moved the ADD under the pool's loops, whose channel loop only spans the pool's C
channels, so output channels C..2C-1 were never written. Models of that shape are checked against
LiteRT (TFLite Micro cannot run float16 DEQUANTIZE) on the host and bare metal in QEMU, and every
scheduled block is checked to still run over its whole iteration domain.
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm_ffi
from support import require_module, require_program
from zoo import TfliteWriter

import microexport
from microexport.api import import_model
from microexport.archive.mlf import read_model
from microexport.compiler.lower import check_target, lower, relax_pipeline
from microexport.compiler.plan import live_intervals
from microexport.compiler.schedules import covers_iteration_domain, schedule_for_c
from microexport.deploy.boards import load_board
from microexport.deploy.compare import compare
from microexport.deploy.platforms import get_platform
from microexport.deploy.reference import run_reference
from microexport.model import CompiledModel

Inputs = dict[str, np.ndarray]
QEMU_BOARD = "mps2_an385"


def _float16(writer: TfliteWriter, name: str, values: np.ndarray) -> int:
    """A float32 tensor computed by DEQUANTIZE from float16 constant `values`."""
    half = writer.tensor(f"{name}_f16", values.shape, "float16", values.astype(np.float16))
    full = writer.tensor(name, values.shape, "float32")
    writer.operator("DEQUANTIZE", [half], [full])
    return full


def maxpool_pad_add(directory: Path) -> tuple[Path, Inputs]:
    """The three-operator reproducer: x[1,8,8,4] → MAX_POOL_2D 2x2/2 → PAD channels 4→8 → ADD
    y[1,4,4,8] → out."""
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8, 8, 4), "float32")
    y = writer.tensor("y", (1, 4, 4, 8), "float32")
    widths = writer.tensor("paddings", (4, 2), "int32",
                           np.array([[0, 0], [0, 0], [0, 0], [0, 4]], np.int32))
    pooled = writer.tensor("pooled", (1, 4, 4, 4), "float32")
    padded = writer.tensor("padded", (1, 4, 4, 8), "float32")
    out = writer.tensor("out", (1, 4, 4, 8), "float32")
    writer.operator("MAX_POOL_2D", [x], [pooled], writer.options(
        "Pool2DOptions", padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2))
    writer.operator("PAD", [pooled, widths], [padded], writer.options("PadOptions"))
    writer.operator("ADD", [padded, y], [out], writer.options("AddOptions"))
    path = writer.write(Path(directory) / "maxpool_pad_add.tflite", [x, y], [out])
    rng = np.random.default_rng(1234)
    return path, {"x": rng.standard_normal((1, 8, 8, 4)).astype(np.float32),
                  "y": rng.standard_normal((1, 4, 4, 8)).astype(np.float32)}


def face_detector(directory: Path) -> tuple[Path, Inputs]:
    """A small float detector shaped like the model the bug was found on: float16 weights behind
    DEQUANTIZE, convs and depthwise convs, a spatial PAD before a stride-2 depthwise, a MAX_POOL_2D
    + channel PAD shortcut added to the conv branch (with RELU), and two heads per feature map
    reshaped and concatenated into two outputs (regressors [1,160,4], classificators [1,160,1])."""
    rng = np.random.default_rng(11)
    writer = TfliteWriter()

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    def conv(name: str, source: int, shape: tuple[int, ...], cin: int, cout: int, kernel: int,
             stride: int = 1, relu: bool = False) -> int:
        w = _float16(writer, f"{name}_w", weights(cout, kernel, kernel, cin))
        b = writer.tensor(f"{name}_b", (cout,), "float32", weights(cout))
        out = writer.tensor(name, shape, "float32")
        writer.operator("CONV_2D", [source, w, b], [out], writer.options(
            "Conv2DOptions", padding=0, strideW=stride, strideH=stride,
            fusedActivationFunction=1 if relu else 0, dilationWFactor=1, dilationHFactor=1))
        return out

    def depthwise(name: str, source: int, shape: tuple[int, ...], channels: int, stride: int,
                  padding: int) -> int:
        w = _float16(writer, f"{name}_w", weights(1, 3, 3, channels))
        b = writer.tensor(f"{name}_b", (channels,), "float32", weights(channels))
        out = writer.tensor(name, shape, "float32")
        writer.operator("DEPTHWISE_CONV_2D", [source, w, b], [out], writer.options(
            "DepthwiseConv2DOptions", padding=padding, strideW=stride, strideH=stride,
            depthMultiplier=1, dilationWFactor=1, dilationHFactor=1))
        return out

    def pad(name: str, source: int, shape: tuple[int, ...], widths: list[list[int]]) -> int:
        paddings = writer.tensor(f"{name}_widths", (4, 2), "int32", np.array(widths, np.int32))
        out = writer.tensor(name, shape, "float32")
        writer.operator("PAD", [source, paddings], [out], writer.options("PadOptions"))
        return out

    def add_relu(name: str, a: int, b: int, shape: tuple[int, ...]) -> int:
        out = writer.tensor(name, shape, "float32")
        writer.operator("ADD", [a, b], [out],
                        writer.options("AddOptions", fusedActivationFunction=1))
        return out

    def head(name: str, source: int, grid: int, cin: int, values: int) -> int:
        out = conv(name, source, (1, grid, grid, values), cin, values, 1)
        shape = writer.tensor(f"{name}_shape", (3,), "int32",
                              np.array([1, grid * grid, values], np.int32))
        flat = writer.tensor(f"{name}_flat", (1, grid * grid, values), "float32")
        writer.operator("RESHAPE", [out, shape], [flat],
                        writer.options("ReshapeOptions", newShape=[1, grid * grid, values]))
        return flat

    def concat(name: str, parts: list[int], shape: tuple[int, ...]) -> int:
        out = writer.tensor(name, shape, "float32")
        writer.operator("CONCATENATION", parts, [out],
                        writer.options("ConcatenationOptions", axis=1))
        return out

    image = writer.tensor("image", (1, 16, 16, 3), "float32")
    stem = conv("stem", image, (1, 8, 8, 8), 3, 8, 3, stride=2, relu=True)
    # residual block at 8x8: depthwise + pointwise, added to its input
    dw1 = depthwise("dw1", stem, (1, 8, 8, 8), 8, 1, padding=0)
    pw1 = conv("pw1", dw1, (1, 8, 8, 8), 8, 8, 1)
    feature_a = add_relu("block1", pw1, stem, (1, 8, 8, 8))
    # downsampling block to 4x4 and 16 channels: the shortcut is MAX_POOL_2D + channel PAD
    padded = pad("spatial_pad", feature_a, (1, 9, 9, 8), [[0, 0], [0, 1], [0, 1], [0, 0]])
    dw2 = depthwise("dw2", padded, (1, 4, 4, 8), 8, 2, padding=1)
    pw2 = conv("pw2", dw2, (1, 4, 4, 16), 8, 16, 1)
    pooled = writer.tensor("pooled", (1, 4, 4, 8), "float32")
    writer.operator("MAX_POOL_2D", [feature_a], [pooled], writer.options(
        "Pool2DOptions", padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2))
    shortcut = pad("channel_pad", pooled, (1, 4, 4, 16), [[0, 0], [0, 0], [0, 0], [0, 8]])
    feature_b = add_relu("block2", pw2, shortcut, (1, 4, 4, 16))
    regressors = concat("regressors", [head("reg_a", feature_a, 8, 8, 4),
                                       head("reg_b", feature_b, 4, 16, 4)], (1, 160, 4))
    classificators = concat("classificators", [head("cls_a", feature_a, 8, 8, 1),
                                               head("cls_b", feature_b, 4, 16, 1)], (1, 160, 1))
    path = writer.write(Path(directory) / "face_detector.tflite", [image],
                        [regressors, classificators])
    return path, {"image": np.random.default_rng(12).uniform(-1, 1, (1, 16, 16, 3))
                  .astype(np.float32)}


MODELS: dict[str, Callable[[Path], tuple[Path, Inputs]]] = {
    "maxpool_pad_add": maxpool_pad_add,
    "face_detector": face_detector,
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """`compiled(name)` → (archive, model path, inputs, LiteRT outputs), once per module."""
    require_module("ai_edge_litert", "tflite")
    directory = tmp_path_factory.mktemp("wrong-output")
    cache: dict[str, tuple[Path, Path, Inputs, list[np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, Path, Inputs, list[np.ndarray]]:
        if name not in cache:
            path, inputs = MODELS[name](directory)
            runtime, expected = run_reference(path, inputs, runtime="litert")
            assert runtime == "litert"
            result = microexport.compile(path, directory / f"{name}.tar", name=name)
            cache[name] = (result.archive, path, inputs, expected)
        return cache[name]

    return get


def _check(name: str, got: dict[str, np.ndarray], expected: list[np.ndarray], where: str) -> None:
    assert len(got) == len(expected)
    for (out_name, value), want in zip(got.items(), expected, strict=True):
        result = compare(out_name, value, want)
        assert result.passed, (f"{name}/{out_name} on {where} vs litert: "
                               f"max abs err {result.max_abs_error}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_litert_on_host(name: str, compiled: Callable) -> None:
    archive, _, inputs, expected = compiled(name)
    _check(name, microexport.run(archive, inputs), expected, "host")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_litert_bare_metal_in_qemu(name: str, compiled: Callable,
                                           tmp_path: Path) -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    archive, _, inputs, expected = compiled(name)
    result = get_platform(load_board(QEMU_BOARD)).execute_archive(archive, inputs, tmp_path)
    _check(name, result.outputs, expected, QEMU_BOARD)


def test_face_detector_reuses_memory(compiled: Callable) -> None:
    """The larger model exercises buffer reuse, where unwritten elements used to show stale
    bytes of an earlier tensor: its workspace is smaller than its intermediates side by side."""
    archive, path, _, _ = compiled("face_detector")
    lowered = lower(import_model(path))
    intervals, _ = live_intervals(lowered.schedule, lowered.scratch)
    workspace = read_model(archive).memory.workspace_bytes
    assert 0 < workspace < sum(interval.nbytes for interval in intervals)


def _poison_harness(model: CompiledModel) -> str:
    """C main for an archive compiled with `workspace="external"`: `poisoned BYTE IN... OUT...`
    fills every workspace pool and every output buffer with BYTE before the run, reads the
    inputs from files and writes the outputs to files."""
    prefix = f"tvmgen_{model.name}"
    lines = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
             f'#include "{prefix}.h"', ""]
    for pool in model.memory.pools:
        if pool.nbytes:
            lines.append(f"static union {prefix}_{pool.name}_storage pool_{pool.name};")
    for kind, specs in (("in", model.inputs), ("out", model.outputs)):
        for t in specs:
            lines.append(f"static {t.ctype} {kind}_{t.c_name}[{max(t.elements, 1)}];")
    lines += ["", "static int io(const char* path, void* data, size_t size, int write) {",
              '  FILE* f = fopen(path, write ? "wb" : "rb");',
              "  size_t done = 0;",
              "  if (f) done = write ? fwrite(data, 1, size, f) : fread(data, 1, size, f);",
              "  if (f) fclose(f);", "  return done != size;", "}", "",
              "int main(int argc, char** argv) {",
              f"  struct {prefix}_inputs inputs;", f"  struct {prefix}_outputs outputs;",
              f"  struct {prefix}_workspace_pools pools;",
              "  int poison = atoi(argv[1]);", "  (void)argc;"]
    for pool in model.memory.pools:
        if pool.nbytes:
            lines += [f"  memset(&pool_{pool.name}, poison, sizeof pool_{pool.name});",
                      f"  pools.{pool.name} = pool_{pool.name}.bytes;"]
        else:
            lines.append(f"  pools.{pool.name} = NULL;")
    arg = 2
    for t in model.inputs:
        lines += [f"  inputs.{t.c_name} = in_{t.c_name};",
                  f"  if (io(argv[{arg}], in_{t.c_name}, {t.nbytes}, 0)) return 2;"]
        arg += 1
    for t in model.outputs:
        lines += [f"  memset(out_{t.c_name}, poison, sizeof out_{t.c_name});",
                  f"  outputs.{t.c_name} = out_{t.c_name};"]
    lines.append(f"  if ({prefix}_run(&inputs, &outputs, &pools) != 0) return 3;")
    for t in model.outputs:
        lines.append(f"  if (io(argv[{arg}], out_{t.c_name}, {t.nbytes}, 1)) return 4;")
        arg += 1
    return "\n".join([*lines, "  return 0;", "}", ""])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_output_depends_on_stale_memory(name: str, compiled: Callable,
                                           tmp_path: Path) -> None:
    """The wrong answer was elements never written: what they showed depended on the memory
    plan (zeros in a fresh static pool, bytes of an earlier tensor after reuse). With every
    workspace pool and output poisoned before the run (bytes 0xFF: float32 NaN; 0x4B: 1.3e7, which
    a RELU does not hide), the outputs still match LiteRT: nothing is read before it is written
    and every output element is written."""
    gcc = require_program("gcc", "gcc")
    _, path, inputs, expected = compiled(name)
    result = microexport.compile(path, tmp_path / "external.tar", name=name,
                                 workspace="external")
    model = read_model(result.archive)
    assert model.memory.workspace_bytes > 0
    with tarfile.open(result.archive) as tar:
        tar.extractall(tmp_path / "archive", filter="data")
    host = tmp_path / "archive/codegen/host"
    (tmp_path / "harness.c").write_text(_poison_harness(model))
    binary = tmp_path / "poisoned"
    subprocess.run([gcc, "-std=c99", "-O1", "-I", str(host / "include"),
                    *map(str, sorted((host / "src").glob("*.c"))), str(tmp_path / "harness.c"),
                    "-lm", "-o", str(binary)], check=True, capture_output=True, text=True)
    args = []
    for spec in model.inputs:
        file = tmp_path / f"in_{spec.c_name}.bin"
        file.write_bytes(np.ascontiguousarray(inputs[spec.name], spec.dtype).tobytes())
        args.append(str(file))
    outs = [tmp_path / f"out_{spec.c_name}.bin" for spec in model.outputs]
    for poison in (0xFF, 0x4B):
        subprocess.run([str(binary), str(poison), *args, *map(str, outs)], check=True,
                       timeout=60)
        got = {spec.name: np.fromfile(file, spec.dtype).reshape(spec.shape)
               for spec, file in zip(model.outputs, outs, strict=True)}
        _check(name, got, expected, f"host with memory poisoned by {poison:#x}")


def _kernels(path: Path) -> dict[str, object]:
    """The block-level kernels of a model after Relax fusion, before our schedule."""
    with check_target("c"):
        fused = relax_pipeline()(import_model(path).mod)
    return {gv.name_hint: func for gv, func in fused.functions.items()
            if gv.name_hint != "main" and hasattr(func, "body")}


def _block_names(func: object) -> list[str]:
    from tvm import s_tir

    names: list[str] = []

    def visit(block: s_tir.SBlock, visitor: object) -> None:
        names.append(block.name_hint)
        visitor.default_visit(block)  # type: ignore[attr-defined]

    tvm_ffi.structural_visit(func.body, (s_tir.SBlock, visit))  # type: ignore[attr-defined]
    return [name for name in names if name != "root"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_scheduled_block_covers_its_domain(name: str, compiled: Callable) -> None:
    """Structural check of the fix: after `schedule_for_c`, every block of every kernel runs over
    its whole iteration domain, and the pool + pad + add kernel is among them."""
    from tvm import s_tir

    _, path, _, _ = compiled(name)
    kernels = _kernels(path)
    assert any("max_pool2d" in kernel and "pad" in kernel for kernel in kernels), kernels
    for kernel, func in kernels.items():
        sch = s_tir.Schedule(schedule_for_c(func))
        for block in _block_names(sch.mod["main"]):
            assert covers_iteration_domain(sch, sch.get_sblock(block)), f"{kernel}: {block}"


def test_the_faulty_fusion_is_recognised(compiled: Callable) -> None:
    """The transformation that caused the bug, applied by hand: after `reverse_compute_at` the
    ADD's loops span only the pool's 4 channels of its 8, and the check says so."""
    from tvm import s_tir

    _, path, _, _ = compiled("maxpool_pad_add")
    (func,) = [f for kernel, f in _kernels(path).items() if "max_pool2d" in kernel]
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("PadInput"))
    pool, add = sch.get_sblock("pool_max"), sch.get_sblock("T_add")
    assert covers_iteration_domain(sch, add)
    sch.reverse_compute_at(add, sch.get_loops(pool)[3], preserve_unit_loops=True)
    assert not covers_iteration_domain(sch, add)
    assert int(sch.get(sch.get_loops(add)[3]).extent) == 4  # of the 8 output channels


def _onnx_model(path: Path, node: object, inputs: dict[str, tuple[int, tuple[int, ...]]],
                output: tuple[int, ...], inits: list[object], opset: int) -> Path:
    """A one-node ONNX model; `inputs` maps each graph input to (TensorProto type, shape)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node], path.stem,
        [helper.make_tensor_value_info(k, kind, shape) for k, (kind, shape) in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_a_refused_fusion_falls_back_to_the_unfused_kernel(tmp_path: Path) -> None:
    """GroupNormalization: `reverse_compute_at` fails inside TVM (a ValueError, not a
    ScheduleError); the kernel is compiled unfused and matches onnxruntime."""
    require_module("onnxruntime", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(21)
    inits = [numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bias")]
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=3)
    path = _onnx_model(tmp_path / "group_norm.onnx", node,
                       {"x": (TensorProto.FLOAT, (2, 6, 3, 3))}, (2, 6, 3, 3), inits, 21)
    inputs = {"x": rng.standard_normal((2, 6, 3, 3)).astype(np.float32)}
    _, expected = run_reference(path, inputs)
    result = microexport.compile(path, tmp_path / "group_norm.tar", name="group_norm")
    comparison = compare("y", microexport.run(result.archive, inputs)["y"], expected[0])
    assert comparison.passed, comparison.max_abs_error


def test_a_function_without_root_block_is_left_alone(tmp_path: Path) -> None:
    """ScatterElements legalizes to TIR written directly, without a root block: the schedule
    returns it unchanged instead of failing."""
    from onnx import TensorProto, helper

    node = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1)
    path = _onnx_model(tmp_path / "scatter.onnx", node,
                       {"x": (TensorProto.FLOAT, (1, 5)), "i": (TensorProto.INT64, (1, 2)),
                        "u": (TensorProto.FLOAT, (1, 2))}, (1, 5), [], 18)
    (func,) = [f for kernel, f in _kernels(path).items() if "scatter" in kernel]
    assert schedule_for_c(func).same_as(func)
