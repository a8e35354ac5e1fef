"""TFLite Micro on the emulated Cortex-M boards against microexport, same models, same QEMU.

    python bench/tflm_cortexm.py --tflm PATH [--boards mps2_an385,mps2_an386]
                                 [--kernels reference,cmsis_nn] [--models conv_int8,...]

TFLite Micro (TFLM) comes from the user's checkout (`--tflm` or `$TFLM_ROOT`) with its
third-party code already in `tensorflow/lite/micro/tools/make/downloads/` (the pins are in
`PINNED`; nothing is downloaded). For each board's core and each kernel set (TFLM's reference
kernels, or `OPTIMIZED_KERNEL_DIR=cmsis_nn`) the script compiles, with TFLM's own Makefile rules
and flags, the framework plus only the kernels the benchmark models use into two static
libraries (framework; kernels with CMSIS-NN), cached under `--build-dir` per (core, kernels);
the object files stay in the checkout's `gen/`, as with TFLM's own `make`.
Per model it links a bare-metal harness (bench/tflm_harness/: our `main.cc` and startup code,
microexport's bare-metal linker script) and runs it in `qemu-system-arm -icount shift=0`, where
one instruction lasts 1 ns and the CMSDK timer ticks every 40 instructions. Reported per model,
board and TFLM kernel set:

* instructions per inference: the median of invokes 2..N (the first may run one-time setup);
  ours from bench/cortexm.py's `measure` (microexport's own bare-metal harness, one inference);
* instructions per MAC (MACs counted from the model's CONV_2D, DEPTHWISE_CONV_2D,
  FULLY_CONNECTED and BATCH_MATMUL operators);
* RAM: TFLM's `arena_used_bytes()` against our workspace + inputs + outputs;
* code: the bytes of executable code linked from TFLM's kernels (with CMSIS-NN) and from its
  framework (interpreter, allocator, flatbuffer parsing), against the code of our model functions
  (kernels, AOT main, run wrapper); and of the whole image (startup, newlib, harness included)
  for both. Weights are in neither.

The last column checks the harness: the board's TFLM output against TFLM's Python interpreter on
the host (x86, reference kernels) for the same input. Ratios are ours/TFLM (below 1: we use less).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import ROOT, build, markdown_table
from cortexm import measure
from zoo import TfliteWriter

import microexport
from microexport.api import import_model
from microexport.deploy.boards import Board, load_board
from microexport.deploy.compare import sample_inputs
from microexport.templating import render, template_environment

DEFAULT_BOARDS = "mps2_an385,mps2_an386"
DEFAULT_KERNELS = "reference,cmsis_nn"
HARNESS = Path(__file__).resolve().parent / "tflm_harness"
MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads"
INVOKES = 5
ARENA_BYTES = 1024 * 1024
STACK_BYTES = 32 * 1024
HEAP_BYTES = 32 * 1024
QEMU_TIMEOUT = 1800
NS_PER_TICK = 40  # CMSDK timer at 25 MHz; -icount shift=0: 1 ns per instruction

# The commits the figures in bench/RESULTS.md were measured with (tflite-micro's own pins for its
# third-party code: tools/make/*download*.sh and third_party_downloads.inc).
PINNED = {
    "tensorflow/tflite-micro": "90b983c2b3f1480642e040bbd2ddb37b998f3424",
    "google/flatbuffers": "v25.9.23 (+ TFLM's flatbuffers.patch) -> downloads/flatbuffers",
    "google/gemmlowp": "719139ce755a0f31cbf1c37f7f98adcc7fc9f425 -> downloads/gemmlowp",
    "google/ruy": "d37128311b445e758136b8602d1bbd2a755e115d -> downloads/ruy",
    "mborgerding/kissfft": "v130 (+ third_party/kissfft/kissfft.patch) -> downloads/kissfft",
    "ARM-software/CMSIS-NN": "4ab83cc3cc98fb85ed6dafb55e8ca02f1628dcae -> downloads/cmsis_nn",
    "ARM-software/CMSIS_6": "5782d6f8057906d360f4b95ec08a2354afe5c9b9 -> downloads/cmsis",
    "ARM-software/Cortex_DFP": "c2c70a97a20fb355815e2ead3d4a40e35a4a3cdf"
                               " -> downloads/cmsis/Cortex_DFP",
}
THIRD_PARTY = ("flatbuffers", "gemmlowp", "ruy", "kissfft", "cmsis_nn", "cmsis/CMSIS",
               "cmsis/Cortex_DFP", "pigweed")

# The kernels the benchmark models need: TFLM kernel sources by stem (with their `_common`).
KERNEL_STEMS = ("activations", "add", "conv", "depthwise_conv", "fully_connected", "kernel_util",
                "pooling", "reshape", "softmax", "batch_matmul", "concatenation", "dequantize",
                "expand_dims", "hard_swish", "leaky_relu", "logistic", "mul", "pad", "quantize",
                "reduce", "split", "squeeze", "strided_slice", "sub", "tanh", "transpose",
                "unidirectional_sequence_lstm", "lstm_eval")
# TFLite builtin operator → MicroMutableOpResolver method.
RESOLVER_METHODS = {
    "ADD": "AddAdd",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "FULLY_CONNECTED": "AddFullyConnected",
    "MAX_POOL_2D": "AddMaxPool2D",
    "RELU": "AddRelu",
    "RESHAPE": "AddReshape",
    "SOFTMAX": "AddSoftmax",
    "BATCH_MATMUL": "AddBatchMatMul",
    "CONCATENATION": "AddConcatenation",
    "DEQUANTIZE": "AddDequantize",
    "EXPAND_DIMS": "AddExpandDims",
    "HARD_SWISH": "AddHardSwish",
    "LEAKY_RELU": "AddLeakyRelu",
    "LOGISTIC": "AddLogistic",
    "MEAN": "AddMean",
    "MUL": "AddMul",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "QUANTIZE": "AddQuantize",
    "RELU6": "AddRelu6",
    "SPLIT": "AddSplit",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}


def sources_hint() -> str:
    """One line: how to get the TFLM sources and which commits."""
    pins = "; ".join(f"{repo} {pin}" for repo, pin in PINNED.items())
    return (f"TFLite Micro sources not found: pass --tflm PATH or set TFLM_ROOT to a checkout of "
            f"tensorflow/tflite-micro with its third-party code unpacked under {DOWNLOADS}/ "
            f"(its Makefile's download scripts name them; an empty pigweed/ will do; the Makefile "
            f"needs Pillow and numpy; pins used here: {pins})")


def find_tflm(path: str | None) -> Path | None:
    """The TFLM checkout from `--tflm` or `$TFLM_ROOT`, if it has the Makefile and downloads."""
    candidate = path or os.environ.get("TFLM_ROOT")
    if not candidate:
        return None
    root = Path(candidate).expanduser().resolve()
    needed = [root / MAKEFILE] + [root / DOWNLOADS / part for part in THIRD_PARTY]
    return root if all(p.exists() for p in needed) else None


def tflm_commit(root: Path) -> str:
    """The checkout's commit if it is a git work tree, else 'unknown (not a git checkout)'."""
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown (not a git checkout)"


