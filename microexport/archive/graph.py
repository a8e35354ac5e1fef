"""The model graph, derived from a `microexport-tir` document alone (no TVM).

The AOT main (see aot.py) declares one named buffer per tensor on a pointer that is either a main
parameter (a model input or output) or `reinterpret(address_of(<pool>_bytes[offset]))` into a
pool parameter (`constants`, `workspace`, or a named workspace pool; for an element type other
than the pool's `uint8` the address is first reinterpreted as `void*`, see unpacked.pool_pointer),
and calls every kernel as `status_i = kernel(args...)`; an argument that is such an address
rather than a tensor is the kernel's scratch area. Which kernel arguments are outputs is read from
the kernel bodies: a pointer parameter whose buffers are stored to is written. The result is a
`microexport-graph` version-1 document (docs/tir-json.md): nodes (kernel calls in order),
tensors (pool, offset, size, producer, consumers), constants (with their bytes), model inputs
and outputs.

`render_graph_walker` renders, from that document alone, a C runtime that calls the kernels of
`tvmgen_<model>_lib.c` itself over its own static buffers (templates/runtimes/graph-walker/).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microexport.archive.glue import glue_environment, hex_rows, render
from microexport.archive.tir_json.reader import (
    called_functions,
    callee,
    dtype_bytes,
    element_count,
    flatten,
    int_value,
    is_call,
    parse,
    shape_of,
    walk,
)
from microexport.archive.tir_json.spec import GRAPH_FORMAT, GRAPH_VERSION
from microexport.errors import TirJsonError
from microexport.model import C_KEYWORDS, c_identifier, c_type

# Equal to aot.CONSTANTS_ATTR and aot.IO_ATTR (graph.py never imports tvm).
CONSTANTS_ATTR = "microexport.constants"
IO_ATTR = "microexport.io"
CONSTANTS_POOL = "constants"
MAIN_SUFFIX = "___tvm_main__"
WALKER_TEMPLATES = "runtimes/graph-walker"
WALKER_FILES = {  # template → output file name pattern
    "walker.h.j2": "{model}_walker.h",
    "walker.c.j2": "{model}_walker.c",
    "walker_main.c.j2": "{model}_walker_main.c",
}


@dataclass(frozen=True)
class Pointer:
    """Where a pointer of the main points: a main parameter and a byte offset into it."""

    base: str
    offset: int = 0


@dataclass
class _Buffer:
    name: str
    dtype: str
    shape: list[int]
    pointer: Pointer

    @property
    def size(self) -> int:
        return (element_count(self.shape) or 0) * dtype_bytes(self.dtype)


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


class _KernelReader:
    """Finds, for each pointer parameter of a kernel, whether its memory is read or written."""

    def __init__(self, func: Mapping[str, Any]) -> None:
        self.params: dict[str, KernelParam] = {}
        self.roots: dict[str, str | None] = {}  # buffer or pointer variable → parameter
        self.skip: set[int] = set()
        for var in func["params"]:
            dtype, pointer = _param_dtype(var["type"])
            self.params[var["name"]] = KernelParam(var["name"], dtype, pointer)
            self.roots[var["name"]] = var["name"] if pointer else None
        for _, node in walk(func["body"]):
            self.visit(node)

    def root(self, expr: Mapping[str, Any]) -> str | None:
        kind = expr["node"]
        if kind == "Var":
            return self.roots.get(expr["name"])
        if kind == "Call" and expr["op"]["node"] == "Op" and expr["args"]:
            return self.root(expr["args"][0])  # buffer_data, reinterpret, address_of
        if kind == "BufferLoad":
            return self.roots.get(expr["buffer"]["name"])
        return None

    def visit(self, node: Mapping[str, Any]) -> None:
        kind = node["node"]
        if kind == "DeclBuffer":
            name, root = node["buffer"]["name"], self.root(node["data"])
            self.roots[name] = root
            data = node["data"]
            if data["node"] == "Var" and data["name"] in self.params:
                size = _buffer_bytes(node["buffer"]["type"])
                param = self.params[data["name"]]
                param.declared_bytes = max(param.declared_bytes, size)
        elif kind == "Bind" and node["var"].get("type", {}).get("node") == "PointerType":
            self.roots[node["var"]["name"]] = self.root(node["value"])
        elif is_call(node, "tirx.address_of"):
            self.skip.update(id(arg) for arg in node["args"])
        elif kind == "BufferStore":
            self.mark(node["buffer"]["name"], written=True)
        elif kind == "BufferLoad" and id(node) not in self.skip:
            self.mark(node["buffer"]["name"], written=False)

    def mark(self, buffer: str, written: bool) -> None:
        root = self.roots.get(buffer)
        if root in self.params:
            param = self.params[root]
            if written:
                param.written = True
            else:
                param.read = True


def _buffer_bytes(buffer_type: Mapping[str, Any]) -> int:
    count = element_count(shape_of(buffer_type))
    return 0 if count is None else count * dtype_bytes(buffer_type["dtype"])


def kernel_params(func: Mapping[str, Any]) -> list[KernelParam]:
    """The parameters of a kernel with how its body accesses each (read / written)."""
    return list(_KernelReader(func).params.values())


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


@dataclass
class _Node:
    index: int
    kernel: str
    status: str | None
    args: list[dict[str, Any]] = field(default_factory=list)


class _MainReader:
    """Reads the tensors and kernel calls of an AOT main."""

    def __init__(self, main: Mapping[str, Any], path: str) -> None:
        self.main = main
        self.path = path
        self.params = [p["name"] for p in main["params"]]
        self.param_dtypes = {p["name"]: _param_dtype(p["type"])[0] for p in main["params"]}
        self.pointers: dict[str, Pointer] = {name: Pointer(name) for name in self.params}
        self.buffers: dict[str, _Buffer] = {}
        self.pool_buffers = self.find_pool_buffers()
        self.pools: dict[str, int] = {}  # pool parameter → size in bytes
        self.tensors: list[_Buffer] = []
        self.nodes: list[_Node] = []

    def find_pool_buffers(self) -> set[str]:
        pools = set()
        for _, node in walk(self.main["body"]):
            if is_call(node, "tirx.address_of") and node["args"][0]["node"] == "BufferLoad":
                pools.add(node["args"][0]["buffer"]["name"])
        return pools

    def pointer(self, expr: Mapping[str, Any], path: str) -> Pointer:
        kind = expr["node"]
        if kind == "Var" and expr["name"] in self.pointers:
            return self.pointers[expr["name"]]
        if is_call(expr, "tirx.buffer_data") and expr["args"][0]["name"] in self.buffers:
            return self.buffers[expr["args"][0]["name"]].pointer
        if is_call(expr, "tirx.reinterpret"):
            return self.pointer(expr["args"][0], f"{path}.args[0]")
        if is_call(expr, "tirx.address_of") and expr["args"][0]["node"] == "BufferLoad":
            load = expr["args"][0]
            pool = self.buffers.get(load["buffer"]["name"])
            index = int_value(load["indices"][0]) if len(load["indices"]) == 1 else None
            if pool is not None and index is not None:
                offset = pool.pointer.offset + index * dtype_bytes(pool.dtype)
                return Pointer(pool.pointer.base, offset)
        raise TirJsonError(f"{path}: unsupported pointer expression in the AOT main")

    def read(self) -> None:
        body_path = f"{self.path}.body"
        for index, stmt in enumerate(flatten(self.main["body"])):
            self.statement(stmt, f"{body_path}[{index}]")

    def statement(self, stmt: Mapping[str, Any], path: str) -> None:
        kind = stmt["node"]
        if kind == "DeclBuffer":
            self.declare(stmt, path)
        elif kind == "Bind" and callee(stmt["value"]) is not None:
            self.call(stmt["value"], stmt["var"]["name"], f"{path}.value")
        elif kind == "Bind" and stmt["var"]["type"]["node"] == "PointerType":
            self.pointers[stmt["var"]["name"]] = self.pointer(stmt["value"], f"{path}.value")
        elif kind == "Evaluate" and callee(stmt["value"]) is not None:
            self.call(stmt["value"], None, f"{path}.value")
        elif any(callee(node) is not None for _, node in walk(stmt)):
            raise TirJsonError(f"{path}: kernel call nested in a {kind}: not an AOT main")

    def declare(self, stmt: Mapping[str, Any], path: str) -> None:
        var = stmt["buffer"]
        buffer_type = var["type"]
        shape = shape_of(buffer_type)
        if any(dim is None for dim in shape):
            raise TirJsonError(f"{path}.buffer: tensor '{var['name']}' has a dynamic shape")
        pointer = self.pointer(stmt["data"], f"{path}.data")
        name = var.get("hint", var["name"])
        if any(t.name == name for t in self.tensors):  # two tensors with one name hint
            name = var["name"]
        buffer = _Buffer(name, buffer_type["dtype"], shape, pointer)
        self.buffers[var["name"]] = buffer
        if var["name"] in self.pool_buffers:
            self.pools[pointer.base] = buffer.size
        else:
            self.tensors.append(buffer)

    def call(self, expr: Mapping[str, Any], status: str | None, path: str) -> None:
        node = _Node(len(self.nodes), str(callee(expr)), status)
        for index, arg in enumerate(expr["args"]):
            node.args.append(self.argument(arg, f"{path}.args[{index}]"))
        self.nodes.append(node)

    def argument(self, arg: Mapping[str, Any], path: str) -> dict[str, Any]:
        if arg["node"] not in ("Var", "Call"):
            return {"kind": "value", "value": arg}
        if is_call(arg, "tirx.buffer_data"):
            buffer = self.buffers.get(arg["args"][0]["name"])
            if buffer is not None and buffer in self.tensors:
                return {"kind": "tensor", "tensor": buffer.name}
        pointer = self.pointer(arg, path)
        if arg["node"] == "Var":  # a pointer variable standing for a tensor (a model input, ...)
            for buffer in self.tensors:
                if buffer.pointer == pointer:
                    return {"kind": "tensor", "tensor": buffer.name}
        # An address computed in the call (`reinterpret(address_of(pool[offset]))`) is a scratch
        # area, even where it coincides with a tensor that is no longer live.
        return {"kind": "pointer", "pool": pointer.base, "offset": pointer.offset}


# -- the graph document ----------------------------------------------------------------------


def _model_name(main_name: str) -> str:
    if main_name.startswith("tvmgen_") and main_name.endswith(MAIN_SUFFIX):
        return main_name[len("tvmgen_"): -len(MAIN_SUFFIX)]
    return c_identifier(main_name)


def _constant_data(main: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    value = main["attrs"].get(CONSTANTS_ATTR)
    if not isinstance(value, dict) or value.get("node") != "Map" or "items" not in value:
        return {}
    return {c_identifier(name): tensor for name, tensor in value["items"].items()}


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


def _bind_roles(reader: _MainReader, kernels: Mapping[str, list[KernelParam]], path: str) -> None:
    """Give each node argument its role from the kernel's parameter: input, output or scratch."""
    for node in reader.nodes:
        params = kernels[node.kernel]
        if len(params) != len(node.args):
            raise TirJsonError(
                f"{path}: '{node.kernel}' takes {len(params)} arguments, the main passes "
                f"{len(node.args)}"
            )
        for arg, param in zip(node.args, params, strict=True):
            arg["param"] = param.name
            if arg["kind"] == "pointer":
                arg["kind"] = "scratch"
                arg["size"] = param.declared_bytes
            elif arg["kind"] == "tensor":
                arg["role"] = "output" if param.written else "input"


