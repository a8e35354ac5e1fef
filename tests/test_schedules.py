"""The C schedule's loop transformations (`compiler/schedules.py`), checked on the host against
onnxruntime and on the scheduled TIR.

* Max and min reductions are unrolled like sums. TVM's C codegen once printed `max(acc, x)`
  through a temporary it reused for the same load text after a store to `acc`, so an unrolled
  `acc = max(acc, x0); acc = max(acc, x1);` compared with a stale accumulator; `codegen.py`'s
  `min_max_as_select` prints it as an inline select. The inputs are ramps along the reduced axis
  (the extreme at the last tap, or at the first) besides random values: a stale accumulator
  returns an earlier tap's value.
* Register blocking (`_block_output_channels`): dense layers and convolutions accumulate
  `SPATIAL_BLOCK` adjacent outputs together; every output must still be right, also where the
  channel count is not a multiple of the block (not blocked) or padding is involved.
* `bind_repeated_loads`: an integer subexpression that reads memory and repeats inside one
  stored value (an inlined requantization read three times by the next one's rounding shift) is
  computed once, into a `Bind` before the store; TVM's CommonSubexprElim leaves such
  expressions alone. Nothing only evaluated under a condition is moved out of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm_ffi
from support import require_module

import microexport
from microexport.api import import_model
from microexport.compiler.lower import check_target, relax_pipeline
from microexport.compiler.schedules import SPATIAL_BLOCK, schedule_for_c
from microexport.deploy.compare import compare
from microexport.deploy.reference import run_reference

OPSET = 17


def _model(path: Path, nodes: list[object], x_shape: tuple[int, ...],
           y_shape: tuple[int, ...], inits: tuple[object, ...] = ()) -> Path:
    """An ONNX model of `nodes` from float input "x" to float output "y"."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _node(op: str, inputs: list[str], output: str, **attrs: object) -> object:
    from onnx import helper

    return helper.make_node(op, inputs, [output], **attrs)


def _weights(name: str, shape: tuple[int, ...], seed: int) -> object:
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _constant(name: str, value: float) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, np.float32), name)