# --------------------------------------------------------------------------------------------
# TFLM library per (core, kernels)
# --------------------------------------------------------------------------------------------


def tflm_arch(board: Board) -> str:
    """TFLM's TARGET_ARCH for a board's core: cortex-m3, cortex-m4+fp, cortex-m7+fp, ..."""
    return board.cpu + ("+fp" if board.fpu else "")


@dataclass(frozen=True)
class TflmLibrary:
    """The built TFLM static libraries and the flags to compile a harness against them."""

    framework: Path  # interpreter, allocator, flatbuffer parsing, shared kernel helpers
    kernels: Path  # the operator kernels (and CMSIS-NN)
    cxxflags: list[str]
    cflags: list[str]
    includes: list[str]  # absolute -I flags


def make_command(root: Path, arch: str, kernels: str) -> list[str]:
    """TFLM's Makefile for a cortex_m_generic release build of `arch` with `kernels`."""
    command = ["make", "-C", str(root), "-f", MAKEFILE, "TARGET=cortex_m_generic",
               f"TARGET_ARCH={arch}", "TOOLCHAIN=gcc", "TARGET_TOOLCHAIN_ROOT=/usr/bin/",
               "BUILD_TYPE=release_with_logs"]
    if kernels != "reference":
        command.append(f"OPTIMIZED_KERNEL_DIR={kernels}")
    return command


