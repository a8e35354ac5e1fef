"""C code generation with TVM's C backend, and making its output TVM-free.

TVM's C codegen always emits TVM runtime includes, an FFI library context and `TVM_DLL` markers,
even when every function is private. We keep only the function declarations and definitions and
render them into `templates/codegen/lib.c.j2`, which includes only the C standard library.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import ir, tirx

from microexport.compiler.integer import library
from microexport.compiler.integer.im2col import (
    MICROKERNEL_CALL,
    depthwise_windows_used,
    dot_kernels_used,
    uses_microkernels,
)
from microexport.compiler.unpacked import UNUSED_MARKER
from microexport.model import header_filename, lib_filename
from microexport.templating import glue_environment, render

LIB_TEMPLATE = "codegen/lib.c.j2"
# Symbols that would tie the generated C to the TVM runtime.
FORBIDDEN_SYMBOLS = ("TVMFFI", "TVMBackend", "TVMAPI", "__tvm_ffi", "tvm/")

_DROPPED_LINES = (
    re.compile(r"^// tvm target:"),
    re.compile(r"^#define TVM_EXPORTS$"),
    re.compile(r'^#include "tvm/'),
    re.compile(r"^#include <(math|stdbool|stdint)\.h>$"),
    re.compile(r"^void\* __tvm_ffi__library_ctx = NULL;$"),
    # TVM declares every `call_extern` callee; the micro-kernels are defined by the template.
    re.compile(r"^(TVM_DLL )?void " + MICROKERNEL_CALL + r".*\);$"),
    re.compile(r"^(TVM_DLL )?u?int(16|32)_t " + library.LIBRARY_CALL + r".*\);$"),
)
_EXTERN_C_GUARD = re.compile(r'^#ifdef __cplusplus\nextern "C"\n#endif\n', re.MULTILINE)
# `TVM_DLL float expf(float);` style re-declarations of libm functions.
_LIBM_DECL = re.compile(
    r"^(TVM_DLL )?(float|double|int32_t) [a-z0-9_]+\((float|double)(, (float|double))*\);$"
)


@dataclass(frozen=True)
class GeneratedC:
    """The model library C source, TVM-free."""

    filename: str
    source: str


# libm names of intrinsics TVM 0.27 has no C lowering for (its C codegen rejects `tirx.fabs`).
_C_INTRINSICS = {"tirx.fabs": {"float32": "fabsf", "float64": "fabs"}}


def _lower_to_libm(call: ir.Call) -> ir.Call:
    """`call` as a call of its libm function (`_C_INTRINSICS`), else unchanged."""
    if not isinstance(call.op, ir.Op) or call.op.name not in _C_INTRINSICS:
        return call
    dtype = str(call.ty.dtype)
    function = _C_INTRINSICS[call.op.name].get(dtype)
    return call if function is None else tirx.call_pure_extern(dtype, function, *call.args)


@tirx.transform.prim_func_pass(opt_level=0, name="microexport.LowerToLibm")
def lower_to_libm(func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
                  ) -> tirx.PrimFunc:
    """Rewrite the intrinsics of `_C_INTRINSICS` to their libm calls in our functions only.

    A module pass rather than `tirx.register_intrin_lowering`, which would change LowerIntrin for
    every `c` target build in the process, including other users' of TVM.
    """
    del mod, ctx
    return tvm_ffi.structural_map(func, (ir.Call, _lower_to_libm))


# Non-finite constants: TVM's C code generator prints infinity as `inff` / `inf` and NaN as
# `nanf` / `nan`, names C does not have. Before codegen they become calls of these marker
# functions, which `make_tvm_free` replaces by C99's <math.h> macros.
_NON_FINITE_C = {
    "microexport_inf_float32": "INFINITY",
    "microexport_neg_inf_float32": "(-INFINITY)",
    "microexport_nan_float32": "NAN",
    "microexport_inf_float64": "((double)INFINITY)",
    "microexport_neg_inf_float64": "((double)-INFINITY)",
    "microexport_nan_float64": "((double)NAN)",
}
_UNUSED_CALL = re.compile(r"^(\s*)" + UNUSED_MARKER + r"\((\w+)\);$")
_MARKER_DECL = re.compile(r"^(TVM_DLL )?int32_t " + UNUSED_MARKER + r"\(.*\);$")
_NON_FINITE_CALL = re.compile(r"\b(" + "|".join(_NON_FINITE_C) + r")\(\)")
_NON_FINITE_DECL = re.compile(r"^(TVM_DLL )?(float|double) (" + "|".join(_NON_FINITE_C)
                              + r")\((void)?\);$")


def _finite_spelling(value: tirx.FloatImm) -> tirx.PrimExpr:
    """A non-finite float32/float64 constant as a call of its marker function, else unchanged."""
    number = float(value.value)
    dtype = str(value.ty.dtype)
    if math.isfinite(number) or dtype not in ("float32", "float64"):
        return value
    kind = "nan" if math.isnan(number) else "inf" if number > 0 else "neg_inf"
    return tirx.call_pure_extern(dtype, f"microexport_{kind}_{dtype}")


@tirx.transform.prim_func_pass(opt_level=0, name="microexport.SpellNonFinite")
def spell_non_finite(func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
                     ) -> tirx.PrimFunc:
    """Rewrite infinity and NaN constants to calls of marker functions that `make_tvm_free`
    turns into `INFINITY` / `NAN` (see `_NON_FINITE_C`)."""
    del mod, ctx
    return tvm_ffi.structural_map(func, (tirx.FloatImm, _finite_spelling))


def _loaded_buffers(node: object) -> set[int]:
    """The buffers (by handle) `node` loads from."""
    loaded: set[int] = set()

    def visit(load: ir.TensorLoad) -> ir.TensorLoad:
        loaded.add(load.source.__chandle__())
        return load

    tvm_ffi.structural_map(node, (ir.TensorLoad, visit), order="pre")
    return loaded


@tirx.transform.prim_func_pass(opt_level=0, name="microexport.MinMaxAsSelect")
def min_max_as_select(func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
                      ) -> tirx.PrimFunc:
    """`min(a, b)` / `max(a, b)` that read a buffer the function also writes become
    `a < b ? a : b` / `a > b ? a : b` (a TIR Select).

    TVM's C code generator prints min and max through temporaries it reuses for the same
    operand text within a scope (`float v_ = acc[0];` … later `v_` again), even when a store to
    `acc[0]` came in between: a max pool with a one-element window fused with a clip read the
    accumulator before the update (found by tests/test_fuzz.py). A Select is printed inline.
    """
    del mod, ctx
    stored: set[int] = set()

    def visit_store(store: tirx.BufferStore) -> tirx.BufferStore:
        stored.add(store.buffer.__chandle__())
        return store

    tvm_ffi.structural_map(func.body, (tirx.BufferStore, visit_store), order="pre")
    if not stored:
        return func

    def min_select(node: tirx.Min) -> tirx.PrimExpr:
        if not _loaded_buffers(node) & stored:
            return node
        return tirx.Select(node.a < node.b, node.a, node.b)

    def max_select(node: tirx.Max) -> tirx.PrimExpr:
        if not _loaded_buffers(node) & stored:
            return node
        return tirx.Select(node.a > node.b, node.a, node.b)

    return tvm_ffi.structural_map(func, [(tirx.Min, min_select), (tirx.Max, max_select)])


def finalize_passes() -> tvm.transform.Pass:
    """Last TIR passes before C codegen: min/max that read written buffers as selects, lower
    math intrinsics (`fabs` → `fabsf`, `exp` → `expf`, …), then spell infinity and NaN
    constants in C."""
    return tvm.transform.Sequential(
        [min_max_as_select, lower_to_libm, tirx.transform.LowerIntrin(), spell_non_finite]
    )


def build_c(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """Run TVM's C code generator on `mod` (the `codegen` stage module) and return its source."""
    build = tvm.get_global_func("target.build.c")
    return build(mod, target).inspect_source()


