"""The real int8 / int16x8 TFLite test models of `int8_models.py` (float models quantized by
ai-edge-quantizer): integer all the way, runnable by TFLite Micro, faithful to their float
model, not degenerate, and byte-identical when built twice. Fast: every model is small."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from int8_models import (
    AEQ_VERSION,
    INT8_MODELS,
    SIGNATURE_KEY,
    Int8Model,
    aeq_quantize,
    operators,
    read_model,
    tflm_reference,
)
from support import require_module
from zoo import Inputs

MODELS = {model.name: model for model in INT8_MODELS}
WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Inputs]]:
    """`built(name)` → (integer model, sample inputs), each built once per module."""
    require_module("ai_edge_quantizer", "tflite")
    require_module("tflite_micro", "tflite")
    cache: dict[str, tuple[Path, Inputs]] = {}

    def get(name: str) -> tuple[Path, Inputs]:
        if name not in cache:
            cache[name] = MODELS[name].build(tmp_path_factory.mktemp(name))
        path, inputs = cache[name]
        return path, {k: v.copy() for k, v in inputs.items()}

    return get


def _quant(tensor: object) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(tensor.quantization.scale), np.asarray(tensor.quantization.zeroPoint)


def test_pinned_quantizer_version() -> None:
    """The models are made by the ai-edge-quantizer version pyproject.toml pins."""
    require_module("ai_edge_quantizer", "tflite")
    from importlib.metadata import version

    assert version("ai-edge-quantizer") == AEQ_VERSION


@pytest.mark.parametrize("name", MODELS)
def test_activations_are_integers(name: str, built: Callable) -> None:
    """Every operator reads and writes int8 (int16 for 16x8) activations; no float tensor, no
    DEQUANTIZE, and a QUANTIZE only as an integer requantization; the model's I/O is integer;
    the operators the model is meant to cover are all there."""
    model: Int8Model = MODELS[name]
    path, inputs = built(name)
    act = "int16" if model.activation_bits == 16 else "int8"
    ops = operators(path)
    assert {op for op, _, _ in ops} >= model.operators
    for op, ins, outs in ops:
        assert op != "DEQUANTIZE", f"{name}: a DEQUANTIZE is left"
        dtypes = {d for d in ins + outs if d}
        if op == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            assert dtypes == {act, "int16"}, f"{name}: {op} {ins} -> {outs}"  # int16 cell state
        else:
            assert dtypes == {act}, f"{name}: {op} {ins} -> {outs}"
    for array in inputs.values():
        assert array.dtype == np.dtype(act)
    subgraph = read_model(path).subgraphs[0]
    assert not any(t.type == 0 and list(t.shape) != [0] for t in subgraph.tensors), "float tensor"


@pytest.mark.parametrize("name", MODELS)
def test_weights_int8_biases_int32_or_int64(name: str, built: Callable) -> None:
    """CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: symmetric int8 weights (per-channel on the
    output axis for convolutions: axis 0 for CONV_2D, 3 for DEPTHWISE_CONV_2D), int32 biases
    (int64 in 16x8) whose scale is input scale × weight scale."""
    from zoo import _schema

    model = read_model(built(name)[0])
    schema = _schema()
    subgraph = model.subgraphs[0]
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    bias_type = schema.TensorType.INT64 if MODELS[name].activation_bits == 16 else 2
    seen = 0
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = codes[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if kind not in WEIGHTED:
            continue
        seen += 1
        x, w, b = (subgraph.tensors[i] for i in op.inputs[:3])
        assert w.type == schema.TensorType.INT8 and b.type == bias_type
        w_scale, w_zp = _quant(w)
        assert not w_zp.any()
        if kind != "FULLY_CONNECTED":
            axis = 3 if kind == "DEPTHWISE_CONV_2D" else 0
            assert w.quantization.quantizedDimension == axis
            assert len(w_scale) == w.shape[axis] > 1
        b_scale, _ = _quant(b)
        np.testing.assert_allclose(b_scale, _quant(x)[0][0] * w_scale, rtol=1e-5)
    assert seen


@pytest.mark.parametrize("name", MODELS)
def test_tflm_runs_it_and_outputs_are_not_degenerate(name: str, built: Callable) -> None:
    """TFLite Micro runs the model; each output has more than one distinct value, and another
    input gives another output."""
    path, inputs = built(name)
    first = tflm_reference(path, inputs)
    assert first
    for out_name, value in first.items():
        assert len(np.unique(value)) > 1, f"{name}/{out_name}: all equal {value}"
    rng = np.random.default_rng(7)
    other = {
        k: rng.integers(np.iinfo(v.dtype).min, np.iinfo(v.dtype).max, v.shape, v.dtype)
        for k, v in inputs.items()
    }
    second = tflm_reference(path, other)
    assert any(not np.array_equal(first[k], second[k]) for k in first), f"{name}: constant"
    assert all(np.array_equal(first[k], v) for k, v in tflm_reference(path, inputs).items())


@pytest.mark.parametrize("name", MODELS)
def test_integer_model_follows_its_float_model(name: str, built: Callable) -> None:
    """TFLM's integer output, dequantized, is within 10 % of the float output's magnitude of
    what LiteRT computes with the float model on the same (dequantized) input: the quantized
    parameters are right, not merely runnable."""
    require_module("ai_edge_litert", "tflite")
    from ai_edge_litert import interpreter as litert

    path, inputs = built(name)
    subgraph = read_model(path).subgraphs[0]
    by_name = {t.name.decode(): t for t in subgraph.tensors}
    float_inputs = {}
    for key, value in inputs.items():
        scale, zp = _quant(by_name[key])
        float_inputs[key] = ((value.astype(np.float32) - zp[0]) * scale[0]).astype(np.float32)
    interpreter = litert.Interpreter(
        model_path=str(path.with_name(path.stem + "_float.tflite")),
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
    )
    expected = interpreter.get_signature_runner(SIGNATURE_KEY)(**float_inputs)
    for key, value in tflm_reference(path, inputs).items():
        scale, zp = _quant(by_name[key])
        got = (value.astype(np.float64) - zp[0]) * scale[0]
        error = float(np.abs(got - expected[key]).max())
        assert error <= 0.1 * float(np.abs(expected[key]).max()), f"{name}/{key}: {error}"


@pytest.mark.parametrize("name", ["shape_ops_int8", "dscnn_kws_int8"])
def test_float_source_model_compiles_and_matches(name: str, built: Callable) -> None:
    """The float model a quantized one is made from compiles and matches TFLM on the host
    (shape_ops' float EXPAND_DIMS failed in TVM's converter, which passes expand_dims an
    argument too many)."""
    import microexport

    path, _ = built(name)
    report = microexport.test(str(path.with_name(path.stem + "_float.tflite")), board="host")
    assert report.passed, report.summary()


@pytest.mark.parametrize("name", MODELS)
def test_byte_deterministic(name: str, built: Callable, tmp_path: Path) -> None:
    """Built again, the model file and the sample inputs are byte-identical."""
    path, inputs = built(name)
    again, again_inputs = MODELS[name].build(tmp_path)
    assert again.read_bytes() == path.read_bytes()
    assert all(np.array_equal(again_inputs[k], v) for k, v in inputs.items())


def test_lstm_is_laid_out_as_the_tflite_converter_does(built: Callable) -> None:
    """The int8 LSTM as TFLite's converter writes it (and TFLM requires): 24 inputs with no
    peephole/projection/layer norm, int8 per-tensor weights, int32 biases at input × weight
    scale, an int8 hidden-state variable with the output's parameters, an int16 cell-state
    variable with a power-of-two scale, five intermediates."""
    model = read_model(built("lstm_int8")[0])
    subgraph = model.subgraphs[0]
    op = next(o for o in subgraph.operators if len(o.inputs) == 24)
    tensors = [subgraph.tensors[i] if i >= 0 else None for i in op.inputs]
    assert all(tensors[i] is None for i in (9, 10, 11, 16, 17, 20, 21, 22, 23))
    x, out = tensors[0], subgraph.tensors[op.outputs[0]]
    for gate in range(4):
        w_scale = _quant(tensors[1 + gate])[0]
        assert len(w_scale) == 1 and len(_quant(tensors[5 + gate])[0]) == 1
        bias = tensors[12 + gate]
        assert bias.type == 2
        np.testing.assert_allclose(_quant(bias)[0], _quant(x)[0] * w_scale, rtol=1e-6)
    hidden, cell = tensors[18], tensors[19]
    assert hidden.isVariable and cell.isVariable and hidden.type == 9 and cell.type == 7
    assert np.array_equal(_quant(hidden)[0], _quant(out)[0])
    assert np.array_equal(_quant(hidden)[1], _quant(out)[1])
    power = np.log2(_quant(cell)[0][0])
    assert power == int(power) and not _quant(cell)[1].any()
    assert len(op.intermediates) == 5


def test_lstm_litert_agrees_with_tflm(built: Callable) -> None:
    """LiteRT's integer LSTM kernel (a different implementation, which reads the converter's
    intermediates) computes what TFLM computes from the hand-laid-out LSTM (off by at most 1)."""
    require_module("ai_edge_litert", "tflite")
    from ai_edge_litert import interpreter as litert

    path, inputs = built("lstm_int8")
    interpreter = litert.Interpreter(
        model_path=str(path), experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF
    )
    got = interpreter.get_signature_runner(SIGNATURE_KEY)(**inputs)
    for key, value in tflm_reference(path, inputs).items():
        assert np.abs(got[key].astype(np.int32) - value.astype(np.int32)).max() <= 1


def test_quantizer_leaves_lstm_float(built: Callable) -> None:
    """Why `lstm_int8` quantizes its LSTM itself: ai-edge-quantizer (the pinned version) keeps
    UNIDIRECTIONAL_SEQUENCE_LSTM float between a DEQUANTIZE and a QUANTIZE: the operator is
    not among its operation names, and asking for it explicitly is refused."""
    from ai_edge_quantizer import qtyping, quantizer
    from int8_models import _features

    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in qtyping.TFLOperationName.__members__
    path, _ = built("lstm_int8")
    float_path = path.with_name("lstm_int8_float.tflite")
    asked = quantizer.Quantizer(str(float_path))
    with pytest.raises(ValueError, match="Unsupported operation UNIDIRECTIONAL_SEQUENCE_LSTM"):
        asked.add_static_config(".*", "UNIDIRECTIONAL_SEQUENCE_LSTM", 8, 8)
    calibration = [{"frames": v} for v in _features(1000, (1, 49, 10), 2)]
    raw = float_path.with_name("lstm_aeq_raw.tflite")
    raw.write_bytes(aeq_quantize(float_path, calibration))
    ops = operators(raw)
    lstm = next(o for o in ops if o[0] == "UNIDIRECTIONAL_SEQUENCE_LSTM")
    assert set(lstm[1]) - {""} == {"float32"} and lstm[2] == ["float32"]
    assert [o[0] for o in ops][:3] == ["DEQUANTIZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "QUANTIZE"]