def make_variables(command: list[str], names: list[str]) -> dict[str, str]:
    """Values of Makefile variables (TFLM's `print-<NAME>` targets)."""
    done = subprocess.run(command + ["-s"] + [f"print-{n}" for n in names],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"TFLM's Makefile failed: {done.stderr.strip()[-2000:]}")
    values = {}
    for line in done.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in names:
            values[name] = value.strip()
    return values


def wanted_object(path: str) -> bool:
    """Whether a TFLM object belongs in the benchmark library: the framework (without the test
    helpers), CMSIS-NN, and the kernels of `KERNEL_STEMS`."""
    if "/obj/core/" in path:
        return "test_helper" not in path
    if "/obj/third_party_kernels/" in path:
        return True
    stem = Path(path).stem.removesuffix("_common")
    return "/obj/kernels/tensorflow/lite/micro/kernels/" in path and stem in KERNEL_STEMS


def build_tflm(root: Path, arch: str, kernels: str, cache: Path, jobs: int) -> TflmLibrary:
    """Compile (or reuse from `cache`, when built from the same checkout and commit) the TFLM
    library for `arch` with `kernels`."""
    out = cache / f"{arch}_{kernels}"
    meta = out / "flags.json"
    framework, kernel_lib = out / "libtflm_framework.a", out / "libtflm_kernels.a"
    stamp = {"root": str(root), "commit": tflm_commit(root), "layout": 3,
             "kernels": list(KERNEL_STEMS)}
    if meta.exists() and framework.exists() and kernel_lib.exists():
        cached = json.loads(meta.read_text())
        if cached.pop("source", None) == stamp:  # else built from another checkout: rebuild
            return TflmLibrary(framework=framework, kernels=kernel_lib, **cached)
    command = make_command(root, arch, kernels)
    names = ["CXXFLAGS", "CCFLAGS", "INCLUDES", "MICROLITE_LIB_OBJS", "MICROLITE_KERNEL_OBJS",
             "MICROLITE_THIRD_PARTY_KERNEL_OBJS", "KERNEL_OPTIMIZATION_LEVEL"]
    values = make_variables(command, names)
    objects = [o for key in names[3:6] for o in values[key].split() if wanted_object(o)]
    print(f"building TFLM for {arch} ({kernels}): {len(objects)} objects", file=sys.stderr)
    done = subprocess.run(["nice", "-n", "10"] + command + [f"-j{jobs}"] + objects,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"TFLM build for {arch} ({kernels}) failed:\n{done.stderr[-3000:]}")
    out.mkdir(parents=True, exist_ok=True)
    for library, part in ((framework, True), (kernel_lib, False)):
        library.unlink(missing_ok=True)
        members = [str(root / o) for o in objects if ("/obj/core/" in o) == part]
        subprocess.run(["arm-none-eabi-ar", "rcs", str(library), *members], check=True)
    includes = [f"-I{root / flag[2:]}" for flag in shell_split(values["INCLUDES"])
                if flag.startswith("-I")]
    level = values["KERNEL_OPTIMIZATION_LEVEL"]
    flags = {"cxxflags": shell_split(values["CXXFLAGS"]) + [level],
             "cflags": shell_split(values["CCFLAGS"]) + [level], "includes": includes}
    meta.write_text(json.dumps({**flags, "source": stamp}, indent=1))
    return TflmLibrary(framework=framework, kernels=kernel_lib, **flags)


def shell_split(text: str) -> list[str]:
    """Split make's flags like the shell would (quotes around the CMSIS device header)."""
    return [flag for flag in shlex.split(text) if flag != "-MD"]


# --------------------------------------------------------------------------------------------
# Benchmark models
# --------------------------------------------------------------------------------------------


def _quantize_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scales = np.maximum(np.abs(w).max(axis=reduce), 1e-6) / 127.0
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.round(w / scales.reshape(shape)).astype(np.int8), scales


