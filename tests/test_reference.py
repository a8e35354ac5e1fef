"""Reference runtimes: every zoo model runs in its reference runtime, TFLite falls back to
LiteRT explicitly, and bad inputs are refused with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zoo

from microexport import errors
from microexport.compiler.frontend import load_model
from microexport.deploy.reference import run_reference, tflm_arena_bytes

RUNTIME = {".onnx": "onnxruntime", ".tflite": "tflite-micro", ".pt2": "torch"}


@pytest.mark.parametrize(("name", "builder", "shapes"), zoo.ZOO, ids=[z[0] for z in zoo.ZOO])
def test_zoo_model_runs_in_reference(name, builder, shapes, build_model) -> None:
    path, inputs = build_model(builder)
    runtime, outputs = run_reference(path, inputs)
    imported = load_model(path, shapes)
    if name == "float16_tflite":
        assert runtime.startswith("litert (fallback: tflite-micro: ")
        assert "DEQUANTIZE" in runtime
    else:
        assert runtime == RUNTIME[path.suffix]
    assert [(o.shape, str(o.dtype)) for o in outputs] == [
        (spec.shape, spec.dtype) for spec in imported.outputs
    ]
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")


def test_reference_is_deterministic(build_model) -> None:
    path, inputs = build_model(zoo.cnn_onnx)
    first = run_reference(path, inputs)[1]
    second = run_reference(path, inputs)[1]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_litert_agrees_with_tflite_micro(build_model) -> None:
    path, inputs = build_model(zoo.int8_tflite)
    _, (micro,) = run_reference(path, inputs, runtime="tflite-micro")
    runtime, (litert,) = run_reference(path, inputs, runtime="litert")
    assert runtime == "litert"
    assert np.abs(micro.astype(int) - litert.astype(int)).max() <= 1


def test_tflite_micro_only_does_not_fall_back(build_model) -> None:
    path, inputs = build_model(zoo.float16_tflite)
    with pytest.raises(errors.ModelError, match="tflite-micro cannot run"):
        run_reference(path, inputs, runtime="tflite-micro")


def test_torch_reference_is_the_module(build_model) -> None:
    import torch

    path, inputs = build_model(zoo.torch_cnn_pt2)
    _, (output,) = run_reference(path, inputs)
    with torch.no_grad():
        expected = zoo._torch_cnn()(torch.from_numpy(inputs["image"])).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)


def test_sine_reference() -> None:
    path, inputs = zoo.sine_float()
    _, (output,) = run_reference(path, inputs)
    assert abs(float(output.ravel()[0]) - np.sin(0.5)) < 0.05


def test_tflm_arena_bytes(build_model) -> None:
    path, _ = build_model(zoo.int8_tflite)
    arena = tflm_arena_bytes(path)
    assert arena is not None and 8 * 8 * 4 < arena < 1 << 20
    float16, _ = build_model(zoo.float16_tflite)
    assert tflm_arena_bytes(float16) is None


def test_missing_input(build_model) -> None:
    path, _ = build_model(zoo.mlp_onnx)
    with pytest.raises(errors.InputError, match="missing"):
        run_reference(path, {})


@pytest.mark.parametrize("builder", [zoo.mlp_onnx, zoo.int8_tflite, zoo.torch_cnn_pt2])
def test_wrong_dtype_and_shape(builder, build_model) -> None:
    path, inputs = build_model(builder)
    ((name, array),) = inputs.items()
    with pytest.raises(errors.InputError, match="expects"):
        run_reference(path, {name: array.astype(np.float64)})
    with pytest.raises(errors.InputError, match="shape"):
        run_reference(path, {name: array[..., :1]})


def test_unknown_runtime(build_model) -> None:
    path, inputs = build_model(zoo.mlp_onnx)
    with pytest.raises(errors.Error, match="onnxruntime"):
        run_reference(path, inputs, runtime="torch")


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelError, match="not found"):
        run_reference(tmp_path / "absent.onnx", {})
