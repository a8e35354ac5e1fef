"""Integer-only quantized inference: int8 models compile to integer kernels whose outputs are
bit-exact with TFLite Micro's reference kernels (max abs difference 0), on the host and in QEMU.

Models: the real int8 models of `int8_models.py` (float models quantized by ai-edge-quantizer),
the hand-quantized zoo CNN, and single-operator models for the lookup-table activations run on
all 256 int8 values. (The integer LSTM and int16 sigmoid/tanh: test_int8_lstm.py.)
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from int8_models import INT8_MODELS, tflite_weight_bytes, tflm_reference
from support import require_module, require_program
from test_no_undefined_behaviour import require_sanitizers, sanitized_host_platform
from zoo import TfliteWriter, int8_tflite

import microexport
from microexport.compiler.integer import fixedpoint

MODELS = {model.name: model for model in INT8_MODELS}
BIT_EXACT = ["vww_mobilenet_int8", "dscnn_kws_int8", "residual_int8", "shape_ops_int8",
             "int16x8_model", "lstm_int8"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict]]:
    """`built(name)` → (integer model, sample inputs), each built once per module."""
    require_module("ai_edge_quantizer", "tflite")
    require_module("tflite_micro", "tflite")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            cache[name] = MODELS[name].build(tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", BIT_EXACT)
def test_real_int8_model_bit_exact_on_host(name: str, built: Callable) -> None:
    path, _ = built(name)
    report = microexport.test(str(path), board="host")
    assert report.reference == "tflite-micro"
    assert all(o.max_abs_error == 0 for o in report.outputs), report.summary()


def test_zoo_int8_cnn_bit_exact_on_host(tmp_path: Path) -> None:
    path, _ = int8_tflite(tmp_path)
    report = microexport.test(str(path), board="host")
    assert report.reference == "tflite-micro"
    assert all(o.max_abs_error == 0 for o in report.outputs), report.summary()
    # and its constants, as the real models' (test_memory_within_tflite_and_tflm)
    compiled = microexport.compile(str(path), output=tmp_path / "m.tar", name="m")
    constants = compiled.model.memory.constants_bytes
    data, parameters = tflite_weight_bytes(path)
    assert constants <= 1.05 * (data + parameters), (constants, data, parameters)


@pytest.mark.parametrize("board", ["mps2_an385", "mps2_an386", "mps2_an500", "mps3_an547"])
@pytest.mark.parametrize("name", BIT_EXACT)
def test_int8_model_bit_exact_in_qemu(name: str, board: str, built: Callable, tmp_path: Path
                                      ) -> None:
    """Cortex-M3 (no DSP, no FPU: plain C micro-kernels), Cortex-M4F, M7 and M55 (SMLAD), C
    built with -Werror: same bits as TFLM."""
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, inputs = built(name)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="kws").archive
    got = microexport.run(archive, inputs, board=board, build_dir=tmp_path / "build")
    want = tflm_reference(path, inputs)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype
        assert np.array_equal(got[name], expected), (board, name, got[name], expected)


def test_weights_and_activations_stay_integer(built: Callable, tmp_path: Path) -> None:
    """Weights are int8 constants, biases and requantization parameters int32, and the kernel
    library has no floating point at all."""
    path, _ = built("dscnn_kws_int8")
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="kws").archive
    with tarfile.open(archive) as tar:
        metadata = json.load(tar.extractfile("./metadata.json"))
        library = tar.extractfile("./codegen/host/src/tvmgen_kws_lib.c").read().decode()
    dtypes = {c["dtype"] for c in metadata["constants"]}
    assert dtypes <= {"int8", "int32"}, dtypes
    assert "float" not in library and "double" not in library


def _single_op_model(directory: Path, op: str, input_q: tuple[float, int],
                     output_q: tuple[float, int], options: Callable | None = None) -> Path:
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 256), "int8", None, [input_q[0]], [input_q[1]])
    y = writer.tensor("y", (1, 256), "int8", None, [output_q[0]], [output_q[1]])
    writer.operator(op, [x], [y], options(writer) if options else None)
    return writer.write(directory / f"{op.lower()}.tflite", [x], [y])


ACTIVATIONS = [
    ("LOGISTIC", lambda s, z: (1 / 256, -128), None),
    ("TANH", lambda s, z: (1 / 128, 0), None),
    ("HARD_SWISH", lambda s, z: (s * 0.8, -5), None),
    ("LEAKY_RELU", lambda s, z: (s * 0.9, 7), lambda w: w.options("LeakyReluOptions", alpha=0.2)),
    ("RELU", lambda s, z: (s * 0.7, -100), None),
    ("RELU6", lambda s, z: (s, z), None),
]


@pytest.mark.parametrize("op,output_q,options", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("input_q", [(0.1, 0), (0.05, -20), (0.3, 10), (0.0078, 3)])
def test_activation_tables_match_tflm_on_every_int8_value(
        op: str, output_q: Callable, options: Callable | None, input_q: tuple[float, int],
        tmp_path: Path) -> None:
    """The activation's table (computed at compile time with TFLite Micro's fixed-point
    arithmetic) equals TFLM's result for each of the 256 inputs, and so does the compiled C."""
    require_module("tflite_micro", "tflite")
    path = _single_op_model(tmp_path, op, input_q, output_q(*input_q), options)
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    want = tflm_reference(path, {"x": x})["y"]
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="act").archive
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got, want)


