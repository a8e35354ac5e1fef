"""Glue around the generated model library: the C header, the run wrapper and the host harness.

Everything here is rendered from Jinja templates under `templates/` (never C in Python strings).
Every template receives its variables from the compiled-model record (`model.CompiledModel`):
`render_glue` renders `tvmgen_<name>.h` and `tvmgen_<name>.c`, `render_harness` the host test
program, and the platforms render their sources with `interface_variables`. A user's template
directory overrides any packaged template, either at the same relative path
(`DIR/interface/tvmgen_model.h.j2`) or by bare file name (`DIR/tvmgen_model.h.j2`).
The variables each template receives are listed in docs/templates.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microexport.errors import Error
from microexport.model import CompiledModel, ConstantSpec, TensorSpec, wrapper_filename
from microexport.templating import glue_environment, render
from microexport.version import __version__

HEADER_TEMPLATE = "interface/tvmgen_model.h.j2"
WRAPPER_TEMPLATE = "interface/tvmgen_model.c.j2"
HARNESS_TEMPLATE = "harness/host_main.c.j2"
HARNESS_FILENAME = "host_main.c"


HEX_BYTES_PER_ROW = 16


@dataclass(frozen=True)
class TensorVar:
    """One model input or output as templates see it."""

    name: str  # original name, as in the model
    c_name: str  # C identifier: struct member, function parameter
    upper_name: str  # c_name upper-cased, for macros
    comment_name: str  # original name, safe inside a C comment
    shape: tuple[int, ...]
    dtype: str
    ctype: str
    nbytes: int
    elements: int
    pool: str | None = None  # with inputs/outputs in the workspace: the pool holding it
    offset: int | None = None  # … and its byte offset there


@dataclass(frozen=True)
class ConstantVar:
    """One weight in the constant pool as templates see it."""

    name: str
    comment_name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


def comment_safe(text: str) -> str:
    """`text` made safe inside a C block comment (no `*/`, no newlines, printable ASCII)."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned.replace("*/", "*_/").replace("/*", "/_*")


def tensor_var(spec: TensorSpec) -> TensorVar:
    """The template view of one input/output of a checked record."""
    return TensorVar(
        name=spec.name,
        c_name=spec.c_name,
        upper_name=spec.c_name.upper(),
        comment_name=comment_safe(spec.name),
        shape=tuple(int(d) for d in spec.shape),
        dtype=spec.dtype,
        ctype=spec.ctype,
        nbytes=spec.nbytes,
        elements=spec.elements,
        pool=spec.pool,
        offset=spec.offset,
    )


def constant_var(spec: ConstantSpec) -> ConstantVar:
    """The template view of one constant."""
    return ConstantVar(
        name=spec.name,
        comment_name=comment_safe(spec.name),
        shape=tuple(int(d) for d in spec.shape),
        dtype=spec.dtype,
        offset=spec.offset,
        nbytes=spec.nbytes,
    )


def hex_rows(data: bytes, per_row: int = HEX_BYTES_PER_ROW) -> list[list[str]]:
    """`data` as rows of two-digit lower-case hex strings, `per_row` bytes per row."""
    digits = data.hex()
    width = 2 * per_row
    return [
        [digits[i : i + 2] for i in range(start, min(start + width, len(digits)), 2)]
        for start in range(0, len(digits), width)
    ]


def interface_variables(model: CompiledModel) -> dict[str, Any]:
    """Variables shared by the interface and harness templates (docs/templates.md), all from
    the compiled-model record."""
    inputs = [tensor_var(spec) for spec in model.inputs]
    outputs = [tensor_var(spec) for spec in model.outputs]
    return {
        "name": model.name,
        "upper_name": model.upper_name,
        "prefix": model.prefix,
        "header_name": model.header_name,
        "guard": f"TVMGEN_{model.upper_name}_H_",
        "run_symbol": model.run_symbol,
        "main_symbol": model.main.symbol,
        "main_prototype": model.main.prototype,
        "inputs": inputs,
        "outputs": outputs,
        "workspace_mode": model.workspace_mode,
        "external_workspace": model.workspace_mode == "external",
        "workspace_bytes": model.memory.workspace_bytes,
        "pools": list(model.workspace_pools),
        "io_in_workspace": model.memory.io_in_workspace,
        "constants_bytes": model.memory.constants_bytes,
        "io_bytes": model.io_bytes,
        "alignment": model.memory.alignment,
        "microexport_version": __version__,
    }


def render_glue(
    model: CompiledModel, constant_pool: bytes, template_dir: Path | None = None
) -> dict[str, str]:
    """Render the interface header and run wrapper of `model` (its weights: `constant_pool`):
    file name → C text."""
    if len(constant_pool) != model.memory.constants_bytes:
        raise Error(f"the constant pool has {len(constant_pool)} bytes, the record says "
                    f"{model.memory.constants_bytes}")
    env = glue_environment(template_dir)
    variables = interface_variables(model)
    variables.update(
        constants=[constant_var(spec) for spec in model.constants],
        constant_pool_rows=hex_rows(constant_pool),
    )
    return {
        model.header_name: render(env, HEADER_TEMPLATE, variables),
        wrapper_filename(model.name): render(env, WRAPPER_TEMPLATE, variables),
    }


def render_harness(model: CompiledModel, template_dir: Path | None = None) -> str:
    """Render the host test harness (`host_main.c`) for `model`."""
    return render(glue_environment(template_dir), HARNESS_TEMPLATE, interface_variables(model))


def harness_symbols(model: CompiledModel) -> dict[str, str]:
    """Symbols the packaged harnesses (host, bare metal, serial protocol) define for `model`,
    by class (`workspace`, `io`), for the size report."""
    classes = {}
    for pool in model.workspace_pools:
        classes[f"pool_{pool.name}"] = "workspace"
        classes[f"me_pool_{pool.name}"] = "workspace"
    for direction, specs in (("input", model.inputs), ("output", model.outputs)):
        for spec in specs:
            classes[f"{direction}_{spec.c_name}"] = "io"
            classes[f"me_{direction}_{spec.c_name}"] = "io"
    return classes
