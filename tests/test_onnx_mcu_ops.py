"""ONNX operators of the documented MCU operator set that TVM 0.27 does not lower for C on its
own: CumSum (our running-sum kernel, `compiler/frontend/cumsum.py`), ... Compiled and run on the
host, compared with onnxruntime or the ONNX reference evaluator (or numpy for a Relax module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import require_module

import microexport
from microexport.errors import ModelError


def _save(graph: object, path: Path, opset: int = 18) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, feeds: dict[str, np.ndarray], tmp_path: Path,
         constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="ops",
                                  constants=constants).archive
    return microexport.run(archive, feeds, board="host", build_dir=tmp_path / "build")


# (axis, exclusive, reverse) of the CumSum nodes of one model, every combination on a 3-D input.
CUMSUM_CASES = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (-1, 1, 0), (1, 0, 1), (1, 1, 1), (0, 1, 1)]


def test_cumsum_every_axis_exclusive_reverse(tmp_path: Path) -> None:
    """One model with a CumSum per (axis, exclusive, reverse), float32 and int32: against
    onnxruntime."""
    require_module("onnx", "onnx")
    ort = require_module("onnxruntime", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, outputs, inits = [], [], []
    for index, (axis, exclusive, reverse) in enumerate(CUMSUM_CASES):
        inits.append(numpy_helper.from_array(np.array(axis, np.int64), f"axis_{index}"))
        for source, elem in (("x", TensorProto.FLOAT), ("n", TensorProto.INT32)):
            out = f"{source}_sum_{index}"
            nodes.append(helper.make_node("CumSum", [source, f"axis_{index}"], [out],
                                          exclusive=exclusive, reverse=reverse))
            outputs.append(helper.make_tensor_value_info(out, elem, [2, 3, 4]))
    graph = helper.make_graph(
        nodes, "cumsums",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("n", TensorProto.INT32, [2, 3, 4])],
        outputs, inits)
    path = _save(graph, tmp_path / "cumsum.onnx")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32),
             "n": rng.integers(-50, 50, (2, 3, 4)).astype(np.int32)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                    strict=True))
    got = _run(path, feeds, tmp_path)
    for name, value in want.items():
        if value.dtype == np.int32:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_cumsum_axis_from_an_input(tmp_path: Path) -> None:
    """An axis given as a model input is a one-line error naming it; frozen with `constants=`
    it compiles and matches the ONNX reference evaluator."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"], reverse=1)], "cumsum_axis",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5]),
         helper.make_tensor_value_info("axis", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])])
    path = _save(graph, tmp_path / "cumsum_axis.onnx")
    with pytest.raises(ModelError, match=r"--constant axis=") as err:
        microexport.compile(str(path), output=tmp_path / "e.tar")
    assert "\n" not in str(err.value)
    x = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    axis = np.array(1, np.int32)
    want = ReferenceEvaluator(str(path)).run(None, {"x": x, "axis": axis})[0]
    got = _run(path, {"x": x}, tmp_path, constants={"axis": axis})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(("shape", "axis"), [((2, 3), 1), ((2, 3), None), ((2, 1), 1)])
def test_relax_cumsum_is_legalized(shape: tuple[int, ...], axis: int | None,
                                   tmp_path: Path) -> None:
    """`relax.cumsum` (what the torch frontend emits; TVM 0.27 has no legalization for it) in a
    Relax module, along an axis, flattened and along an axis of length 1, with an int32 result:
    against numpy."""
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with builder.function("main", [x]):
        result = builder.emit(relax.op.cumsum(x, axis, dtype="int32"))
        builder.emit_func_output(result)
    values = np.array([100, 100, -7, 3, 120, 5], np.int8)[:np.prod(shape)].reshape(shape)
    archive = microexport.compile(builder.get(), output=tmp_path / "m.tar", name="r").archive
    got = microexport.run(archive, {"x": values}, board="host", build_dir=tmp_path / "b")
    np.testing.assert_array_equal(got["output_0"], np.cumsum(values, axis, dtype=np.int32))


