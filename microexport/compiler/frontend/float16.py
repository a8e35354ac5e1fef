"""float16 and bfloat16 in ONNX models: computed in float32 inside, stored as bits at the edges.

C has no portable half type, so a model's float16 tensors are widened before TVM imports it:
float16 initializers, constants and value types become float32 (float32 holds every float16
value exactly, so weights lose nothing). Each operator then computes in float32, and each of its
float16 results is rounded to float16 (to nearest, ties to even; `_round_float16_results`)
before the next operator reads it: the values are exactly the float16 values of the ONNX
reference implementation, which computes each operator in numpy float16 (a MatMul or a
reduction accumulates in float32 and rounds its result once, like here). Softmax and LogSoftmax
are replaced by the operators ONNX defines them as, each rounded. A Cast to float16 rounds too.
The rounding is a float32 → float32 kernel that fuses into the kernel computing its input, so
tensors stay float32 in memory.
A float16 model input or output keeps its float16 interface: it becomes a `uint16` tensor of
the same shape holding the IEEE 754 binary16 bits (`uint16_t` in the C API), decoded to float32
by the first kernel and encoded (round to nearest even; a negative zero becomes +0) by the last
(`compiler.integer.half`).

bfloat16 is handled the same way (float32 holds every bfloat16 exactly): its inputs and outputs
are `uint16` tensors holding the bfloat16 bits (the upper 16 bits of the float32 of the same
value), a Cast to bfloat16 rounds to nearest even as onnxruntime and `ml_dtypes` do; the other
bfloat16 operators' results are not rounded (they keep float32 precision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

HALF_DOMAIN = "ai.microexport.float16"
DECODE_OP = "Float16Decode"
ENCODE_OP = "Float16Encode"
BF16_DECODE_OP = "BFloat16Decode"
BF16_ENCODE_OP = "BFloat16Encode"
ROUND_OP = "Float16Round"
_BROADCAST = 1  # TVM's OpPatternKind kBroadcast (kElemWise, 0, is recomputed: opaque here)
_HALF_TYPES = (10, 16)  # TensorProto.FLOAT16, TensorProto.BFLOAT16 (onnx is imported lazily)


def _codecs(elem_type: int) -> tuple[str, str]:
    """The (decode, encode) ops of a 16-bit float element type."""
    return (DECODE_OP, ENCODE_OP) if elem_type == _HALF_TYPES[0] else (BF16_DECODE_OP,
                                                                         BF16_ENCODE_OP)


@dataclass(frozen=True)
class HalfEdges:
    """The model inputs and outputs that are float16 or bfloat16 (their C storage is uint16),
    and which of them are bfloat16."""

    inputs: frozenset[str]
    outputs: frozenset[str]
    rounding_casts: int = 0  # Cast(to=FLOAT16/BFLOAT16) nodes inside, now rounded float32
    bfloat16: frozenset[str] = frozenset()
    rounded_results: int = 0  # float16 operator results rounded to float16 (`ROUND_OP`)

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs or self.rounding_casts or self.rounded_results)


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    from onnx import TensorProto, numpy_helper

    if tensor.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        tensor.CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(tensor).astype("float32"), tensor.name))


def _widen_type(type_proto: onnx.TypeProto) -> None:
    from onnx import TensorProto

    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type" and type_proto.tensor_type.elem_type in (TensorProto.FLOAT16,
                                                                       TensorProto.BFLOAT16):
        type_proto.tensor_type.elem_type = TensorProto.FLOAT
    elif kind == "sequence_type":
        _widen_type(type_proto.sequence_type.elem_type)
    elif kind == "optional_type":
        _widen_type(type_proto.optional_type.elem_type)


def _widen_graph(graph: onnx.GraphProto) -> None:
    from onnx import AttributeProto, TensorProto

    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        _widen_type(value.type)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                _widen_tensor(attribute.t)
            elif attribute.type == AttributeProto.TENSORS:
                for tensor in attribute.tensors:
                    _widen_tensor(tensor)
            elif attribute.type == AttributeProto.GRAPH:
                _widen_graph(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _widen_graph(subgraph)
            elif attribute.name in ("to", "dtype") and attribute.type == AttributeProto.INT \
                    and attribute.i in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
                attribute.i = TensorProto.FLOAT


def widen_float16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, HalfEdges]:
    """A copy of `model` computing in float32 wherever it computed in float16 or bfloat16,
    with its float16 and bfloat16 inputs and outputs as uint16 bits behind decode/encode
    nodes; and which edges those are. The model is returned unchanged when it has no float16
    or bfloat16 tensor."""
    import onnx
    from onnx import TensorProto, helper

    if not set(_HALF_TYPES) & _tensor_types(model.graph):
        return model, HalfEdges(frozenset(), frozenset())
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {tensor.name for tensor in graph.initializer}

    def is_half(value: onnx.ValueInfoProto) -> bool:
        return value.type.tensor_type.elem_type in _HALF_TYPES

    inputs = [v.name for v in graph.input if is_half(v) and v.name not in weights]
    outputs = [v.name for v in graph.output if is_half(v)]
    bfloat = frozenset(v.name for v in [*graph.input, *graph.output]
                       if v.name in [*inputs, *outputs]
                       and v.type.tensor_type.elem_type == TensorProto.BFLOAT16)
    _expand_float16_softmax(out)
    rounded = _round_float16_results(out)
    rounding = _round_half_casts(graph)
    _widen_graph(graph)
    renamed = {name: f"{name}__float32" for name in [*inputs, *outputs]}
    for node in graph.node:  # the graph now computes on the float32 versions
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output]:
        if value.name in renamed:
            # the float32 tensor the graph computes on keeps the type information (rewrites
            # that depend on the element type read it), the edge becomes the uint16 bits
            inner = graph.value_info.add()
            inner.CopyFrom(value)
            inner.name = renamed[value.name]
            inner.type.tensor_type.elem_type = TensorProto.FLOAT
            value.type.tensor_type.elem_type = TensorProto.UINT16
    def op(name: str, which: int) -> str:
        return _codecs(TensorProto.BFLOAT16 if name in bfloat else TensorProto.FLOAT16)[which]

    decode = [helper.make_node(op(name, 0), [name], [renamed[name]], domain=HALF_DOMAIN,
                               name=f"{name}__decode") for name in inputs]
    encode = [helper.make_node(op(name, 1), [renamed[name]], [name], domain=HALF_DOMAIN,
                               name=f"{name}__encode") for name in outputs]
    nodes = [*decode, *graph.node, *encode]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == HALF_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(HALF_DOMAIN, 1))
    return out, HalfEdges(frozenset(inputs), frozenset(outputs), rounding, bfloat, rounded)


# Operators whose float16 result is one of their float16 input values (or a small integer, or a
# float16 attribute): exact in float16, nothing to round. Cast to float16 rounds by itself
# (`_round_half_casts`). CastLike is not rounded: TVM's frontend passes a CastLike of a value
# computed from shapes through as a shape, which no other operator (our rounding) may read; a
# CastLike from float32 to float16 keeps float32 precision (rounded if it is a model output).
_EXACT_OPS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather",
    "GatherElements", "GatherND", "Concat", "Split", "Expand", "Tile", "Pad", "DepthToSpace",
    "SpaceToDepth", "Relu", "Abs", "Neg", "Max", "Min", "Where", "MaxPool", "ReduceMax",
    "ReduceMin", "Clip", "Sign", "Constant", "ConstantOfShape", "Cast", "CastLike", "ScatterND",
    "ScatterElements", "Scatter", "Trilu", "Compress", "ReverseSequence", "Ceil", "Floor",
    "Round", "TopK", "OneHot", "EyeLike", "Shape", "Size",
})


def _round_float16_results(model: onnx.ModelProto) -> int:
    """Round every float16 result of the main graph's operators to float16, as the model's
    float16 arithmetic would (the ONNX reference implementation's numpy float16 operators
    compute, then round their result once; a MatMul or reduction accumulates in float32 and
    rounds at its output; onnxruntime's CPU provider computes some float16 operators in float32
    and does not round between them): the
    result `t` of such a node becomes `t__unrounded`, and a `ROUND_OP` node (a float32 →
    float32 rounding that fuses into the producing kernel) computes `t` from it. Skipped:
    operators whose result is exact (`_EXACT_OPS`), and a model output nothing else reads
    (the encoder of the output rounds it). Returns how many results are rounded.

    The element types come from ONNX shape inference; a result whose type it cannot tell is
    not rounded. Nodes inside subgraphs (If branches, Loop bodies) are not rounded one by one;
    the If or Loop output is."""
    from onnx import TensorProto, helper

    graph = model.graph
    halves = _float16_values(model)
    read = {name for node in graph.node for name in node.input}
    read |= _subgraph_reads(graph)
    outputs = {value.name for value in graph.output}
    known = {value.name for value in graph.value_info}
    nodes, count = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.domain not in ("", "ai.onnx") or node.op_type in _EXACT_OPS:
            continue
        for position, name in enumerate(node.output):
            if not name or name not in halves or (name in outputs and name not in read):
                continue
            unrounded = f"{name}__unrounded"
            node.output[position] = unrounded
            # the element type, for rewrites that depend on it
            graph.value_info.append(helper.make_tensor_value_info(unrounded,
                                                                  TensorProto.FLOAT16, None))
            if name not in known and name not in outputs:
                graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT16,
                                                                      None))
            nodes.append(helper.make_node(ROUND_OP, [unrounded], [name], domain=HALF_DOMAIN,
                                          name=f"{name}__round"))
            count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _float16_values(model: onnx.ModelProto) -> set[str]:
    """The names of the main graph's float16 values, by ONNX shape inference (empty where it
    fails)."""
    from onnx import TensorProto, shape_inference

    graph = model.graph
    # inference is a hint here: where it fails, only the declared types are known
    with contextlib.suppress(Exception):
        graph = shape_inference.infer_shapes(model, strict_mode=False).graph
    return {v.name for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.WhichOneof("value") == "tensor_type"
            and v.type.tensor_type.elem_type == TensorProto.FLOAT16}


def _expand_float16_softmax(model: onnx.ModelProto) -> None:
    """Replace each float16 Softmax and LogSoftmax (opset 13 and later) of the main graph by
    the operators ONNX defines it as (ReduceMax, Sub, Exp, ReduceSum, Div; then Log), so that
    each of their results is rounded to float16 as the ONNX reference implementation rounds
    them (onnxruntime computes its float16 Softmax in its own way, not bit for bit either)."""
    import numpy as np
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    if opset < 13 or not any(n.op_type in ("Softmax", "LogSoftmax") for n in graph.node):
        return
    halves = _float16_values(model)
    nodes = []
    for node in graph.node:
        if node.op_type not in ("Softmax", "LogSoftmax") or node.domain not in ("", "ai.onnx") \
                or node.output[0] not in halves:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        x, y = node.input[0], node.output[0]
        stem = f"{y}__softmax"
        graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64),
                                                         f"{stem}_axes"))
        if opset >= 18:
            peak = helper.make_node("ReduceMax", [x, f"{stem}_axes"], [f"{stem}_max"],
                                    keepdims=1)
        else:
            peak = helper.make_node("ReduceMax", [x], [f"{stem}_max"], keepdims=1, axes=[axis])
        quotient = f"{stem}_div" if node.op_type == "LogSoftmax" else y
        nodes += [peak,
                  helper.make_node("Sub", [x, f"{stem}_max"], [f"{stem}_sub"]),
                  helper.make_node("Exp", [f"{stem}_sub"], [f"{stem}_exp"]),
                  helper.make_node("ReduceSum", [f"{stem}_exp", f"{stem}_axes"],
                                   [f"{stem}_sum"], keepdims=1),
                  helper.make_node("Div", [f"{stem}_exp", f"{stem}_sum"], [quotient])]
        if node.op_type == "LogSoftmax":
            nodes.append(helper.make_node("Log", [quotient], [y]))
    del graph.node[:]
    graph.node.extend(nodes)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """The names the subgraphs of `graph`'s nodes read (outer values among them)."""
    from onnx import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else \
                list(attribute.graphs) if attribute.type == AttributeProto.GRAPHS else []
            for subgraph in subgraphs:
                names |= {name for inner in subgraph.node for name in inner.input}
                names |= {value.name for value in subgraph.output}
                names |= _subgraph_reads(subgraph)
    return names


