"""TVM IRModule / PrimFunc → `microexport-tir` dict (see docs/tir-json.md).

The traversal follows the field order of `nodes.NODE_SPECS`, so the output is deterministic: no
spans, no addresses, functions sorted by name, maps sorted by key, and every variable named after
its name hint, made unique within its function (`x`, `x_1`, …) in order of first occurrence.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import ir, tirx

from microexport.archive.tir_json.nodes import (
    FOR_KINDS,
    ITER_TYPES,
    NodeSpec,
    default_layout,
    specs_by_type_key,
    type_key,
)
from microexport.archive.tir_json.spec import FORMAT, VERSION
from microexport.errors import TirJsonError

ModuleInput = tvm.IRModule | tirx.PrimFunc


class UnsupportedNode(TirJsonError):
    """A TVM object has no mapping in the format."""


class _Exporter:
    """Encodes one module; variable names are scoped to the function being encoded."""

    def __init__(self) -> None:
        self.specs = specs_by_type_key()
        self.names: dict[int, str] = {}
        self.keep: list[Any] = []  # keeps named objects alive so their handles stay unique
        self.used: set[str] = set()

    # -- containers ------------------------------------------------------------------------

    def module(self, mod: tvm.IRModule, name: str, path: str) -> dict[str, Any]:
        if mod.global_infos and len(mod.global_infos):
            raise UnsupportedNode(f"{path}.global_infos: module global infos are not supported")
        items = sorted(mod.functions.items(), key=lambda item: item[0].name_hint)
        functions = []
        for index, (gv, func) in enumerate(items):
            functions.append(self.function(gv.name_hint, func, f"{path}.functions[{index}]"))
        target = module_target(mod)
        return {
            "node": "IRModule",
            "name": name,
            "target": None if target is None else self.enc_value(target, f"{path}.target"),
            "attrs": self.enc_map(mod.attrs, f"{path}.attrs"),
            "functions": functions,
        }

    def function(self, name: str, func: Any, path: str) -> dict[str, Any]:
        if not isinstance(func, tirx.PrimFunc):
            raise UnsupportedNode(
                f"{path}: function '{name}' is a {type_key(func)}, not a TIR PrimFunc"
            )
        self.names, self.keep, self.used = {}, [], set()
        return {
            "node": "PrimFunc",
            "name": name,
            "params": self.enc_vars(func.params, f"{path}.params"),
            "ret_type": self.enc_node(func.ret_type, f"{path}.ret_type"),
            "attrs": self.enc_map(func.attrs, f"{path}.attrs"),
            "body": self.enc_node(func.body, f"{path}.body"),
        }

    # -- nodes -----------------------------------------------------------------------------

    def spec_for(self, obj: Any, path: str) -> NodeSpec:
        key = type_key(obj)
        for spec in self.specs.get(key, ()):
            if spec.applies is None or spec.applies(obj):
                return spec
        raise UnsupportedNode(f"{path}: unsupported TIR node kind '{key}'")

    def enc_node(self, obj: Any, path: str) -> dict[str, Any]:
        if obj is None:
            raise UnsupportedNode(f"{path}: missing value (null) where a node is required")
        if isinstance(obj, ir.Var):
            return self.enc_var(obj, path)
        if isinstance(obj, ir.GlobalVar | ir.Op):
            return self.enc_callee(obj, path)
        spec = self.spec_for(obj, path)
        data: dict[str, Any] = {"node": spec.kind}
        for field in spec.fields:
            value = field.read(obj)
            if field.omit_empty and (value is None or _is_empty(value)):
                continue
            data[field.key] = getattr(self, f"enc_{field.codec}")(value, f"{path}.{field.key}")
        return data

    def enc_opt_node(self, obj: Any, path: str) -> dict[str, Any] | None:
        return None if obj is None else self.enc_node(obj, path)

    def enc_nodes(self, objs: Iterable[Any], path: str) -> list[dict[str, Any]]:
        return [self.enc_node(obj, f"{path}[{i}]") for i, obj in enumerate(objs)]

    def enc_var(self, var: ir.Var, path: str) -> dict[str, Any]:
        handle = var.__chandle__()
        if handle in self.names:
            return {"node": "Var", "name": self.names[handle]}
        hint = var.name
        name = self.unique(hint or "v")
        self.names[handle] = name
        self.keep.append(var)
        data: dict[str, Any] = {"node": "Var", "name": name}
        if name != hint:
            data["hint"] = hint
        data["type"] = self.enc_node(var.ty, f"{path}.type")
        return data

    def unique(self, hint: str) -> str:
        name, suffix = hint, 1
        while name in self.used:
            name, suffix = f"{hint}_{suffix}", suffix + 1
        self.used.add(name)
        return name

    def enc_vars(self, objs: Iterable[Any], path: str) -> list[dict[str, Any]]:
        return [self.enc_var(obj, f"{path}[{i}]") for i, obj in enumerate(objs)]

    def enc_callee(self, obj: Any, path: str) -> dict[str, Any]:
        if isinstance(obj, ir.Op):
            return {"node": "Op", "name": obj.name}
        if isinstance(obj, ir.GlobalVar):
            return {"node": "GlobalVar", "name": obj.name_hint}
        raise UnsupportedNode(f"{path}: unsupported callee kind '{type_key(obj)}'")

    # -- scalars ---------------------------------------------------------------------------

    @staticmethod
    def enc_str(value: Any, path: str) -> str:
        return str(value)

    @staticmethod
    def enc_int(value: Any, path: str) -> int:
        return int(value)

    @staticmethod
    def enc_float(value: float, path: str) -> str:
        return float(value).hex()

    @staticmethod
    def enc_dtype(value: Any, path: str) -> str:
        if isinstance(value, ir.PrimType):
            value = value.dtype
        elif isinstance(value, ir.Type):
            raise UnsupportedNode(f"{path}: expected a primitive type, got {type_key(value)}")
        return str(value) or "void"

    @staticmethod
    def enc_for_kind(value: Any, path: str) -> str:
        return FOR_KINDS[int(value)]

    @staticmethod
    def enc_iter_type(value: Any, path: str) -> str:
        return ITER_TYPES[int(value)]

    @staticmethod
    def enc_str_imm(value: ir.StringImm, path: str) -> str:
        return str(value.value)

    def enc_str_imms(self, values: Iterable[ir.StringImm], path: str) -> list[str]:
        return [self.enc_str_imm(v, path) for v in values]

    @staticmethod
    def enc_axis(value: Any, path: str) -> str:
        return str(value.name)

    def enc_axis_map(self, value: Mapping[Any, Any], path: str) -> dict[str, Any]:
        items = sorted((str(axis.name), expr) for axis, expr in value.items())
        return {name: self.enc_node(expr, f"{path}.{name}") for name, expr in items}

    def enc_layout(self, value: tuple[Any, Any], path: str) -> Any:
        layout, shape = value
        if layout is None:
            return None
        default = default_layout(list(shape))
        if default is not None and tvm_ffi.structural_equal(layout, default):
            return "default"
        return self.enc_node(layout, path)

    # -- attribute values ------------------------------------------------------------------

    def enc_map(self, value: Any, path: str) -> dict[str, Any]:
        """A string-keyed map (function attrs, annotations) as a JSON object, keys sorted."""
        if value is None:
            return {}
        items = dict(value.items())
        for key in items:
            if not isinstance(key, str):
                raise UnsupportedNode(f"{path}: map key {key!r} is not a string")
        return {key: self.enc_value(items[key], f"{path}.{key}") for key in sorted(items)}

    def enc_value(self, value: Any, path: str) -> Any:
        """Any attribute value: JSON scalars stay scalars, TVM objects become nodes."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"node": "Float", "value": value.hex()}
        key = type_key(value)
        encoder = _VALUE_ENCODERS.get(key)
        if encoder is not None:
            return getattr(self, encoder)(value, path)
        if isinstance(value, Sequence) and not isinstance(value, ir.Node):
            return [self.enc_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return self.enc_node(value, path)

    def enc_array(self, value: Any, path: str) -> list[Any]:
        return [self.enc_value(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def enc_generic_map(self, value: Any, path: str) -> dict[str, Any]:
        if all(isinstance(k, str) for k in value):
            return {"node": "Map", "items": self.enc_map(value, f"{path}.items")}
        pairs = [
            [self.enc_value(k, f"{path}.pairs[{i}][0]"), self.enc_value(v, f"{path}.pairs[{i}][1]")]
            for i, (k, v) in enumerate(value.items())
        ]
        pairs.sort(key=lambda pair: _sort_key(pair[0]))
        return {"node": "Map", "pairs": pairs}

    def enc_attrs(self, value: Any, path: str) -> dict[str, Any]:
        return {"node": "Map", "items": self.enc_map(value, f"{path}.items")}

    @staticmethod
    def enc_tensor(value: Any, path: str) -> dict[str, Any]:
        array = value.numpy()
        little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
        return {
            "node": "Tensor",
            "dtype": str(value.dtype),
            "shape": [int(d) for d in array.shape],
            "data": base64.b64encode(little.tobytes()).decode("ascii"),
        }

    @staticmethod
    def enc_target(value: Any, path: str) -> dict[str, Any]:
        return {"node": "Target", "config": _plain(value.export())}

    @staticmethod
    def enc_datatype(value: Any, path: str) -> dict[str, Any]:
        return {"node": "DataType", "value": str(value) or "void"}


# Type key → encoder method for attribute values that are not table nodes.
_VALUE_ENCODERS = {
    "ffi.Array": "enc_array",
    "ffi.Map": "enc_generic_map",
    "ir.DictAttrs": "enc_attrs",
    "ffi.Tensor": "enc_tensor",
    "target.Target": "enc_target",
    "dtype": "enc_datatype",
    "DataType": "enc_datatype",
    "list": "enc_array",
    "tuple": "enc_array",
    "dict": "enc_generic_map",
}


def _is_empty(value: Any) -> bool:
    try:
        return len(value) == 0
    except TypeError:
        return False


def _sort_key(encoded: Any) -> str:
    import json

    return json.dumps(encoded, sort_keys=True)


def _plain(value: Any) -> Any:
    """A target config (FFI maps, arrays, strings, numbers) as plain JSON, keys sorted."""
    if isinstance(value, Mapping) or type_key(value) == "ffi.Map":
        return {str(k): _plain(value[k]) for k in sorted(value.keys(), key=str)}
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Sequence) or type_key(value) == "ffi.Array":
        return [_plain(v) for v in value]
    if type_key(value) == "target.Target":
        return _plain(value.export())
    return str(value)


def function_target(func: Any) -> Any:
    """The `target` attribute of a function, or None."""
    attrs = getattr(func, "attrs", None)
    return None if attrs is None else attrs.get("target", None)


def module_target(mod: tvm.IRModule) -> Any:
    """The target all functions of `mod` share, or None if they have none or differ."""
    targets = [function_target(f) for f in mod.functions.values()]
    if not targets or any(t is None for t in targets):
        return None
    first = targets[0]
    if all(str(t) == str(first) for t in targets[1:]):
        return first
    return None


def default_module_name(mod: tvm.IRModule) -> str:
    """A module's name in a document: its target kind (`c`, `cuda`), or `module`."""
    target = module_target(mod)
    return str(target.kind.name) if target is not None else "module"


def _named_modules(
    obj: ModuleInput | Sequence[tvm.IRModule] | Mapping[str, tvm.IRModule],
) -> list[tuple[str, tvm.IRModule]]:
    if isinstance(obj, tirx.PrimFunc):
        return [("module", tvm.IRModule({ir.GlobalVar(_primfunc_name(obj)): obj}))]
    if isinstance(obj, tvm.IRModule):
        return [(default_module_name(obj), obj)]
    if isinstance(obj, Mapping):
        return [(str(name), mod) for name, mod in obj.items()]
    named: list[tuple[str, tvm.IRModule]] = []
    used: set[str] = set()
    for mod in obj:
        base = default_module_name(mod)
        name, suffix = base, 1
        while name in used:
            name, suffix = f"{base}_{suffix}", suffix + 1
        used.add(name)
        named.append((name, mod))
    return named


def _primfunc_name(func: tirx.PrimFunc) -> str:
    symbol = func.attrs.get("global_symbol", None) if func.attrs is not None else None
    return str(symbol) if symbol is not None else "main"


def to_dict(
    obj: ModuleInput | Sequence[tvm.IRModule] | Mapping[str, tvm.IRModule],
    stage: str | None = None,
) -> dict[str, Any]:
    """Encode an IRModule, a PrimFunc, or several modules (a list, or a name → module mapping:
    e.g. a host module and its device modules) as a `microexport-tir` document (a dict)."""
    modules = []
    for index, (name, mod) in enumerate(_named_modules(obj)):
        if not isinstance(mod, tvm.IRModule):
            raise UnsupportedNode(f"$.modules[{index}]: expected an IRModule, got {type(mod)}")
        modules.append(_Exporter().module(mod, name, f"$.modules[{index}]"))
    names = [m["name"] for m in modules]
    if len(set(names)) != len(names):
        raise TirJsonError(f"$.modules: duplicate module names {names}")
    return {"format": FORMAT, "version": VERSION, "stage": stage, "modules": modules}