LAYOUTS = [{}, {"io_in_workspace": True}, {"workspace": "external"},
           {"io_in_workspace": True, "workspace": "external"}]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_outputs_and_an_empty_operand(layout: dict[str, object], tmp_path: Path) -> None:
    """Outputs with a zero-size dimension (a Split part of size 0, a Slice starting past the
    end, a Concat output's empty sibling) next to ordinary ones, and a Concat with an empty
    constant operand: the empty outputs are empty arrays of their shape, nothing is computed for
    them, and the run wrapper accepts NULL for them; against onnxruntime, under every memory
    layout."""
    require_module("onnx", "onnx")
    ort = require_module("onnxruntime", "onnx")
    import tarfile

    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([3, 0], np.int64), "split"),
             numpy_helper.from_array(np.zeros((2, 0), np.float32), "nothing"),
             numpy_helper.from_array(np.array([5], np.int64), "start"),
             numpy_helper.from_array(np.array([9], np.int64), "end"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("Split", ["x", "split"], ["part", "none"], axis=1),
             helper.make_node("Concat", ["nothing", "part"], ["joined"], axis=1),
             helper.make_node("Relu", ["joined"], ["y"]),
             helper.make_node("Slice", ["x", "start", "end", "axis"], ["past"]),
             helper.make_node("Neg", ["past"], ["negated"])]
    graph = helper.make_graph(
        nodes, "empties", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("none", TensorProto.FLOAT, [2, 0]),
         helper.make_tensor_value_info("negated", TensorProto.FLOAT, [2, 0])], inits)
    path = _save(graph, tmp_path / "empties.onnx")
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}),
                    strict=True))
    result = microexport.compile(str(path), output=tmp_path / "m.tar", name="empties",
                                 **layout)
    got = microexport.run(result.archive, {"x": x}, board="host", build_dir=tmp_path / "b")
    for name, value in want.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    with tarfile.open(result.archive) as tar:
        wrapper = tar.extractfile("./codegen/host/src/tvmgen_empties.c").read().decode()
    if "io_in_workspace" not in layout:  # NULL refused for y only
        assert "outputs->y == NULL" in wrapper and "outputs->none == NULL" not in wrapper


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_model_with_only_empty_outputs(layout: dict[str, object], tmp_path: Path) -> None:
    """An empty input (bound to an empty constant) whose Identity is the only output: no kernel
    at all, an AOT main that only returns, an empty array of the output's shape from the host
    run, under every memory layout."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "nothing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 0])])
    path = _save(graph, tmp_path / "nothing.onnx")
    result = microexport.compile(str(path), output=tmp_path / "m.tar", name="nothing", **layout)
    assert result.model.inputs == ()
    got = microexport.run(result.archive, {}, board="host", build_dir=tmp_path / "b")
    assert got["y"].shape == (2, 0) and got["y"].dtype == np.float32


@pytest.mark.parametrize("scales_given", ["initializers", "inputs"])
def test_blocked_quantize_dequantize(scales_given: str, tmp_path: Path) -> None:
    """QuantizeLinear / DequantizeLinear with `block_size` (opset 21) along an axis whose length
    the block does not divide, with ties (x / scale = k + 0.5, to even) and saturation, the
    scales and zero points as initializers or as model inputs: against the ONNX reference
    evaluator."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    scale = np.array([[0.5, 2.0, 1.0], [0.25, 1.0, 4.0]], np.float32)  # 5 columns, blocks of 2
    zero = np.array([[3, -2, 0], [1, 0, -128]], np.int8)
    dq_scale = np.array([[0.1, 0.3], [2.0, 0.5]], np.float32)  # axis 0: 5 rows, blocks of 3
    dq_zero = np.array([[10, 0], [255, 128]], np.uint8)
    params = {"scale": scale, "zero": zero, "dq_scale": dq_scale, "dq_zero": dq_zero}
    elem = {np.float32: TensorProto.FLOAT, np.int8: TensorProto.INT8,
            np.uint8: TensorProto.UINT8}
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], axis=1,
                              block_size=2),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["back"], axis=1,
                              block_size=2),
             helper.make_node("DequantizeLinear", ["u", "dq_scale", "dq_zero"], ["du"], axis=0,
                              block_size=3)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
              helper.make_tensor_value_info("u", TensorProto.UINT8, [5, 2])]
    inits = []
    for name, value in params.items():
        if scales_given == "inputs":
            inputs.append(helper.make_tensor_value_info(name, elem[value.dtype.type],
                                                        list(value.shape)))
        else:
            inits.append(numpy_helper.from_array(value, name))
    graph = helper.make_graph(
        nodes, "blocked", inputs,
        [helper.make_tensor_value_info("q", TensorProto.INT8, [2, 5]),
         helper.make_tensor_value_info("back", TensorProto.FLOAT, [2, 5]),
         helper.make_tensor_value_info("du", TensorProto.FLOAT, [5, 2])], inits)
    path = _save(graph, tmp_path / "blocked.onnx", opset=21)
    x = np.array([[1.25, -0.75, 5.0, 3.0, 1000.0], [0.125, 0.375, 2.5, -3.5, -900.0]],
                 np.float32)
    feeds = {"x": x, "u": rng.integers(0, 256, (5, 2)).astype(np.uint8)}
    if scales_given == "inputs":
        feeds.update(params)
    want = ReferenceEvaluator(str(path)).run(None, feeds)
    got = _run(path, feeds, tmp_path)
    for name, value in zip(("q", "back", "du"), want, strict=True):
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# Resize nodes (attributes, scales or sizes) TVM's frontend computes wrong or refuses: a scale
# whose product with a dimension is not whole, antialias, axes, keep_aspect_ratio_policy,
# tf_crop_and_resize with an extrapolation value.
RESIZES = {
    "cubic_scales": ({"mode": "cubic"}, [1, 1, 0.8, 0.7], None, None),
    "cubic_exclude": ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
                      [1, 1, 1.7, 0.6], None, None),
    "linear_symmetric": ({"mode": "linear",
                          "coordinate_transformation_mode": "half_pixel_symmetric"},
                         [1, 1, 2.3, 0.6], None, None),
    "linear_antialias": ({"mode": "linear", "antialias": 1}, None, [1, 2, 3, 2], None),
    "cubic_antialias": ({"mode": "cubic", "antialias": 1}, [1, 1, 0.5, 0.7], None, None),
    "nearest_axes": ({"mode": "nearest", "axes": [3, 2], "nearest_mode": "ceil",
                      "coordinate_transformation_mode": "asymmetric"}, [1.5, 0.6], None, None),
    "nearest_not_larger": ({"mode": "nearest", "axes": [2, 3],
                            "keep_aspect_ratio_policy": "not_larger"}, None, [7, 8], None),
    "crop_and_resize": ({"mode": "linear", "extrapolation_value": 10.0,
                         "coordinate_transformation_mode": "tf_crop_and_resize"},
                        None, [1, 2, 4, 4], [0, 0, -0.2, 0.4, 1, 1, 0.6, 1.3]),
}


