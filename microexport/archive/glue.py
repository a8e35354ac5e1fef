"""Glue around the generated model library: the C header, the run wrapper and the host harness.

Everything here is rendered from Jinja templates under `templates/` (never C in Python strings).
`render_glue` turns a `GlueContext` into `tvmgen_<name>.h` and `tvmgen_<name>.c`;
`render_harness` renders the host test program from an archive's metadata. A user's template
directory overrides any packaged template, either at the same relative path
(`DIR/interface/tvmgen_model.h.j2`) or by bare file name (`DIR/tvmgen_model.h.j2`).
The variables each template receives are listed in docs/templates.md.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from microexport.errors import Error
from microexport.model import C_KEYWORDS, ConstantSpec, TensorSpec, c_identifier, c_type
from microexport.templating import template_environment

HEADER_TEMPLATE = "interface/tvmgen_model.h.j2"
WRAPPER_TEMPLATE = "interface/tvmgen_model.c.j2"
HARNESS_TEMPLATE = "harness/host_main.c.j2"
HARNESS_FILENAME = "host_main.c"
BUILTIN_PREFIX = "builtin"  # `builtin/<path>` always names the packaged template

# Template → output file name pattern, for the files `render_glue` produces.
GLUE_TEMPLATES: dict[str, str] = {
    HEADER_TEMPLATE: "tvmgen_{name}.h",
    WRAPPER_TEMPLATE: "tvmgen_{name}.c",
}

WORKSPACE_MODES = ("static", "external")
HEX_BYTES_PER_ROW = 16
_SECTION = re.compile(r"^[.\w]+$")
# Names the AOT main already uses for its pool parameters.
RESERVED_PARAMETERS = frozenset({"constants", "workspace"})
# Upper-case tensor names that would collide with the pool macros TVMGEN_<NAME>_<X>_SIZE.
RESERVED_MACRO_NAMES = frozenset({"WORKSPACE", "CONSTANTS"})


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
class WorkspacePool:
    """One workspace pool: its C name, size in bytes and optional linker section."""

    name: str = "workspace"
    nbytes: int = 0
    section: str | None = None

    @property
    def upper_name(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class ConstantVar:
    """One weight in the constant pool as templates see it."""

    name: str
    c_name: str
    comment_name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


def comment_safe(text: str) -> str:
    """`text` made safe inside a C block comment (no `*/`, no newlines, printable ASCII)."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned.replace("*/", "*_/").replace("/*", "/_*")


def tensor_var(
    spec: TensorSpec, direction: str, placement: tuple[str, int] | None = None
) -> TensorVar:
    """The template view of one input/output (`placement`: its workspace pool and offset when
    inputs and outputs live in the workspace); Error if its dtype has no C type."""
    try:
        ctype = c_type(spec.dtype)
    except ValueError as err:
        raise Error(f"{direction} '{spec.name}': {err}") from None
    return TensorVar(
        name=spec.name,
        c_name=spec.c_name,
        upper_name=spec.c_name.upper(),
        comment_name=comment_safe(spec.name),
        shape=tuple(int(d) for d in spec.shape),
        dtype=spec.dtype,
        ctype=ctype,
        nbytes=spec.nbytes,
        elements=_element_count(spec.shape),
        pool=placement[0] if placement else None,
        offset=placement[1] if placement else None,
    )


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def constant_var(spec: ConstantSpec) -> ConstantVar:
    """The template view of one constant."""
    return ConstantVar(
        name=spec.name,
        c_name=c_identifier(spec.name),
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


def check_tensor_names(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """Error if two tensors get the same C identifier or macro, or one is reserved."""
    seen_c: dict[str, str] = {}
    seen_macro: dict[str, str] = {}
    for spec in inputs + outputs:
        cname = spec.c_name
        if cname in C_KEYWORDS or cname in RESERVED_PARAMETERS:
            raise Error(
                f"tensor '{spec.name}' has the C name '{cname}', which is reserved "
                f"(a C keyword or a pool parameter): rename the tensor in the model"
            )
        if cname.upper() in RESERVED_MACRO_NAMES:
            raise Error(
                f"tensor '{spec.name}' would define a macro clashing with the pool size macro "
                f"*_{cname.upper()}_SIZE: rename the tensor in the model"
            )
        for seen, key in ((seen_c, cname), (seen_macro, cname.upper())):
            if key in seen:
                raise Error(
                    f"tensors '{seen[key]}' and '{spec.name}' both become the C name "
                    f"'{key}' after sanitising: rename one of them in the model"
                )
            seen[key] = spec.name


@dataclass(frozen=True)
class GlueContext:
    """Everything the interface templates need about one compiled model.

    `constant_pool` holds every constant at its `ConstantSpec.offset`; `main_symbol` defaults to
    `tvmgen_<name>___tvm_main__`. Invalid contexts raise `errors.Error` on construction.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    constants: tuple[ConstantSpec, ...] = ()
    constant_pool: bytes = b""
    workspace_bytes: int = 0
    workspace_mode: str = "static"
    alignment: int = 16
    main_symbol: str = ""
    # Workspace pools; empty means one pool `workspace` of `workspace_bytes`.
    pools: tuple[WorkspacePool, ...] = ()
    # With inputs and outputs planned inside the workspace: tensor name → (pool, byte offset).
    io_placements: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or c_identifier(self.name) != self.name:
            raise Error(
                f"model name '{self.name}' is not a C identifier: try '{c_identifier(self.name)}'"
            )
        if self.workspace_mode not in WORKSPACE_MODES:
            raise Error(
                f"unknown workspace mode '{self.workspace_mode}': "
                f"use {' or '.join(WORKSPACE_MODES)}"
            )
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise Error(f"alignment must be a power of two, got {self.alignment}")
        if self.workspace_bytes < 0:
            raise Error(f"workspace size must not be negative, got {self.workspace_bytes}")
        if not self.outputs:
            raise Error(f"model '{self.name}' has no outputs")
        if self.main_symbol and c_identifier(self.main_symbol) != self.main_symbol:
            raise Error(f"main symbol '{self.main_symbol}' is not a C identifier")
        check_tensor_names(self.inputs, self.outputs)
        self._check_pools()
        for spec in self.constants:
            if spec.offset < 0 or spec.offset + spec.nbytes > len(self.constant_pool):
                raise Error(
                    f"constant '{spec.name}' ({spec.nbytes} B at offset {spec.offset}) lies "
                    f"outside the {len(self.constant_pool)} B constant pool"
                )

    def _check_pools(self) -> None:
        names = [pool.name for pool in self.workspace_pools]
        for name in names:
            if c_identifier(name) != name or name in C_KEYWORDS or name == "constants":
                raise Error(f"workspace pool name '{name}' is not a usable C identifier")
        if len(set(names)) != len(names):
            raise Error(f"workspace pool names must differ, got {', '.join(names)}")
        for pool in self.workspace_pools:
            if pool.section is not None and not _SECTION.match(pool.section):
                raise Error(f"workspace pool '{pool.name}': bad linker section name "
                            f"'{pool.section}' (letters, digits, '_' and '.' only)")
        if self.pools and sum(p.nbytes for p in self.pools) != self.workspace_bytes:
            raise Error("workspace_bytes must be the total of the workspace pools")
        clashes = sorted(set(names) & {t.c_name for t in self.inputs + self.outputs})
        if clashes:
            raise Error(f"tensor C name '{clashes[0]}' is also a workspace pool name: rename one")
        sizes = {pool.name: pool.nbytes for pool in self.workspace_pools}
        io = {spec.name: spec.nbytes for spec in self.inputs + self.outputs}
        if self.io_placements and set(self.io_placements) != set(io):
            raise Error("with inputs and outputs in the workspace, every one needs a placement")
        for name, (pool, offset) in self.io_placements.items():
            if pool not in sizes or offset < 0 or offset + io[name] > sizes[pool]:
                raise Error(f"tensor '{name}' placed outside workspace pool '{pool}'")

    @property
    def workspace_pools(self) -> tuple[WorkspacePool, ...]:
        """The workspace pools (one `workspace` pool unless several were planned)."""
        return self.pools or (WorkspacePool("workspace", self.workspace_bytes),)

    @property
    def upper_name(self) -> str:
        """The model name upper-cased, as used in macros (`TVMGEN_<NAME>_...`)."""
        return self.name.upper()

    @property
    def constants_bytes(self) -> int:
        """Size of the constant pool in bytes."""
        return len(self.constant_pool)

    @property
    def prefix(self) -> str:
        """`tvmgen_<name>_`: the prefix of every C symbol of this model."""
        return f"tvmgen_{self.name}_"

    @property
    def main(self) -> str:
        """The AOT main's C symbol."""
        return self.main_symbol or f"{self.prefix}__tvm_main__"

    def template_variables(self) -> dict[str, Any]:
        """The variables every interface template receives (see docs/templates.md)."""
        place = self.io_placements.get
        inputs = [tensor_var(spec, "input", place(spec.name)) for spec in self.inputs]
        outputs = [tensor_var(spec, "output", place(spec.name)) for spec in self.outputs]
        variables = interface_variables(
            self.name, inputs, outputs, self.workspace_mode, self.workspace_pools,
            self.constants_bytes, self.alignment,
        )
        variables.update(
            main_symbol=self.main,
            constants=[constant_var(spec) for spec in self.constants],
            constant_pool_rows=hex_rows(self.constant_pool),
        )
        return variables


def interface_variables(
    name: str,
    inputs: list[TensorVar],
    outputs: list[TensorVar],
    workspace_mode: str,
    pools: tuple[WorkspacePool, ...],
    constants_bytes: int,
    alignment: int,
) -> dict[str, Any]:
    """Variables shared by the interface and harness templates."""
    from microexport import __version__

    return {
        "name": name,
        "upper_name": name.upper(),
        "prefix": f"tvmgen_{name}_",
        "header_name": f"tvmgen_{name}.h",
        "guard": f"TVMGEN_{name.upper()}_H_",
        "run_symbol": f"tvmgen_{name}_run",
        "inputs": inputs,
        "outputs": outputs,
        "workspace_mode": workspace_mode,
        "external_workspace": workspace_mode == "external",
        "workspace_bytes": sum(pool.nbytes for pool in pools),
        "pools": list(pools),
        "io_in_workspace": any(t.pool is not None for t in inputs + outputs),
        "constants_bytes": constants_bytes,
        "io_bytes": sum(t.nbytes for t in inputs + outputs),
        "alignment": alignment,
        "microexport_version": __version__,
    }


class _BasenameLoader(jinja2.FileSystemLoader):
    """Looks a template up in one directory by its bare file name (`interface/x.j2` → `x.j2`)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        return super().get_source(environment, posixpath.basename(template))


def glue_environment(template_dir: Path | None = None) -> jinja2.Environment:
    """The shared template environment with `template_dir` overriding by path or file name.

    Packaged templates stay reachable as `builtin/<path>`, so an override can wrap the original
    (`{% include "builtin/interface/tvmgen_model.h.j2" %}`).
    """
    base = template_environment(None)
    packaged = base.loader
    assert packaged is not None
    loaders: list[jinja2.BaseLoader] = [jinja2.PrefixLoader({BUILTIN_PREFIX: packaged})]
    if template_dir is not None:
        if not Path(template_dir).is_dir():
            raise Error(f"templates directory '{template_dir}' does not exist")
        loaders += [
            jinja2.FileSystemLoader(str(template_dir)),
            _BasenameLoader(str(template_dir)),
        ]
    loaders.append(packaged)
    return base.overlay(loader=jinja2.ChoiceLoader(loaders))


def render(env: jinja2.Environment, template: str, variables: Mapping[str, Any]) -> str:
    """Render one template; a broken or missing template becomes a one-line `Error`."""
    try:
        return env.get_template(template).render(**variables)
    except jinja2.TemplateSyntaxError as err:
        where = err.filename or err.name or template
        raise Error(f"template {where}:{err.lineno}: {err.message}") from None
    except jinja2.TemplateNotFound as err:
        raise Error(f"template '{err.name}' not found") from None
    except jinja2.UndefinedError as err:
        raise Error(f"template {template}: {err.message} (see docs/templates.md)") from None


def render_glue(ctx: GlueContext, template_dir: Path | None = None) -> dict[str, str]:
    """Render the interface header and run wrapper: file name → C text."""
    env = glue_environment(template_dir)
    variables = ctx.template_variables()
    return {
        pattern.format(name=ctx.name): render(env, template, variables)
        for template, pattern in GLUE_TEMPLATES.items()
    }


def harness_variables(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Template variables of the host harness, from an archive's metadata.json contents."""

    def specs(key: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in metadata[key]
        )

    inputs, outputs = specs("inputs"), specs("outputs")
    check_tensor_names(inputs, outputs)
    memory = metadata["memory"]
    placements = {
        t["name"]: (t["workspace_pool"], t["workspace_offset"])
        for t in metadata["inputs"] + metadata["outputs"]
        if "workspace_pool" in t
    }
    pools = tuple(
        WorkspacePool(p["name"], p["bytes"], p.get("section"))
        for p in memory.get("pools", [{"name": "workspace", "bytes": memory["workspace_bytes"]}])
    )
    return interface_variables(
        metadata["model_name"],
        [tensor_var(spec, "input", placements.get(spec.name)) for spec in inputs],
        [tensor_var(spec, "output", placements.get(spec.name)) for spec in outputs],
        metadata["workspace_mode"],
        pools,
        memory["constants_bytes"],
        memory.get("alignment", 16),
    )


def render_harness(metadata: Mapping[str, Any], template_dir: Path | None = None) -> str:
    """Render the host test harness (`host_main.c`) for the model an archive describes."""
    return render(glue_environment(template_dir), HARNESS_TEMPLATE, harness_variables(metadata))
