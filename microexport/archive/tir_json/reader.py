"""Reading `microexport-tir` documents without TVM: parse, validate, walk.

`graph.py` and `analyze.py` use only this module (plus the standard library and jsonschema), so
they run where TVM is not installed.

Validation uses the shipped JSON Schema (`schema/tir.schema.json`). Its node dispatch is written in
standard JSON Schema as `if`/`then` chains (one per node kind), which the jsonschema package
evaluates one kind at a time; for speed the validator here replaces each chain by an equivalent
table lookup on the `"node"` kind (the `x-dispatch` keyword below) and every `#/$defs/...`
reference by the definition itself. Both accept the same documents.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from importlib.resources import files
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from microexport.archive.tir_json.spec import FORMAT, VERSION
from microexport.errors import TirJsonError

SCHEMA_FILE = "schema/tir.schema.json"
DISPATCH_KEYWORD = "x-dispatch"
MAX_MESSAGE = 160


def schema() -> dict[str, Any]:
    """The shipped JSON Schema of the format, as a dict."""
    return json.loads(files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _dispatch(
    validator: Any, cases: Mapping[str, Any], instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    """`x-dispatch`: validate an object against the definition of its "node" kind."""
    if isinstance(instance, dict):
        definition = cases.get(instance.get("node"))  # type: ignore[arg-type]
        if definition is not None:
            yield from validator.descend(instance, definition)


def _with_dispatch(node: Any) -> Any:
    """`node` with every if/then chain on "node" replaced by an `x-dispatch` lookup table."""
    if isinstance(node, list):
        return [_with_dispatch(item) for item in node]
    if not isinstance(node, dict):
        return node
    chain = node.get("allOf")
    if chain and all(set(item) == {"if", "then"} for item in chain):
        cases = {item["if"]["properties"]["node"]["const"]: item["then"]["$ref"] for item in chain}
        rest = {key: _with_dispatch(value) for key, value in node.items() if key != "allOf"}
        return {**rest, DISPATCH_KEYWORD: cases}
    return {key: _with_dispatch(value) for key, value in node.items()}


def _inline_definitions(root: dict[str, Any]) -> dict[str, Any]:
    """`root` without `$defs`: each `{"$ref": "#/$defs/X"}` (and each dispatch case) replaced by
    definition X itself. The result is cyclic, fit for validating only."""
    defs = root.pop("$defs")
    prefix = "#/$defs/"

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"$ref"} and node["$ref"].startswith(prefix):
            return defs[node["$ref"][len(prefix):]]
        return node

    def visit(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if key == DISPATCH_KEYWORD:
                node[key] = {kind: defs[ref[len(prefix):]] for kind, ref in value.items()}
            elif isinstance(value, dict | list):
                resolved = resolve(value)
                if resolved is value:
                    visit(value)
                else:
                    node[key] = resolved

    for definition in defs.values():
        visit(definition)
    visit(root)
    return root


@functools.cache
def _validator() -> Any:
    base = jsonschema.Draft202012Validator
    cls = jsonschema.validators.extend(base, {DISPATCH_KEYWORD: _dispatch})
    return cls(_inline_definitions(_with_dispatch(schema())))


def _short(error: ValidationError) -> str:
    message = " ".join(error.message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message


def parse(doc: str | bytes | Mapping[str, Any], origin: str = "") -> dict[str, Any]:
    """Decode (if text) and validate a document; TirJsonError with the JSON path if it is bad."""
    prefix = f"{origin}: " if origin else ""
    if isinstance(doc, str | bytes):
        try:
            data = json.loads(doc)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TirJsonError(f"{prefix}$: not valid JSON ({err})") from None
    else:
        data = doc
    if not isinstance(data, Mapping):
        raise TirJsonError(f"{prefix}$: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise TirJsonError(f"{prefix}$.format: expected '{FORMAT}', got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise TirJsonError(
            f"{prefix}$.version: {FORMAT} version {data.get('version')!r} is not supported "
            f"(this microexport reads version {VERSION})"
        )
    error = best_match(_validator().iter_errors(data))
    if error is not None:
        raise TirJsonError(f"{prefix}{error.json_path}: {_short(error)}")
    return dict(data)


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node (object with a "node" kind) under `node`, depth first in document order."""
    if isinstance(node, dict):
        if "node" in node:
            yield path, node
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list):
                yield from walk(value, f"{path}[{index}]")


