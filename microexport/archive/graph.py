"""The model graph, derived from a `microexport-tir` document alone (no TVM).

`graph_from_tir` walks the AOT main that microexport/compiler/aot.py builds, statement by
statement, and reads the tensors and kernel calls off the TIR idioms aot.py writes (listed in
docs/tir-json.md, "How the AOT main is read"): one `DeclBuffer` per tensor on a pointer into a
main parameter, `status_i = kernel(args...)` per call. Each idiom it relies on is checked; a
document that breaks one is a TirJsonError naming the JSON path. Which kernel arguments are
outputs comes from the kernel bodies: a pointer parameter whose buffers are stored to is written.
The result is a `microexport-graph` version-1 document (docs/tir-json.md): nodes (kernel calls in
order), tensors (pool, offset, size, producer, consumers), constants (with their bytes), model
inputs and outputs.

`load_graph` reads a graph document back (it may be hand-written): the shipped JSON Schema
(tir_json/schema/graph.schema.json) and the cross-references (`check_graph`), each problem a
one-line TirJsonError naming the JSON path. `render_graph_walker` renders, from that document
alone, a C runtime that calls the kernels of `tvmgen_<model>_lib.c` itself over its own static
buffers (templates/runtimes/graph-walker/); every string of the document reaches the C only as a
checked C identifier, a dtype with a C type, or comment-safe text (`walker_variables`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

import jsonschema

from microexport.archive.glue import comment_safe, glue_environment, hex_rows, render
from microexport.archive.tir_json.reader import (
    called_functions,
    callee,
    declarations,
    dtype_bytes,
    element_count,
    int_value,
    is_call,
    json_path,
    parse,
    shape_of,
    statements,
    validated,
    walk,
)
from microexport.archive.tir_json.spec import GRAPH_FORMAT, GRAPH_VERSION
from microexport.errors import TirJsonError
from microexport.model import C_KEYWORDS, C_TYPES, c_identifier

# Equal to aot.CONSTANTS_ATTR, aot.IO_ATTR and quantization.QUANTIZATION_ATTR (graph.py never
# imports tvm).
CONSTANTS_ATTR = "microexport.constants"
IO_ATTR = "microexport.io"
QUANTIZATION_ATTR = "microexport.quantization"
CONSTANTS_POOL = "constants"
MAIN_SUFFIX = "___tvm_main__"
WALKER_TEMPLATES = "runtimes/graph-walker"
WALKER_FILES = {  # template → output file name pattern
    "walker.h.j2": "{model}_walker.h",
    "walker.c.j2": "{model}_walker.c",
    "walker_main.c.j2": "{model}_walker_main.c",
}
SCHEMA_PACKAGE = "microexport.archive.tir_json"
GRAPH_SCHEMA_FILE = "schema/graph.schema.json"  # in SCHEMA_PACKAGE, next to tir.schema.json
IO_POOLS: Final = ("input", "output")  # the `pool` of a model input or output
# Names the walker's C cannot give a kernel or a kernel parameter: keywords, and the types its
# templates use.
C_RESERVED: Final = C_KEYWORDS | frozenset(C_TYPES.values())
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SHOWN = 60  # longest name or value quoted in an error message


@dataclass(frozen=True)
class Pointer:
    """Where a pointer of the main points: a main parameter and a byte offset into it."""

    base: str
    offset: int = 0


@dataclass
class _Buffer:
    """A buffer the main declares: a tensor, or the byte array of a pool."""

    name: str
    dtype: str
    shape: list[int]
    pointer: Pointer
    size: int  # bytes
    hint: str = ""  # the buffer's name hint (`name` differs when two tensors share one)


@dataclass
class KernelParam:
    """One parameter of a kernel, as its body uses it."""

    name: str
    dtype: str  # element dtype of a pointer parameter, or the scalar dtype
    pointer: bool
    read: bool = False
    written: bool = False
    declared_bytes: int = 0  # largest buffer declared directly on the parameter

    @property
    def access(self) -> str:
        """"read", "write", "readwrite" or "none"."""
        return {(False, False): "none", (True, False): "read", (False, True): "write",
                (True, True): "readwrite"}[(self.read, self.written)]


@dataclass
class _Call:
    """A kernel call of the main: its arguments, each a tensor, a scratch area or a value."""

    index: int
    kernel: str
    status: str | None
    args: list[dict[str, Any]]


# -- kernels ---------------------------------------------------------------------------------


def _param_dtype(var_type: Mapping[str, Any]) -> tuple[str, bool]:
    kind = var_type["node"]
    if kind == "PointerType":
        element = var_type["element_type"]
        return (element["dtype"] if element["node"] == "PrimType" else "void"), True
    if kind == "BufferType":
        return var_type["dtype"], True
    if kind == "PrimType":
        return var_type["dtype"], False
    return kind, False


def _buffer_bytes(buffer_type: Mapping[str, Any], path: str) -> int:
    count = element_count(shape_of(buffer_type))
    return 0 if count is None else count * dtype_bytes(buffer_type["dtype"], f"{path}.dtype")


def kernel_params(func: Mapping[str, Any], path: str = "$") -> list[KernelParam]:
    """The parameters of a kernel (a PrimFunc node at `path`) with how its body accesses each:
    a pointer parameter is read / written where a buffer declared on it (through DeclBuffer and
    pointer Binds) is loaded / stored; a load under `address_of` only takes an address."""
    decls = declarations(func)
    params: dict[str, KernelParam] = {}
    roots: dict[str, str | None] = {}  # buffer or pointer variable → the parameter it is on
    for var in func["params"]:
        dtype, pointer = _param_dtype(var["type"])
        params[var["name"]] = KernelParam(var["name"], dtype, pointer)
        roots[var["name"]] = var["name"] if pointer else None

    def root(expr: Mapping[str, Any]) -> str | None:
        if expr["node"] == "Var":
            return roots.get(expr["name"])
        if expr["node"] == "Call" and expr["op"]["node"] == "Op" and expr["args"]:
            return root(expr["args"][0])  # buffer_data, reinterpret, address_of
        if expr["node"] == "BufferLoad":
            return roots.get(expr["buffer"]["name"])
        return None

    addressed: set[int] = set()
    for node_path, node in walk(func["body"], f"{path}.body"):
        kind = node["node"]
        if kind == "DeclBuffer":
            name, data = node["buffer"]["name"], node["data"]
            roots[name] = root(data)
            if data["node"] == "Var" and data["name"] in params:
                size = _buffer_bytes(decls[name]["type"], f"{node_path}.buffer.type")
                param = params[data["name"]]
                param.declared_bytes = max(param.declared_bytes, size)
        elif kind == "Bind" and decls[node["var"]["name"]]["type"]["node"] == "PointerType":
            roots[node["var"]["name"]] = root(node["value"])
        elif is_call(node, "tirx.address_of"):
            addressed.update(id(arg) for arg in node["args"])
        elif kind in ("BufferStore", "BufferLoad") and id(node) not in addressed:
            param = params.get(roots.get(node["buffer"]["name"]) or "")
            if param is not None and kind == "BufferStore":
                param.written = True
            elif param is not None:
                param.read = True
    return list(params.values())


# -- the AOT main ----------------------------------------------------------------------------


def find_main(module: Mapping[str, Any]) -> dict[str, Any]:
    """The AOT main of a module: the function named `*___tvm_main__`, else the one function
    that calls others without being called."""
    functions = module["functions"]
    named = [f for f in functions if f["name"].endswith(MAIN_SUFFIX)]
    if len(named) == 1:
        return named[0]
    called = {name for f in functions for name in called_functions(f)}
    roots = [f for f in functions if called_functions(f) and f["name"] not in called]
    if len(roots) != 1:
        names = ", ".join(f["name"] for f in roots) or "none"
        raise TirJsonError(f"$.modules: cannot tell the AOT main (candidates: {names})")
    return roots[0]


def _single_var(expr: Mapping[str, Any]) -> str | None:
    """The variable name of a Call's only argument, if that is a variable (`buffer_data(x)`)."""
    args = expr["args"]
    return args[0]["name"] if len(args) == 1 and args[0]["node"] == "Var" else None


