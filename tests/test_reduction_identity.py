"""A max over values that are all -inf is -inf (and a min over +inf values +inf) also where TVM
folds the reduction of constants itself (Relax FoldConstant legalizes `relax.max` on its own):
the NaN of a float16 attention whose bool mask is frozen (its fully masked rows were not
detected, their softmax NaN kept instead of zeros)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import require_module

import microexport


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_folded_reduction_of_infinities_detects_masked_rows(op: str, tmp_path: Path) -> None:
    """A constant bias rounded to float16 by a Cast (our float16 kernels: onnx's folding stops
    there, TVM's folds the rest), its row max (min) compared with -inf (+inf), a Where
    zeroing the rows that are fully masked: against onnx's reference evaluator."""
    require_module("onnx", "onnx")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    infinity = -np.inf if op == "ReduceMax" else np.inf
    bias = np.array([[infinity, infinity, infinity], [0.0, infinity, 1.0]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["bias"], ["bias16"], to=TensorProto.FLOAT16),
         helper.make_node(op, ["bias16", "axes"], ["extreme"], keepdims=1),
         helper.make_node("Cast", ["limit"], ["limit16"], to=TensorProto.FLOAT16),
         helper.make_node("Equal", ["extreme", "limit16"], ["masked"]),
         helper.make_node("Where", ["masked", "zero", "x"], ["y"])],
        "masked_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(bias, "bias"), numpy_helper.from_array(np.array([-1]), "axes"),
         numpy_helper.from_array(np.array(infinity, np.float32), "limit"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    want = ReferenceEvaluator(str(path)).run(None, {"x": x})[0]
    assert np.array_equal(want, np.array([[0, 0, 0], [4, 5, 6]], np.float32))
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="r").archive
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "b")["y"]
    np.testing.assert_array_equal(got, want)


def test_float16_attention_with_a_frozen_mask_has_no_nan(tmp_path: Path) -> None:
    """The node test that showed it: float16 attention (expanded), bool mask frozen by
    `constants=`, a fully masked row: zeros as the reference, not NaN."""
    require_module("onnx", "onnx")
    import warnings

    from onnx import numpy_helper
    from onnx.backend.test.case import node as node_cases

    name = "test_attention_24_qk_matmul_output_mode3_softmax_precision_expanded"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = next(c for c in node_cases.collect_testcases() if c.name == name)
    path = tmp_path / "model.onnx"
    path.write_bytes(case.model.SerializeToString())
    inputs, outputs = case.data_sets[0]
    names = [v.name for v in case.model.graph.input]
    feeds = {n: (numpy_helper.to_array(a) if not isinstance(a, np.ndarray) else a)
             for n, a in zip(names, inputs, strict=True)}
    mask = feeds.pop("attn_mask")
    assert not mask[0].any()  # the fully masked row
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="att",
                                  constants={"attn_mask": mask}).archive
    got = microexport.run(archive, feeds, board="host", build_dir=tmp_path / "b")
    for value, want in zip(case.model.graph.output, outputs, strict=True):
        result = got[value.name].astype(np.float32)
        assert not np.isnan(result).any(), value.name
        np.testing.assert_allclose(result, np.asarray(want).astype(np.float32), rtol=1e-3,
                                   atol=1e-3)
