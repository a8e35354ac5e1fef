"""ONNX Reduce* whose axes are a run-time input (the model's shapes static) and ReduceMax/Min
of bool, against onnx's reference evaluator: the same compiled model run with every axes value
its declared shapes admit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import require_module

import microexport


def _model(path: Path, op: str, in_shape: list[int], out_shape: list[int], count: int,
           keepdims: int, elem: int | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if elem is None else elem
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], "reduce",
        [helper.make_tensor_value_info("x", elem, in_shape),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [count])],
        [helper.make_tensor_value_info("y", elem, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path)).run(None, feeds)[0]


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceL1", "ReduceMax", "ReduceLogSumExp"])
def test_runtime_axes_without_keepdims_follow_the_run_time_value(op: str, tmp_path: Path
                                                                  ) -> None:
    """(3, 2, 2) -> (3, 2) drops axis 1 or axis 2 (or -1): the shapes do not tell which, so
    the run-time value decides, as in the model."""
    require_module("onnx", "onnx")
    path = _model(tmp_path / "m.onnx", op, [3, 2, 2], [3, 2], 1, keepdims=0)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="r").archive
    x = np.random.default_rng(3).normal(size=(3, 2, 2)).astype(np.float32)
    for axes in ([1], [2], [-1], [-2]):
        feeds = {"x": x, "axes": np.array(axes, np.int64)}
        got = microexport.run(archive, feeds, board="host", build_dir=tmp_path / "b")["y"]
        np.testing.assert_allclose(got, _reference(path, feeds), rtol=1e-5, atol=1e-6,
                                   err_msg=f"axes {axes}")


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceL2", "ReduceProd", "ReduceSumSquare"])
def test_runtime_axes_with_keepdims_follow_the_shapes(op: str, tmp_path: Path) -> None:
    """keepdims=1: (2, 3, 1, 4) -> (2, 1, 1, 4) reduces axis 1, and axis 2 (size 1) or not:
    the same values for every axes value the shapes admit."""
    require_module("onnx", "onnx")
    path = _model(tmp_path / "m.onnx", op, [2, 3, 1, 4], [2, 1, 1, 4], 2, keepdims=1)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="r").archive
    x = np.random.default_rng(4).uniform(0.5, 1.5, size=(2, 3, 1, 4)).astype(np.float32)
    for axes in ([1, 2], [-3, 2], [2, 1], [1, -2]):
        feeds = {"x": x, "axes": np.array(axes, np.int64)}
        got = microexport.run(archive, feeds, board="host", build_dir=tmp_path / "b")["y"]
        np.testing.assert_allclose(got, _reference(path, feeds), rtol=1e-5, atol=1e-6,
                                   err_msg=f"axes {axes}")


def test_empty_runtime_axes_reduce_everything(tmp_path: Path) -> None:
    require_module("onnx", "onnx")
    path = _model(tmp_path / "m.onnx", "ReduceL1", [2, 3], [1, 1], 0, keepdims=1)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="r").archive
    x = np.random.default_rng(5).normal(size=(2, 3)).astype(np.float32)
    want = _reference(path, {"x": x, "axes": np.zeros((0,), np.int64)})
    # a zero-size input is static: it is not an input of the compiled model
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "b")["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_bool_max_and_min(op: str, tmp_path: Path) -> None:
    """TVM's max/min have no identity for bool: computed on uint8 (any / all)."""
    require_module("onnx", "onnx")
    from onnx import TensorProto

    path = _model(tmp_path / "m.onnx", op, [4, 3], [4, 1], 1, keepdims=1,
                  elem=TensorProto.BOOL)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="r").archive
    x = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 1], [1, 0, 1]], bool)
    feeds = {"x": x, "axes": np.array([1], np.int64)}
    got = microexport.run(archive, feeds, board="host", build_dir=tmp_path / "b")["y"]
    assert got.dtype == np.bool_
    assert np.array_equal(got, _reference(path, feeds))


def test_ambiguous_shapes_with_an_unknown_output_shape_stay_one_line(tmp_path: Path) -> None:
    """No declared output shape: the Reduce is left to TVM's frontend, which refuses it in one
    line naming the operator."""
    require_module("onnx", "onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
         helper.make_node("Unsqueeze", ["s", "axes"], ["y"])], "reduce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 2]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(microexport.errors.Error) as err:
        microexport.compile(str(tmp_path / "m.onnx"), output=tmp_path / "m.tar", name="r")
    assert "\n" not in str(err.value)


def test_runtime_reshape_target_and_resize_sizes_follow_declared_shapes(
        tmp_path: Path) -> None:
    """Reshape whose shape is a run-time input (spelled with -1 in different places) and
    Resize whose sizes (for two axes) are one: the declared output shapes fix both, the
    run-time values agree."""
    require_module("onnx", "onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Resize", ["x", "", "", "sizes"], ["s"], mode="nearest",
                          axes=[3, 2])],
        "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [3]),
         helper.make_tensor_value_info("sizes", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 6, 2]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2, 7, 9])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="s").archive
    x = np.random.default_rng(6).normal(size=(1, 2, 3, 4)).astype(np.float32)
    for shape in ([2, -1, 2], [-1, 6, 2]):
        feeds = {"x": x, "shape": np.array(shape, np.int64), "sizes": np.array([9, 7])}
        got = microexport.run(archive, feeds, board="host", build_dir=tmp_path / "b")
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(str(path)).run(None, feeds)
        np.testing.assert_array_equal(got["r"], want[0])
        np.testing.assert_array_equal(got["s"], want[1])
