"""Frontends: every zoo model imports with the right I/O specs and the Relax import computes
what the reference runtime computes (built for llvm with TVM's default Relax pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
import zoo
from tvm import relax

from microexport import errors
from microexport.compiler.frontend import ImportedModel, from_relax, load_model, require
from microexport.compiler.frontend.tflite_integer import te_kernels_only
from microexport.deploy.reference import run_reference
from microexport.model import TensorSpec

FLOAT_RTOL, FLOAT_ATOL, QUANTIZED_MAX_DIFF = 1e-4, 1e-5, 1

T = TensorSpec
EXPECTED_IO = {
    "mlp_onnx": ((T("x", (1, 16), "float32"),), (T("y", (1, 4), "float32"),)),
    "cnn_onnx": (
        (T("image", (1, 3, 16, 16), "float32"),),
        (T("probs", (1, 5), "float32"), T("pooled", (1, 8, 8, 8), "float32")),
    ),
    "exported_onnx_cnn": (
        (T("input", (1, 3, 16, 16), "float32"),),
        (T("logits", (1, 4), "float32"),),
    ),
    "int8_tflite": ((T("input", (1, 8, 8, 3), "int8"),), (T("output", (1, 5), "int8"),)),
    "float16_tflite": ((T("x", (1, 8), "float32"),), (T("y", (1, 3), "float32"),)),
    "sine_float": (
        (T("serving_default_dense_input:0", (1, 1), "float32"),),
        (T("StatefulPartitionedCall:0", (1, 1), "float32"),),
    ),
    "torch_cnn_pt2": (
        (T("image", (1, 1, 16, 16), "float32"),),
        (T("output_0", (1, 3), "float32"),),
    ),
    "dynamic_torch_pt2": (
        (T("image", (1, 1, 16, 16), "float32"),),
        (T("output_0", (1, 3), "float32"),),
    ),
}
FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".pt2": "torch"}


def run_relax(imported: ImportedModel, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Build the imported module for llvm and run it in the Relax VM."""
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target="llvm"), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(inputs[spec.name]) for spec in imported.inputs])
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    return [item.numpy() for item in result]


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if np.issubdtype(expected.dtype, np.integer):
        diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
        assert diff.max(initial=0) <= QUANTIZED_MAX_DIFF
    else:
        np.testing.assert_allclose(actual, expected, rtol=FLOAT_RTOL, atol=FLOAT_ATOL)


def assert_static_main(imported: ImportedModel) -> None:
    main = imported.mod["main"]
    assert len(main.params) == len(imported.inputs)
    assert len(relax.analysis.defined_symbolic_vars(main)) == 0
    assert "params" not in (main.attrs or {})


@pytest.mark.parametrize(("name", "builder", "shapes"), zoo.ZOO, ids=[z[0] for z in zoo.ZOO])
def test_zoo_model_imports_with_its_io(name, builder, shapes, build_model) -> None:
    path, _ = build_model(builder)
    imported = load_model(path, shapes)
    assert (imported.inputs, imported.outputs) == EXPECTED_IO[name]
    assert imported.format == FORMATS[path.suffix]
    assert imported.source == path
    assert_static_main(imported)


@pytest.mark.parametrize(("name", "builder", "shapes"), zoo.ZOO, ids=[z[0] for z in zoo.ZOO])
def test_relax_import_matches_reference(name, builder, shapes, build_model) -> None:
    path, inputs = build_model(builder)
    _, expected = run_reference(path, inputs)
    with te_kernels_only():  # TVM's LLVM build cannot call our C micro-kernels
        imported = load_model(path, shapes)
    actual = run_relax(imported, inputs)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert_close(got, want)


def test_initializers_listed_as_inputs_are_weights(build_model) -> None:
    import onnx

    path, _ = build_model(zoo.exported_onnx_cnn)
    graph = onnx.load(str(path)).graph
    assert len(graph.input) > 1 and {i.name for i in graph.input} > {"input"}
    imported = load_model(path, zoo.EXPORTED_ONNX_SHAPES)
    assert [spec.name for spec in imported.inputs] == ["input"]
    ops = [node.op_type for node in graph.node]
    assert {"Shape", "Gather", "Concat", "Reshape", "BatchNormalization"} <= set(ops)


def test_shape_arithmetic_is_folded(build_model) -> None:
    """TVM's frontend alone fails on the float scale factor computed from x.shape."""
    path, inputs = build_model(zoo.exported_onnx_shape_math)
    imported = load_model(path, {"x": (1, 4, 8, 8)})
    assert imported.outputs == (T("y", (1, 256), "float32"),)
    _, (expected,) = run_reference(path, inputs)
    (actual,) = run_relax(imported, inputs)
    assert_close(actual, expected)