class _MainWalker:
    """Reads the pools, tensors and kernel calls of an AOT main, one statement at a time."""

    def __init__(self, module: Mapping[str, Any], main: Mapping[str, Any], module_path: str
                 ) -> None:
        self.functions = {f["name"]: (f"{module_path}.functions[{index}]", f)
                          for index, f in enumerate(module["functions"])}
        self.main, self.name = main, main["name"]
        self.path = path = self.functions[self.name][0]
        self.decls = declarations(main)
        self.params = [p["name"] for p in main["params"]]
        for index, param in enumerate(main["params"]):
            if param["type"]["node"] != "PointerType":
                raise TirJsonError(f"{path}.params[{index}]: parameter '{param['name']}' of the "
                                   "AOT main is not a pointer")
        self.pointers = {name: Pointer(name) for name in self.params}  # pointer variables
        self.buffers: dict[str, _Buffer] = {}  # buffer variable → buffer
        self.tensor_vars: dict[str, _Buffer] = {}  # buffer variable → tensor
        self.pool_vars = {  # buffers the main takes addresses in: the pools' byte arrays
            node["args"][0]["buffer"]["name"] for _, node in walk(main["body"])
            if is_call(node, "tirx.address_of") and node["args"]
            and node["args"][0]["node"] == "BufferLoad"}
        self.pools: dict[str, int] = {}  # pool parameter → size in bytes
        self.tensors: list[_Buffer] = []
        self.kernels: dict[str, list[KernelParam]] = {}  # kernel called → its parameters
        self.calls: list[_Call] = []
        self.branches: list[dict[str, Any]] = []  # the run-time `If`s, as in the document
        self.within: list[tuple[int, str]] = []  # the branches the current statement is in
        for stmt_path, stmt in statements(main["body"], f"{path}.body"):
            self.statement(stmt, stmt_path)
        for tensor in self.tensors:
            pool_size = self.pools.get(tensor.pointer.base)
            if pool_size is not None and tensor.pointer.offset + tensor.size > pool_size:
                raise TirJsonError(
                    f"{path}.body: tensor '{tensor.name}' ({tensor.size} bytes at offset "
                    f"{tensor.pointer.offset}) does not fit in pool '{tensor.pointer.base}' of "
                    f"{pool_size} bytes")

    def statement(self, stmt: Mapping[str, Any], path: str) -> None:
        kind = stmt["node"]
        if kind == "DeclBuffer":
            self.declare(stmt, path)
        elif kind in ("Bind", "Evaluate") and callee(stmt["value"]) is not None:
            status = stmt["var"]["name"] if kind == "Bind" else None
            self.call(stmt["value"], status, f"{path}.value")
        elif kind == "Bind" and self.decls[stmt["var"]["name"]]["type"]["node"] == "PointerType":
            self.pointers[stmt["var"]["name"]] = self.pointer(stmt["value"], f"{path}.value")
        elif kind == "IfThenElse" and any(callee(node) is not None for _, node in walk(stmt)):
            self.branch(stmt, path)
        elif any(callee(node) is not None for _, node in walk(stmt)):
            raise TirJsonError(f"{path}: kernel call nested in a {kind}: not an AOT main")

    def branch(self, stmt: Mapping[str, Any], path: str) -> None:
        """A run-time `If`: `if (C[0]) {...} else {...}` or `if (C[0] != 0) ...`, C a tensor
        declared before; the kernel calls of each side are read like the main's own."""
        cond = stmt["condition"]
        load = cond
        if cond["node"] == "NE" and int_value(cond["b"]) == 0:
            load = cond["a"]
        tensor = (self.tensor_vars.get(load["buffer"]["name"])
                  if load["node"] == "BufferLoad" else None)
        if tensor is None or any(int_value(i) != 0 for i in load["indices"]):
            raise TirJsonError(f"{path}.condition: an If around kernel calls must test element "
                               "0 of a tensor declared before (C[0] or C[0] != 0)")
        index = len(self.branches)
        parent = ({"branch": self.within[-1][0], "side": self.within[-1][1]}
                  if self.within else None)
        self.branches.append({"condition": tensor.name, "then": [], "else": [],
                              "parent": parent})
        for side, key in (("then", "then_case"), ("else", "else_case")):
            self.within.append((index, side))
            for stmt_path, inner in statements(stmt[key], f"{path}.{key}"):
                if inner["node"] == "DeclBuffer" or (
                        inner["node"] == "Bind" and callee(inner["value"]) is None):
                    raise TirJsonError(f"{stmt_path}: a declaration inside a branch (the main "
                                       "declares every tensor before its first If)")
                self.statement(inner, stmt_path)
            self.within.pop()

    def declare(self, stmt: Mapping[str, Any], path: str) -> None:
        var = self.decls[stmt["buffer"]["name"]]
        buffer_type = var["type"]
        shape = shape_of(buffer_type)
        if any(dim is None or dim < 0 for dim in shape):
            raise TirJsonError(f"{path}.buffer: tensor '{var['name']}' has a shape that is not "
                               "constant")
        pointer = self.pointer(stmt["data"], f"{path}.data")
        size = _buffer_bytes(buffer_type, f"{path}.buffer.type")
        hint = var.get("hint", var["name"])
        buffer = _Buffer(hint, buffer_type["dtype"], shape, pointer, size, hint)
        self.buffers[var["name"]] = buffer
        if var["name"] in self.pool_vars:
            if pointer.offset != 0 or pointer.base in self.pools:
                raise TirJsonError(f"{path}: pool buffer '{var['name']}' is not the only buffer "
                                   f"declared directly on parameter '{pointer.base}'")
            self.pools[pointer.base] = size
            return
        if any(t.name == buffer.name for t in self.tensors):  # two tensors with one name hint
            buffer.name = var["name"]
            if any(t.name == buffer.name for t in self.tensors):
                raise TirJsonError(f"{path}.buffer: two tensors named '{buffer.name}'")
        self.tensors.append(buffer)
        self.tensor_vars[var["name"]] = buffer

    def pointer(self, expr: Mapping[str, Any], path: str) -> Pointer:
        """Where pointer expression `expr` points: a parameter or pointer variable, or
        `reinterpret(P)`, `buffer_data(B)`, `address_of(B[i])` (B a buffer declared earlier,
        i a constant index within it)."""
        kind = expr["node"]
        if kind == "Var" and expr["name"] in self.pointers:
            return self.pointers[expr["name"]]
        if is_call(expr, "tirx.reinterpret") and len(expr["args"]) == 1:
            return self.pointer(expr["args"][0], f"{path}.args[0]")
        if is_call(expr, "tirx.buffer_data") and _single_var(expr) in self.buffers:
            return self.buffers[str(_single_var(expr))].pointer
        if (is_call(expr, "tirx.address_of") and len(expr["args"]) == 1
                and expr["args"][0]["node"] == "BufferLoad"):
            load = expr["args"][0]
            buffer = self.buffers.get(load["buffer"]["name"])
            if buffer is None:
                raise TirJsonError(f"{path}.args[0].buffer: '{load['buffer']['name']}' is not a "
                                   "buffer the main declared before")
            index = int_value(load["indices"][0]) if len(load["indices"]) == 1 else None
            count = element_count(buffer.shape)
            if index is None or count is None or not 0 <= index <= count:
                raise TirJsonError(f"{path}.args[0].indices: not one constant index within "
                                   f"'{load['buffer']['name']}' (0 to {count})")
            offset = buffer.pointer.offset + index * dtype_bytes(buffer.dtype, path)
            return Pointer(buffer.pointer.base, offset)
        what = f"'{expr['name']}'" if kind == "Var" else "expression"
        raise TirJsonError(f"{path}: unsupported pointer {what} in the AOT main (a parameter, a "
                           "pointer bound before, buffer_data, reinterpret or address_of)")

    def call(self, expr: Mapping[str, Any], status: str | None, path: str) -> None:
        kernel = str(callee(expr))
        if kernel == self.name:
            raise TirJsonError(f"{path}: the AOT main calls itself")
        if kernel not in self.functions:
            raise TirJsonError(f"{path}: the main calls '{kernel}', which the module lacks")
        if kernel not in self.kernels:
            kernel_path, func = self.functions[kernel]
            self.kernels[kernel] = kernel_params(func, kernel_path)
        params, args = self.kernels[kernel], expr["args"]
        if len(params) != len(args):
            raise TirJsonError(f"{path}: '{kernel}' takes {len(params)} arguments, the main "
                               f"passes {len(args)}")
        for branch, side in self.within:
            self.branches[branch][side].append(len(self.calls))
        self.calls.append(_Call(len(self.calls), kernel, status, [
            self.argument(arg, param, f"{path}.args[{index}]")
            for index, (arg, param) in enumerate(zip(args, params, strict=True))]))

    def argument(self, arg: Mapping[str, Any], param: KernelParam, path: str) -> dict[str, Any]:
        """A tensor (`buffer_data` of one, or a pointer variable pointing where one starts), in
        the role the kernel's parameter gives it; a pool address computed in the call (the
        kernel's scratch area, even where it coincides with a tensor that is no longer live); or
        any other value."""
        kind = arg["node"]
        if kind not in ("Var", "Call"):
            return {"kind": "value", "value": arg, "param": param.name}
        tensor = None
        if is_call(arg, "tirx.buffer_data") and _single_var(arg) in self.tensor_vars:
            tensor = self.tensor_vars[str(_single_var(arg))]
        else:
            pointer = self.pointer(arg, path)
            if kind == "Var":
                tensor = next((t for t in self.tensors if t.pointer == pointer), None)
        if tensor is None:
            return {"kind": "scratch", "pool": pointer.base, "offset": pointer.offset,
                    "param": param.name, "size": param.declared_bytes}
        return {"kind": "tensor", "tensor": tensor.name, "param": param.name,
                "role": "output" if param.written else "input"}