def _main_module(modules: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The module holding the AOT main (the first one, unless another has a `*___tvm_main__`)."""
    for index, module in enumerate(modules):
        if any(f["name"].endswith(MAIN_SUFFIX) for f in module["functions"]):
            return index, module
    return 0, modules[0]


def graph_from_tir(doc: str | bytes | Mapping[str, Any], *, validate: bool = True
                   ) -> dict[str, Any]:
    """The `microexport-graph` document of a `microexport-tir` document's AOT main."""
    data = parse(doc) if validate else dict(doc)  # type: ignore[arg-type]
    index, module = _main_module(data["modules"])
    main = find_main(module)
    main_index = module["functions"].index(main)
    path = f"$.modules[{index}].functions[{main_index}]"
    reader = _MainReader(main, path)
    reader.read()
    functions = {f["name"]: f for f in module["functions"]}
    used = list(dict.fromkeys(node.kernel for node in reader.nodes))
    missing = [name for name in used if name not in functions]
    if missing:
        raise TirJsonError(f"{path}: the main calls '{missing[0]}', which the module lacks")
    kernels = {name: kernel_params(functions[name]) for name in used}
    _bind_roles(reader, kernels, path)
    return _document(reader, main, kernels, {name: functions[name] for name in used})


def _uses(nodes: list[_Node]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Tensor → the first node writing it, and tensor → the nodes reading it."""
    producers: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for node in nodes:
        for arg in node.args:
            if arg["kind"] != "tensor":
                continue
            if arg["role"] == "output":
                producers.setdefault(arg["tensor"], node.index)
            else:
                consumers.setdefault(arg["tensor"], []).append(node.index)
    return producers, consumers


def _tensor_entries(reader: _MainReader, io_params: list[str]) -> list[dict[str, Any]]:
    producers, consumers = _uses(reader.nodes)
    entries = []
    for buffer in reader.tensors:
        base = buffer.pointer.base
        entry: dict[str, Any] = {
            "name": buffer.name, "dtype": buffer.dtype, "shape": buffer.shape, "pool": base,
            "offset": buffer.pointer.offset, "size": buffer.size,
            "producer": producers.get(buffer.name), "consumers": consumers.get(buffer.name, []),
        }
        if base in io_params:
            entry["pool"] = "output" if buffer.name in producers else "input"
            entry["param"] = base
        entries.append(entry)
    return entries


def _model_io(tensors: list[dict[str, Any]], io_params: list[str], constant_pool: str | None,
              main: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Model inputs and outputs: as the main's `microexport.io` attribute lists them; else the
    tensors on the main's non-pool parameters, or, with inputs and outputs inside the workspace,
    tensors no node writes / written and never read (TIR from elsewhere)."""
    declared = main["attrs"].get(IO_ATTR)
    if isinstance(declared, dict) and declared.get("node") == "Map":
        items = declared.get("items", {})
        names = {t["name"] for t in tensors}
        inputs, outputs = list(items.get("inputs", [])), list(items.get("outputs", []))
        if all(isinstance(n, str) and n in names for n in inputs + outputs):
            return inputs, outputs
    if io_params:
        return ([t["name"] for t in tensors if t["pool"] == "input"],
                [t["name"] for t in tensors if t["pool"] == "output"])
    inputs = [t["name"] for t in tensors
              if t["producer"] is None and t["pool"] != constant_pool and t["consumers"]]
    outputs = [t["name"] for t in tensors if t["producer"] is not None and not t["consumers"]]
    return inputs, outputs


def _constant_entries(tensors: list[dict[str, Any]], main: Mapping[str, Any],
                      constant_pool: str | None) -> list[dict[str, Any]]:
    data = _constant_data(main)
    return [
        {"name": t["name"], "dtype": t["dtype"], "shape": t["shape"], "offset": t["offset"],
         "size": t["size"], "data": data.get(t["name"], {}).get("data")}
        for t in tensors if constant_pool is not None and t["pool"] == constant_pool
    ]


def _node_entry(node: _Node) -> dict[str, Any]:
    tensors = [a for a in node.args if a["kind"] == "tensor"]
    return {"index": node.index, "kernel": node.kernel, "status": node.status, "args": node.args,
            "inputs": [a["tensor"] for a in tensors if a["role"] == "input"],
            "outputs": [a["tensor"] for a in tensors if a["role"] == "output"]}


def _document(reader: _MainReader, main: Mapping[str, Any],
              kernels: Mapping[str, list[KernelParam]],
              functions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    constant_pool = CONSTANTS_POOL if CONSTANTS_POOL in reader.pools else None
    io_params = [p for p in reader.params if p not in reader.pools]
    tensors = _tensor_entries(reader, io_params)
    inputs, outputs = _model_io(tensors, io_params, constant_pool, main)
    return {
        "format": GRAPH_FORMAT,
        "version": GRAPH_VERSION,
        "model": _model_name(main["name"]),
        "main": main["name"],
        "params": reader.params,
        "pools": [
            {"name": name, "size": size,
             "kind": "constants" if name == constant_pool else "workspace"}
            for name, size in reader.pools.items()
        ],
        "inputs": inputs,
        "outputs": outputs,
        "tensors": tensors,
        "constants": _constant_entries(tensors, main, constant_pool),
        "kernels": [_kernel_entry(name, params, functions[name]["ret_type"])
                    for name, params in kernels.items()],
        "nodes": [_node_entry(node) for node in reader.nodes],
    }


def graph_json(graph: Mapping[str, Any]) -> str:
    """graph.json text: two-space indent, keys in document order, trailing newline."""
    return json.dumps(graph, indent=2) + "\n"


def load_graph(doc: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Read a `microexport-graph` document; TirJsonError if it is not one this version reads."""
    if isinstance(doc, str | bytes):
        try:
            data = json.loads(doc)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TirJsonError(f"$: not valid JSON ({err})") from None
    else:
        data = dict(doc)
    if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
        raise TirJsonError(f"$.format: expected '{GRAPH_FORMAT}'")
    if data.get("version") != GRAPH_VERSION:
        raise TirJsonError(
            f"$.version: {GRAPH_FORMAT} version {data.get('version')!r} is not supported "
            f"(this microexport reads version {GRAPH_VERSION})"
        )
    return data


# -- the graph-walker runtime ----------------------------------------------------------------


def walker_variables(graph: Mapping[str, Any]) -> dict[str, Any]:
    """What the graph-walker templates receive (see docs/tir-json.md)."""
    graph = load_graph(graph)
    model = c_identifier(graph["model"])
    for kernel in graph["kernels"]:  # called by name: must be the symbol in the kernel library
        if c_identifier(kernel["name"]) != kernel["name"] or kernel["name"] in C_KEYWORDS:
            raise TirJsonError(f"$.kernels: kernel name '{kernel['name']}' is not a C identifier")
    by_name = {t["name"]: t for t in graph["tensors"]}
    constant_names = {c["name"] for c in graph["constants"]}
    taken: set[str] = set()

    def unique(ident: str) -> str:  # distinct names that sanitise alike get distinct C names
        name, index = ident, 1
        while name in taken:
            name, index = f"{ident}_{index}", index + 1
        taken.add(name)
        return name

    constants = []
    for const in graph["constants"]:
        if const["data"] is None:
            raise TirJsonError(f"$.constants: constant '{const['name']}' carries no data")
        constants.append({**const, "c_name": unique(f"const_{c_identifier(const['name'])}"),
                          "rows": hex_rows(base64.b64decode(const["data"]))})

    def tensor_var(tensor: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        return {**tensor, "c_name": unique(f"{prefix}{c_identifier(tensor['name'])}"),
                "ctype": _ctype(tensor["dtype"]),
                "elements": max(element_count(tensor["shape"]) or 0, 1)}

    inputs = [tensor_var(by_name[n], "in_") for n in graph["inputs"]]
    outputs = [tensor_var(by_name[n], "out_") for n in graph["outputs"]]
    io_names = set(graph["inputs"]) | set(graph["outputs"])
    intermediates = [tensor_var(t, "buf_") for t in graph["tensors"]
                     if t["name"] not in io_names and t["name"] not in constant_names]
    c_names = {t["name"]: t["c_name"] for t in inputs + outputs + intermediates}
    c_names.update({c["name"]: c["c_name"] for c in constants})
    kernels = {k["name"]: k for k in graph["kernels"]}
    calls = [_call(node, kernels[node["kernel"]], c_names) for node in graph["nodes"]]
    return {
        "model": model,
        "header_name": f"{model}_walker.h",
        "run_symbol": f"{model}_walker_run",
        "kernels": [_prototype(k) for k in graph["kernels"]],
        "constants": constants,
        "inputs": inputs,
        "outputs": outputs,
        "intermediates": intermediates,
        "scratch": [{"c_name": f"scratch_{c['index']}", "size": max(c["scratch"], 1)}
                    for c in calls if c["scratch"]],
        "calls": calls,
    }


def _ctype(dtype: str) -> str:
    try:
        return c_type(dtype)
    except ValueError as err:
        raise TirJsonError(f"$.tensors: {err}") from None


def _prototype(kernel: Mapping[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    used: set[str] = set()
    for param in kernel["params"]:
        base = c_identifier(param["name"])
        base = f"{base}_" if base in C_KEYWORDS else base
        name, index = base, 1
        while name in used:
            name, index = f"{base}_{index}", index + 1
        used.add(name)
        params.append({"name": name, "ctype": _ctype(param["dtype"]),
                       "pointer": param["pointer"]})
    returns = "void" if kernel["returns"] == "void" else _ctype(kernel["returns"])
    return {"name": kernel["name"], "returns": returns, "params": params}


def _call(node: Mapping[str, Any], kernel: Mapping[str, Any], c_names: Mapping[str, str]
          ) -> dict[str, Any]:
    args, scratch = [], 0
    for arg, param in zip(node["args"], kernel["params"], strict=True):
        if arg["kind"] == "tensor":
            buffer = c_names[arg["tensor"]]
        elif arg["kind"] == "scratch":
            scratch, buffer = arg["size"], f"scratch_{node['index']}"
        else:
            raise TirJsonError(
                f"$.nodes[{node['index']}]: argument '{param['name']}' is not a tensor or "
                "scratch pointer: the graph walker cannot pass it"
            )
        args.append({"buffer": buffer, "ctype": _ctype(param["dtype"])})
    return {"index": node["index"], "kernel": node["kernel"], "args": args, "scratch": scratch,
            "returns": kernel["returns"]}


def render_graph_walker(graph: Mapping[str, Any] | str, templates_dir: Path | None = None
                        ) -> dict[str, str]:
    """Render the graph-walker runtime of `graph` (a microexport-graph document): file name →
    C text. `templates_dir` overrides the templates of templates/runtimes/graph-walker by name."""
    variables = walker_variables(load_graph(graph) if isinstance(graph, str) else graph)
    env = glue_environment(templates_dir)
    return {
        pattern.format(model=variables["model"]): render(env, f"{WALKER_TEMPLATES}/{template}",
                                                         variables)
        for template, pattern in WALKER_FILES.items()
    }