# name → (nodes, x shape, y shape, initializers); the reduced axis is the last one.
REDUCTIONS: dict[str, tuple[list[object], tuple[int, ...], tuple[int, ...], tuple]] = {
    # window width 3: the innermost tap loop unrolled completely
    "maxpool_3x3_pad": ([_node("MaxPool", ["x"], "y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                        (1, 2, 6, 7), (1, 2, 6, 7), ()),
    # window width 8: split by 4, the inner 4 taps unrolled
    "maxpool_1x8": ([_node("MaxPool", ["x"], "y", kernel_shape=[1, 8], strides=[1, 2])],
                    (1, 3, 2, 16), (1, 3, 2, 5), ()),
    # the epilogue (clip) fused after the unrolled max: the accumulator is a C local
    "maxpool_2x4_clip": ([_node("MaxPool", ["x"], "p", kernel_shape=[2, 4], strides=[2, 4]),
                          _node("Clip", ["p", "lo", "hi"], "y")],
                         (1, 4, 4, 8), (1, 4, 2, 2),
                         (_constant("lo", -1.0), _constant("hi", 5.0))),
    "reducemax_12": ([_node("ReduceMax", ["x"], "y", axes=[-1], keepdims=0)],
                     (2, 5, 12), (2, 5), ()),
    "reducemin_3_relu": ([_node("ReduceMin", ["x"], "m", axes=[-1], keepdims=0),
                          _node("Relu", ["m"], "y")], (4, 6, 3), (4, 6), ()),
    "reducemin_16": ([_node("ReduceMin", ["x"], "y", axes=[-1], keepdims=1)],
                     (3, 16), (3, 1), ()),
}


def _inputs(shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Random values, and ramps rising and falling along the last axis (with noise far below
    the step, so every window's extreme is at its last or its first tap)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-0.01, 0.01, shape).astype(np.float32)
    ramp = np.broadcast_to(np.arange(shape[-1], dtype=np.float32), shape) + noise
    return [rng.standard_normal(shape).astype(np.float32), ramp, -ramp]


def _scheduled_kernels(path: Path) -> dict[str, object]:
    """The model's kernels after Relax fusion and `schedule_for_c`."""
    with check_target("c"):
        fused = relax_pipeline()(import_model(path).mod)
    return {gv.name_hint: schedule_for_c(func) for gv, func in fused.functions.items()
            if gv.name_hint != "main" and hasattr(func, "body")}


def _unrolled_loops(func: object) -> list[object]:
    from tvm import tirx

    found: list[object] = []

    def visit(loop: tirx.For) -> tirx.For:
        if loop.kind == tirx.ForKind.UNROLLED:
            found.append(loop)
        return loop

    tvm_ffi.structural_map(func.body, (tirx.For, visit), order="pre")
    return found


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_unrolled_max_and_min_reductions_match_onnxruntime(name: str, tmp_path: Path) -> None:
    """Each max/min reduction's innermost tap loop is unrolled, and the compiled model agrees
    with onnxruntime on random inputs and on rising and falling ramps."""
    require_module("onnxruntime", "onnx")
    nodes, x_shape, y_shape, inits = REDUCTIONS[name]
    path = _model(tmp_path / f"{name}.onnx", nodes, x_shape, y_shape, inits)
    kernels = _scheduled_kernels(path)
    assert any(_unrolled_loops(func) for func in kernels.values()), sorted(kernels)
    archive = microexport.compile(path, tmp_path / f"{name}.tar", name=name).archive
    for index, x in enumerate(_inputs(x_shape, seed=len(name))):
        _, (expected,) = run_reference(path, {"x": x})
        got = microexport.run(archive, {"x": x})["y"]
        comparison = compare("y", got, expected)
        assert comparison.passed, (index, comparison.max_abs_error)
        np.testing.assert_array_equal(got, expected)  # a max or min is exact


def _blocked(func: object) -> bool:
    """Whether a reduction of the scheduled kernel is register-blocked: an unrolled loop of
    `SPATIAL_BLOCK` iterations binds one of its output (spatial) indices."""
    from tvm import s_tir, tirx

    unrolled = [loop.loop_var for loop in _unrolled_loops(func)
                if int(loop.extent) == SPATIAL_BLOCK]
    found = False

    def uses_unrolled(value: object) -> bool:
        hits: list[object] = []
        tvm_ffi.structural_map(value, (tirx.Var, lambda v: hits.append(v) or v), order="pre")
        return any(hit.same_as(var) for hit in hits for var in unrolled)

    def visit(realize: s_tir.SBlockRealize, visitor: object) -> None:
        nonlocal found
        kinds = [int(iv.iter_type) for iv in realize.block.iter_vars]
        if any(kinds):  # a reduction
            found |= any(kind == 0 and uses_unrolled(value)
                         for kind, value in zip(kinds, realize.iter_values, strict=True))
        visitor.default_visit(realize)  # type: ignore[attr-defined]

    tvm_ffi.structural_visit(func.body, (s_tir.SBlockRealize, visit))  # type: ignore[attr-defined]
    return found


# name → (nodes, x shape, y shape, initializers, whether a kernel is register-blocked)
BLOCKED: dict[str, tuple[list[object], tuple[int, ...], tuple[int, ...], tuple, bool]] = {
    # MatMul's weights are [in, out]: the blocked operand is x, the weights read contiguously
    "matmul_relu": ([_node("MatMul", ["x", "w"], "m"), _node("Relu", ["m"], "y")],
                    (1, 40), (1, 12), (_weights("w", (40, 12), 3),), True),
    "gemm_bias": ([_node("Gemm", ["x", "w", "b"], "y", transB=1)],
                  (2, 24), (2, 8), (_weights("w", (8, 24), 4), _weights("b", (8,), 5)), True),
    # 10 outputs: not a multiple of the block, left alone
    "matmul_10": ([_node("MatMul", ["x", "w"], "y")], (1, 16), (1, 10),
                  (_weights("w", (16, 10), 6),), False),
    # NCHW without padding: blocked along the output width (the weight is shared)
    "conv_valid": ([_node("Conv", ["x", "w", "b"], "y")], (1, 3, 6, 10), (1, 4, 4, 8),
                   (_weights("w", (4, 3, 3, 3), 7), _weights("b", (4,), 8)), True),
    # padding tests the output width: not blocked (unswitching hoists the test instead)
    "conv_pad": ([_node("Conv", ["x", "w"], "y", pads=[1, 1, 1, 1])], (1, 2, 5, 8),
                 (1, 3, 5, 8), (_weights("w", (3, 2, 3, 3), 9),), False),
}


@pytest.mark.parametrize("name", sorted(BLOCKED))
def test_register_blocked_reductions_match_onnxruntime(name: str, tmp_path: Path) -> None:
    """Blocked dense layers and convolutions (a `SPATIAL_BLOCK`-element accumulator) and the
    cases left unblocked agree with onnxruntime."""
    require_module("onnxruntime", "onnx")
    nodes, x_shape, y_shape, inits, blocked = BLOCKED[name]
    path = _model(tmp_path / f"{name}.onnx", nodes, x_shape, y_shape, inits)
    kernels = _scheduled_kernels(path)
    assert any(_blocked(func) for func in kernels.values()) == blocked, sorted(kernels)
    archive = microexport.compile(path, tmp_path / f"{name}.tar", name=name).archive
    x = np.random.default_rng(len(name)).standard_normal(x_shape).astype(np.float32)
    _, (expected,) = run_reference(path, {"x": x})
    comparison = compare("y", microexport.run(archive, {"x": x})["y"], expected)
    assert comparison.passed, comparison.max_abs_error


def test_repeated_loads_bound_once_per_store() -> None:
    """A repeated expression reading memory is bound once and every occurrence reads the bound
    variable; a repeated bare load, an expression repeated only in the arms of a select or of an
    if_then_else (whose C evaluates one arm) or as the second operand of && or ||, and a float
    expression stay as they are."""
    import tvm
    from tvm import ir, tirx

    from microexport.compiler.schedules import bind_repeated_loads

    pointers = [tirx.Var(name, ir.PointerType(ir.PrimType(dtype)))
                for name, dtype in (("a", "int32"), ("f", "float32"), ("out", "int32"))]
    a, f, out = (tirx.decl_buffer((8,), str(p.ty.element_type.dtype), data=p)
                 for p in pointers)
    i = tirx.Var("i", "int32")
    shared = (a[i] * 3 + a[i + 1]) >> 2
    guarded = a[i + 2] * 5
    conditional = a[i + 3] * 7
    second = a[i + 4] * 9  # the second operand of && and ||, which C may skip
    floating = f[i] * tirx.const(2.0, "float32")
    value = (shared + shared * tirx.Select(shared > 0, guarded, guarded + 1)
             + tirx.if_then_else(i > 2, conditional, conditional - 1) + a[i] + a[i]
             + (floating + floating).astype("int32")
             + tirx.And(i > 2, second > 0).astype("int32")
             + tirx.Or(i < 1, second < 5).astype("int32"))
    body = tirx.For(i, 0, 6, tirx.ForKind.SERIAL, tirx.BufferStore(out, value, [i]))
    func = tirx.PrimFunc(pointers, body)
    result = bind_repeated_loads(tvm.IRModule({"f": func}))["f"]

    binds: list[object] = []
    stores: list[object] = []
    tvm_ffi.structural_map(result.body, [(tirx.Bind, lambda b: binds.append(b) or b),
                                         (tirx.BufferStore, lambda s: stores.append(s) or s)],
                           order="pre")
    assert len(binds) == 1 and tvm_ffi.structural_equal(binds[0].value, shared), binds
    (store,) = stores

    def occurrences(expr: object) -> int:
        found = [0]

        def visit(node: object) -> object:
            found[0] += tvm_ffi.structural_equal(node, expr)
            return node

        tvm_ffi.structural_map(store.value, (type(expr), visit), order="pre")
        return found[0]

    assert occurrences(shared) == 0
    assert occurrences(binds[0].var) == 3
    assert occurrences(guarded) == 2 and occurrences(conditional) == 2
    assert occurrences(second) == 2
    assert occurrences(a[i]) == 2 and occurrences(floating) == 2
