"""Names of the `microexport-tir` format, shared by the TVM side and the TVM-free readers.

Nothing here imports TVM. The node kinds listed are exactly the values a `"node"` key may take in a
version-1 document (see docs/tir-json.md and schema/tir.schema.json).
"""

from __future__ import annotations

from typing import Final

FORMAT: Final = "microexport-tir"
VERSION: Final = 1
GRAPH_FORMAT: Final = "microexport-graph"
GRAPH_VERSION: Final = 1

# Binary expressions: {"node": KIND, "dtype": ..., "a": expr, "b": expr}.
BINARY_KINDS: Final = (
    "Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max",
    "EQ", "NE", "LT", "LE", "GT", "GE", "And", "Or",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "LShift", "RShift",
)
# Unary expressions: {"node": KIND, "dtype": ..., "a": expr}.
UNARY_KINDS: Final = ("Not", "BitwiseNot")

EXPR_KINDS: Final = (
    "IntImm", "FloatImm", "StringImm", "Var", *BINARY_KINDS, *UNARY_KINDS,
    "Cast", "Select", "Ramp", "Broadcast", "Shuffle", "Let", "Call", "BufferLoad",
)
STMT_KINDS: Final = (
    "SeqStmt", "For", "While", "IfThenElse", "Evaluate", "Bind", "AssertStmt", "AttrStmt",
    "BufferStore", "DeclBuffer", "AllocBuffer", "Return", "Break", "Continue",
    "SBlockRealize", "SBlock",
)
TYPE_KINDS: Final = (
    "PrimType", "PointerType", "TupleType", "BufferType", "StringType", "MissingType",
)
# Helper nodes that appear inside statements, attributes and types.
OTHER_KINDS: Final = (
    "IterVar", "Range", "BufferRegion", "MatchBufferRegion", "Op", "GlobalVar",
    "Map", "Tensor", "Target", "Float", "DataType", "TileLayout", "Iter",
)
CONTAINER_KINDS: Final = ("IRModule", "PrimFunc")
ALL_KINDS: Final = (*CONTAINER_KINDS, *STMT_KINDS, *EXPR_KINDS, *TYPE_KINDS, *OTHER_KINDS)

# For loop kinds, in TVM's ForKind order.
FOR_KINDS: Final = ("serial", "parallel", "vectorized", "unrolled", "thread_binding")
# IterVar iteration types, in TVM's IterVar order.
ITER_TYPES: Final = (
    "data_par", "thread_index", "comm_reduce", "ordered", "opaque", "unrolled", "vectorized",
    "parallelized", "tensorized",
)
# Pipeline stages a microexport archive can carry (see microexport.api.TIR_STAGES).
STAGES: Final = ("scheduled", "lowered", "codegen")
