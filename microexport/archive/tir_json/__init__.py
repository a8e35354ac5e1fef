"""TIR as JSON: the `microexport-tir` format (docs/tir-json.md).

    from microexport.archive import tir_json

    text = tir_json.dump(mod, stage="codegen")   # IRModule / PrimFunc → JSON text
    mod = tir_json.load(text)                      # → IRModule (or name → IRModule)

`dump`, `to_dict` and `load` import TVM when called; `validate` and the `reader` module do not.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from microexport.archive.tir_json.spec import FORMAT, VERSION

if TYPE_CHECKING:
    import tvm

__all__ = ["FORMAT", "VERSION", "dump", "load", "to_dict", "validate"]


def _submodule(name: str) -> ModuleType:
    """Import `microexport.archive.tir_json.<name>` on first use (it imports TVM).

    Importing the submodule `load` binds the package attribute `load` to that module, hiding the
    function below, so the function is bound again afterwards.
    """
    module = importlib.import_module(f"{__name__}.{name}")
    globals().update(_FUNCTIONS)
    return module


def to_dict(obj: Any, stage: str | None = None) -> dict[str, Any]:
    """Encode an IRModule, a PrimFunc, a list of IRModules or a name → IRModule mapping."""
    return _submodule("export").to_dict(obj, stage)


def dump(obj: Any, stage: str | None = None, *, indent: int | None = None) -> str:
    """`to_dict` as JSON text: deterministic (same module → same bytes), ASCII, newline-ended."""
    return encode(to_dict(obj, stage), indent)


def encode(doc: Mapping[str, Any], indent: int | None = None) -> str:
    """JSON text of a document dict, keys in document order."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(doc, indent=indent, separators=separators, allow_nan=False) + "\n"


def load(doc: str | bytes | Mapping[str, Any]) -> tvm.IRModule | dict[str, tvm.IRModule]:
    """Rebuild TVM IR: one IRModule, or a dict module name → IRModule for multi-module documents."""
    return _submodule("load").load(doc)


def validate(doc: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Check a document against the format and its JSON Schema (no TVM needed); returns it as a
    dict. TirJsonError, starting with the JSON path of the problem, if it is not valid."""
    from microexport.archive.tir_json.reader import parse

    return parse(doc)


_FUNCTIONS = {"load": load}