# -- the graph document ----------------------------------------------------------------------


def _model_name(main_name: str) -> str:
    if main_name.startswith("tvmgen_") and main_name.endswith(MAIN_SUFFIX):
        return main_name[len("tvmgen_"): -len(MAIN_SUFFIX)]
    return c_identifier(main_name)


def _map_items(main: Mapping[str, Any], attr: str, path: str) -> dict[str, Any] | None:
    """The items of the main's string-keyed Map attribute `attr`; None if it has none."""
    value = main["attrs"].get(attr)
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("node") != "Map" or "items" not in value:
        raise TirJsonError(f"{json_path(path, attr)}: expected a Map with string keys")
    return dict(value["items"])


def _constant_data(main: Mapping[str, Any], path: str) -> dict[str, tuple[str, str]]:
    """Constant name (as a C identifier) → (JSON path, base64 data), from microexport.constants."""
    items = _map_items(main, CONSTANTS_ATTR, f"{path}.attrs")
    data = {}
    for name, tensor in (items or {}).items():
        item_path = json_path(json_path(json_path(f"{path}.attrs", CONSTANTS_ATTR), "items"), name)
        if not isinstance(tensor, dict) or tensor.get("node") != "Tensor":
            raise TirJsonError(f"{item_path}: expected a Tensor")
        data[c_identifier(name)] = (item_path, tensor["data"])
    return data