def _round_half_casts(graph: onnx.GraphProto) -> int:
    """Make each Cast(to=FLOAT16 or BFLOAT16) of `graph` a cast to float32 followed by a
    rounding (float16: `ROUND_OP`; bfloat16: an encode/decode pair), so that its result is
    rounded as the model asks; returns how many."""
    from onnx import TensorProto, helper

    nodes, count = [], 0
    for node in graph.node:
        to = next((a for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or to is None or to.i not in _HALF_TYPES:
            nodes.append(node)
            continue
        decode_op, encode_op = _codecs(to.i)
        target = node.output[0]
        node.output[0] = f"{target}__unrounded"
        to.i = TensorProto.FLOAT
        known = {value.name for value in graph.value_info}
        for name in (node.output[0], target):
            if name not in known:  # the element type, for rewrites that depend on it
                graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                      None))
        if decode_op == DECODE_OP:
            nodes += [node, helper.make_node(ROUND_OP, [node.output[0]], [target],
                                             domain=HALF_DOMAIN, name=f"{target}__round")]
        else:
            nodes += [node,
                      helper.make_node(encode_op, [node.output[0]], [f"{target}__bits"],
                                       domain=HALF_DOMAIN, name=f"{target}__encode"),
                      helper.make_node(decode_op, [f"{target}__bits"], [target],
                                       domain=HALF_DOMAIN, name=f"{target}__decode")]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _tensor_types(graph: onnx.GraphProto) -> set[int]:
    from onnx import AttributeProto

    types = {t.data_type for t in graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output,
                                                      *graph.value_info]
              if v.type.WhichOneof("value") == "tensor_type"}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                types.add(attribute.t.data_type)
            elif attribute.type == AttributeProto.GRAPH:
                types |= _tensor_types(attribute.g)
            elif attribute.name in ("to", "dtype") and attribute.type == AttributeProto.INT:
                types.add(attribute.i)
    return types


