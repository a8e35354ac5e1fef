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
class MemoryReport:
    """Static memory needs of a compiled model, all in bytes."""

    workspace_bytes: int
    constants_bytes: int
    io_bytes: int
    kernel_workspace_bytes: dict[str, int] = field(default_factory=dict)