def _kernel_entry(name: str, params: list[KernelParam], ret_type: Mapping[str, Any]
                  ) -> dict[str, Any]:
    return {
        "name": name,
        "returns": ret_type["dtype"] if ret_type["node"] == "PrimType" else "void",
        "params": [
            {"name": p.name, "dtype": p.dtype, "pointer": p.pointer, "access": p.access,
             "declared_bytes": p.declared_bytes}
            for p in params
        ],
    }


def _main_module(modules: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The module holding the AOT main (the first one, unless another has a `*___tvm_main__`)."""
    for index, module in enumerate(modules):
        if any(f["name"].endswith(MAIN_SUFFIX) for f in module["functions"]):
            return index, module
    return 0, modules[0]


def graph_from_tir(doc: str | bytes | Mapping[str, Any], *, validate: bool = True
                   ) -> dict[str, Any]:
    """The `microexport-graph` document of a `microexport-tir` document's AOT main.

    `validate=False` skips `reader.parse`, for a document already parsed (or just exported)."""
    data = parse(doc) if validate else dict(doc)  # type: ignore[arg-type]
    index, module = _main_module(data["modules"])
    walker = _MainWalker(module, find_main(module), f"$.modules[{index}]")
    return _document(walker)


def _uses(calls: list[_Call]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Tensor → the first call writing it, and tensor → the calls reading it."""
    producers: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for call in calls:
        for arg in call.args:
            if arg["kind"] != "tensor":
                continue
            if arg["role"] == "output":
                producers.setdefault(arg["tensor"], call.index)
            else:
                consumers.setdefault(arg["tensor"], []).append(call.index)
    return producers, consumers


def _quantization(main: Mapping[str, Any], path: str, tensors: list[_Buffer]
                  ) -> dict[str, dict[str, Any]]:
    """Tensor name hint → `{"scale", "zero_point", "axis"}` from the main's
    `microexport.quantization` attribute (none without it; a hint two tensors share, or that
    names no tensor, is ignored). TirJsonError for an entry of the wrong shape."""
    items = _map_items(main, QUANTIZATION_ATTR, f"{path}.attrs")
    hints = [t.hint for t in tensors]
    found = {}
    for name, value in (items or {}).items():
        item_path = json_path(json_path(json_path(f"{path}.attrs", QUANTIZATION_ATTR), "items"),
                              name)
        fields = value.get("items") if isinstance(value, dict) and value.get("node") == "Map" \
            else None
        if not isinstance(fields, dict) or set(fields) != {"scale", "zero_point", "axis"}:
            raise TirJsonError(f"{item_path}: expected a Map of scale, zero_point and axis")
        scale, zero_point, axis = fields["scale"], fields["zero_point"], fields["axis"]
        if not (isinstance(scale, list) and scale
                and all(isinstance(v, float) and math.isfinite(v) for v in scale)):
            raise TirJsonError(f"{item_path}.items.scale: expected a list of finite floats")
        if not (isinstance(zero_point, list) and len(zero_point) == len(scale)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in zero_point)):
            raise TirJsonError(f"{item_path}.items.zero_point: expected one integer per scale")
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)
                                 or axis < 0):
            raise TirJsonError(f"{item_path}.items.axis: expected null or a dimension index")
        if hints.count(name) == 1:
            found[name] = {"scale": scale, "zero_point": zero_point, "axis": axis}
    return found


