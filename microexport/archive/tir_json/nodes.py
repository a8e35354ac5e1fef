"""The one table of TIR node kinds: TVM type key ↔ JSON kind, fields and constructor.

`export.py` reads the listed attributes of a TVM object and encodes each with its codec;
`load.py` decodes the same fields and passes them, in table order, to `build`. A field marked
`derived` (the `dtype` of most expressions) is written for readers and checked on load, but not
passed to the constructor, which computes it. Codecs are the `enc_<codec>` / `dec_<codec>` methods
of the exporter and loader:

    node      any node of this table (expression, statement, type, helper)
    opt_node  a node or null
    nodes     a list of nodes
    var       a variable: declared (with "type") at its first occurrence, referenced by name after
    vars      a list of variables
    str, int  plain JSON string / integer
    float     a float as an exact hex string (float.hex)
    dtype     a data type as a string ("float32", "int64", "float32x4", "void")
    value     an attribute value (bool, int, float, string, list, map, tensor, target or node)
    map       a string-keyed map of attribute values, as a JSON object with sorted keys
    for_kind  ForKind as a string; iter_type: IterVar type as a string
    str_imm   a StringImm as a plain string; str_imms: a list of them
    callee    the op of a Call: {"node": "Op", "name"} or {"node": "GlobalVar", "name"}
    layout    a buffer layout: null, "default" (row-major over the shape) or a TileLayout node
    axis      a layout axis by name; axis_map: axis name → expression

For node codecs, `Field.ref` names the schema definition the value must match (`Expr`, `Stmt`,
`Type`, or one kind); `schema_gen.py` builds `schema/tir.schema.json` from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvm import ir, s_tir, tirx
from tvm.tirx import _ffi_api as tirx_api
from tvm.tirx.layout import Iter, TileLayout

from microexport.archive.tir_json.spec import BINARY_KINDS, FOR_KINDS, ITER_TYPES, UNARY_KINDS


@dataclass(frozen=True)
class Field:
    """One JSON key of a node: its codec and the TVM attribute it comes from."""

    key: str
    codec: str
    attr: str = ""  # TVM attribute name; defaults to `key`
    derived: bool = False  # written and checked, not passed to the constructor
    omit_empty: bool = False  # left out of the JSON when None or empty
    getter: Callable[[Any], Any] | None = None  # reads the value when one attribute is not enough
    ref: str = "Expr"  # for node codecs: the schema definition the value must match

    def read(self, obj: Any) -> Any:
        """The value of this field on TVM object `obj`."""
        return self.getter(obj) if self.getter is not None else getattr(obj, self.attr or self.key)


@dataclass(frozen=True)
class NodeSpec:
    """A node kind: the TVM type key it encodes, its fields in document order, its constructor."""

    kind: str
    type_key: str
    fields: tuple[Field, ...]
    build: Callable[..., Any]
    # For TVM types shared by several kinds (ir.Var, ir.TensorLoad): does this spec apply?
    applies: Callable[[Any], bool] | None = None
    doc: str = ""
    # TVM fields the constructor always derives from the others (never written).
    implied: tuple[str, ...] = ()


DTYPE = Field("dtype", "dtype", "ty", derived=True)


def _is_buffer(obj: Any) -> bool:
    return isinstance(obj, ir.Var) and isinstance(obj.ty, tirx.BufferType)


def _f(key: str, codec: str = "node", ref: str = "Expr", **kwargs: Any) -> Field:
    return Field(key, codec, ref=ref, **kwargs)


def _binary(kind: str) -> NodeSpec:
    return NodeSpec(kind, f"prim.{kind}", (DTYPE, _f("a"), _f("b")), getattr(tirx, kind),
                    doc="binary expression a OP b")


def _unary(kind: str) -> NodeSpec:
    return NodeSpec(kind, f"prim.{kind}", (DTYPE, _f("a")), getattr(tirx, kind),
                    doc="unary expression")


def _call(ty: ir.Type, op: ir.Expr, args: list, ty_args: list | None, attrs: Any) -> ir.Call:
    return ir.Call(op, args, attrs, ty_args or [], None, ty)


def _buffer_type(
    dtype: str, shape: list, strides: list, scope: str, elem_offset: Any, data_alignment: int,
    offset_factor: int, layout: Any, allocated_addr: list,
) -> tirx.BufferType:
    if isinstance(layout, str):  # "default": row-major over the shape, as decl_buffer makes it
        layout = default_layout(shape)
    return tirx_api.BufferType(scope, dtype, shape, strides, elem_offset, data_alignment,
                               offset_factor, layout, allocated_addr, None)


def default_layout(shape: list) -> Any:
    """The layout `tirx.decl_buffer` gives a buffer of `shape` (None for a scalar buffer)."""
    from tvm.tirx.layout import S

    return TileLayout(S[tuple(shape)]) if len(shape) else None


def _for(loop_var: ir.Var, min_: Any, extent: Any, step: Any, kind: int, thread_binding: Any,
         annotations: dict, body: tirx.Stmt) -> tirx.For:
    return tirx.For(loop_var, min_, extent, tirx.ForKind(kind), body, thread_binding,
                    annotations, step)


def _sblock(name: str, iter_vars: list, alloc_buffers: list, match_buffers: list, reads: list,
            writes: list, annotations: dict, init: Any, body: tirx.Stmt) -> s_tir.SBlock:
    return s_tir.SBlock(iter_vars, reads, writes, name, body, init, alloc_buffers, match_buffers,
                        annotations)


def _assert(condition: Any, kind: ir.StringImm, parts: list) -> tirx.AssertStmt:
    # The Python AssertStmt wrapper passes its arguments in a different order than the FFI.
    return tirx_api.AssertStmt(condition, kind, parts, None)


def _tile_layout(shard: list, replica: list, offset: dict) -> TileLayout:
    return TileLayout.from_iters(shard, replica, offset)


_STMTS = (
    NodeSpec("SeqStmt", "tirx.SeqStmt", (_f("seq", "nodes", "Stmt"),), tirx.SeqStmt,
             doc="statements in order; a Bind/DeclBuffer/AllocBuffer is visible to the rest"),
    NodeSpec(
        "For", "tirx.For",
        (_f("loop_var", "var"), _f("min"), _f("extent"), _f("step", "opt_node"),
         _f("kind", "for_kind"), _f("thread_binding", "opt_node", "IterVar"),
         _f("annotations", "map"), _f("body", ref="Stmt")),
        _for, doc="for loop_var in [min, min + extent) by step (null: 1)",
    ),
    NodeSpec("While", "tirx.While", (_f("condition"), _f("body", ref="Stmt")), tirx.While),
    NodeSpec("IfThenElse", "tirx.IfThenElse",
             (_f("condition"), _f("then_case", ref="Stmt"), _f("else_case", "opt_node", "Stmt")),
             tirx.IfThenElse),
    NodeSpec("Evaluate", "tirx.Evaluate", (_f("value"),), tirx.Evaluate,
             doc="evaluate an expression for its side effects (usually a Call)"),
    NodeSpec("Bind", "tirx.Bind", (_f("var", "var"), _f("value")), tirx.Bind,
             doc="let var = value for the rest of the enclosing scope"),
    NodeSpec("AssertStmt", "tirx.AssertStmt",
             (_f("condition"), _f("error_kind", "str_imm"), _f("message_parts", "str_imms")),
             _assert, doc="fail with error_kind and the concatenated message unless condition"),
    NodeSpec(
        "AttrStmt", "tirx.AttrStmt",
        (_f("attr_node", "value", attr="node"), _f("attr_key", "str"), _f("value"),
         _f("body", ref="Stmt")),
        tirx.AttrStmt, doc="attribute attr_key = value on attr_node (TVM's AttrStmt.node)",
    ),
    NodeSpec("BufferStore", "tirx.BufferStore",
             (_f("buffer", "var"), _f("value"), _f("indices", "nodes")), tirx.BufferStore,
             doc="buffer[indices] = value"),
    NodeSpec("DeclBuffer", "tirx.DeclBuffer", (_f("buffer", "var"), _f("data")),
             lambda buffer, data: tirx.DeclBuffer(buffer, data=data),
             doc="declare buffer over the memory at pointer expression data"),
    NodeSpec("AllocBuffer", "tirx.AllocBuffer", (_f("buffer", "var"), _f("annotations", "map")),
             lambda buffer, annotations: tirx.AllocBuffer(buffer, annotations),
             doc="allocate buffer for the rest of the enclosing scope"),
    NodeSpec("Return", "tirx.Return", (_f("value"),), tirx.Return),
    NodeSpec("Break", "tirx.Break", (), tirx.Break),
    NodeSpec("Continue", "tirx.Continue", (), tirx.Continue),
    NodeSpec("SBlockRealize", "s_tir.SBlockRealize",
             (_f("iter_values", "nodes"), _f("predicate"), _f("block", ref="SBlock")),
             s_tir.SBlockRealize, doc="run block with its iter_vars bound to iter_values"),
    NodeSpec(
        "SBlock", "s_tir.SBlock",
        (_f("name", "str", attr="name_hint"), _f("iter_vars", "nodes", "IterVar"),
         _f("alloc_buffers", "vars"), _f("match_buffers", "nodes", "MatchBufferRegion"),
         _f("reads", "nodes", "BufferRegion"), _f("writes", "nodes", "BufferRegion"),
         _f("annotations", "map"), _f("init", "opt_node", "Stmt"), _f("body", ref="Stmt")),
        _sblock, doc="schedulable block (stage scheduled): iteration domain and accessed regions",
    ),
)

_EXPRS = (
    NodeSpec("IntImm", "ir.IntImm", (_f("dtype", "dtype", attr="ty"), _f("value", "int")),
             tirx.IntImm, doc="integer (or bool: 0/1) constant"),
    NodeSpec("FloatImm", "ir.FloatImm", (_f("dtype", "dtype", attr="ty"), _f("value", "float")),
             tirx.FloatImm, doc="float constant; value is exact: float.hex() of the double"),
    NodeSpec("StringImm", "ir.StringImm", (_f("value", "str"),), ir.StringImm,
             implied=("ty",)),
    *(_binary(kind) for kind in BINARY_KINDS),
    *(_unary(kind) for kind in UNARY_KINDS),
    NodeSpec("Cast", "prim.Cast", (_f("dtype", "dtype", attr="ty"), _f("value")), tirx.Cast),
    NodeSpec("Select", "prim.Select",
             (DTYPE, _f("condition"), _f("true_value"), _f("false_value")), tirx.Select,
             doc="condition ? true_value : false_value (both evaluated)"),
    NodeSpec("Ramp", "prim.Ramp", (DTYPE, _f("base"), _f("stride"), _f("lanes")), tirx.Ramp,
             doc="vector [base, base + stride, ...] of lanes elements"),
    NodeSpec("Broadcast", "prim.Broadcast", (DTYPE, _f("value"), _f("lanes")), tirx.Broadcast),
    NodeSpec("Shuffle", "prim.Shuffle", (DTYPE, _f("vectors", "nodes"), _f("indices", "nodes")),
             tirx.Shuffle),
    NodeSpec("Let", "prim.Let", (DTYPE, _f("var", "var"), _f("value"), _f("body")), tirx.Let,
             doc="body with var bound to value"),
    NodeSpec(
        "Call", "ir.Call",
        (_f("type", attr="ty", ref="Type"), _f("op", "callee"), _f("args", "nodes"),
         _f("ty_args", "nodes", "Type", omit_empty=True),
         _f("attrs", "value", omit_empty=True)),
        _call, doc="call of a TVM op (by name) or of a function of the module (GlobalVar)",
    ),
    NodeSpec("BufferLoad", "ir.TensorLoad",
             (DTYPE, _f("buffer", "var", attr="source"), _f("indices", "nodes")),
             tirx.BufferLoad, applies=lambda obj: _is_buffer(obj.source),
             doc="buffer[indices]"),
)

_TYPES = (
    NodeSpec("PrimType", "ir.PrimType", (_f("dtype", "dtype"),), ir.PrimType),
    NodeSpec("PointerType", "ir.PointerType",
             (_f("element_type", ref="Type"), _f("scope", "str", attr="storage_scope")),
             ir.PointerType, doc="pointer to element_type in storage scope (global, shared, ...)"),
    NodeSpec("TupleType", "ir.TupleType", (_f("fields", "nodes", "Type"),), ir.TupleType,
             doc="tuple type; with no fields: the void return type"),
    NodeSpec(
        "BufferType", "tirx.BufferType",
        (_f("dtype", "dtype"), _f("shape", "nodes"), _f("strides", "nodes"),
         _f("scope", "str", attr="storage_scope"), _f("elem_offset"),
         _f("data_alignment", "int"), _f("offset_factor", "int"),
         _f("layout", "layout", getter=lambda t: (t.layout, t.shape)),
         _f("allocated_addr", "nodes")),
        _buffer_type, doc="type of a buffer variable: element dtype, shape, strides, scope",
    ),
    NodeSpec("StringType", "ir.StringType", (), ir.StringType),
    NodeSpec("MissingType", "ir.Type", (), ir.Type.missing, doc="no type information"),
)

_OTHERS = (
    NodeSpec(
        "IterVar", "tirx.IterVar",
        (_f("var", "var"), _f("dom", "opt_node", "Range"), _f("iter_type", "iter_type"),
         _f("thread_tag", "str")),
        lambda var, dom, iter_type, tag: tirx.IterVar(dom, var, iter_type, tag),
        doc="iteration variable over dom (block axes, thread bindings)",
    ),
    NodeSpec("Range", "ir.Range", (_f("min"), _f("extent")), ir.Range.from_min_extent,
             doc="[min, min + extent)"),
    NodeSpec("BufferRegion", "ir.TensorRegion",
             (_f("buffer", "var", attr="source"), _f("region", "nodes", "Range")),
             tirx.BufferRegion, applies=lambda obj: _is_buffer(obj.source),
             doc="a rectangular region of a buffer, one Range per dimension", implied=("ty",)),
    NodeSpec("MatchBufferRegion", "s_tir.MatchBufferRegion",
             (_f("buffer", "var"), _f("source", ref="BufferRegion")), s_tir.MatchBufferRegion,
             doc="buffer declared as a view of source"),
    NodeSpec("TileLayout", "tirx.TileLayout",
             (_f("shard", "nodes", "Iter"), _f("replica", "nodes", "Iter"),
              _f("offset", "axis_map")),
             _tile_layout, doc="a buffer layout that is not the default row-major one"),
    NodeSpec("Iter", "tirx.Iter", (_f("extent"), _f("stride"), _f("axis", "axis")), Iter),
)

NODE_SPECS: tuple[NodeSpec, ...] = (*_STMTS, *_EXPRS, *_TYPES, *_OTHERS)
SPECS_BY_KIND: dict[str, NodeSpec] = {spec.kind: spec for spec in NODE_SPECS}


def specs_by_type_key() -> dict[str, tuple[NodeSpec, ...]]:
    """Type key → the specs that may encode an object of that type (most specific first)."""
    table: dict[str, tuple[NodeSpec, ...]] = {}
    for spec in NODE_SPECS:
        table[spec.type_key] = (*table.get(spec.type_key, ()), spec)
    return table


def type_key(obj: Any) -> str:
    """TVM's type key of an FFI object (`prim.Add`, `tirx.For`, …), or the Python type name."""
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    return info.type_key if info is not None else type(obj).__name__


FOR_KIND_VALUES = {name: index for index, name in enumerate(FOR_KINDS)}
ITER_TYPE_VALUES = {name: index for index, name in enumerate(ITER_TYPES)}