def test_resize_by_the_onnx_coordinate_transform(tmp_path: Path) -> None:
    """One model with a Resize of each kind of `RESIZES`, every scale, size and roi an
    initializer: against onnxruntime."""
    require_module("onnx", "onnx")
    ort = require_module("onnxruntime", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for name, (attrs, scales, sizes, roi) in RESIZES.items():
        names = ["x", "", "", ""]
        for index, (kind, value, dtype) in enumerate(
                (("roi", roi, np.float32), ("scales", scales, np.float32),
                 ("sizes", sizes, np.int64)), start=1):
            if value is not None:
                names[index] = f"{name}_{kind}"
                inits.append(numpy_helper.from_array(np.array(value, dtype), names[index]))
        nodes.append(helper.make_node("Resize", names[:4 if sizes is not None else 3],
                                      [name], **attrs))
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 6)).astype(np.float32)
    want: dict[str, np.ndarray] = {}
    for _ in range(2):  # the output shapes from onnxruntime's first run, then the model
        outputs = [helper.make_tensor_value_info(
            name, TensorProto.FLOAT, list(want[name].shape) if want else ["a", "b", "c", "d"])
            for name in RESIZES]
        graph = helper.make_graph(
            nodes, "resizes",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 6])], outputs,
            inits)
        path = _save(graph, tmp_path / "resize.onnx", opset=19)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}),
                        strict=True))
    got = _run(path, {"x": x}, tmp_path)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("dtype", "mode"), [(np.uint8, "linear"), (np.int8, "cubic"),
                                             (np.int16, "nearest")])