def _check_quantization(tensor: Mapping[str, Any], path: str) -> None:
    """A tensor's `quantization` fits it: one zero point per scale; one scale and axis null
    (per tensor), or one scale per index of dimension `axis` (per channel)."""
    q, shape = tensor["quantization"], tensor["shape"]
    scales = len(q["scale"])
    if len(q["zero_point"]) != scales:
        raise TirJsonError(f"{path}.zero_point: {len(q['zero_point'])} zero points for "
                           f"{scales} scales")
    if q["axis"] is None:
        if scales != 1:
            raise TirJsonError(f"{path}.axis: null (per tensor) with {scales} scales")
    elif q["axis"] >= len(shape) or shape[q["axis"]] != scales:
        raise TirJsonError(f"{path}.axis: {scales} scales along axis {q['axis']} of a tensor "
                           f"of shape {shape}")


def _tensor_entries(walker: _MainWalker, io_params: list[str]) -> list[dict[str, Any]]:
    producers, consumers = _uses(walker.calls)
    quantization = _quantization(walker.main, walker.path, walker.tensors)
    entries = []
    for tensor in walker.tensors:
        base = tensor.pointer.base
        entry: dict[str, Any] = {
            "name": tensor.name, "dtype": tensor.dtype, "shape": tensor.shape, "pool": base,
            "offset": tensor.pointer.offset, "size": tensor.size,
            "producer": producers.get(tensor.name), "consumers": consumers.get(tensor.name, []),
        }
        if base in io_params:
            entry["pool"] = "output" if tensor.name in producers else "input"
            entry["param"] = base
        if tensor.hint in quantization:
            entry["quantization"] = quantization[tensor.hint]
            _check_quantization(entry, json_path(json_path(json_path(
                f"{walker.path}.attrs", QUANTIZATION_ATTR), "items"), tensor.hint) + ".items")
        entries.append(entry)
    return entries


def _model_io(tensors: list[dict[str, Any]], io_params: list[str], constant_pool: str | None,
              main: Mapping[str, Any], path: str) -> tuple[list[str], list[str]]:
    """Model inputs and outputs: as the main's `microexport.io` attribute lists them (ignored if
    it names something that is not a tensor of the main); else the tensors on the main's non-pool
    parameters, or, with inputs and outputs inside the workspace, tensors no call writes /
    written and never read (TIR from elsewhere)."""
    items = _map_items(main, IO_ATTR, f"{path}.attrs")
    if items is not None:
        lists = [items.get("inputs", []), items.get("outputs", [])]
        if not all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                   for names in lists):
            raise TirJsonError(f"{json_path(f'{path}.attrs', IO_ATTR)}.items: expected inputs "
                               "and outputs as lists of tensor names")
        known = {t["name"] for t in tensors}
        if all(name in known for names in lists for name in names):
            return lists[0], lists[1]
    if io_params:
        return ([t["name"] for t in tensors if t["pool"] == "input"],
                [t["name"] for t in tensors if t["pool"] == "output"])
    inputs = [t["name"] for t in tensors
              if t["producer"] is None and t["pool"] != constant_pool and t["consumers"]]
    outputs = [t["name"] for t in tensors if t["producer"] is not None and not t["consumers"]]
    return inputs, outputs


def _constant_entries(tensors: list[dict[str, Any]], main: Mapping[str, Any], path: str,
                      constant_pool: str | None) -> list[dict[str, Any]]:
    """The tensors of the constant pool with their bytes from `microexport.constants` (whose
    size must be the tensor's; `data` null for a constant the attribute lacks)."""
    data = _constant_data(main, path)
    entries = []
    for t in tensors:
        if constant_pool is None or t["pool"] != constant_pool:
            continue
        item_path, text = data.get(t["name"], ("", None))
        if text is not None:
            try:
                size = len(base64.b64decode(text, validate=True))
            except binascii.Error:
                raise TirJsonError(f"{item_path}.data: not base64") from None
            if size != t["size"]:
                raise TirJsonError(f"{item_path}.data: {size} bytes for constant '{t['name']}' "
                                   f"of {t['size']} bytes")
        entries.append({"name": t["name"], "dtype": t["dtype"], "shape": t["shape"],
                        "offset": t["offset"], "size": t["size"], "data": text})
    return entries


def _node_entry(call: _Call) -> dict[str, Any]:
    tensors = [a for a in call.args if a["kind"] == "tensor"]
    return {"index": call.index, "kernel": call.kernel, "status": call.status, "args": call.args,
            "inputs": [a["tensor"] for a in tensors if a["role"] == "input"],
            "outputs": [a["tensor"] for a in tensors if a["role"] == "output"]}


def _document(walker: _MainWalker) -> dict[str, Any]:
    main, path = walker.main, walker.path
    constant_pool = CONSTANTS_POOL if CONSTANTS_POOL in walker.pools else None
    io_params = [p for p in walker.params if p not in walker.pools]
    tensors = _tensor_entries(walker, io_params)
    inputs, outputs = _model_io(tensors, io_params, constant_pool, main, path)
    return {
        "format": GRAPH_FORMAT,
        "version": GRAPH_VERSION,
        "model": _model_name(main["name"]),
        "main": main["name"],
        "params": walker.params,
        "pools": [
            {"name": name, "size": size,
             "kind": "constants" if name == constant_pool else "workspace"}
            for name, size in walker.pools.items()
        ],
        "inputs": inputs,
        "outputs": outputs,
        "tensors": tensors,
        "constants": _constant_entries(tensors, main, path, constant_pool),
        "kernels": [_kernel_entry(name, params, walker.functions[name][1]["ret_type"])
                    for name, params in walker.kernels.items()],
        "nodes": [_node_entry(call) for call in walker.calls],
        **({"branches": walker.branches} if walker.branches else {}),
    }


def graph_json(graph: Mapping[str, Any]) -> str:
    """graph.json text: two-space indent, keys in document order, trailing newline."""
    return json.dumps(graph, indent=2) + "\n"


