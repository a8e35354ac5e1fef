"""Generate `schema/tir.schema.json` from the node table (a development tool; imports TVM).

    python scripts/gen_tir_schema.py   # rewrites schema/tir.schema.json next to this module

tests/test_tir_json.py checks that the shipped schema equals `json_schema()`, so the schema and
the table cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from microexport.archive.tir_json.nodes import NODE_SPECS, Field, NodeSpec
from microexport.archive.tir_json.spec import (
    EXPR_KINDS,
    FOR_KINDS,
    FORMAT,
    ITER_TYPES,
    STAGES,
    STMT_KINDS,
    TYPE_KINDS,
    VERSION,
)

SCHEMA_ID = "urn:microexport:tir:1"
HEX_FLOAT = r"^(-?0x[0-9a-f]+(\.[0-9a-f]*)?p[+-][0-9]+|-?inf|nan)$"
BASE64 = r"^[A-Za-z0-9+/]*={0,2}$"
# Attribute values that are nodes: expressions and the helper nodes that can sit in annotations.
VALUE_NODE_KINDS = (
    *EXPR_KINDS, *TYPE_KINDS, "IterVar", "Range", "BufferRegion", "Op", "GlobalVar",
    "Map", "Tensor", "Target", "Float", "DataType",
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


def _codec_schema(field: Field) -> dict[str, Any]:
    codecs: dict[str, dict[str, Any]] = {
        "node": _ref(field.ref),
        "opt_node": _nullable(_ref(field.ref)),
        "nodes": _array(_ref(field.ref)),
        "var": _ref("Var"),
        "vars": _array(_ref("Var")),
        "str": {"type": "string"},
        "int": {"type": "integer"},
        "float": _ref("hexfloat"),
        "dtype": _ref("dtype"),
        "value": _ref("Value"),
        "map": _ref("AttrMap"),
        "for_kind": {"enum": list(FOR_KINDS)},
        "iter_type": {"enum": list(ITER_TYPES)},
        "str_imm": {"type": "string"},
        "str_imms": _array({"type": "string"}),
        "callee": {"anyOf": [_ref("Op"), _ref("GlobalVar")]},
        "layout": {"anyOf": [{"type": "null"}, {"const": "default"}, _ref("TileLayout")]},
        "axis": {"type": "string"},
        "axis_map": {"type": "object", "additionalProperties": _ref("Expr")},
    }
    return codecs[field.codec]


def _node(kind: str, properties: dict[str, Any], required: list[str], doc: str = "",
          ) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"node": {"const": kind}, **properties},
        "required": ["node", *required],
        "additionalProperties": False,
    }
    if doc:
        schema["description"] = doc
    return schema


def _spec_schema(spec: NodeSpec) -> dict[str, Any]:
    properties = {field.key: _codec_schema(field) for field in spec.fields}
    required = [field.key for field in spec.fields if not field.omit_empty]
    return _node(spec.kind, properties, required, spec.doc)


def _dispatch(kinds: tuple[str, ...], doc: str) -> dict[str, Any]:
    """An object whose "node" is one of `kinds`, validated by that kind's definition."""
    return {
        "description": doc,
        "type": "object",
        "required": ["node"],
        "properties": {"node": {"enum": list(kinds)}},
        "allOf": [
            {"if": {"properties": {"node": {"const": kind}}}, "then": _ref(kind)}
            for kind in kinds
        ],
    }