def test_fixed_point_helpers_against_known_values() -> None:
    """Spot checks of the Python fixed-point reference against TFLite's documented results."""
    assert fixedpoint.quantize_multiplier(0.5) == (1 << 30, 0)
    assert fixedpoint.quantize_multiplier(0.0) == (0, 0)
    assert fixedpoint.rounding_divide_by_pot(-5, 1) == -3  # half away from zero
    assert fixedpoint.rounding_divide_by_pot(5, 1) == 3
    assert fixedpoint.saturating_rounding_doubling_high_mul(-(1 << 31), -(1 << 31)) == (1 << 31) - 1
    assert fixedpoint.exp_on_negative_values(0, 5) == (1 << 31) - 1


@pytest.mark.parametrize("input_scale,beta", [(0.1, 1.0), (1 / 16, 1.0), (0.004, 1.0),
                                              (0.5, 0.7), (0.02, 2.5)])
def test_int8_softmax_matches_tflm_on_every_difference(input_scale: float, beta: float,
                                                       tmp_path: Path) -> None:
    """int8 SOFTMAX takes exp per element in the C library (gemmlowp's exp_on_negative_values,
    as TFLite Micro does) instead of a table in the constant pool. Row d holds the differences
    0, -d and -d/2 to its maximum (and -255), so every difference 0..-255 decides an output;
    scales from one where most differences fall below TFLite's cut-off to one where none do."""
    require_module("tflite_micro", "tflite")
    writer = TfliteWriter()
    x = writer.tensor("x", (256, 4), "int8", None, [input_scale], [3])
    y = writer.tensor("y", (256, 4), "int8", None, [1 / 256], [-128])
    writer.operator("SOFTMAX", [x], [y], writer.options("SoftmaxOptions", beta=beta))
    path = writer.write(tmp_path / "softmax8.tflite", [x], [y])
    d = np.arange(256)
    data = np.stack([np.full(256, 127), 127 - d, 127 - d // 2, np.full(256, -128)], axis=1)
    data = data.astype(np.int8)
    want = tflm_reference(path, {"x": data})["y"]
    compiled = microexport.compile(str(path), output=tmp_path / "m.tar", name="sm8")
    with tarfile.open(compiled.archive) as tar:
        library = tar.extractfile("./codegen/host/src/tvmgen_sm8_lib.c").read().decode()
    assert "me_softmax_exp_s8(" in library
    assert compiled.model.memory.constants_bytes == 0  # no exp table
    got = microexport.run(compiled.archive, {"x": data}, board="host",
                          build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
    # no undefined behaviour on the way (a left shift of a negative Newton-Raphson term was)
    require_sanitizers(tmp_path)
    run = sanitized_host_platform().execute_archive(compiled.archive, {"x": data},
                                                    tmp_path / "sanitized")
    assert np.array_equal(run.outputs["y"], want)


@pytest.mark.parametrize("name", BIT_EXACT)
def test_real_int8_model_bit_exact_under_sanitizers(name: str, built: Callable,
                                                     tmp_path: Path) -> None:
    """Built with AddressSanitizer and UndefinedBehaviorSanitizer (the first finding aborts):
    no undefined behaviour in the integer kernels, the micro-kernels or the C library, and the
    same bits as TFLM."""
    require_sanitizers(tmp_path)
    path, inputs = built(name)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="m").archive
    run = sanitized_host_platform().execute_archive(archive, inputs, tmp_path / "work")
    for output, expected in tflm_reference(path, inputs).items():
        assert np.array_equal(run.outputs[output], expected), output


@pytest.mark.parametrize("name", ["shape_ops_int8", "int16x8_model"])
def test_reference_tvm_agrees_with_the_c_library(name: str, built: Callable) -> None:
    """`--reference tvm` runs TVM's LLVM build of the same import without calls into our C
    library: int8 SOFTMAX reads its exponentials from a table built by fixedpoint.py, the
    int16 tables are constants. Our C, which computes the exponentials per element and reads
    the library's tables, gives the same bits."""
    require_program("gcc", "gcc")
    path, _ = built(name)
    report = microexport.test(str(path), reference="tvm")
    assert report.reference == "tvm"
    assert all(o.max_abs_error == 0 for o in report.outputs), report.summary()


@pytest.mark.parametrize("input_scale", [8 / 32768, 0.001, 0.0003])
def test_int16_softmax_matches_tflm(input_scale: float, tmp_path: Path) -> None:
    """16x8 SOFTMAX (exp and 1/(1 + x) tables interpolated, built at compile time in float32 as
    TFLite Micro builds them) on random rows over the whole int16 range, equal rows and rows
    with one large value."""
    require_module("tflite_micro", "tflite")
    writer = TfliteWriter()
    x = writer.tensor("x", (48, 40), "int16", None, [input_scale], [0])
    y = writer.tensor("y", (48, 40), "int16", None, [1 / 32768], [0])
    writer.operator("SOFTMAX", [x], [y], writer.options("SoftmaxOptions", beta=1.0))
    path = writer.write(tmp_path / "softmax16.tflite", [x], [y])
    rng = np.random.default_rng(16)
    rows = rng.integers(-32768, 32768, size=(48, 40))
    rows[:8] = rng.integers(-300, 300, size=(8, 40))
    rows[8:12] = rng.integers(-32768, 32768, size=(4, 1))
    rows[12:16, 3] = 32767
    data = rows.astype(np.int16)
    want = tflm_reference(path, {"x": data})["y"]
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="sm16").archive
    got = microexport.run(archive, {"x": data}, board="host", build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


@pytest.mark.parametrize("bias_dtype", ["int32", "int64", None])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int16_fully_connected_matches_tflm(bias_dtype: str | None, per_channel: bool,
                                            tmp_path: Path) -> None:
    """16x8 FULLY_CONNECTED: an int64 accumulator and TFLite's reduced-multiplier rescaling
    with an int64 bias (or none), an int32 accumulator with an int32 bias, per tensor and per
    channel."""
    require_module("tflite_micro", "tflite")
    rng = np.random.default_rng(8 + per_channel)
    units, depth = 12, 48
    weights = rng.integers(-127, 128, size=(units, depth)).astype(np.int8)
    w_scales = list(rng.uniform(0.002, 0.02, units)) if per_channel else [0.01]
    writer = TfliteWriter()
    x = writer.tensor("x", (4, depth), "int16", None, [0.0005], [0])
    w = writer.tensor("w", (units, depth), "int8", weights, w_scales, [0] * len(w_scales))
    inputs = [x, w]
    if bias_dtype is not None:
        bias = rng.integers(-20000, 20000, size=units).astype(bias_dtype)
        inputs.append(writer.tensor("b", (units,), bias_dtype, bias,
                                    [0.0005 * s for s in np.broadcast_to(w_scales, units)],
                                    [0] * units))
    y = writer.tensor("y", (4, units), "int16", None, [0.004], [0])
    writer.operator("FULLY_CONNECTED", inputs, [y], writer.options("FullyConnectedOptions"))
    path = writer.write(tmp_path / "fc16.tflite", [x], [y])
    data = rng.integers(-32768, 32768, size=(4, depth)).astype(np.int16)
    want = tflm_reference(path, {"x": data})["y"]
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="fc16").archive
    got = microexport.run(archive, {"x": data}, board="host", build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


@pytest.mark.parametrize("name", BIT_EXACT)
def test_memory_within_tflite_and_tflm(name: str, built: Callable, tmp_path: Path) -> None:
    """Constants at most 1.05x what the .tflite spends on the same constants (their buffers
    and quantization parameters: TFLite Micro derives its per-channel multipliers and shifts
    from the latter; we store them as int32 arrays). Fixed tables live in the C library and
    int8 SOFTMAX's exponentials are computed, so no table is counted per model.

    Workspace + inputs + outputs (caller-owned I/O, the default) at most TFLite Micro's
    arena for the same model (its host figure; bench/tflm_cortexm.py measures the Cortex-M4F
    one, which RESULTS.md compares too). A PAD before a conv is read through the conv's own
    padding, so no padded copy of the activation is planned."""
    from microexport.deploy.reference import tflm_arena_bytes

    path, _ = built(name)
    compiled = microexport.compile(str(path), output=tmp_path / "m.tar", name="m")
    with tarfile.open(compiled.archive) as tar:
        metadata = json.load(tar.extractfile("./metadata.json"))
    memory = metadata["memory"]
    data, parameters = tflite_weight_bytes(path)
    assert memory["constants_bytes"] <= 1.05 * (data + parameters), (
        memory["constants_bytes"], data, parameters)
    ours = memory["workspace_bytes"] + memory["io_bytes"]
    arena = tflm_arena_bytes(path)
    assert arena is not None and ours <= arena, (ours, arena)
    if name == "vww_mobilenet_int8":  # its PADs feed stride-2 depthwise convs
        kernels = [k["symbol"] for k in metadata["functions"]["kernels"]]
        assert not [k for k in kernels if "pad" in k], kernels
