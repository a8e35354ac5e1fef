"""Model importers: each turns a model file into a Relax IRModule plus its I/O specs.

`load_model` dispatches on the file extension (`.onnx`, `.tflite`, `.pt2`); a Relax
`tvm.IRModule` can be wrapped with `from_relax`. What the frontends share lives in
`frontend.common` (re-exported here).
"""

from __future__ import annotations

from pathlib import Path

from microexport.compiler.frontend.common import (
    MAX_TENSOR_ELEMENTS,
    Constants,
    ImportedModel,
    Shapes,
    bind_constants,
    check_shape_names,
    close_block_builders,
    dynamic_dim_error,
    finish_import,
    first_line,
    from_relax,
    require,
    resolve_shape,
)
from microexport.errors import ModelError

__all__ = [
    "MAX_TENSOR_ELEMENTS",
    "SUPPORTED_EXTENSIONS",
    "Constants",
    "ImportedModel",
    "Shapes",
    "bind_constants",
    "check_shape_names",
    "close_block_builders",
    "dynamic_dim_error",
    "finish_import",
    "first_line",
    "from_relax",
    "load_model",
    "require",
    "resolve_shape",
]

SUPPORTED_EXTENSIONS = (".onnx", ".pt2", ".tflite")


def load_model(path: str | Path, input_shapes: Shapes | None = None,
               constants: Constants | None = None) -> ImportedModel:
    """Import a model file as Relax, choosing the frontend by extension.

    `.onnx` (ONNX), `.tflite` (TFLite flatbuffer) and `.pt2` (a `torch.export`
    ExportedProgram saved with `torch.export.save`). `input_shapes` fixes dynamic (or
    overrides) input dimensions by input name. `constants` freezes inputs (by name) to values
    at compile time: the compiled model no longer takes them, and what depends only on them
    folds (for ONNX before TVM's frontend runs, so shape/axes/sizes inputs and an `If` on
    them fold away; for TFLite and `.pt2` after import). Raises a `microexport.errors.Error`
    subclass for a missing, unreadable or unsupported model.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise ModelError(
            f"unknown model format '{path.suffix or path.name}' of {path}: "
            f"supported extensions are {supported}"
        )
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a model file")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    shapes = dict(input_shapes or {})
    if suffix == ".onnx":
        from microexport.compiler.frontend.onnx import load_onnx

        return load_onnx(path, shapes, constants)
    if suffix == ".tflite":
        from microexport.compiler.frontend.tflite import load_tflite

        return bind_constants(load_tflite(path, shapes), constants)
    from microexport.compiler.frontend.torch import load_torch

    return bind_constants(load_torch(path, shapes), constants)
