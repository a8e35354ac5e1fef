"""The typed record of a compiled model, and the small records the compiler stages build it from.

`CompiledModel` is the one thing compilation hands to everything downstream: the glue templates,
the archive writer, the platforms, the serial protocol and the size report read only it. It is
written to the archive as `metadata.json` (`CompiledModel.to_metadata`) and read back, validated
against the JSON Schema shipped next to this module (`schema/metadata.schema.json`) and checked
for consistency (`CompiledModel.from_metadata`), so a hand-edited or corrupt `metadata.json` is a
one-line error and never reaches a template: every name that ends up in C is a checked C
identifier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib.resources import files
from typing import Any, Final

import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16" dtype; apache-tvm depends on it)
import numpy as np

from microexport.errors import Error
from microexport.version import __version__

# Our own format of metadata.json; bumped whenever a field changes incompatibly. (`version` is
# the Model Library Format version, see microexport/archive/mlf_v7.py.)
METADATA_FORMAT: Final = 2
MAX_NAME_LENGTH: Final = 64  # model, tensor C and pool names: keeps every symbol and path short
WORKSPACE_MODES: Final = ("static", "external")
MAIN_RETURN_TYPE: Final = "int32_t"
# `--kernel-stack-limit` default: kernel buffers of at most this many bytes (a reduction's
# one-element accumulator, a few partial sums) are C locals the compiler keeps in registers,
# not workspace memory stored to and reloaded on every multiply-accumulate.
DEFAULT_KERNEL_STACK_LIMIT: Final = 64
# The int8 micro-kernels load packed weights and im2col columns two words at a time (LDRD),
# which faults on Cortex-M at an address that is not a multiple of a word: the memory plan
# aligns pools, constants and buffers to at least a word, whatever the requested alignment.
WORD_BYTES: Final = 4

_C_IDENT = re.compile(r"[^0-9A-Za-z_]")
# Matched with `fullmatch` (a `$` would accept a trailing newline); ASCII classes only.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECTION = re.compile(r"[.A-Za-z0-9_]{1,64}")
# Pool names the AOT main or the run wrapper already use: the constant pool's parameter
# `constants` and its static array `tvmgen_<name>_constant_pool` (= the symbol of a pool
# `constant`).
RESERVED_POOL_NAMES: Final = frozenset({"constants", "constant"})


def c_identifier(name: str) -> str:
    """Turn a tensor or model name into a valid C identifier (`input:0` → `input_0`)."""
    ident = _C_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = "t_" + ident
    return ident


def is_identifier(name: str) -> bool:
    """True if `name` is made of ASCII letters, digits and '_' and does not start with a digit."""
    return _IDENTIFIER.fullmatch(name) is not None


def is_c_identifier(name: str) -> bool:
    """True if `name` is a C identifier that is not a keyword."""
    return is_identifier(name) and name not in C_KEYWORDS


def symbol_prefix(model_name: str) -> str:
    """`tvmgen_<name>_`: the prefix of every C symbol of a model."""
    return f"tvmgen_{model_name}_"


def header_filename(model_name: str) -> str:
    """The interface header of a model, `tvmgen_<name>.h`."""
    return f"tvmgen_{model_name}.h"


def wrapper_filename(model_name: str) -> str:
    """The run wrapper of a model, `tvmgen_<name>.c`."""
    return f"tvmgen_{model_name}.c"


def lib_filename(model_name: str) -> str:
    """The kernel library of a model, `tvmgen_<name>_lib.c`."""
    return f"{symbol_prefix(model_name)}lib.c"


def pool_problem(name: str, section: str | None = None) -> str | None:
    """What is wrong with a workspace pool's name or linker section, or None: the one rule the
    command line, board files and the record share."""
    if (not is_c_identifier(name) or len(name) > MAX_NAME_LENGTH
            or name in RESERVED_POOL_NAMES):
        return (f"pool name {name[:80]!r} must be a C identifier of at most {MAX_NAME_LENGTH} "
                f"ASCII letters, digits and '_', not a C keyword, 'constants' or 'constant'")
    if section is not None and _SECTION.fullmatch(section) is None:
        return (f"bad linker section name {section[:80]!r} (at most 64 ASCII letters, digits, "
                f"'_' and '.')")
    return None


def dtype_bytes(dtype: str) -> int:
    """Size of one element of `dtype` in bytes (`bool` is one byte)."""
    return 1 if dtype == "bool" else np.dtype(dtype).itemsize


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of `shape` (1 for a scalar)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


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


# Types C has no portable type for that model inputs and outputs may still have: stored as their
# bits (float16: IEEE 754 binary16 in a uint16_t; bfloat16: the upper 16 bits of a float32 in a
# uint16_t; kernels compute on them in float32). numpy knows bfloat16 through ml_dtypes.
STORAGE_C_TYPES: dict[str, str] = {"float16": "uint16_t", "bfloat16": "uint16_t"}


def c_type(dtype: str) -> str:
    """The C element type of `dtype` (`float32` → `float`; `float16` → `uint16_t`, its bits);
    ValueError if C has no such type."""
    try:
        return C_TYPES.get(dtype) or STORAGE_C_TYPES[dtype]
    except KeyError:
        raise ValueError(
            f"dtype '{dtype}' has no C type: supported are {', '.join(sorted(C_TYPES))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Records built by the compiler stages


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its original name, static shape and dtype, its C name, and —
    when inputs and outputs are planned inside the workspace — its pool and byte offset."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    c_name: str = ""  # default: c_identifier(name)
    pool: str | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        if not self.c_name:
            object.__setattr__(self, "c_name", c_identifier(self.name))

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * dtype_bytes(self.dtype)

    @property
    def elements(self) -> int:
        return element_count(self.shape)

    @property
    def ctype(self) -> str:
        return c_type(self.dtype)


@dataclass(frozen=True)
class ConstantSpec:
    """A weight tensor stored in the read-only constant pool at `offset` bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * dtype_bytes(self.dtype)


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

    @property
    def upper_name(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class MemoryReport:
    """Static memory needs of a compiled model, all in bytes.

    `lower_bound_bytes` is the liveness lower bound of workspace + inputs + outputs; `pools` the
    workspace pools (their sizes add up to `workspace_bytes`); `alignment` the byte alignment of
    every pool and every buffer in them.
    """

    workspace_bytes: int
    constants_bytes: int
    io_bytes: int
    pools: tuple[PoolReport, ...] = ()
    lower_bound_bytes: int = 0
    planner: str = ""
    alignment: int = 16
    io_in_workspace: bool = False

    @property
    def workspace_pools(self) -> tuple[PoolReport, ...]:
        """The workspace pools (one pool `workspace` unless several were planned)."""
        return self.pools or (PoolReport("workspace", self.workspace_bytes),)


@dataclass(frozen=True)
class CParam:
    """One parameter of a generated C function: its name and C type (`float*`, `uint8_t*`)."""

    name: str
    ctype: str

    @property
    def declaration(self) -> str:
        return f"{self.ctype} {self.name}"


@dataclass(frozen=True)
class FunctionSignature:
    """A generated C function: symbol, parameters and return type."""

    symbol: str
    params: tuple[CParam, ...]
    return_type: str = MAIN_RETURN_TYPE

    @property
    def prototype(self) -> str:
        """The C declaration without the semicolon."""
        params = ", ".join(p.declaration for p in self.params) or "void"
        return f"{self.return_type} {self.symbol}({params})"


@dataclass(frozen=True)
class KernelSpec:
    """One operator kernel: its C signature, its scratch bytes in the workspace and the bytes of
    its small buffers kept as C locals."""

    signature: FunctionSignature
    workspace_bytes: int = 0
    stack_bytes: int = 0

    @property
    def symbol(self) -> str:
        return self.signature.symbol


# ---------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class CompiledModel:
    """Everything downstream needs to know about a compiled model (see the module docstring).

    Construction checks the record (C identifiers, pool placements, sizes): an inconsistent
    record raises `errors.Error`.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    memory: MemoryReport
    main: FunctionSignature
    kernels: tuple[KernelSpec, ...] = ()
    constants: tuple[ConstantSpec, ...] = ()
    target: str = "c"
    workspace_mode: str = "static"
    microexport_version: str = __version__

    def __post_init__(self) -> None:
        _check_record(self)

    # --- names ------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """`tvmgen_<name>_`: the prefix of every C symbol of this model."""
        return symbol_prefix(self.name)

    @property
    def upper_name(self) -> str:
        """The model name upper-cased, as used in macros (`TVMGEN_<NAME>_...`)."""
        return self.name.upper()

    @property
    def run_symbol(self) -> str:
        return f"{self.prefix}run"

    @property
    def header_name(self) -> str:
        return header_filename(self.name)

    @property
    def sources(self) -> tuple[str, str]:
        """The archive's C sources, as named in `codegen/host/src`: kernel library, run wrapper."""
        return lib_filename(self.name), wrapper_filename(self.name)

    @property
    def constant_pool_symbol(self) -> str:
        return f"{self.prefix}constant_pool"

    def pool_symbol(self, pool: str) -> str:
        """The run wrapper's static array of workspace pool `pool`."""
        return f"{self.prefix}{pool}_pool"

    @property
    def workspace_pools(self) -> tuple[PoolReport, ...]:
        return self.memory.workspace_pools

    @property
    def io_bytes(self) -> int:
        return sum(t.nbytes for t in self.inputs + self.outputs)

    def symbol_list(self) -> list[tuple[str, str]]:
        """Every symbol the archive's C defines with its class, in definition order, repeats
        included (the record's check refuses repeats): `code` (kernels, AOT main, run wrapper
        and map functions), `constants` (the constant pool) and `workspace` (the run wrapper's
        static pools)."""
        entries = [(kernel.symbol, "code") for kernel in self.kernels]
        entries += [(self.main.symbol, "code"), (self.run_symbol, "code")]
        if self.memory.io_in_workspace:
            entries += [(f"{self.prefix}map_inputs", "code"), (f"{self.prefix}map_outputs", "code")]
        if self.memory.constants_bytes:
            entries.append((self.constant_pool_symbol, "constants"))
        if self.workspace_mode == "static":
            entries += [(self.pool_symbol(pool.name), "workspace")
                        for pool in self.workspace_pools if pool.nbytes]
        return entries

    @property
    def symbols(self) -> dict[str, str]:
        """Symbol → class of everything the archive's C defines (see `symbol_list`); the size
        report classifies ELF symbols with this."""
        return dict(self.symbol_list())

    @property
    def max_kernel_stack_bytes(self) -> int:
        """The largest bytes of C locals of one kernel (what the stack must hold besides the
        caller's frames)."""
        return max((kernel.stack_bytes for kernel in self.kernels), default=0)

    # --- metadata.json ----------------------------------------------------------------------

    def to_metadata(self) -> dict[str, Any]:
        """Our fields of metadata.json (docs/archive.md); the archive writer adds the Model
        Library Format fields (`archive.mlf.metadata`). No timestamps: deterministic."""
        inputs = [_tensor_entry(t) for t in self.inputs]
        outputs = [_tensor_entry(t) for t in self.outputs]
        metadata: dict[str, Any] = {
            "microexport_format": METADATA_FORMAT,
            "microexport_version": self.microexport_version,
            "model_name": self.name,
            "target": self.target,
            "executor": "aot",
            "interface_api": "c",
            "unpacked_api": True,
            "workspace_mode": self.workspace_mode,
            "inputs": inputs,
            "outputs": outputs,
            "constants": [
                {"name": c.name, "shape": list(c.shape), "dtype": c.dtype, "offset": c.offset,
                 "size_bytes": c.nbytes}
                for c in self.constants
            ],
            "memory": {
                "workspace_bytes": self.memory.workspace_bytes,
                "constants_bytes": self.memory.constants_bytes,
                "io_bytes": self.memory.io_bytes,
                "io_in_workspace": self.memory.io_in_workspace,
                "lower_bound_bytes": self.memory.lower_bound_bytes,
                "planner": self.memory.planner,
                "pools": [
                    {"name": p.name, "bytes": p.nbytes, "size_limit": p.size_limit,
                     "section": p.section}
                    for p in self.workspace_pools
                ],
                "alignment": self.memory.alignment,
                "functions": {
                    k.symbol: {"workspace_bytes": k.workspace_bytes, "stack_bytes": k.stack_bytes}
                    for k in sorted(self.kernels, key=lambda k: k.symbol)
                },
            },
            "functions": {
                "main": _signature_entry(self.main),
                "kernels": [_signature_entry(k.signature)
                            for k in sorted(self.kernels, key=lambda k: k.symbol)],
            },
        }
        return metadata

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> CompiledModel:
        """Parse and check metadata.json bytes; a one-line Error naming `origin` if unusable."""
        try:
            metadata = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise Error(f"{origin}: metadata.json is not valid JSON ({err})") from None
        return cls.from_metadata(metadata, origin)

    @classmethod
    def from_metadata(cls, metadata: Any, origin: str = "metadata.json") -> CompiledModel:
        """The record of a parsed metadata.json, validated against the shipped JSON Schema and
        checked for consistency; a one-line Error naming `origin` and the JSON path if not."""
        if not isinstance(metadata, dict):
            raise Error(f"{origin}: metadata.json is not a JSON object")
        fmt = metadata.get("microexport_format")
        if fmt != METADATA_FORMAT:
            raise Error(
                f"{origin}: archive format {fmt!r} is not supported (this microexport reads "
                f"format {METADATA_FORMAT}): recompile the model"
            )
        _validate(metadata, origin)
        memory = metadata["memory"]
        try:
            return cls(
                name=metadata["model_name"],
                inputs=tuple(_tensor_spec(t) for t in metadata["inputs"]),
                outputs=tuple(_tensor_spec(t) for t in metadata["outputs"]),
                memory=MemoryReport(
                    workspace_bytes=memory["workspace_bytes"],
                    constants_bytes=memory["constants_bytes"],
                    io_bytes=memory["io_bytes"],
                    pools=tuple(PoolReport(p["name"], p["bytes"], p["size_limit"], p["section"])
                                for p in memory["pools"]),
                    lower_bound_bytes=memory["lower_bound_bytes"],
                    planner=memory["planner"],
                    alignment=memory["alignment"],
                    io_in_workspace=memory["io_in_workspace"],
                ),
                main=_signature(metadata["functions"]["main"]),
                kernels=_kernels(metadata, origin),
                constants=tuple(ConstantSpec(c["name"], tuple(c["shape"]), c["dtype"],
                                             c["offset"]) for c in metadata["constants"]),
                target=metadata["target"],
                workspace_mode=metadata["workspace_mode"],
                microexport_version=metadata["microexport_version"],
            )
        except Error as err:
            raise Error(f"{origin}: {err}") from None


# ---------------------------------------------------------------------------------------------
# metadata.json entries


def _tensor_entry(spec: TensorSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "c_name": spec.c_name,
        "shape": [int(d) for d in spec.shape],
        "dtype": spec.dtype,
        "size_bytes": spec.nbytes,
    }
    if spec.pool is not None:
        entry["workspace_pool"], entry["workspace_offset"] = spec.pool, spec.offset
    return entry


def _tensor_spec(entry: Mapping[str, Any]) -> TensorSpec:
    spec = TensorSpec(entry["name"], tuple(entry["shape"]), entry["dtype"], entry["c_name"],
                      entry.get("workspace_pool"), entry.get("workspace_offset"))
    if spec.nbytes != entry["size_bytes"]:
        raise Error(f"tensor '{spec.name}': size_bytes {entry['size_bytes']} does not match "
                    f"shape {list(spec.shape)} of {spec.dtype} ({spec.nbytes} bytes)")
    return spec


def _signature_entry(signature: FunctionSignature) -> dict[str, Any]:
    return {
        "symbol": signature.symbol,
        "return_type": signature.return_type,
        "params": [{"name": p.name, "ctype": p.ctype} for p in signature.params],
    }


def _signature(entry: Mapping[str, Any]) -> FunctionSignature:
    return FunctionSignature(
        entry["symbol"], tuple(CParam(p["name"], p["ctype"]) for p in entry["params"]),
        entry["return_type"],
    )


def _kernels(metadata: Mapping[str, Any], origin: str) -> tuple[KernelSpec, ...]:
    functions = metadata["memory"]["functions"]
    signatures = [_signature(k) for k in metadata["functions"]["kernels"]]
    symbols = [s.symbol for s in signatures]
    if sorted(symbols) != sorted(functions):
        raise Error(f"{origin}: memory.functions and functions.kernels name different kernels")
    return tuple(
        KernelSpec(s, functions[s.symbol]["workspace_bytes"], functions[s.symbol]["stack_bytes"])
        for s in signatures
    )


@cache
def metadata_schema() -> dict[str, Any]:
    """The JSON Schema of metadata.json shipped with the package."""
    text = files("microexport").joinpath("schema/metadata.schema.json").read_text("utf-8")
    return json.loads(text)


def _validate(metadata: Mapping[str, Any], origin: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(metadata_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(metadata))
    if error is not None:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                             for p in error.absolute_path)
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:197] + "..."
        raise Error(f"{origin}: metadata.json {path}: {message}")


