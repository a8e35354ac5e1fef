"""ONNX Reduce* whose `axes` is a run-time input, in a model with static shapes.

TVM's frontend reduces over constant axes only. A Reduce node whose axes tensor is computed
or fed at run time still has static input and output shapes once the model's input shapes are
fixed, and those shapes pin the reduction down:

- `axes` of length 0 (its length is a static shape): the reduction is over every axis
  (`noop_with_empty_axes=0`), whatever the run-time value.
- `keepdims=1`: an axis whose size changes (to 1) is reduced, one whose size stays (other than
  1) is not. Reducing a size-1 axis or not gives the same values once the reduction is applied
  at all (it is: `axes` is not empty), so any axes value the declared output shape admits gives
  the same result, the one computed over the axes the shapes imply.
- `keepdims=0`: the reduced axes are dropped. When the shapes admit several choices that give
  different values (reducing (3, 2, 2) to (3, 2) over axis 1 or axis 2), each candidate is
  reduced over its constant axes and the one the run-time `axes` names is selected (`Where` on a
  comparison of `axes` with the candidate's axes); the run-time value decides, as in the model.

The output shape is read from the model (graph outputs, value_info, onnx shape inference) and
through shape-preserving unary nodes after the Reduce (`Cast`, `Sqrt`, … as the expanded
`ReduceL2` function has). When it is unknown, or `noop_with_empty_axes=1` with an empty `axes`,
the node is left to TVM's frontend, which refuses it in one line.

`ReduceMax`/`ReduceMin` of bool (TVM's reduction has no identity for bool) become the same
reduction of the values as uint8 (`widen_bool_min_max`).

The same holds for `Reshape` whose target shape, and `Resize` (default
`keep_aspect_ratio_policy`, no run-time `roi`) whose `sizes`, are run-time inputs: the result
depends only on the output shape, which the model declares (`resolve_runtime_target_shapes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

REDUCE_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                        "ReduceSumSquare"})
# Nodes whose first input has the output's shape (walked back from a known output shape).
_SHAPE_PRESERVING = frozenset({"Cast", "CastLike", "Sqrt", "Log", "Exp", "Abs", "Neg",
                               "Identity", "Relu", "Sigmoid", "Tanh", "Reciprocal", "Floor",
                               "Ceil", "Round", "Sign", "Not"})
_MAX_CANDIDATES = 16  # run-time selection among at most this many reductions


def resolve_runtime_reduce_axes(
        model: onnx.ModelProto,
        infer_shapes: Callable[[onnx.ModelProto], dict[str, tuple[int, ...]]]) -> onnx.ModelProto:
    """`model` with the run-time `axes` of its Reduce nodes replaced as the module docstring
    says; `infer_shapes` gives the static shapes known for a model's values (its input shapes
    fixed). The model is returned unchanged when it has no such node."""
    import onnx

    graph = model.graph
    constant = {t.name for t in graph.initializer}
    targets = [n for n in graph.node if n.op_type in REDUCE_OPS and n.domain in ("", "ai.onnx")
               and len(n.input) > 1 and n.input[1] and n.input[1] not in constant]
    if not targets:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = _with_shapes_walked_back(out.graph, infer_shapes(out))
    nodes = []
    for node in out.graph.node:
        rewritten = None
        if node.op_type in REDUCE_OPS and node.domain in ("", "ai.onnx") \
                and len(node.input) > 1 and node.input[1] and node.input[1] not in constant:
            rewritten = _rewrite(out.graph, node, shapes)
        nodes.extend([node] if rewritten is None else rewritten)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _with_shapes_walked_back(graph: onnx.GraphProto, shapes: dict[str, tuple[int, ...]]
                             ) -> dict[str, tuple[int, ...]]:
    """`shapes` plus the shapes of first inputs of shape-preserving nodes whose output shape
    is known (walking back from the outputs)."""
    known = dict(shapes)
    for tensor in graph.initializer:  # folded values (a zero-size input is frozen)
        known.setdefault(tensor.name, tuple(tensor.dims))
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value")
                                                              for d in dims):
            known.setdefault(value.name, tuple(d.dim_value for d in dims))
    for node in reversed(graph.node):
        if node.op_type in _SHAPE_PRESERVING and node.output and node.output[0] in known \
                and node.input and node.input[0] not in known:
            known[node.input[0]] = known[node.output[0]]
    return known


def resolve_runtime_target_shapes(
        model: onnx.ModelProto,
        infer_shapes: Callable[[onnx.ModelProto], dict[str, tuple[int, ...]]]) -> onnx.ModelProto:
    """`model` with the run-time shape input of each `Reshape`, and the run-time `sizes` of
    each `Resize` that samples by the size ratio (stretch policy, no run-time roi), replaced by
    the output shape the model declares (the only value its shapes admit; the data moved does
    not depend on how that shape was spelled). Unchanged when there is no such node."""
    import numpy as np
    import onnx

    graph = model.graph
    constant = {t.name for t in graph.initializer}

    def runtime(node: onnx.NodeProto, index: int) -> bool:
        return len(node.input) > index and bool(node.input[index]) \
            and node.input[index] not in constant

    def candidate(node: onnx.NodeProto) -> bool:
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Reshape":
            return runtime(node, 1)
        if node.op_type == "Resize":
            policy = next((a.s for a in node.attribute if a.name == "keep_aspect_ratio_policy"),
                          b"stretch")
            return runtime(node, 3) and policy == b"stretch" and not runtime(node, 1)
        return False

    if not any(candidate(n) for n in graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = _with_shapes_walked_back(out.graph, infer_shapes(out))
    for node in out.graph.node:
        if not candidate(node):
            continue
        in_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
        if in_shape is None or out_shape is None:
            continue
        if node.op_type == "Reshape":
            if int(np.prod(in_shape)) != int(np.prod(out_shape)):
                continue
            node.input[1] = _const(out.graph, f"{node.output[0]}__shape", list(out_shape))
            continue
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"),
                    list(range(len(in_shape))))
        sizes_shape = shapes.get(node.input[3])
        if len(out_shape) != len(in_shape) or sizes_shape != (len(axes),):
            continue
        rank = len(in_shape)
        if any(in_shape[i] != out_shape[i] for i in range(rank)
               if i not in {a % rank for a in axes}):
            continue
        # sizes for every axis (TVM's frontend reads no `axes`): the others keep their size
        node.input[3] = _const(out.graph, f"{node.output[0]}__sizes", list(out_shape))
        kept = [a for a in node.attribute if a.name != "axes"]
        del node.attribute[:]
        node.attribute.extend(kept)
    return out


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _rewrite(graph: onnx.GraphProto, node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]
             ) -> list[onnx.NodeProto] | None:
    """The nodes replacing `node` (a Reduce with run-time axes), or None to leave it."""
    data, axes = node.input[0], node.input[1]
    in_shape, out_shape = shapes.get(data), shapes.get(node.output[0])
    axes_shape = shapes.get(axes)
    if in_shape is None or out_shape is None or axes_shape is None or len(axes_shape) != 1:
        return None
    count, rank = axes_shape[0], len(in_shape)
    keepdims = _attribute(node, "keepdims", 1)
    if count == 0:
        if _attribute(node, "noop_with_empty_axes", 0):
            return None  # the identity (or its elementwise part): rare, left to the frontend
        return [_with_axes(graph, node, None, node.output[0])]  # every axis
    if keepdims:
        chosen = _keepdims_axes(in_shape, out_shape, count)
        return None if chosen is None else [_with_axes(graph, node, chosen, node.output[0])]
    groups = _dropped_axes_groups(in_shape, out_shape, count)
    if not groups or len(groups) > _MAX_CANDIDATES:
        return None
    if len(groups) == 1:
        return [_with_axes(graph, node, groups[0][1], node.output[0])]
    return _select_at_run_time(graph, node, groups, rank)


def _keepdims_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...], count: int
                   ) -> tuple[int, ...] | None:
    """`count` axes whose reduction with keepdims gives `out_shape` (any such choice gives the
    same values), or None if there is none."""
    if len(in_shape) != len(out_shape):
        return None
    changed = [i for i, (a, b) in enumerate(zip(in_shape, out_shape, strict=True)) if a != b]
    if any(out_shape[i] != 1 for i in changed) or len(changed) > count:
        return None
    ones = [i for i, (a, b) in enumerate(zip(in_shape, out_shape, strict=True))
            if a == 1 and b == 1]
    if len(changed) + len(ones) < count:
        return None
    return tuple(sorted([*changed, *ones[:count - len(changed)]]))


def _dropped_axes_groups(in_shape: tuple[int, ...], out_shape: tuple[int, ...], count: int
                         ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The ways to drop `count` axes of `in_shape` leaving `out_shape`, grouped by the axes of
    size other than 1 they drop (candidates of one group give the same values): (those axes,
    one candidate) per group, most such axes first."""
    if len(in_shape) - count != len(out_shape):
        return []
    groups: dict[tuple[int, ...], tuple[int, ...]] = {}
    for dropped in itertools.combinations(range(len(in_shape)), count):
        kept = tuple(d for i, d in enumerate(in_shape) if i not in dropped)
        if kept == tuple(out_shape):
            groups.setdefault(tuple(i for i in dropped if in_shape[i] != 1), dropped)
    return sorted(groups.items(), key=lambda item: (-len(item[0]), item[0]))


