"""Reading `microexport-tir` documents without TVM: parse, validate, walk.

`graph.py` and `analyze.py` use only this module (plus the standard library and jsonschema), so
they run where TVM is not installed.

`parse` checks, in order: plain JSON nested at most MAX_DEPTH levels (iteratively, so no depth
overflows the stack), format and version, the shipped JSON Schema (`schema/tir.schema.json`), then
the rules the schema cannot express (`check_document`). Every problem is a TirJsonError starting
with its JSON path; a document that passes may be walked recursively by every reader.

The schema's node dispatch is written in standard JSON Schema as `if`/`then` chains (one per node
kind), which the jsonschema package evaluates one kind at a time; for speed the validator here
replaces each chain by an equivalent table lookup on the `"node"` kind (the `x-dispatch` keyword
below) and every `#/$defs/...` reference by the definition itself. Both accept the same
documents.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from importlib.resources import files
from typing import Any, Final

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from microexport.archive.tir_json.spec import FORMAT, VERSION
from microexport.errors import TirJsonError

SCHEMA_FILE = "schema/tir.schema.json"
DISPATCH_KEYWORD = "x-dispatch"
MAX_MESSAGE = 160
# Deepest nesting of JSON objects and arrays a reader accepts (the document object is level 1;
# microexport's own documents stay under 50). It keeps every reader, the schema validator
# included, well inside Python's default recursion limit.
MAX_DEPTH: Final = 128
# Largest JSON integer read, in bits (TIR integers have at most 64).
MAX_INT_BITS: Final = 1024
# Nodes whose "buffer" variable must be a buffer (declared with a BufferType).
BUFFER_NODES: Final = ("BufferStore", "BufferLoad", "DeclBuffer", "AllocBuffer", "BufferRegion",
                       "MatchBufferRegion")
_PLAIN_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")


def json_path(path: str, key: str | int) -> str:
    """`path` extended by an object key or array index, spelled as jsonschema spells paths:
    `$.a[0].b`, or `$['microexport.constants']` for a key that is not a plain name."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    escaped = key.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"{path}['{escaped}']"  # control characters escaped: a path stays on one line