# ---------------------------------------------------------------------------------------------
# consistency of a record


def _check_name(what: str, name: str, *, keyword_ok: bool = False) -> None:
    if (not is_identifier(name) or len(name) > MAX_NAME_LENGTH
            or (name in C_KEYWORDS and not keyword_ok)):
        raise Error(f"{what} {name[:80]!r} is not a C identifier of at most {MAX_NAME_LENGTH} "
                    f"characters (letters, digits and '_', not a C keyword): "
                    f"try '{c_identifier(name)[:MAX_NAME_LENGTH]}'")


def _check_record(model: CompiledModel) -> None:
    # The model name only appears inside tvmgen_<name>_* symbols, so `default` (tvmc's module
    # name) is fine.
    _check_name("model name", model.name, keyword_ok=True)
    if model.workspace_mode not in WORKSPACE_MODES:
        raise Error(f"unknown workspace mode '{model.workspace_mode}': "
                    f"use {' or '.join(WORKSPACE_MODES)}")
    memory = model.memory
    if memory.alignment <= 0 or memory.alignment & (memory.alignment - 1):
        raise Error(f"alignment must be a power of two, got {memory.alignment}")
    if not model.outputs:
        raise Error(f"model '{model.name}' has no outputs")
    for spec in model.inputs + model.outputs:
        try:
            c_type(spec.dtype)
        except ValueError as err:
            raise Error(f"tensor '{spec.name}': {err}") from None
    check_tensor_names(model.inputs, model.outputs)
    _check_pools(model)
    _check_functions(model)
    for spec in model.constants:
        if spec.offset < 0 or spec.offset + spec.nbytes > memory.constants_bytes:
            raise Error(
                f"constant '{spec.name}' ({spec.nbytes} B at offset {spec.offset}) lies "
                f"outside the {memory.constants_bytes} B constant pool"
            )