def _int8_layer(directory: Path, kind: str) -> Path:
    """One int8 layer as a converter emits it: conv/depthwise per-channel, FC per-tensor."""
    rng = np.random.default_rng(10)
    writer = TfliteWriter()
    in_scale, in_zp, out_scale, out_zp = 0.02, -10, 0.05, 3
    if kind == "conv":
        in_shape, out_shape, w_shape, axis = (1, 32, 32, 16), (1, 32, 32, 32), (32, 3, 3, 16), 0
    elif kind == "dw":
        in_shape, out_shape, w_shape, axis = (1, 32, 32, 32), (1, 32, 32, 32), (1, 3, 3, 32), 3
    else:
        in_shape, out_shape, w_shape, axis = (1, 1024), (1, 256), (256, 1024), -1
    w = rng.normal(0.0, 0.3, w_shape).astype(np.float32)
    if axis >= 0:
        wq, scales = _quantize_per_channel(w, axis)
    else:
        scale = float(np.abs(w).max() / 127.0)
        wq, scales = np.round(w / scale).astype(np.int8), np.array([scale])
    channels = out_shape[-1]
    bias_scales = scales * in_scale
    bias = np.round(rng.normal(0.0, 0.1, channels) / np.resize(bias_scales, channels))
    x = writer.tensor("input", in_shape, "int8", None, [in_scale], [in_zp])
    wt = writer.tensor("weights", w_shape, "int8", wq, list(scales), axis=max(axis, 0))
    bt = writer.tensor("bias", (channels,), "int32", bias.astype(np.int32), list(bias_scales))
    y = writer.tensor("output", out_shape, "int8", None, [out_scale], [out_zp])
    if kind == "conv":
        options = writer.options("Conv2DOptions", padding=0, strideW=1, strideH=1)
        writer.operator("CONV_2D", [x, wt, bt], [y], options)
    elif kind == "dw":
        options = writer.options("DepthwiseConv2DOptions", padding=0, strideW=1, strideH=1,
                                 depthMultiplier=1)
        writer.operator("DEPTHWISE_CONV_2D", [x, wt, bt], [y], options)
    else:
        writer.operator("FULLY_CONNECTED", [x, wt, bt], [y],
                        writer.options("FullyConnectedOptions"))
    return writer.write(directory / f"{kind}_int8.tflite", [x], [y])


def _float_tensor(writer: TfliteWriter, rng: np.random.Generator, name: str,
                  shape: tuple[int, ...], fan_in: int) -> int:
    data = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
    return writer.tensor(name, shape, "float32", data)


def float_mlp(directory: Path) -> Path:
    """Float32 MLP 784 → 128 (RELU) → 10: 101,632 MACs."""
    rng = np.random.default_rng(11)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 784), "float32")
    relu = writer.options("FullyConnectedOptions", fusedActivationFunction=1)
    hidden = writer.tensor("hidden", (1, 128), "float32")
    writer.operator("FULLY_CONNECTED", [x, _float_tensor(writer, rng, "w1", (128, 784), 784),
                                        _float_tensor(writer, rng, "b1", (128,), 784)],
                    [hidden], relu)
    y = writer.tensor("output", (1, 10), "float32")
    writer.operator("FULLY_CONNECTED", [hidden, _float_tensor(writer, rng, "w2", (10, 128), 128),
                                        _float_tensor(writer, rng, "b2", (10,), 128)],
                    [y], writer.options("FullyConnectedOptions"))
    return writer.write(directory / "float_mlp.tflite", [x], [y])


def float_cnn(directory: Path) -> Path:
    """Float32 CNN 32x32x3 → conv 3x3 16 (RELU) → max pool 2 → conv 3x3 32 (RELU) → max pool 2
    → reshape → FC 10: 1,642,496 MACs."""
    rng = np.random.default_rng(12)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 32, 32, 3), "float32")
    current, size, channels = x, 32, 3
    for index, out_channels in enumerate((16, 32)):
        fan_in = 9 * channels
        w = _float_tensor(writer, rng, f"conv{index}/w", (out_channels, 3, 3, channels), fan_in)
        b = _float_tensor(writer, rng, f"conv{index}/b", (out_channels,), fan_in)
        conv = writer.tensor(f"conv{index}", (1, size, size, out_channels), "float32")
        writer.operator("CONV_2D", [current, w, b], [conv], writer.options(
            "Conv2DOptions", padding=0, strideW=1, strideH=1, fusedActivationFunction=1))
        size //= 2
        pool = writer.tensor(f"pool{index}", (1, size, size, out_channels), "float32")
        writer.operator("MAX_POOL_2D", [conv], [pool], writer.options(
            "Pool2DOptions", padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2))
        current, channels = pool, out_channels
    features = size * size * channels
    shape = writer.tensor("flatten/shape", (2,), "int32", np.array([1, features], np.int32))
    flat = writer.tensor("flatten", (1, features), "float32")
    writer.operator("RESHAPE", [current, shape], [flat],
                    writer.options("ReshapeOptions", newShape=[1, features]))
    y = writer.tensor("output", (1, 10), "float32")
    writer.operator("FULLY_CONNECTED", [flat, _float_tensor(writer, rng, "fc/w", (10, features),
                                                            features),
                                        _float_tensor(writer, rng, "fc/b", (10,), features)],
                    [y], writer.options("FullyConnectedOptions"))
    return writer.write(directory / "float_cnn.tflite", [x], [y])


