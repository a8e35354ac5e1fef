"""PyTorch `torch.export` programs (.pt2) → Relax with TVM's exported-program frontend.

Parameters and buffers become Relax constants; the Relax main takes the program's user inputs,
named as in the ExportedProgram. Outputs are named `output_0`, `output_1`, … (an exported
program has no output names of its own). A program exported with dynamic dimensions is
re-exported with the shapes from `input_shapes`.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microexport.compiler.frontend.common import (
    ImportedModel,
    Shapes,
    check_shape_names,
    close_block_builders,
    dynamic_dim_error,
    finish_import,
    first_line,
    require,
)
from microexport.errors import InputError, ModelError, UnsupportedOperator
from microexport.model import TensorSpec

if TYPE_CHECKING:
    import torch

_UNSUPPORTED = re.compile(r"Unsupported function types \[(.*)\]")


def load_torch(path: Path, input_shapes: Shapes) -> ImportedModel:
    """Import the ExportedProgram saved at `path` (`torch.export.save`)."""
    require("torch", "torch")
    program = read_program(path)
    names = _user_input_names(program)
    check_shape_names(input_shapes, names, path)
    if _is_dynamic(program):
        program = _reexport(program, names, input_shapes, path)
    inputs = _input_specs(program, names, path)
    _check_static_shapes(inputs, input_shapes, path)
    mod = _convert(program, path)
    return finish_import(mod, [i.name for i in inputs], None, "torch", path)


def read_program(path: Path) -> torch.export.ExportedProgram:
    """Load a `torch.export.save`d program; ModelError if the file is not one."""
    import torch

    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if not is_zip:  # checked first: torch logs a traceback for non-zip files
        raise ModelError(f"cannot parse {path} as a torch.export program: not a zip archive")
    logged = _LoggedErrors()
    logger = logging.getLogger("torch.export")
    logger.addFilter(logged)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as err:  # zipfile.BadZipFile, RuntimeError, KeyError, …
        # torch.export.load logs the real error (with a traceback) and raises a vague one
        cause = first_line(logged.errors[0] if logged.errors else err)
        cause = cause.split(". ")[0] if len(cause) > 160 else cause  # torch's are long
        message = f"cannot parse {path} as a torch.export program: {cause}"
        raise ModelError(message) from err
    finally:
        logger.removeFilter(logged)


class _LoggedErrors(logging.Filter):
    """Keeps the exceptions a logger logs with `exc_info` and drops the records: torch logs a
    traceback on stderr for a damaged .pt2 before raising its own error."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])
            return False
        return True


def user_input_values(program: torch.export.ExportedProgram) -> list[Any]:
    """The example values (FakeTensors) of the user inputs, in order."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [placeholders[name].meta.get("val") for name in program.graph_signature.user_inputs]


def _user_input_names(program: torch.export.ExportedProgram) -> list[str]:
    return [str(name) for name in program.graph_signature.user_inputs]


def _is_dynamic(program: torch.export.ExportedProgram) -> bool:
    import torch

    return any(
        isinstance(value, torch.Tensor) and not all(isinstance(d, int) for d in value.shape)
        for value in user_input_values(program)
    )


def _input_specs(
    program: torch.export.ExportedProgram, names: list[str], path: Path
) -> list[TensorSpec]:
    import torch

    specs = []
    for name, value in zip(names, user_input_values(program), strict=True):
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"input '{name}' of {path} is not a tensor ({type(value).__name__})")
        shape = list(value.shape)
        for axis, dim in enumerate(shape):
            if not isinstance(dim, int):
                raise dynamic_dim_error(name, axis, str(dim), shape)
        dtype = str(value.dtype).removeprefix("torch.")
        specs.append(TensorSpec(name=name, shape=tuple(shape), dtype=dtype))
    return specs


def _reexport(
    program: torch.export.ExportedProgram, names: list[str], shapes: Shapes, path: Path
) -> torch.export.ExportedProgram:
    """Export a dynamic-shape `program` again with static example inputs of the given shapes
    (the exported shape where an input is static)."""
    import torch

    examples = [
        torch.zeros(_example_shape(name, value, shapes.get(name)), dtype=value.dtype)
        for name, value in zip(names, user_input_values(program), strict=True)
    ]
    try:
        return torch.export.export(program.module(), tuple(examples))
    except Exception as err:
        message = f"cannot re-export {path} with the given input shapes: {first_line(err)}"
        raise ModelError(message) from err


def _example_shape(name: str, value: Any, given: tuple[int, ...] | None) -> tuple[int, ...]:
    dims = list(value.shape)
    if given is None:
        for axis, dim in enumerate(dims):
            if not isinstance(dim, int):
                raise dynamic_dim_error(name, axis, str(dim), dims)
        return tuple(dims)
    if len(given) != len(dims):
        raise InputError(
            f"--input-shape {name} has {len(given)} dimensions, the model input has {len(dims)}"
        )
    return tuple(int(d) for d in given)


def _check_static_shapes(specs: list[TensorSpec], shapes: Shapes, path: Path) -> None:
    """InputError if `shapes` asks a program exported with static shapes for other shapes."""
    for spec in specs:
        given = shapes.get(spec.name)
        if given is not None and tuple(given) != spec.shape:
            shape = "x".join(map(str, spec.shape))
            raise InputError(
                f"--input-shape {spec.name}: {path} was exported with the static shape {shape}; "
                "export it again with that shape (or with dynamic_shapes)"
            )


def _convert(program: torch.export.ExportedProgram, path: Path) -> Any:
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return from_exported_program(
                program, keep_params_as_input=False, unwrap_unit_return_tuple=True
            )
    except Exception as err:  # the frontend raises all kinds of errors
        close_block_builders(err)
        unsupported = _UNSUPPORTED.search(str(err))
        if unsupported:
            ops = [op.strip(" '\"") for op in unsupported.group(1).split(",")]
            first, *others = sorted(ops)
            detail = "torch, not in TVM's Relax exported-program frontend"
            if others:
                detail += f"; also {', '.join(others)}"
            raise UnsupportedOperator(first, detail) from err
        raise ModelError(f"cannot import {path}: {first_line(err)}") from err