def _const(graph: onnx.GraphProto, name: str, value: Any) -> str:
    import numpy as np
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
    return name


def _with_axes(graph: onnx.GraphProto, node: onnx.NodeProto, axes: tuple[int, ...] | None,
               output: str, suffix: str = "") -> onnx.NodeProto:
    """A copy of `node` reducing over the constant `axes` (None: every axis) into `output`."""
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    if axes is None:
        del copy.input[1:]
    else:
        copy.input[1] = _const(graph, f"{node.output[0]}__axes{suffix}", list(axes))
    copy.output[0] = output
    if suffix:
        copy.name = f"{node.name or node.output[0]}{suffix}"
    return copy


def _select_at_run_time(graph: onnx.GraphProto, node: onnx.NodeProto,
                        groups: list[tuple[tuple[int, ...], tuple[int, ...]]], rank: int
                        ) -> list[onnx.NodeProto]:
    """One reduction per group of candidate axes, and a chain of `Where` picking the group
    whose axes of size other than 1 are all in the run-time `axes` (groups with more such axes
    first: those of a smaller group may be a subset; the last group is the fallback)."""
    from onnx import TensorProto, helper

    stem = f"{node.output[0]}__axes"
    axes = node.input[1]
    nodes = [
        helper.make_node("Less", [axes, _const(graph, f"{stem}_zero", 0)], [f"{stem}_negative"]),
        helper.make_node("Add", [axes, _const(graph, f"{stem}_rank", rank)], [f"{stem}_wrapped"]),
        helper.make_node("Where", [f"{stem}_negative", f"{stem}_wrapped", axes],
                         [f"{stem}_normal"]),
        helper.make_node("Unsqueeze", [f"{stem}_normal", _const(graph, f"{stem}_one", [1])],
                         [f"{stem}_column"]),
    ]
    results = []
    for index, (named, candidate) in enumerate(groups):
        result = f"{stem}_result{index}"
        nodes.append(_with_axes(graph, node, candidate, result, f"__candidate{index}"))
        results.append(result)
        if index == len(groups) - 1:
            break
        row = _const(graph, f"{stem}_group{index}", [list(named)])
        nodes += [
            helper.make_node("Equal", [f"{stem}_column", row], [f"{stem}_hits{index}"]),
            helper.make_node("Cast", [f"{stem}_hits{index}"], [f"{stem}_hit_counts{index}"],
                             to=TensorProto.INT64),
            helper.make_node("ReduceSum", [f"{stem}_hit_counts{index}"],
                             [f"{stem}_hit_count{index}"], keepdims=0),
            helper.make_node("Equal", [f"{stem}_hit_count{index}",
                                       _const(graph, f"{stem}_size{index}", len(named))],
                             [f"{stem}_is{index}"]),
        ]
    chosen = results[-1]
    for index in range(len(groups) - 2, -1, -1):
        output = node.output[0] if index == 0 else f"{stem}_chosen{index}"
        nodes.append(helper.make_node("Where", [f"{stem}_is{index}", results[index], chosen],
                                      [output]))
        chosen = output
    return nodes


def widen_bool_min_max(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each ReduceMax/ReduceMin of a bool tensor computed on it cast to uint8 and
    cast back (max is any, min is all); unchanged when it has none."""
    import onnx
    from onnx import TensorProto, helper

    candidates = [n for n in model.graph.node
                  if n.op_type in ("ReduceMax", "ReduceMin") and n.domain in ("", "ai.onnx")]
    if not candidates:
        return model
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # inference is an aid here; the frontend checks the model
        return model
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    types.update({t.name: t.data_type for t in inferred.initializer})
    if not any(types.get(n.input[0]) == TensorProto.BOOL for n in candidates):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type not in ("ReduceMax", "ReduceMin") or node.domain not in ("", "ai.onnx") \
                or types.get(node.input[0]) != TensorProto.BOOL:
            nodes.append(node)
            continue
        stem, result = f"{node.output[0]}__uint8", node.output[0]
        nodes.append(helper.make_node("Cast", [node.input[0]], [f"{stem}_in"],
                                      to=TensorProto.UINT8))
        node.input[0], node.output[0] = f"{stem}_in", f"{stem}_out"
        nodes += [node, helper.make_node("Cast", [f"{stem}_out"], [result],
                                         to=TensorProto.BOOL)]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
