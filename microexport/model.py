"""Typed records passed between pipeline stages.

Every stage (frontend → lower → plan → aot → codegen → glue → package → platforms) takes and
returns these frozen dataclasses; no stage reaches into another's internals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_C_IDENT = re.compile(r"[^0-9A-Za-z_]")


def c_identifier(name: str) -> str:
    """Turn a tensor or model name into a valid C identifier (`input:0` → `input_0`)."""
    ident = _C_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = "t_" + ident
    return ident


def dtype_bytes(dtype: str) -> int:
    """Size of one element of `dtype` in bytes (`bool` is one byte)."""
    return 1 if dtype == "bool" else np.dtype(dtype).itemsize


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its original name, C name, static shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def c_name(self) -> str:
        return c_identifier(self.name)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class ConstantSpec:
    """A weight tensor stored in the read-only constant pool at `offset` bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class PoolSpec:
    """A workspace pool to plan: its C name, an optional size limit in bytes and an optional
    linker section for its static array (e.g. fast on-chip SRAM)."""

    name: str = "workspace"
    size_limit: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class PoolReport:
    """One workspace pool of the plan: name, bytes used, limit and linker section (or None)."""

    name: str
    nbytes: int
    size_limit: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class MemoryReport:
    """Static memory needs of a compiled model, all in bytes.

    `lower_bound_bytes` is the liveness lower bound of workspace + inputs + outputs;
    `io_placements` maps tensor names to (pool, offset) when inputs and outputs live in the
    workspace; `kernel_stack_bytes` counts the small buffers kernels keep as C locals.
    """

    workspace_bytes: int
    constants_bytes: int
    io_bytes: int
    kernel_workspace_bytes: dict[str, int] = field(default_factory=dict)
    kernel_stack_bytes: dict[str, int] = field(default_factory=dict)
    pools: tuple[PoolReport, ...] = ()
    lower_bound_bytes: int = 0
    planner: str = ""
    io_placements: dict[str, tuple[str, int]] = field(default_factory=dict)


# C type of one element of each dtype, as TVM's C code generator spells it.
C_TYPES: dict[str, str] = {
    "float32": "float",
    "float64": "double",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "uint16": "uint16_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
    "bool": "bool",
}

# C99 keywords (and a few standard macros used as identifiers); not valid as tensor C names.
C_KEYWORDS: frozenset[str] = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Bool", "_Complex", "_Imaginary", "bool",
    "true", "false", "NULL",
})


def c_type(dtype: str) -> str:
    """The C element type of `dtype` (`float32` → `float`); ValueError if C has no such type."""
    try:
        return C_TYPES[dtype]
    except KeyError:
        raise ValueError(
            f"dtype '{dtype}' has no C type: supported are {', '.join(sorted(C_TYPES))}"
        ) from None