@contextlib.contextmanager
def half_converters(edges: HalfEdges) -> Iterator[None]:
    """While active, TVM's ONNX frontend converts the decode/encode nodes of `widen_float16`
    into the integer kernels of `compiler.integer.half` (the frontend looks its converter table
    up through `_get_convert_map` on every node; the import runs in one thread)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from microexport.compiler.integer import half

    if not edges:
        yield
        return
    original = onnx_frontend._get_convert_map

    from tvm import ir, relax

    def powers() -> Any:
        return relax.const(half.POWERS, "float32")

    def bfloat16_powers() -> Any:
        return relax.const(half.BFLOAT16_POWERS, "float32")

    class Decode(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            return bb.emit_te(half.decode, inputs[0], powers(),
                              primfunc_name_hint="float16_decode")

    class Encode(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            return bb.emit_te(half.encode, inputs[0], powers(),
                              primfunc_name_hint="float16_encode")

    class BFloat16Decode(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            return bb.emit_te(half.bfloat16_decode, inputs[0], bfloat16_powers(),
                              primfunc_name_hint="bfloat16_decode")

    class BFloat16Encode(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            return bb.emit_te(half.bfloat16_encode, inputs[0], bfloat16_powers(),
                              primfunc_name_hint="bfloat16_encode")

    class Round(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: Any, attr: dict, params: Any) -> Any:
            if isinstance(inputs[0], ir.Constant):  # the frontend folded the operator
                value = inputs[0].value.numpy()
                return relax.const(value.astype("float16").astype(value.dtype))
            result = bb.emit_te(half.round_to_float16, inputs[0], powers(),
                                primfunc_name_hint="round_to_float16")
            # elementwise (TVM reads the table lookup as opaque): FuseOps may fuse it into
            # the kernel that computes its input
            kernel = bb.lookup_binding(result).args[0]
            bb.update_func(kernel, bb.get()[kernel].with_attr("op_pattern", _BROADCAST))
            return result

    def extended() -> dict[str, Any]:
        return {**original(), DECODE_OP: Decode, ENCODE_OP: Encode, ROUND_OP: Round,
                BF16_DECODE_OP: BFloat16Decode, BF16_ENCODE_OP: BFloat16Encode}

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


def label_half_edges(imported: Any, edges: HalfEdges) -> Any:
    """`imported` (an ImportedModel) with its float16 and bfloat16 inputs and outputs described
    as such: their Relax tensors are the uint16 bits, their C type `uint16_t`."""
    import dataclasses

    if not edges:
        return imported

    def relabel(specs: tuple[Any, ...], names: frozenset[str]) -> tuple[Any, ...]:
        return tuple(dataclasses.replace(
            s, dtype="bfloat16" if s.name in edges.bfloat16 else "float16")
            if s.name in names else s for s in specs)

    return dataclasses.replace(imported, inputs=relabel(imported.inputs, edges.inputs),
                               outputs=relabel(imported.outputs, edges.outputs))