# -- helpers for readers of the tree (graph.py, analyze.py) ---------------------------------

_DTYPE = re.compile(r"^(bool|u?int|float|bfloat)(\d*)(?:x(\d+))?$")


def dtype_bytes(dtype: str) -> int:
    """Bytes of one value of `dtype` ("float32" → 4, "float32x4" → 16, "bool" → 1)."""
    match = _DTYPE.match(dtype)
    if match is None:
        raise TirJsonError(f"$: unknown dtype '{dtype}'")
    kind, bits, lanes = match.groups()
    size = 1 if kind == "bool" else max(int(bits) // 8, 1)
    return size * int(lanes or 1)


def flatten(stmt: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The statements of `stmt` in order, nested SeqStmts flattened."""
    if stmt is None:
        return []
    if stmt["node"] == "SeqStmt":
        return [s for child in stmt["seq"] for s in flatten(child)]
    return [dict(stmt)]


def int_value(expr: Mapping[str, Any] | None) -> int | None:
    """The value of a constant integer expression (IntImm, or +-* of them), else None."""
    if expr is None:
        return None
    kind = expr["node"]
    if kind == "IntImm":
        return int(expr["value"])
    if kind in _INT_OPS:
        a, b = int_value(expr["a"]), int_value(expr["b"])
        return None if a is None or b is None else _INT_OPS[kind](a, b)
    if kind == "Cast":
        return int_value(expr["value"])
    return None


_INT_OPS = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "FloorDiv": lambda a, b: a // b if b else None,
}


def shape_of(buffer_type: Mapping[str, Any]) -> list[int | None]:
    """The shape of a BufferType node (None for a dimension that is not a constant)."""
    return [int_value(dim) for dim in buffer_type["shape"]]


def element_count(shape: list[int | None]) -> int | None:
    """The number of elements of `shape`, or None if a dimension is unknown."""
    count = 1
    for dim in shape:
        if dim is None:
            return None
        count *= dim
    return count


def declarations(func: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variable of a function: unique name → its declaring Var node (with "type")."""
    return {
        node["name"]: node for _, node in walk(func) if node["node"] == "Var" and "type" in node
    }


def is_call(expr: Mapping[str, Any], op: str) -> bool:
    """Is `expr` a Call of the TVM op named `op`?"""
    return (expr.get("node") == "Call" and expr["op"]["node"] == "Op"
            and expr["op"]["name"] == op)


def callee(expr: Mapping[str, Any]) -> str | None:
    """The name of the module function `expr` calls, if it is a Call of a GlobalVar."""
    if expr.get("node") == "Call" and expr["op"]["node"] == "GlobalVar":
        return str(expr["op"]["name"])
    return None


def called_functions(func: Mapping[str, Any]) -> list[str]:
    """Names of module functions called in `func`, in order of first call."""
    names: list[str] = []
    for _, node in walk(func["body"]):
        name = callee(node)
        if name is not None and name not in names:
            names.append(name)
    return names


def expr_dtype(expr: Mapping[str, Any], decls: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The dtype of an expression: its "dtype", a Call's PrimType, or a variable's declared
    PrimType (`decls` from `declarations`); None if it has none (a pointer, a string)."""
    if "dtype" in expr:
        return str(expr["dtype"])
    ty = expr.get("type")
    if expr["node"] == "Var":
        ty = decls.get(expr["name"], {}).get("type")
    if isinstance(ty, Mapping) and ty.get("node") == "PrimType":
        return str(ty["dtype"])
    return None
