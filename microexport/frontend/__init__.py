"""Model importers: each turns a model file into a Relax IRModule plus its I/O specs.

`load_model` dispatches on the file extension (`.onnx`, `.tflite`, `.pt2`); a Relax
`tvm.IRModule` can be wrapped with `from_relax`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import TensorSpec

if TYPE_CHECKING:
    import tvm


@dataclass(frozen=True)
class ImportedModel:
    """A model as Relax: `mod["main"]` takes exactly the model inputs (weights are bound as
    constants) and returns one tensor or a tuple of tensors, all with static shapes."""

    mod: "tvm.IRModule"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str  # "onnx" | "tflite" | "torch" | "relax"
    source: Path | None = None