def test_quantized_average_pool_rounds_like_tflite(build_model) -> None:
    """TVM's stock converter truncates the int32 average; the model's output would be off by 3."""
    path, _ = build_model(zoo.int8_tflite)
    for seed in range(300, 305):
        inputs = {"input": np.random.default_rng(seed).integers(-128, 128, (1, 8, 8, 3), np.int8)}
        _, (expected,) = run_reference(path, inputs, runtime="tflite-micro")
        with te_kernels_only():
            imported = load_model(path)
        (actual,) = run_relax(imported, inputs)
        assert_close(actual, expected)


def test_fully_connected_flattens_rank4_input(build_model) -> None:
    """TFLite Micro flattens a rank-4 FULLY_CONNECTED input; the stock converter does not."""
    path, inputs = build_model(zoo.int8_fc_rank4_tflite)
    with te_kernels_only():  # run in TVM's LLVM build below, which cannot call micro-kernels
        imported = load_model(path)
    assert imported.outputs == (T("output", (1, 5), "int8"),)
    runtime, (expected,) = run_reference(path, inputs)
    assert runtime == "tflite-micro"
    (actual,) = run_relax(imported, inputs)
    assert_close(actual, expected)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip()
    return message


@pytest.mark.parametrize(
    ("name", "builder", "shapes", "error", "part"), zoo.BROKEN, ids=[b[0] for b in zoo.BROKEN]
)
def test_broken_models_are_refused(name, builder, shapes, error, part, build_model) -> None:
    path, _ = build_model(builder)
    with pytest.raises(errors.Error) as err:
        load_model(path, shapes)
    assert type(err.value).__name__ == error
    assert part in assert_one_line(err)


def test_unsupported_operator_names_it(build_model) -> None:
    path, _ = build_model(zoo.unsupported_onnx)
    with pytest.raises(errors.UnsupportedOperator) as err:
        load_model(path)
    assert err.value.op == "LpNormalization"


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".pt2"])
def test_missing_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(errors.ModelError) as err:
        load_model(path)
    assert "not found" in assert_one_line(err) and str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".pt2"])
@pytest.mark.parametrize("content", [b"", b"this is not a model\x00\xff" * 20])
def test_corrupt_file(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(content)
    with pytest.raises(errors.ModelError) as err:
        load_model(path)
    message = assert_one_line(err)
    assert "cannot parse" in message and str(path) in message


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(errors.ModelError) as err:
        load_model(path)
    message = assert_one_line(err)
    assert ".h5" in message and all(ext in message for ext in (".onnx", ".tflite", ".pt2"))


def test_input_shape_for_unknown_input(build_model) -> None:
    path, _ = build_model(zoo.exported_onnx_cnn)
    with pytest.raises(errors.InputError) as err:
        load_model(path, {"image": (1, 3, 16, 16)})
    assert "'image'" in assert_one_line(err) and "input" in str(err.value)


def test_input_shape_with_wrong_rank(build_model) -> None:
    path, _ = build_model(zoo.exported_onnx_cnn)
    with pytest.raises(errors.InputError):
        load_model(path, {"input": (1, 3, 16)})


def test_dynamic_batch_fixed_to_two(build_model) -> None:
    path, _ = build_model(zoo.dynamic_onnx)
    imported = load_model(path, {"x": (2, 8)})
    assert imported.inputs == (T("x", (2, 8), "float32"),)
    assert imported.outputs == (T("y", (2, 2), "float32"),)


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(errors.Error, match=r"pip install microexport\[onnx\]"):
        require("microexport_no_such_module", "onnx")


# --------------------------------------------------------------------------------------------
# from_relax
# --------------------------------------------------------------------------------------------


def relax_add_relu(shape: tuple[object, ...] = (1, 4)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    y = relax.Var("y", relax.TensorType(shape, "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            total = bb.emit(relax.op.add(x, y))
            out = bb.emit_output(relax.Tuple([relax.op.nn.relu(total), total]))
        bb.emit_func_output(out)
    return bb.get()


def test_from_relax_names() -> None:
    imported = from_relax(relax_add_relu())
    assert [s.name for s in imported.inputs] == ["x", "y"]
    assert imported.outputs == (T("output_0", (1, 4), "float32"), T("output_1", (1, 4), "float32"))
    assert imported.format == "relax" and imported.source is None
    named = from_relax(relax_add_relu(), ["a", "b"], ["relu", "sum"])
    assert [s.name for s in named.inputs + named.outputs] == ["a", "b", "relu", "sum"]


def test_from_relax_checks() -> None:
    with pytest.raises(errors.DynamicShape):
        from_relax(relax_add_relu((tvm.tirx.Var("n", "int64"), 4)))
    with pytest.raises(errors.ModelError):
        from_relax(relax_add_relu(), input_names=["only_one"])
    with pytest.raises(errors.ModelError):
        from_relax("not a module")  # type: ignore[arg-type]