def _special_defs() -> dict[str, Any]:
    value_or_node = {"anyOf": [
        {"type": ["null", "boolean", "number", "string"]},
        _array(_ref("Value")),
        _ref("ValueNode"),
    ]}
    return {
        "dtype": {"type": "string", "minLength": 1,
                  "description": "TVM data type: float32, int8, bool, float32x4, void, ..."},
        "hexfloat": {"type": "string", "pattern": HEX_FLOAT,
                     "description": "exact float: Python float.hex() (float.fromhex reads it)"},
        "Var": _node("Var", {
            "name": {"type": "string", "minLength": 1},
            "hint": {"type": "string"},
            "type": _ref("Type"),
        }, ["name"], "a variable; its first occurrence in a function declares it (has \"type\", "
                     "and \"hint\" when the name hint differs from the unique name)"),
        "Op": _node("Op", {"name": {"type": "string"}}, ["name"], "a TVM op, by name"),
        "GlobalVar": _node("GlobalVar", {"name": {"type": "string"}}, ["name"],
                           "a function of the module, by name"),
        "Value": {**value_or_node, "description": "an attribute value"},
        "ValueNode": _dispatch(VALUE_NODE_KINDS, "an attribute value that is a node"),
        "AttrMap": {"type": "object", "additionalProperties": _ref("Value"),
                    "description": "string-keyed attributes, keys sorted"},
        "Map": {**_node("Map", {
            "items": _ref("AttrMap"),
            "pairs": _array({"type": "array", "prefixItems": [_ref("Value"), _ref("Value")],
                             "minItems": 2, "maxItems": 2}),
        }, [], "a map: items (string keys) or pairs ([key, value], other keys)"),
            "oneOf": [{"required": ["items"]}, {"required": ["pairs"]}]},
        "Tensor": _node("Tensor", {
            "dtype": _ref("dtype"),
            "shape": _array({"type": "integer", "minimum": 0}),
            "data": {"type": "string", "pattern": BASE64},
        }, ["dtype", "shape", "data"], "a constant tensor: base64 of its little-endian bytes, "
                                       "row-major"),
        "Target": _node("Target", {"config": {"type": "object"}}, ["config"],
                        "a TVM target as its JSON config (Target.export())"),
        "Float": _node("Float", {"value": _ref("hexfloat")}, ["value"],
                       "a non-finite float attribute value (inf, -inf, nan)"),
        "DataType": _node("DataType", {"value": _ref("dtype")}, ["value"],
                          "a data type attribute value"),
    }


def _container_defs() -> dict[str, Any]:
    return {
        "IRModule": _node("IRModule", {
            "name": {"type": "string", "minLength": 1},
            "target": _nullable(_ref("Target")),
            "attrs": _ref("AttrMap"),
            "functions": _array(_ref("PrimFunc")),
        }, ["name", "target", "attrs", "functions"],
            "a module: its functions sorted by name; target is the target they share (or null)"),
        "PrimFunc": _node("PrimFunc", {
            "name": {"type": "string", "minLength": 1},
            "params": _array(_ref("Var")),
            "ret_type": _ref("Type"),
            "attrs": _ref("AttrMap"),
            "body": _ref("Stmt"),
        }, ["name", "params", "ret_type", "attrs", "body"], "a TIR function"),
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a `microexport-tir` version-1 document."""
    defs: dict[str, Any] = {**_container_defs(), **_special_defs()}
    defs["Expr"] = _dispatch(EXPR_KINDS, "an expression")
    defs["Stmt"] = _dispatch(STMT_KINDS, "a statement")
    defs["Type"] = _dispatch(TYPE_KINDS, "a type")
    for spec in NODE_SPECS:
        defs[spec.kind] = _spec_schema(spec)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"{FORMAT} version {VERSION}",
        "description": "TIR (Apache TVM 0.27) as JSON; see docs/tir-json.md",
        "type": "object",
        "properties": {
            "format": {"const": FORMAT},
            "version": {"const": VERSION},
            "stage": {"anyOf": [{"type": "null"}, {"type": "string"}],
                      "description": f"pipeline stage: one of {', '.join(STAGES)} for "
                                     "microexport archives, any string or null otherwise"},
            "modules": {"type": "array", "items": _ref("IRModule"), "minItems": 1},
        },
        "required": ["format", "version", "stage", "modules"],
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The schema file's text: two-space indent, trailing newline."""
    return json.dumps(json_schema(), indent=2) + "\n"