MODELS = {
    "int8_tflite": lambda d: build("int8_tflite", d)[0],  # the zoo's int8 CNN
    "sine_float": lambda d: build("sine_float", d)[0],  # tflite-micro's sine model
    "conv_int8": lambda d: _int8_layer(d, "conv"),  # 3x3, 32x32x16 → 32, per-channel
    "dw_int8": lambda d: _int8_layer(d, "dw"),  # depthwise 3x3, 32x32x32, per-channel
    "fc_int8": lambda d: _int8_layer(d, "fc"),  # 1024 → 256, per-tensor
    "float_mlp": float_mlp,
    "float_cnn": float_cnn,
}


def _quantized_model(name: str) -> Callable[[Path], Path]:
    """A real quantized model of tests/int8_models.py (needs ai-edge-quantizer)."""
    def build_model(directory: Path) -> Path:
        from int8_models import INT8_MODELS

        return {m.name: m for m in INT8_MODELS}[name].build(directory)[0]

    return build_model


for _name in ("vww_mobilenet_int8", "dscnn_kws_int8", "residual_int8", "shape_ops_int8",
              "int16x8_model", "lstm_int8"):
    MODELS[_name] = _quantized_model(_name)


# --------------------------------------------------------------------------------------------
# Reading a TFLite model: operators and MACs
# --------------------------------------------------------------------------------------------


def _read_model(path: Path) -> object:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))


def _builtin_names() -> dict[int, str]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _opcode_name(model: object, index: int, names: dict[int, str]) -> str:
    code = model.operatorCodes[index]
    return names[max(code.builtinCode, code.deprecatedBuiltinCode)]


def model_operators(path: Path) -> list[str]:
    """The builtin operator names a TFLite model uses, sorted."""
    model, names = _read_model(path), _builtin_names()
    return sorted({_opcode_name(model, op.opcodeIndex, names)
                   for graph in model.subgraphs for op in graph.operators})


def count_macs(path: Path) -> int:
    """Multiply-accumulates of a TFLite model's CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
    BATCH_MATMUL and UNIDIRECTIONAL_SEQUENCE_LSTM operators (from the tensor shapes; an LSTM:
    the four gates' input and recurrent layers at every step)."""
    model, names = _read_model(path), _builtin_names()
    total = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            kind = _opcode_name(model, op.opcodeIndex, names)
            shape = [list(graph.tensors[i].shape) for i in op.inputs[:2]]
            out = list(graph.tensors[op.outputs[0]].shape)
            if kind == "CONV_2D":  # weights OHWI
                total += int(np.prod(out)) * int(np.prod(shape[1][1:]))
            elif kind == "DEPTHWISE_CONV_2D":  # weights 1HWC
                total += int(np.prod(out)) * shape[1][1] * shape[1][2]
            elif kind == "FULLY_CONNECTED":  # weights (units, depth)
                total += int(np.prod(out)) * shape[1][-1]
            elif kind == "BATCH_MATMUL":
                total += int(np.prod(out)) * shape[0][-1]
            elif kind == "UNIDIRECTIONAL_SEQUENCE_LSTM":  # out (.., .., units), input (.., .., F)
                total += int(np.prod(out)) * 4 * (shape[0][-1] + out[-1])
    return total


# --------------------------------------------------------------------------------------------
# TFLM harness: build and run
# --------------------------------------------------------------------------------------------