def make_tvm_free(
    raw: str, model_name: str, filename: str, templates: Path | None = None
) -> GeneratedC:
    """Strip TVM runtime scaffolding from raw C codegen output and render it into our template
    (`templates` overrides it like `--templates`)."""
    lines = []
    for line in _EXTERN_C_GUARD.sub("", raw).splitlines():
        if (any(p.match(line) for p in _DROPPED_LINES) or _LIBM_DECL.match(line)
                or _NON_FINITE_DECL.match(line) or _MARKER_DECL.match(line)):
            continue
        line = _UNUSED_CALL.sub(r"\1(void)\2;", line)
        line = _NON_FINITE_CALL.sub(lambda m: _NON_FINITE_C[m.group(1)], line)
        lines.append(line.replace("TVM_DLL ", ""))
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
    for symbol in FORBIDDEN_SYMBOLS:
        if symbol in body:
            raise RuntimeError(f"generated C still references TVM ('{symbol}'): a bug")
    variables = {"model_name": model_name, "header_name": header_filename(model_name),
                 "body": body, "dot_kernels": dot_kernels_used(body),
                 "direct_dot_kernels": dot_kernels_used(body, "s8s8"),
                 "depthwise_windows": depthwise_windows_used(body),
                 "uses_microkernels": uses_microkernels(body),
                 **library.template_variables(body)}
    source = render(glue_environment(templates), LIB_TEMPLATE, variables)
    return GeneratedC(filename=filename, source=source)


def generate_c(
    mod: tvm.IRModule, model_name: str, templates: Path | None = None
) -> tuple[tvm.IRModule, GeneratedC]:
    """Finalize `mod`, generate C and make it TVM-free. Returns the codegen-stage module too."""
    final = finalize_passes()(mod)
    target = next(iter(final.functions.values())).attrs["target"]
    raw = build_c(final, target)
    return final, make_tvm_free(raw, model_name, lib_filename(model_name), templates)