def test_resize_of_integers(dtype: type, mode: str, tmp_path: Path) -> None:
    """An integer Resize (non-whole scales, an extrapolation value past the type's range) is
    computed in float32 and rounded to nearest even, saturated: against the ONNX reference
    evaluator."""
    require_module("onnx", "onnx")
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode),
         helper.make_node("Resize", ["x", "roi", "", "sizes"], ["z"], mode=mode,
                          coordinate_transformation_mode="tf_crop_and_resize",
                          extrapolation_value=1000.0)], "resize_int",
        [helper.make_tensor_value_info("x", elem, [1, 1, 5, 6])],
        [helper.make_tensor_value_info("y", elem, [1, 1, 8, 4]),
         helper.make_tensor_value_info("z", elem, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.array([1, 1, 1.7, 0.7], np.float32), "scales"),
         numpy_helper.from_array(np.array([1, 1, 4, 4], np.int64), "sizes"),
         numpy_helper.from_array(np.array([0, 0, -0.3, 0.2, 1, 1, 0.9, 1.4], np.float32),
                                 "roi")])
    path = _save(graph, tmp_path / "resize_int.onnx")
    info = np.iinfo(dtype)
    x = np.random.default_rng(3).integers(info.min, info.max, (1, 1, 5, 6)).astype(dtype)
    want = ReferenceEvaluator(str(path)).run(None, {"x": x})
    got = _run(path, {"x": x}, tmp_path)
    for name, value in zip(("y", "z"), want, strict=True):
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_resize_left_to_tvm_is_refused_where_it_would_be_wrong(tmp_path: Path) -> None:
    """An int32 Resize (TVM's converter) with a linear scale whose product with a dimension is
    not whole: a one-line error, not a result sampled at the wrong places."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")], "resize32",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1, 3, 3])],
        [numpy_helper.from_array(np.array([1, 1, 0.8, 0.8], np.float32), "scales")])
    path = _save(graph, tmp_path / "resize32.onnx")
    with pytest.raises(ModelError, match="size ratio") as err:
        microexport.compile(str(path), output=tmp_path / "e.tar")
    assert "\n" not in str(err.value)


# (kernel_shape, attributes) of the MaxPool nodes with Indices of one model, on a 2-D input.
MAXPOOL_INDICES_CASES = [
    ([3, 3], {}),
    ([2, 2], {"strides": [2, 2], "storage_order": 1}),
    ([3, 3], {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ([2, 3], {"dilations": [2, 1], "storage_order": 1}),
    ([3, 2], {"strides": [2, 2], "ceil_mode": 1}),
    ([3, 3], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ([2, 2], {"auto_pad": "SAME_LOWER", "storage_order": 1}),
]


def _ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort = require_module("onnxruntime", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                    strict=True))


def test_maxpool_indices(tmp_path: Path) -> None:
    """MaxPool's Indices output (our kernel): pads, strides, dilations, ceil_mode, auto_pad,
    both storage orders, on a batch of 2 with many ties (small integer values; the first
    position in row-major order wins, as in ONNX's reference), 1-D and 3-D too: equal to
    onnxruntime."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    nodes, outputs = [], []
    for index, (kernel, attrs) in enumerate(MAXPOOL_INDICES_CASES):
        y, z = f"y_{index}", f"z_{index}"
        nodes.append(helper.make_node("MaxPool", ["x"], [y, z], kernel_shape=kernel, **attrs))
        outputs += [helper.make_tensor_value_info(y, TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(z, TensorProto.INT64, None)]
    nodes += [helper.make_node("MaxPool", ["line"], ["y_1d", "z_1d"], kernel_shape=[3],
                               strides=[2], pads=[1, 1]),
              helper.make_node("MaxPool", ["cube"], ["y_3d", "z_3d"], kernel_shape=[2, 2, 2],
                               storage_order=1, pads=[0, 1, 0, 1, 0, 0])]
    outputs += [helper.make_tensor_value_info(name, elem, None)
                for name, elem in (("y_1d", TensorProto.FLOAT), ("z_1d", TensorProto.INT64),
                                   ("y_3d", TensorProto.FLOAT), ("z_3d", TensorProto.INT64))]
    graph = helper.make_graph(
        nodes, "maxpools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6]),
         helper.make_tensor_value_info("line", TensorProto.FLOAT, [1, 2, 9]),
         helper.make_tensor_value_info("cube", TensorProto.FLOAT, [1, 2, 3, 4, 5])],
        outputs)
    import onnx

    model = onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)]))  # the outputs' shapes
    model.ir_version = 8
    path = tmp_path / "maxpool.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    feeds = {"x": rng.integers(-3, 4, (2, 3, 7, 6)).astype(np.float32),
             "line": rng.integers(-2, 3, (1, 2, 9)).astype(np.float32),
             "cube": rng.integers(-2, 3, (1, 2, 3, 4, 5)).astype(np.float32)}
    want = _ort_outputs(path, feeds)
    got = _run(path, feeds, tmp_path)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_convtranspose_output_shape(tmp_path: Path) -> None:
    """ConvTranspose with output_shape: the pads derived as the ONNX specification says
    (larger than the full output: the extra rows are output_padding's zeros plus bias;
    smaller: pads; NOTSET, SAME_UPPER and SAME_LOWER splits; dilations): against onnxruntime."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    weight = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)  # 2 in, 3 out
    bias = rng.standard_normal(3).astype(np.float32)
    cases = [  # (output_shape, attributes)
        ([10, 8], {"strides": [3, 2]}),  # the node test: one extra row and column
        ([7, 5], {"strides": [3, 2]}),  # cropped: positive pads
        ([6, 6], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ([8, 7], {"strides": [2, 2], "auto_pad": "SAME_UPPER", "dilations": [2, 1]}),
        ([6, 6], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], [f"y_{i}"], output_shape=shape,
                              **attrs) for i, (shape, attrs) in enumerate(cases)]
    graph = helper.make_graph(
        nodes, "convtransposes", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [1, 2, 3, 3])],
        [helper.make_tensor_value_info(f"y_{i}", TensorProto.FLOAT, [1, 3, *shape])
         for i, (shape, _) in enumerate(cases)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    path = _save(graph, tmp_path / "convtranspose.onnx")
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    want = _ort_outputs(path, feeds)
    got = _run(path, feeds, tmp_path)
    for index, (shape, _) in enumerate(cases):
        name = f"y_{index}"
        assert want[name].shape[2:] == tuple(shape), name  # the reference honours output_shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("shape", "stride", "auto_pad", "message"), [
    ([9, 9], 2, "SAME_UPPER", "leading pads"),  # zero rows before the output
    ([5, 5], 1, "NOTSET", "a stride or more beyond"),  # onnxruntime refuses it too
])
def test_convtranspose_output_shape_refused(tmp_path: Path, shape: list[int], stride: int,
                                            auto_pad: str, message: str) -> None:
    """An output_shape whose pads would start before the output (SAME_UPPER, larger output;
    onnxruntime and the ONNX reference disagree there) or that asks for a stride or more of
    extra rows is a one-line ModelError naming the node."""
    require_module("onnx", "onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", output_shape=shape,
                            strides=[stride, stride], auto_pad=auto_pad)
    graph = helper.make_graph(
        [node], "leading", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3]),
                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, *shape])])
    path = _save(graph, tmp_path / "leading.onnx")
    with pytest.raises(ModelError, match=f"'up'.*{message}") as err:
        microexport.compile(str(path), output=tmp_path / "m.tar", name="ops")
    assert "\n" not in str(err.value)