def graph_schema() -> dict[str, Any]:
    """The shipped JSON Schema of graph.json (`microexport-graph` version 1), as a dict."""
    text = files(SCHEMA_PACKAGE).joinpath(GRAPH_SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _graph_validator() -> Any:
    return jsonschema.Draft202012Validator(graph_schema())


def _quote(text: str) -> str:
    """A name for an error message: quoted, escaped onto one line, shortened."""
    return repr(text) if len(text) <= MAX_SHOWN else repr(text[: MAX_SHOWN - 3]) + "..."


def load_graph(doc: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate a `microexport-graph` document (graph.json text, or its dict).

    In order: JSON syntax; plain JSON values (`reader.check_json`: nesting at most MAX_DEPTH
    levels, finite numbers); format and version; the shipped JSON Schema
    (`tir_json/schema/graph.schema.json`); then the cross-references the schema cannot express
    (`check_graph`). Anything wrong is a one-line TirJsonError starting with the JSON path of the
    problem; a document that passes can be read by `walker_variables` without a KeyError or
    TypeError."""
    data = validated(doc, GRAPH_FORMAT, GRAPH_VERSION, _graph_validator())
    check_graph(data)
    return data


def check_graph(graph: Mapping[str, Any]) -> None:
    """The rules of a schema-valid graph document that the schema cannot express (every one holds
    for what `graph_from_tir` writes); TirJsonError with the JSON path otherwise:

    * pools are parameters of the main, each listed once;
    * tensor names are unique; a tensor with a `param` (a model input or output) has that
      parameter of the main and pool `input` or `output`; any other tensor is in a pool and lies
      inside it; its size is its element count times the size of its dtype; its producer and
      consumers are nodes;
    * `inputs`, `outputs` and each node's `inputs` and `outputs` name tensors;
    * the constants are exactly the tensors of the constants pools, with the same dtype, shape,
      offset and size, and `data` (unless null) of exactly `size` bytes;
    * kernel names are unique; node `i` has index `i`, calls a listed kernel with one argument
      per parameter (`param` naming it); a tensor argument names a tensor, a scratch argument's
      pool is a parameter of the main.
    """
    params = set(graph["params"])
    nodes = graph["nodes"]
    pools: dict[str, Mapping[str, Any]] = {}
    for index, pool in enumerate(graph["pools"]):
        path, name = f"$.pools[{index}].name", pool["name"]
        if name in pools:
            raise TirJsonError(f"{path}: pool {_quote(name)} is listed twice")
        if name not in params:
            raise TirJsonError(f"{path}: pool {_quote(name)} is not a parameter of the main")
        pools[name] = pool
    tensors: dict[str, Mapping[str, Any]] = {}
    for index, tensor in enumerate(graph["tensors"]):
        _check_tensor(tensor, f"$.tensors[{index}]", tensors, params, pools, len(nodes))
        tensors[tensor["name"]] = tensor
    for key in ("inputs", "outputs"):
        _check_names(graph[key], f"$.{key}", tensors)
    constant_pools = {name for name, pool in pools.items() if pool["kind"] == "constants"}
    constants: set[str] = set()
    for index, const in enumerate(graph["constants"]):
        _check_constant(const, f"$.constants[{index}]", tensors, constant_pools, constants)
        constants.add(const["name"])
    for index, tensor in enumerate(graph["tensors"]):
        if tensor["pool"] in constant_pools and tensor["name"] not in constants:
            raise TirJsonError(f"$.tensors[{index}]: constant {_quote(tensor['name'])} has no "
                               "entry in $.constants")
    kernels: dict[str, Mapping[str, Any]] = {}
    for index, kernel in enumerate(graph["kernels"]):
        if kernel["name"] in kernels:
            raise TirJsonError(f"$.kernels[{index}].name: kernel {_quote(kernel['name'])} is "
                               "listed twice")
        kernels[kernel["name"]] = kernel
    for index, node in enumerate(nodes):
        _check_node(node, index, tensors, kernels, params)
    _check_branches(graph.get("branches", []), tensors, len(nodes))


def _check_branches(branches: list[Mapping[str, Any]], tensors: Mapping[str, Any],
                    node_count: int) -> None:
    """Each run-time `If` tests a tensor; its `then` and `else` nodes are disjoint, ascending,
    the `then` ones first, contiguous, both non-empty; a nested one lies in the side of an
    earlier branch its `parent` names."""
    for index, branch in enumerate(branches):
        path = f"$.branches[{index}]"
        if branch["condition"] not in tensors:
            raise TirJsonError(f"{path}.condition: {_quote(branch['condition'])} is not a tensor "
                               "of the graph")
        nodes = branch["then"] + branch["else"]
        if (not branch["then"] or not branch["else"]
                or nodes != list(range(nodes[0], nodes[0] + len(nodes)))
                or nodes[-1] >= node_count):
            raise TirJsonError(f"{path}: its then and else nodes must be non-empty, consecutive "
                               f"and ascending, then before else, below {node_count}")
        parent = branch["parent"]
        if parent is not None:
            if parent["branch"] >= index:
                raise TirJsonError(f"{path}.parent.branch: {parent['branch']} is not an earlier "
                                   "branch")
            if not set(nodes) <= set(branches[parent["branch"]][parent["side"]]):
                raise TirJsonError(f"{path}.parent: its nodes are not all in the "
                                   f"{parent['side']} side of branch {parent['branch']}")


def _check_names(names: list[str], path: str, tensors: Mapping[str, Any]) -> None:
    for index, name in enumerate(names):
        if name not in tensors:
            raise TirJsonError(f"{path}[{index}]: {_quote(name)} is not a tensor of the graph")


def _check_tensor(tensor: Mapping[str, Any], path: str, tensors: Mapping[str, Any],
                  params: set[str], pools: Mapping[str, Mapping[str, Any]], node_count: int
                  ) -> None:
    name, pool, size = tensor["name"], tensor["pool"], tensor["size"]
    if name in tensors:
        raise TirJsonError(f"{path}.name: two tensors named {_quote(name)}")
    expected = math.prod(tensor["shape"]) * dtype_bytes(tensor["dtype"], f"{path}.dtype")
    if size != expected:
        raise TirJsonError(f"{path}.size: {size} bytes for a tensor of {expected} bytes (its "
                           "shape and dtype)")
    if "param" in tensor:
        if tensor["param"] not in params:
            raise TirJsonError(f"{path}.param: {_quote(tensor['param'])} is not a parameter of "
                               "the main")
        if pool not in IO_POOLS:
            raise TirJsonError(f"{path}.pool: a model input or output (with a param) is in pool "
                               "'input' or 'output'")
    elif pool not in pools:
        raise TirJsonError(f"{path}.pool: {_quote(pool)} is not a pool of the graph")
    elif tensor["offset"] + size > pools[pool]["size"]:
        raise TirJsonError(f"{path}: {size} bytes at offset {tensor['offset']} do not fit in pool "
                           f"{_quote(pool)} of {pools[pool]['size']} bytes")
    if "quantization" in tensor:
        _check_quantization(tensor, f"{path}.quantization")
    if tensor["producer"] is not None and tensor["producer"] >= node_count:
        raise TirJsonError(f"{path}.producer: no node {tensor['producer']} (the graph has "
                           f"{node_count})")
    for index, consumer in enumerate(tensor["consumers"]):
        if consumer >= node_count:
            raise TirJsonError(f"{path}.consumers[{index}]: no node {consumer} (the graph has "
                               f"{node_count})")


def _check_constant(const: Mapping[str, Any], path: str, tensors: Mapping[str, Any],
                    constant_pools: set[str], seen: set[str]) -> None:
    name = const["name"]
    tensor = tensors.get(name)
    if tensor is None or tensor["pool"] not in constant_pools:
        raise TirJsonError(f"{path}.name: {_quote(name)} is not a tensor of a constants pool")
    if name in seen:
        raise TirJsonError(f"{path}.name: constant {_quote(name)} is listed twice")
    for key in ("dtype", "shape", "offset", "size"):
        if const[key] != tensor[key]:
            raise TirJsonError(f"{path}.{key}: differs from the {key} of tensor {_quote(name)}")
    if const["data"] is not None:
        try:
            size = len(base64.b64decode(const["data"], validate=True))
        except binascii.Error:
            raise TirJsonError(f"{path}.data: not base64") from None
        if size != const["size"]:
            raise TirJsonError(f"{path}.data: {size} bytes for a constant of {const['size']} "
                               "bytes")


def _check_node(node: Mapping[str, Any], index: int, tensors: Mapping[str, Any],
                kernels: Mapping[str, Mapping[str, Any]], params: set[str]) -> None:
    path = f"$.nodes[{index}]"
    if node["index"] != index:
        raise TirJsonError(f"{path}.index: {node['index']} is not the node's position {index}")
    kernel = kernels.get(node["kernel"])
    if kernel is None:
        raise TirJsonError(f"{path}.kernel: {_quote(node['kernel'])} is not in $.kernels")
    if len(node["args"]) != len(kernel["params"]):
        raise TirJsonError(f"{path}.args: {len(node['args'])} arguments for the "
                           f"{len(kernel['params'])} parameters of {_quote(kernel['name'])}")
    for number, (arg, param) in enumerate(zip(node["args"], kernel["params"], strict=True)):
        arg_path = f"{path}.args[{number}]"
        if arg["param"] != param["name"]:
            raise TirJsonError(f"{arg_path}.param: parameter {number} of "
                               f"{_quote(kernel['name'])} is {_quote(param['name'])}")
        if arg["kind"] == "tensor" and arg["tensor"] not in tensors:
            raise TirJsonError(f"{arg_path}.tensor: {_quote(arg['tensor'])} is not a tensor of "
                               "the graph")
        if arg["kind"] == "scratch" and arg["pool"] not in params:
            raise TirJsonError(f"{arg_path}.pool: {_quote(arg['pool'])} is not a parameter of "
                               "the main")
    for key in ("inputs", "outputs"):
        _check_names(node[key], f"{path}.{key}", tensors)


# -- the graph-walker runtime ----------------------------------------------------------------


def walker_variables(graph: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """What the graph-walker templates receive (see docs/tir-json.md), from a graph document
    (validated by `load_graph` first).

    Everything that reaches the C is checked here: tensor, constant and kernel-parameter names
    become distinct C identifiers (`c_name`, distinct even upper-cased, for the size macros) and
    comment-safe text (`comment_name`); kernel names are C identifiers that are no keyword, type
    or name of the walker's own; every dtype printed has a C type; numbers are the schema's
    integers. Anything else is a TirJsonError naming the JSON path."""
    graph = load_graph(graph)
    if graph.get("branches"):
        raise TirJsonError("$.branches: the graph-walker runtime runs straight-line graphs; this "
                           "model has run-time Ifs: call the AOT main (tvmgen_<model>_run) instead")
    model = c_identifier(graph["model"])
    tensor_index = {t["name"]: index for index, t in enumerate(graph["tensors"])}
    constant_names = {c["name"] for c in graph["constants"]}
    taken: set[str] = set()  # upper-cased: the header's size macros are distinct too

    def unique(ident: str) -> str:  # distinct names that sanitise alike get distinct C names
        name, index = ident, 1
        while name.upper() in taken:
            name, index = f"{ident}_{index}", index + 1
        taken.add(name.upper())
        return name

    constants = []
    for index, const in enumerate(graph["constants"]):
        path = f"$.constants[{index}]"
        if const["data"] is None:
            raise TirJsonError(f"{path}.data: constant {_quote(const['name'])} carries no data")
        _ctype(const["dtype"], f"{path}.dtype")
        constants.append({**const, "c_name": unique(f"const_{c_identifier(const['name'])}"),
                          "comment_name": comment_safe(const["name"]),
                          "rows": hex_rows(base64.b64decode(const["data"]))})

    def tensor_var(name: str, prefix: str) -> dict[str, Any]:
        index = tensor_index[name]
        tensor = graph["tensors"][index]
        return {**tensor, "c_name": unique(f"{prefix}{c_identifier(name)}"),
                "comment_name": comment_safe(name),
                "ctype": _ctype(tensor["dtype"], f"$.tensors[{index}].dtype"),
                "elements": max(math.prod(tensor["shape"]), 1)}

    inputs = [tensor_var(n, "in_") for n in graph["inputs"]]
    outputs = [tensor_var(n, "out_") for n in graph["outputs"]]
    io_names = set(graph["inputs"]) | set(graph["outputs"])
    intermediates = [tensor_var(t["name"], "buf_") for t in graph["tensors"]
                     if t["name"] not in io_names and t["name"] not in constant_names]
    c_names = {t["name"]: t["c_name"] for t in inputs + outputs + intermediates}
    c_names.update({c["name"]: c["c_name"] for c in constants})
    kernels = {k["name"]: (f"$.kernels[{index}]", k) for index, k in enumerate(graph["kernels"])}
    calls = [_call(node, *kernels[node["kernel"]], c_names) for node in graph["nodes"]]
    scratch = [{"c_name": name, "size": max(size, 1)}
               for call in calls for name, size in call["scratch_areas"]]
    run_symbol = f"{model}_walker_run"
    own = {run_symbol, "status", "main", *c_names.values(), *(s["c_name"] for s in scratch)}
    prototypes = [_prototype(kernel, f"$.kernels[{index}]", own, model)
                  for index, kernel in enumerate(graph["kernels"])]
    return {
        "model": model,
        "header_name": f"{model}_walker.h",
        "run_symbol": run_symbol,
        "kernels": prototypes,
        "constants": constants,
        "inputs": inputs,
        "outputs": outputs,
        "intermediates": intermediates,
        "scratch": scratch,
        "calls": calls,
    }


def _ctype(dtype: str, path: str) -> str:
    """The C type of `dtype` (one of model.C_TYPES), else TirJsonError at `path`."""
    if dtype not in C_TYPES:
        raise TirJsonError(f"{path}: dtype {_quote(dtype)} has no C type (supported: "
                           f"{', '.join(sorted(C_TYPES))})")
    return C_TYPES[dtype]


def _prototype(kernel: Mapping[str, Any], path: str, own: set[str], model: str
               ) -> dict[str, Any]:
    """A kernel's C declaration. It is called by name, so its name must be the symbol in the
    kernel library: a C identifier that is no keyword or type the walker uses, and no name the
    walker defines itself (`own`, or a `<MODEL>_WALKER_*` macro of its header)."""
    name = kernel["name"]
    if _C_IDENTIFIER.fullmatch(name) is None or name in C_RESERVED:
        raise TirJsonError(f"{path}.name: kernel name {_quote(name)} is not a C identifier")
    if name in own or name.upper().startswith(f"{model.upper()}_WALKER_"):
        raise TirJsonError(f"{path}.name: kernel name {_quote(name)} is a name the graph "
                           "walker defines itself")
    params: list[dict[str, Any]] = []
    used: set[str] = set()
    for index, param in enumerate(kernel["params"]):
        base = c_identifier(param["name"])
        base = f"{base}_" if base in C_RESERVED else base
        param_name, number = base, 1
        while param_name in used:
            param_name, number = f"{base}_{number}", number + 1
        used.add(param_name)
        params.append({"name": param_name,
                       "ctype": _ctype(param["dtype"], f"{path}.params[{index}].dtype"),
                       "pointer": param["pointer"]})
    returns = "void" if kernel["returns"] == "void" else _ctype(kernel["returns"],
                                                                 f"{path}.returns")
    return {"name": name, "returns": returns, "params": params}


def _call(node: Mapping[str, Any], kernel_path: str, kernel: Mapping[str, Any],
          c_names: Mapping[str, str]) -> dict[str, Any]:
    """One kernel call: the C expression of each argument, and the node's scratch areas (one
    static buffer each: `scratch_<index>`, then `scratch_<index>_<argument>`)."""
    args: list[dict[str, Any]] = []
    areas: list[tuple[str, int]] = []
    path = f"$.nodes[{node['index']}]"
    for number, (arg, param) in enumerate(zip(node["args"], kernel["params"], strict=True)):
        if arg["kind"] == "tensor":
            buffer = c_names[arg["tensor"]]
        elif arg["kind"] == "scratch":
            buffer = f"scratch_{node['index']}" + (f"_{number}" if areas else "")
            areas.append((buffer, arg["size"]))
        else:
            raise TirJsonError(
                f"{path}.args[{number}]: argument {_quote(param['name'])} is not a tensor or "
                "scratch pointer: the graph walker cannot pass it"
            )
        ctype = _ctype(param["dtype"], f"{kernel_path}.params[{number}].dtype")
        args.append({"buffer": buffer, "ctype": ctype})
    return {"index": node["index"], "kernel": node["kernel"], "args": args,
            "scratch": areas[0][1] if areas else 0, "scratch_areas": areas,
            "returns": kernel["returns"]}


def render_graph_walker(graph: Mapping[str, Any] | str | bytes, templates_dir: Path | None = None
                        ) -> dict[str, str]:
    """Render the graph-walker runtime of `graph` (a microexport-graph document, as text or
    dict; validated by `load_graph`): file name → C text. `templates_dir` overrides the templates
    of templates/runtimes/graph-walker by name."""
    variables = walker_variables(graph)
    env = glue_environment(templates_dir)
    return {
        pattern.format(model=variables["model"]): render(env, f"{WALKER_TEMPLATES}/{template}",
                                                         variables)
        for template, pattern in WALKER_FILES.items()
    }