def schema() -> dict[str, Any]:
    """The shipped JSON Schema of the format, as a dict."""
    return json.loads(files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _dispatch(
    validator: Any, cases: Mapping[str, Any], instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    """`x-dispatch`: validate an object against the definition of its "node" kind (a "node"
    that is not a known kind is left to the `enum` next to the dispatch)."""
    if isinstance(instance, dict):
        kind = instance.get("node")
        definition = cases.get(kind) if isinstance(kind, str) else None
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


def validated(
    doc: str | bytes | Mapping[str, Any], fmt: str, version: int, validator: Any
) -> dict[str, Any]:
    """The checks every microexport JSON document gets, in order: JSON syntax; plain JSON values
    (nesting at most MAX_DEPTH levels, finite numbers, integers of at most MAX_INT_BITS bits);
    format `fmt` and `version`; the schema of `validator`. TirJsonError with the JSON path."""
    data = _decode(doc) if isinstance(doc, str | bytes) else doc
    if not isinstance(data, Mapping):
        raise TirJsonError(f"$: expected a JSON object, got {type(data).__name__}")
    data = dict(data)
    check_json(data)
    if data.get("format") != fmt:
        raise TirJsonError(f"$.format: expected '{fmt}', got {_brief(data.get('format'))}")
    if data.get("version") != version or isinstance(data.get("version"), bool):
        raise TirJsonError(
            f"$.version: {fmt} version {_brief(data.get('version'))} is not supported "
            f"(this microexport reads version {version})"
        )
    try:
        error = best_match(validator.iter_errors(data))
    except RecursionError:  # only when the caller's own stack is already nearly full
        raise TirJsonError("$: nesting too deep for the Python stack left") from None
    if error is not None:
        raise TirJsonError(f"{error.json_path}: {_short(error)}")
    return data


def parse(doc: str | bytes | Mapping[str, Any], origin: str = "") -> dict[str, Any]:
    """Decode (if text) and validate a document; TirJsonError with the JSON path if it is bad.

    In order: JSON syntax; plain JSON values (nesting at most MAX_DEPTH levels, finite numbers,
    integers of at most MAX_INT_BITS bits); format and version; the schema; then the rules the
    schema cannot express (`check_document`)."""
    try:
        data = validated(doc, FORMAT, VERSION, _validator())
        check_document(data)
    except TirJsonError as err:
        if origin:
            raise TirJsonError(f"{origin}: {err}") from None
        raise
    return data


def _brief(value: Any) -> str:
    text = repr(value) if isinstance(value, str | int | float | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _decode(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        raise TirJsonError(f"{_too_deep_in_text(text)}: nesting deeper than {MAX_DEPTH}") from None
    except (UnicodeDecodeError, ValueError) as err:  # ValueError: also JSONDecodeError
        message = " ".join(str(err).split())[:MAX_MESSAGE]
        raise TirJsonError(f"$: not valid JSON ({message})") from None


_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"\s*:?|[\[\]{},]')


def _too_deep_in_text(text: str) -> str:
    """The JSON path of the first object or array of JSON `text` nested deeper than MAX_DEPTH
    (`json.loads` gave up on it with a RecursionError), or "$" if there is none."""
    stack: list[list[Any]] = []  # per open container: its opening bracket, the current key
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            if len(stack) == MAX_DEPTH:
                return _path_of(tuple(key for _, key in stack))
            stack.append([token, 0 if token == "[" else ""])
        elif token in ("]", "}"):
            if stack:
                stack.pop()
        elif token == ",":
            if stack and stack[-1][0] == "[":
                stack[-1][1] += 1
        elif token.endswith(":") and stack and stack[-1][0] == "{":
            stack[-1][1] = json.loads(token[:-1])
    return "$"


def _path_of(keys: tuple[str | int, ...]) -> str:
    path = "$"
    for key in keys:
        path = json_path(path, key)
    return path


def _unlink(link: tuple[Any, ...] | None) -> str:
    """The JSON path of a (parent link, key) chain built by `check_json`."""
    keys = []
    while link is not None:
        link, key = link
        keys.append(key)
    return _path_of(tuple(reversed(keys)))


def check_json(data: Any) -> None:
    """Plain JSON only: objects with string keys, arrays, strings, booleans, null, integers of
    at most MAX_INT_BITS bits and finite numbers, nested at most MAX_DEPTH levels. Iterative:
    any nesting is reported, none overflows the stack."""
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(data, 1, None)]
    while stack:
        node, depth, link = stack.pop()
        if depth > MAX_DEPTH:
            raise TirJsonError(f"{_unlink(link)}: nesting deeper than {MAX_DEPTH}")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(node, dict) and not isinstance(key, str):
                raise TirJsonError(f"{_unlink(link)}: object key {_brief(key)} is not a string")
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, (link, key)))
            elif isinstance(value, str | bool) or value is None:
                continue
            elif isinstance(value, int):
                if value.bit_length() > MAX_INT_BITS:
                    raise TirJsonError(f"{_unlink((link, key))}: integer of more than "
                                       f"{MAX_INT_BITS} bits")
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise TirJsonError(f"{_unlink((link, key))}: {value} is not a JSON number")
            else:
                raise TirJsonError(f"{_unlink((link, key))}: a {type(value).__name__} is not "
                                   "a JSON value")


def check_document(data: Mapping[str, Any]) -> None:
    """The rules of a schema-valid document that the schema cannot express:

    * module names are unique in the document, function names in their module;
    * in each function (document order), a variable is declared once (the occurrence with
      "type"), before any use; each parameter is a declaration;
    * the variable of a buffer field (`buffer` of BufferLoad, BufferStore, DeclBuffer,
      AllocBuffer, BufferRegion, MatchBufferRegion; `SBlock.alloc_buffers`) is a buffer (its type
      is a BufferType);
    * an IntImm's value fits its integer dtype; a float value (FloatImm, Float) is in range.
    """
    modules: set[str] = set()
    for index, module in enumerate(data["modules"]):
        path = f"$.modules[{index}]"
        if module["name"] in modules:
            raise TirJsonError(f"{path}.name: module name '{module['name']}' is used twice")
        modules.add(module["name"])
        functions: set[str] = set()
        for number, func in enumerate(module["functions"]):
            func_path = f"{path}.functions[{number}]"
            if func["name"] in functions:
                raise TirJsonError(f"{func_path}.name: function '{func['name']}' is defined twice")
            functions.add(func["name"])
            _check_function(func, func_path)


def _check_function(func: Mapping[str, Any], path: str) -> None:
    for index, param in enumerate(func["params"]):
        if "type" not in param:
            raise TirJsonError(f"{path}.params[{index}]: parameter '{param['name']}' is not a "
                               "declaration (it has no \"type\")")
    declared: dict[str, Mapping[str, Any]] = {}
    buffers: list[tuple[str, str]] = []  # (path, variable name) of every buffer field
    for node_path, node in walk(func, path):
        kind = node["node"]
        if kind == "Var":
            name = node["name"]
            if "type" in node:
                if name in declared:
                    raise TirJsonError(f"{node_path}: variable '{name}' is declared twice")
                declared[name] = node
            elif name not in declared:
                raise TirJsonError(f"{node_path}: variable '{name}' is used before it is "
                                   "declared")
        elif kind in BUFFER_NODES:
            buffers.append((f"{node_path}.buffer", node["buffer"]["name"]))
        elif kind == "SBlock":
            buffers += [(f"{node_path}.alloc_buffers[{i}]", var["name"])
                        for i, var in enumerate(node["alloc_buffers"])]
        elif kind == "IntImm":
            _check_int(node, node_path)
        elif kind in ("FloatImm", "Float"):
            try:
                float.fromhex(node["value"])
            except OverflowError:
                raise TirJsonError(f"{node_path}.value: {node['value']} is out of the range of "
                                   "a double") from None
            except (ValueError, TypeError):  # where the schema does not pin the value down
                raise TirJsonError(f"{node_path}.value: {str(node['value'])[:40]!r} is not a "
                                   "hexadecimal float (float.hex())") from None
    for buffer_path, name in buffers:
        kind = declared[name]["type"]["node"]
        if kind != "BufferType":
            raise TirJsonError(f"{buffer_path}: '{name}' is not a buffer (its type is a {kind})")


_INT_DTYPE = re.compile(r"^(u?int)(\d+)$")


def _check_int(node: Mapping[str, Any], path: str) -> None:
    """An IntImm's value is in the range of its scalar integer dtype (bool: 0 or 1)."""
    value, dtype = node["value"], node["dtype"]
    if dtype == "bool":
        low, high = 0, 1
    elif (match := _INT_DTYPE.match(dtype)) is not None and int(match[2]) > 0:
        bits = int(match[2])
        low, high = ((0, 2**bits - 1) if match[1] == "uint"
                     else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    else:
        return  # left to the loader (TVM knows its dtypes)
    if not low <= value <= high:
        raise TirJsonError(f"{path}.value: {value} is out of the range of {dtype}")


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node (object with a "node" kind) under `node`, depth first in document order, with
    its JSON path. Iterative: the depth of the tree does not matter."""
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        here, value = stack.pop()
        if isinstance(value, dict):
            if "node" in value:
                yield here, value
            children = [(json_path(here, key), child) for key, child in value.items()
                        if isinstance(child, dict | list)]
        else:
            children = [(f"{here}[{index}]", child) for index, child in enumerate(value)
                        if isinstance(child, dict | list)]
        stack.extend(reversed(children))


# -- helpers for readers of the tree (graph.py, analyze.py) ---------------------------------

# A number type: bool, or kind and bits (and a format suffix: float8_e4m3fn), with lanes.
_DTYPE = re.compile(r"^(?:bool|(u?int|float|bfloat)([1-9]\d*)(?:_[a-z0-9]+)?)(?:x([1-9]\d*))?$")


def dtype_bytes(dtype: str, path: str = "$") -> int:
    """Bytes of one value of `dtype` ("float32" → 4, "float32x4" → 16, "bool" → 1); TirJsonError
    at `path` for a dtype that is not a number type."""
    match = _DTYPE.match(dtype)
    if match is None:
        raise TirJsonError(f"{path}: unknown dtype '{dtype}'")
    _, bits, lanes = match.groups()
    size = 1 if bits is None else max(int(bits) // 8, 1)
    return size * int(lanes or 1)


def statements(stmt: Mapping[str, Any] | None, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The statements of `stmt` (at JSON path `path`) in order with their paths, nested SeqStmts
    flattened."""
    if stmt is None:
        return []
    if stmt["node"] == "SeqStmt":
        return [item for index, child in enumerate(stmt["seq"])
                for item in statements(child, f"{path}.seq[{index}]")]
    return [(path, dict(stmt))]


def flatten(stmt: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The statements of `stmt` in order, nested SeqStmts flattened."""
    return [item for _, item in statements(stmt, "$")]


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