def _c_bytes(data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    return ",\n  ".join(rows)


def write_model_header(path: Path, model: Path, input_bytes: bytes, invokes: int) -> None:
    """bench_model.h: the flatbuffer, the input, the operators to register."""
    ops = model_operators(model)
    unknown = [op for op in ops if op not in RESOLVER_METHODS]
    if unknown:
        raise SystemExit(f"{model.name}: no resolver method known for {', '.join(unknown)}")
    register = " ".join(f"(resolver).{RESOLVER_METHODS[op]}();" for op in ops)
    path.write_text(
        "// Generated by bench/tflm_cortexm.py.\n#pragma once\n#include <cstdint>\n\n"
        f"#define BENCH_INVOKES {invokes}\n#define BENCH_ARENA_BYTES {ARENA_BYTES}\n"
        f"#define BENCH_OP_COUNT {len(ops)}\n"
        f"#define BENCH_REGISTER_OPS(resolver) do {{ {register} }} while (0)\n\n"
        f"alignas(16) static const std::uint8_t bench_model[] = {{\n  "
        f"{_c_bytes(model.read_bytes())}}};\n\n"
        f"alignas(16) static const std::uint8_t bench_input[] = {{\n  "
        f"{_c_bytes(input_bytes)}}};\n")


def render_linker_script(board: Board, name: str) -> str:
    """microexport's bare-metal linker script for `board`, without workspace pools."""
    return render(template_environment(), "baremetal/linker.ld.j2", {
        "name": name, "board": board, "microexport_version": microexport.__version__,
        "flash": board.flash, "ram": board.ram, "stack_size": STACK_BYTES,
        "heap_size": HEAP_BYTES, "pools": []})


def build_harness(lib: TflmLibrary, board: Board, model: Path, input_bytes: bytes,
                  work: Path, invokes: int) -> Path:
    """Compile and link the TFLM harness for `model`; returns the ELF (a .map beside it)."""
    work.mkdir(parents=True, exist_ok=True)
    write_model_header(work / "bench_model.h", model, input_bytes, invokes)
    (work / "linker.ld").write_text(render_linker_script(board, f"tflm_{model.stem}"))
    includes = [f"-I{work}"] + lib.includes
    subprocess.run(["arm-none-eabi-g++", *lib.cxxflags, *includes, "-c",
                    str(HARNESS / "main.cc"), "-o", str(work / "main.o")], check=True)
    cpu = [f for f in lib.cflags if f.startswith(("-mcpu", "-mfpu", "-mfloat-abi", "-mthumb"))]
    subprocess.run(["arm-none-eabi-gcc", *cpu, "-O2", "-std=c99", "-ffunction-sections", "-c",
                    str(HARNESS / "startup.c"), "-o", str(work / "startup.o")], check=True)
    elf = work / "tflm.elf"
    cpu_ld = [f for f in lib.cxxflags if f.startswith(("-mcpu", "-mfpu", "-mfloat-abi",
                                                         "-mthumb"))]
    subprocess.run(["arm-none-eabi-g++", *cpu_ld, "--specs=rdimon.specs", "-nostartfiles",
                    "-Wl,--gc-sections", f"-Wl,-Map={work / 'tflm.map'}",
                    f"-T{work / 'linker.ld'}", str(work / "startup.o"), str(work / "main.o"),
                    "-Wl,--start-group", str(lib.kernels), str(lib.framework),
                    "-Wl,--end-group", "-lm", "-o", str(elf)], check=True)
    return elf


@dataclass(frozen=True)
class TflmRun:
    """What the harness printed: instructions per invoke, arena bytes, the output (its bytes in
    hex, or `fnv1a:<hash>` for a large one)."""

    invokes: list[int]
    arena_bytes: int
    output: str

    @property
    def instructions(self) -> int:
        """Median instructions of invokes 2..N (all of them when there is only one)."""
        later = self.invokes[1:] or self.invokes
        return int(statistics.median(later))


class HarnessFailed(RuntimeError):
    """TFLM's harness stopped with an error (e.g. a kernel refusing the model at prepare)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _tflm_error(stderr: str) -> str:
    """The line of TFLM's log that names the failing node, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if line.startswith("Node ")]
    return (named or lines or ["no output"])[0]


def run_harness(elf: Path, board: Board) -> TflmRun:
    """Run the harness in QEMU with `-icount shift=0` and parse its output."""
    command = ["qemu-system-arm", "-M", board.qemu_machine, "-nographic", "-monitor", "none",
               "-serial", "none", "-semihosting-config", "enable=on,target=native",
               "-icount", "shift=0,align=off,sleep=off", "-kernel", str(elf)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    if done.returncode != 0:
        raise HarnessFailed(f"{elf}: exit {done.returncode}: {done.stderr.strip()[-500:]}",
                            _tflm_error(done.stderr))
    overhead = int(re.search(r"tflm-overhead (\d+)", done.stdout).group(1))
    ticks = [int(t) for t in re.findall(r"tflm-invoke \d+ (\d+)", done.stdout)]
    arena = int(re.search(r"tflm-arena (\d+)", done.stdout).group(1))
    shown = re.search(r"tflm-output (\w*)", done.stdout)
    output = shown.group(1) if shown else "fnv1a:" + re.search(
        r"tflm-output-fnv1a (\w+)", done.stdout).group(1)
    return TflmRun([(t - overhead) * NS_PER_TICK for t in ticks], arena, output)


def host_output(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's first output from TFLM's own Python interpreter (x86 host, reference
    kernels), to check that the bare-metal harness computes the same."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path), arena_size=ARENA_BYTES)
    interpreter.set_input(x, 0)
    interpreter.invoke()
    return interpreter.get_output(0)


def _fnv1a(data: bytes) -> str:
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return f"{value:08x}"


def compare_output(run: TflmRun, want: np.ndarray) -> str:
    """How the board's TFLM output compares with the host's: exact, or the largest difference."""
    data = want.tobytes()
    if run.output.startswith("fnv1a:"):
        return "exact" if run.output == "fnv1a:" + _fnv1a(data) else "differs"
    got = np.frombuffer(bytes.fromhex(run.output), dtype=want.dtype).reshape(want.shape)
    if got.tobytes() == data:
        return "exact"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    return f"max diff {diff:.2g}"


_MAP_INPUT = re.compile(r"^ (\.text\S*)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)", re.MULTILINE)


def code_bytes(elf: Path, library: Path) -> int:
    """Code bytes linked from `library` (the linker map's input sections)."""
    text = (elf.parent / "tflm.map").read_text()
    text = re.sub(r"^ (\.text\S*)\n\s+", r" \1 ", text, flags=re.MULTILINE)  # wrapped names
    return sum(int(size, 16) for _, address, size, source in _MAP_INPUT.findall(text)
               if source.startswith(str(library) + "(") and int(address, 16))


def image_code_bytes(elf: Path) -> int:
    """All executable bytes of an image (its SHF_ALLOC | SHF_EXECINSTR sections)."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as stream:
        return sum(s["sh_size"] for s in ELFFile(stream).iter_sections()
                   if s["sh_flags"] & 0x6 == 0x6)


# --------------------------------------------------------------------------------------------
# Ours and the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ours:
    """microexport's figures for one model on one board."""

    instructions: int
    model_code: int
    image_code: int
    ram: int  # workspace + inputs + outputs


def measure_ours(path: Path, inputs: dict, board: str, work: Path) -> Ours:
    """Compile with microexport and measure with bench/cortexm.py's `measure`."""
    work.mkdir(parents=True, exist_ok=True)
    result = microexport.compile(path, work / "m.tar", name=path.stem)
    instructions, model_code, image_code = measure(result.archive, inputs, board, work / "run")
    memory = result.model.memory
    return Ours(instructions, model_code, image_code, memory.workspace_bytes + memory.io_bytes)


def ratio(ours: float | None, theirs: float | None) -> str:
    """ours/theirs to 2 decimals, or n/a."""
    return f"{ours / theirs:.2f}" if ours is not None and theirs else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflm", help="tflite-micro checkout (default: $TFLM_ROOT)")
    parser.add_argument("--boards", default=DEFAULT_BOARDS)
    parser.add_argument("--kernels", default=DEFAULT_KERNELS,
                        help="TFLM kernel sets: reference, cmsis_nn")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--invokes", type=int, default=INVOKES)
    parser.add_argument("--build-dir", type=Path,
                        default=Path(os.environ.get("TFLM_BUILD_DIR", ROOT / "build" / "tflm")),
                        help="where the TFLM libraries are cached (default: build/tflm)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-ours", action="store_true", help="measure TFLM only")
    args = parser.parse_args()
    root = find_tflm(args.tflm)
    if root is None:
        raise SystemExit(sources_hint())
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-g++") is None:
        raise SystemExit("needs qemu-system-arm and arm-none-eabi-g++ (scripts/install.sh)")
    boards = [load_board(name) for name in args.boards.split(",")]
    for board in boards:  # the harness reads the MPS2 boards' CMSDK timer at 0x40000000
        if not (board.qemu_machine or "").startswith("mps2-"):
            raise SystemExit(f"board {board.name}: only the QEMU MPS2 boards are supported")
    kernel_sets = args.kernels.split(",")
    unknown = sorted(set(kernel_sets) - {"reference", "cmsis_nn"})
    unknown_models = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown or unknown_models:
        raise SystemExit(f"unknown kernel set or model: {', '.join(unknown + unknown_models)} "
                         f"(kernels: reference, cmsis_nn; models: {', '.join(MODELS)})")
    print(f"TFLite Micro {tflm_commit(root)} at {root}\n")
    summary: list[list[object]] = []  # instructions per MAC: model, then per board
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            path = MODELS[name](work)
            imported = import_model(path)
            inputs = sample_inputs(imported.inputs, seed=0)
            input_bytes = b"".join(np.ascontiguousarray(inputs[s.name]).tobytes()
                                   for s in imported.inputs)
            macs = count_macs(path)
            want = host_output(path, inputs[imported.inputs[0].name])
            rows = []
            summary.append([name, f"{macs:,}"])
            for board in boards:
                ours = None if args.no_ours else measure_ours(path, inputs, board.name,
                                                              work / f"ours_{board.name}")
                summary[-1].append(f"{ours.instructions / macs:.2f}" if ours and macs else "-")
                for kernels in kernel_sets:
                    lib = build_tflm(root, tflm_arch(board), kernels, args.build_dir, args.jobs)
                    elf = build_harness(lib, board, path, input_bytes,
                                        work / f"tflm_{board.name}_{kernels}", args.invokes)
                    try:
                        run = run_harness(elf, board)
                    except HarnessFailed as failure:  # reported, the other runs go on
                        rows.append([board.name, kernels, f"TFLM fails: {failure.reason}"]
                                    + ["-"] * (len(HEADER) - 3))
                        summary[-1].append("fails")
                        continue
                    code = Code(code_bytes(elf, lib.kernels), code_bytes(elf, lib.framework),
                                image_code_bytes(elf))
                    rows.append(_row(board.name, kernels, macs, run, code, ours)
                                + [compare_output(run, want)])
                    summary[-1].append(f"{run.instructions / macs:.2f}" if macs else "-")
            print(f"### {name} ({macs:,} MACs; operators {', '.join(model_operators(path))})\n")
            print(markdown_table(HEADER, rows) + "\n", flush=True)
    header = ["model", "MACs"]
    for board in boards:
        header += [f"ours {board.name}"] + [f"TFLM {k} {board.name}" for k in kernel_sets]
    print("### Instructions per MAC\n")
    print(markdown_table(header, summary))


@dataclass(frozen=True)
class Code:
    """Code bytes of a TFLM image: its kernels (with CMSIS-NN), its framework, all of it."""

    kernels: int
    framework: int
    image: int


HEADER = ["board", "TFLM kernels", "TFLM instr/inference", "TFLM instr/MAC",
          "ours instr/inference", "ours instr/MAC", "ours/TFLM instr", "TFLM arena B",
          "ours RAM B", "ours/TFLM RAM", "TFLM kernel code B", "TFLM framework code B",
          "ours model code B", "ours/TFLM kernel code", "TFLM image code B", "ours image code B",
          "TFLM output vs host TFLM"]


def _row(board: str, kernels: str, macs: int, run: TflmRun, code: Code,
         ours: Ours | None) -> list[object]:
    per_mac = (lambda n: f"{n / macs:.2f}") if macs else (lambda n: "n/a")
    if ours is None:
        ours_cells: list[object] = ["-"] * 3
        ours_ram = ours_code = ours_image = "-"
    else:
        ours_cells = [ours.instructions, per_mac(ours.instructions),
                      ratio(ours.instructions, run.instructions)]
        ours_ram, ours_code, ours_image = ours.ram, ours.model_code, ours.image_code
    return [board, kernels, run.instructions, per_mac(run.instructions), *ours_cells,
            run.arena_bytes, ours_ram, ratio(ours and ours.ram, run.arena_bytes), code.kernels,
            code.framework, ours_code, ratio(ours and ours.model_code, code.kernels), code.image,
            ours_image]


if __name__ == "__main__":
    main()
