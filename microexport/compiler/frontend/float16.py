"""float16 and bfloat16 in ONNX models: computed in float32 inside, stored as bits at the edges.

C has no portable half type, so a model's float16 tensors are widened before TVM imports it:
float16 initializers, constants and value types become float32 (float32 holds every float16
value exactly, so weights lose nothing; arithmetic the model does in float16 is done in float32,
as or more accurately), and a Cast to float16 still rounds its result to float16 precision.
A float16 model input or output keeps its float16 interface: it becomes a `uint16` tensor of
the same shape holding the IEEE 754 binary16 bits (`uint16_t` in the C API), decoded to float32
by the first kernel and encoded (round to nearest even; a negative zero becomes +0) by the last
(`compiler.integer.half`).

bfloat16 is handled the same way (float32 holds every bfloat16 exactly): its inputs and outputs
are `uint16` tensors holding the bfloat16 bits (the upper 16 bits of the float32 of the same
value), a Cast to bfloat16 rounds to nearest even as onnxruntime and `ml_dtypes` do.
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

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs or self.rounding_casts)


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
    return out, HalfEdges(frozenset(inputs), frozenset(outputs), rounding, bfloat)


def _round_half_casts(graph: onnx.GraphProto) -> int:
    """Make each Cast(to=FLOAT16 or BFLOAT16) of `graph` a cast to float32 followed by an
    encode/decode pair, so that its result is rounded as the model asks; returns how many."""
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

    from tvm import relax

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

    def extended() -> dict[str, Any]:
        return {**original(), DECODE_OP: Decode, ENCODE_OP: Encode,
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