# Names the AOT main already uses for its pool parameters.
RESERVED_PARAMETERS = frozenset({"constants", "workspace"})
# Upper-case tensor names that would collide with the pool macros TVMGEN_<NAME>_<X>_SIZE.
RESERVED_MACRO_NAMES = frozenset({"WORKSPACE", "CONSTANTS"})


def check_tensor_names(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """Error if a tensor's C name is not a C identifier, if two tensors get the same C name or
    macro, or if one is reserved."""
    seen_c: dict[str, str] = {}
    seen_macro: dict[str, str] = {}
    for spec in inputs + outputs:
        cname = spec.c_name
        if not is_identifier(cname) or len(cname) > MAX_NAME_LENGTH:
            raise Error(f"tensor {spec.name[:80]!r} has the C name {cname[:80]!r}, which is not "
                        f"a C identifier of at most {MAX_NAME_LENGTH} characters: rename the "
                        f"tensor")
        if cname in C_KEYWORDS or cname in RESERVED_PARAMETERS:
            raise Error(
                f"tensor '{spec.name}' has the C name '{cname}', which is reserved "
                f"(a C keyword or a pool parameter): rename the tensor in the model"
            )
        if cname.upper() in RESERVED_MACRO_NAMES:
            raise Error(
                f"tensor '{spec.name}' would define a macro clashing with the pool size macro "
                f"*_{cname.upper()}_SIZE: rename the tensor in the model"
            )
        for seen, key in ((seen_c, cname), (seen_macro, cname.upper())):
            if key in seen:
                raise Error(
                    f"tensors '{seen[key]}' and '{spec.name}' both become the C name "
                    f"'{key}' after sanitising: rename one of them in the model"
                )
            seen[key] = spec.name


def _check_pools(model: CompiledModel) -> None:
    memory = model.memory
    pools = model.workspace_pools
    names = [pool.name for pool in pools]
    for pool in pools:
        problem = pool_problem(pool.name, pool.section)
        if problem is not None:
            raise Error(f"workspace pool: {problem}")
        if pool.nbytes < 0 or (pool.size_limit is not None and pool.nbytes > pool.size_limit):
            raise Error(f"workspace pool '{pool.name}': {pool.nbytes} bytes does not fit its "
                        f"limit {pool.size_limit}")
    if len({name.upper() for name in names}) != len(names):  # the macros use them upper-cased
        raise Error(f"workspace pool names must differ (also in case), got {', '.join(names)}")
    if sum(p.nbytes for p in pools) != memory.workspace_bytes:
        raise Error("workspace_bytes must be the total of the workspace pools")
    clashes = sorted(set(names) & {t.c_name for t in model.inputs + model.outputs})
    if clashes:
        raise Error(f"tensor C name '{clashes[0]}' is also a workspace pool name: rename one")
    # Size macros: TVMGEN_<NAME>_<TENSOR>_SIZE and, with several pools, ..._<POOL>_POOL_SIZE.
    pool_macros = {f"{name.upper()}_POOL" for name in names}
    macro_clashes = sorted(pool_macros & {t.c_name.upper() for t in model.inputs + model.outputs})
    if macro_clashes:
        raise Error(f"a tensor's size macro *_{macro_clashes[0]}_SIZE would clash with a "
                    f"workspace pool's: rename the tensor or the pool")
    sizes = {pool.name: pool.nbytes for pool in pools}
    placed = [t for t in model.inputs + model.outputs if t.pool is not None]
    if memory.io_in_workspace and len(placed) != len(model.inputs + model.outputs):
        raise Error("with inputs and outputs in the workspace, every one needs a placement")
    if placed and not memory.io_in_workspace:
        raise Error("tensors are placed in the workspace but io_in_workspace is false")
    for spec in placed:
        if (spec.pool not in sizes or spec.offset is None or spec.offset < 0
                or spec.offset + spec.nbytes > sizes[spec.pool]):
            raise Error(f"tensor '{spec.name}' placed outside workspace pool '{spec.pool}'")


_PARAM_TYPE = re.compile(r"^(?:" + "|".join(sorted(set(C_TYPES.values()) | {"void"}))
                         + r")\*?$")


def _check_functions(model: CompiledModel) -> None:
    symbols = [model.main.symbol] + [k.symbol for k in model.kernels]
    for symbol in symbols:
        if not is_c_identifier(symbol) or not symbol.startswith(model.prefix):
            raise Error(f"function '{symbol[:80]}' is not a C identifier starting with "
                        f"'{model.prefix}'")
    if len(set(symbols)) != len(symbols):
        raise Error("two generated functions have the same symbol")
    for signature in [model.main] + [k.signature for k in model.kernels]:
        if signature.return_type != MAIN_RETURN_TYPE:
            raise Error(f"function '{signature.symbol}' must return {MAIN_RETURN_TYPE}")
        names = [p.name for p in signature.params]
        if len(set(names)) != len(names):
            raise Error(f"function '{signature.symbol}' has two parameters with the same name")
        for param in signature.params:
            if not is_c_identifier(param.name) or not _PARAM_TYPE.match(param.ctype):
                raise Error(f"function '{signature.symbol}': bad parameter "
                            f"'{param.ctype[:40]} {param.name[:80]}'")
    for kernel in model.kernels:
        if kernel.workspace_bytes < 0 or kernel.stack_bytes < 0:
            raise Error(f"kernel '{kernel.symbol}' has negative workspace or stack bytes")
    expected = main_parameters(model)
    if model.main.params != expected:
        want = ", ".join(p.declaration for p in expected) or "void"
        raise Error(f"function '{model.main.symbol}' does not take the model's inputs, outputs "
                    f"and pools: expected ({want[:200]})")
    if model.memory.io_bytes != model.io_bytes:
        raise Error(f"io_bytes is {model.memory.io_bytes}, the inputs and outputs take "
                    f"{model.io_bytes} bytes")
    defined = [symbol for symbol, _ in model.symbol_list()]
    repeated = sorted({symbol for symbol in defined if defined.count(symbol) > 1})
    if repeated:
        raise Error(f"two generated C definitions are both called '{repeated[0]}': rename a "
                    f"workspace pool")


def main_parameters(model: CompiledModel) -> tuple[CParam, ...]:
    """The AOT main's parameters as the AOT builder lays them out: each input and output (unless
    they live in the workspace), the constant pool and every non-empty workspace pool."""
    params = []
    if not model.memory.io_in_workspace:
        params += [CParam(t.c_name, f"{t.ctype}*") for t in model.inputs + model.outputs]
    if model.memory.constants_bytes:
        params.append(CParam("constants", "uint8_t*"))
    params += [CParam(p.name, "uint8_t*") for p in model.workspace_pools if p.nbytes]
    return tuple(params)


def with_placements(
    specs: tuple[TensorSpec, ...], placements: Mapping[str, tuple[str, int]]
) -> tuple[TensorSpec, ...]:
    """`specs` with the (pool, offset) of each tensor named in `placements`."""
    return tuple(
        replace(spec, pool=placements[spec.name][0], offset=placements[spec.name][1])
        if spec.name in placements else spec
        for spec in specs
    )
