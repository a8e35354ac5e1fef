"""`microexport-tir` document → TVM IRModule(s): the inverse of `export.py`.

The document is validated first (`reader.parse`); every later problem (an unknown op, a dtype that
does not match the rebuilt node, arguments a TVM constructor refuses) is a `TirJsonError` naming
its JSON path: the TVM constructors that can refuse their arguments are called through
`_construct`, which turns TVM's errors into one.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import tvm
from tvm import ir, tirx

from microexport.archive.tir_json.nodes import (
    FOR_KIND_VALUES,
    ITER_TYPE_VALUES,
    SPECS_BY_KIND,
    NodeSpec,
)
from microexport.archive.tir_json.reader import json_path, parse
from microexport.errors import TirJsonError

# What TVM raises when a constructor rejects its arguments (FFI errors map to these; TVM's
# InternalError is a RuntimeError; an integer too large for the FFI is an OverflowError).
_BUILD_ERRORS = (TypeError, ValueError, AttributeError, RuntimeError, IndexError, KeyError,
                 OverflowError)


def _construct(path: str, what: str, build: Callable[..., Any], *args: Any) -> Any:
    """`build(*args)`, or TirJsonError at `path` if TVM refuses the arguments."""
    try:
        return build(*args)
    except _BUILD_ERRORS as err:
        message = " ".join(str(err).split())[:300]
        raise TirJsonError(f"{path}: cannot build {what}: {message}") from None


class _Loader:
    """Decodes one module; variables are scoped to the function being decoded."""

    def __init__(self, function_names: Iterable[str]) -> None:
        self.gvars = {name: ir.GlobalVar(name) for name in function_names}
        self.vars: dict[str, ir.Var] = {}

    # -- containers ------------------------------------------------------------------------

    def module(self, data: Mapping[str, Any], path: str) -> tvm.IRModule:
        funcs = {}
        for index, func in enumerate(data["functions"]):
            funcs[self.gvars[func["name"]]] = self.function(func, f"{path}.functions[{index}]")
        attrs = self.dec_map(data.get("attrs", {}), f"{path}.attrs")
        return _construct(path, "IRModule", lambda: tvm.IRModule(funcs, attrs=attrs or None))

    def function(self, data: Mapping[str, Any], path: str) -> tirx.PrimFunc:
        self.vars = {}
        params = self.dec_vars(data["params"], f"{path}.params")
        ret_type = self.dec_node(data["ret_type"], f"{path}.ret_type")
        attrs = self.dec_map(data["attrs"], f"{path}.attrs")
        body = self.dec_node(data["body"], f"{path}.body")
        func = _construct(path, "PrimFunc", tirx.PrimFunc, params, body, ret_type)
        if not attrs:
            return func
        return _construct(f"{path}.attrs", "function attributes", func.with_attrs, attrs)

    # -- nodes -----------------------------------------------------------------------------

    def dec_node(self, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping) or "node" not in data:
            raise TirJsonError(f"{path}: expected a node (an object with a \"node\" kind)")
        kind = data["node"]
        special = _SPECIAL_DECODERS.get(kind)
        if special is not None:
            return getattr(self, special)(data, path)
        spec = SPECS_BY_KIND.get(kind)
        if spec is None:
            raise TirJsonError(f"{path}: unknown node kind '{kind}'")
        return self.build(spec, data, path)

    def build(self, spec: NodeSpec, data: Mapping[str, Any], path: str) -> Any:
        args = []
        for field in spec.fields:
            if field.derived:
                continue
            if field.key not in data:
                if field.omit_empty:
                    args.append(None)
                    continue
                raise TirJsonError(f"{path}: {spec.kind} has no \"{field.key}\"")
            args.append(getattr(self, f"dec_{field.codec}")(data[field.key], f"{path}.{field.key}"))
        node = _construct(path, spec.kind, spec.build, *args)
        for field in spec.fields:
            if field.derived and field.key in data:
                self.check_dtype(node, data[field.key], f"{path}.{field.key}")
        return node

    @staticmethod
    def check_dtype(node: Any, want: str, path: str) -> None:
        ty = node.ty
        got = (str(ty.dtype) or "void") if isinstance(ty, ir.PrimType) else None
        if got != want:
            raise TirJsonError(f"{path}: dtype '{want}' does not match the operands ('{got}')")

    def dec_opt_node(self, data: Any, path: str) -> Any:
        return None if data is None else self.dec_node(data, path)

    def dec_nodes(self, data: list[Any], path: str) -> list[Any]:
        return [self.dec_node(item, f"{path}[{i}]") for i, item in enumerate(data)]

    def dec_var(self, data: Mapping[str, Any], path: str) -> ir.Var:
        if not isinstance(data, Mapping) or data.get("node") != "Var":
            raise TirJsonError(f"{path}: expected a Var")
        name = data["name"]
        if "type" not in data:
            if name not in self.vars:
                raise TirJsonError(f"{path}: variable '{name}' is used before it is declared")
            return self.vars[name]
        if name in self.vars:
            raise TirJsonError(f"{path}: variable '{name}' is declared twice")
        ty = self.dec_node(data["type"], f"{path}.type")
        var = _construct(path, "Var", ir.Var, data.get("hint", name), ty)
        self.vars[name] = var
        return var

    def dec_vars(self, data: list[Any], path: str) -> list[ir.Var]:
        return [self.dec_var(item, f"{path}[{i}]") for i, item in enumerate(data)]

    def dec_callee(self, data: Mapping[str, Any], path: str) -> Any:
        kind, name = data.get("node"), data.get("name")
        if kind == "GlobalVar":
            return self.gvars.setdefault(name, ir.GlobalVar(name))
        try:
            return ir.Op.get(name)
        except _BUILD_ERRORS:
            raise TirJsonError(f"{path}: unknown TVM op '{name}'") from None

    # -- scalars ---------------------------------------------------------------------------

    @staticmethod
    def dec_str(data: str, path: str) -> str:
        return data

    @staticmethod
    def dec_int(data: int, path: str) -> int:
        return data

    @staticmethod
    def dec_float(data: str, path: str) -> float:
        try:
            return float.fromhex(data)
        except (TypeError, ValueError, OverflowError):
            raise TirJsonError(f"{path}: '{data}' is not a hex float (float.hex) of a double"
                               ) from None

    @staticmethod
    def dec_dtype(data: str, path: str) -> str:
        return data

    @staticmethod
    def dec_for_kind(data: str, path: str) -> int:
        return FOR_KIND_VALUES[data]

    @staticmethod
    def dec_iter_type(data: str, path: str) -> int:
        return ITER_TYPE_VALUES[data]

    @staticmethod
    def dec_str_imm(data: str, path: str) -> ir.StringImm:
        return ir.StringImm(data)

    def dec_str_imms(self, data: list[str], path: str) -> list[ir.StringImm]:
        return [ir.StringImm(item) for item in data]

    @staticmethod
    def dec_axis(data: str, path: str) -> str:
        return data

    def dec_axis_map(self, data: Mapping[str, Any], path: str) -> dict[str, Any]:
        return {name: self.dec_node(expr, json_path(path, name)) for name, expr in data.items()}

    def dec_layout(self, data: Any, path: str) -> Any:
        if data is None or data == "default":
            return data
        return self.dec_node(data, path)

    # -- attribute values ------------------------------------------------------------------

    def dec_map(self, data: Mapping[str, Any], path: str) -> dict[str, Any]:
        return {key: self.dec_value(value, json_path(path, key)) for key, value in data.items()}

    def dec_value(self, data: Any, path: str) -> Any:
        if data is None or isinstance(data, bool | int | float | str):
            return data
        if isinstance(data, list):
            return [self.dec_value(item, f"{path}[{i}]") for i, item in enumerate(data)]
        return self.dec_node(data, path)

    def dec_generic_map(self, data: Mapping[str, Any], path: str) -> Any:
        if "items" in data:
            return self.dec_map(data["items"], f"{path}.items")
        pairs = [(self.dec_value(key, f"{path}.pairs[{i}][0]"),
                  self.dec_value(value, f"{path}.pairs[{i}][1]"))
                 for i, (key, value) in enumerate(data["pairs"])]
        return _construct(path, "Map", dict, pairs)

    @staticmethod
    def dec_tensor(data: Mapping[str, Any], path: str) -> Any:
        try:
            raw = base64.b64decode(data["data"], validate=True)
            dtype = np.dtype(data["dtype"]).newbyteorder("<")
            array = np.frombuffer(raw, dtype=dtype).reshape(data["shape"])
        except (ValueError, TypeError) as err:
            raise TirJsonError(f"{path}: bad tensor data: {' '.join(str(err).split())}") from None
        native = array.astype(array.dtype.newbyteorder("="), copy=False)
        return _construct(path, "Tensor", tvm.runtime.tensor, native)

    @staticmethod
    def dec_target(data: Mapping[str, Any], path: str) -> Any:
        try:
            return tvm.target.Target(dict(data["config"]))
        except _BUILD_ERRORS as err:
            raise TirJsonError(f"{path}: bad target: {' '.join(str(err).split())}") from None

    @staticmethod
    def dec_float_value(data: Mapping[str, Any], path: str) -> float:
        return _Loader.dec_float(data["value"], f"{path}.value")

    @staticmethod
    def dec_datatype(data: Mapping[str, Any], path: str) -> Any:
        return _construct(path, "DataType", tvm.DataType, data["value"])


# Node kinds decoded by a method rather than through the node table.
_SPECIAL_DECODERS = {
    "Var": "dec_var",
    "GlobalVar": "dec_callee",
    "Op": "dec_callee",
    "Map": "dec_generic_map",
    "Tensor": "dec_tensor",
    "Target": "dec_target",
    "Float": "dec_float_value",
    "DataType": "dec_datatype",
}


def load_modules(doc: str | bytes | Mapping[str, Any]) -> dict[str, tvm.IRModule]:
    """Every module of a document, by its name (in document order)."""
    data = parse(doc)
    modules = {}
    for index, module in enumerate(data["modules"]):
        names = [func["name"] for func in module["functions"]]
        modules[module["name"]] = _Loader(names).module(module, f"$.modules[{index}]")
    return modules


def load(doc: str | bytes | Mapping[str, Any]) -> tvm.IRModule | dict[str, tvm.IRModule]:
    """Rebuild TVM IR from a document: the IRModule if it holds one module, else a dict of
    module name (by default the target kind: "c", "cuda", …) → IRModule."""
    modules = load_modules(doc)
    if len(modules) == 1:
        return next(iter(modules.values()))
    return modules

