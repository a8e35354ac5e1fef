"""The compiler pipeline: an imported model → lower → plan → aot → codegen → the typed record.

`compile_to_c` runs the stages in order and returns the `CompiledModel` record with what the
archive needs besides it: the TVM-free C of the kernels and AOT main, the constant pool bytes,
the weights by name and the TIR of every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import ir, tirx

from microexport.compiler.aot import build_aot_module
from microexport.compiler.codegen import GeneratedC, generate_c
from microexport.compiler.frontend import ImportedModel
from microexport.compiler.lower import lower
from microexport.compiler.plan import MemoryPlan, plan_memory
from microexport.errors import Error
from microexport.model import (
    DEFAULT_KERNEL_STACK_LIMIT,
    MAX_NAME_LENGTH,
    WORKSPACE_MODES,
    CompiledModel,
    ConstantSpec,
    CParam,
    FunctionSignature,
    KernelSpec,
    MemoryReport,
    PoolReport,
    PoolSpec,
    c_identifier,
    c_type,
    with_placements,
)


@dataclass(frozen=True)
class CompilerOptions:
    """How to compile (the options of `microexport compile`, see its --help)."""

    name: str = "model"
    target: str = "c"
    workspace: str = "static"
    alignment: int = 16
    pools: tuple[PoolSpec, ...] = ()
    io_in_workspace: bool = False
    kernel_stack_limit: int = DEFAULT_KERNEL_STACK_LIMIT
    templates: Path | None = None

    def check(self) -> None:
        """One-line Error for an option no compilation can honour."""
        if (c_identifier(self.name) != self.name or len(self.name) > MAX_NAME_LENGTH
                or not self.name):
            suggestion = c_identifier(self.name)[:MAX_NAME_LENGTH]
            raise Error(f"model name '{self.name[:80]}' is not a C identifier of at most "
                        f"{MAX_NAME_LENGTH} characters: try '{suggestion}'")
        if self.workspace not in WORKSPACE_MODES:
            raise Error(f"unknown workspace mode '{self.workspace}': use static or external")
        if self.templates is not None and not Path(self.templates).is_dir():
            raise Error(f"templates directory '{self.templates}' does not exist")
        if self.kernel_stack_limit < 0:
            raise Error(f"--kernel-stack-limit must not be negative, got "
                        f"{self.kernel_stack_limit}")


@dataclass(frozen=True)
class CompiledC:
    """What the compiler hands to the archive: the record and the files it describes."""

    model: CompiledModel
    lib: GeneratedC  # kernels and AOT main, TVM-free
    constant_pool: bytes  # every constant at its offset, little-endian
    parameters: dict[str, np.ndarray]  # the weights by constant name
    stages: dict[str, tvm.IRModule]  # kernels + AOT main at each stage of tir_json.spec.STAGES


def compile_to_c(imported: ImportedModel, options: CompilerOptions) -> CompiledC:
    """Run lower → plan → aot → codegen on an imported model."""
    options.check()
    name = options.name
    lowered = lower(imported, options.target, options.kernel_stack_limit)
    try:
        plan = plan_memory(lowered.schedule, lowered.scratch, options.alignment,
                           options.pools or (PoolSpec(),), options.io_in_workspace)
    except ValueError as err:
        raise Error(f"workspace planning: {err}") from None
    aot = build_aot_module(
        name, lowered.schedule, lowered.kernels, plan, imported.inputs, imported.outputs
    )
    final, lib = generate_c(aot.mod, name, options.templates)
    scheduled = build_aot_module(
        name, lowered.schedule, lowered.block_kernels, plan, imported.inputs, imported.outputs,
        pass_scratch=False,
    )
    schedule = lowered.schedule
    constants = tuple(
        ConstantSpec(cname, tuple(schedule.constants[cname].shape),
                     str(schedule.constants[cname].dtype), offset)
        for cname, offset in plan.constant_offsets.items()
    )
    inputs, outputs = imported.inputs, imported.outputs
    if options.io_in_workspace:
        specs = zip(schedule.inputs + schedule.outputs, inputs + outputs, strict=True)
        placements = {spec.name: plan.placements[schedule.root(t)] for t, spec in specs}
        inputs = with_placements(inputs, placements)
        outputs = with_placements(outputs, placements)
    signatures = {
        gv.name_hint: function_signature(gv.name_hint, func)
        for gv, func in final.functions.items() if isinstance(func, tirx.PrimFunc)
    }
    kernels = []
    for kernel, symbol in sorted(aot.kernel_symbols.items(), key=lambda item: item[1]):
        layout = lowered.scratch.get(kernel)
        kernels.append(KernelSpec(signatures[symbol], layout.nbytes if layout else 0,
                                  layout.stack_bytes if layout else 0))
    model = CompiledModel(
        name=name,
        target=options.target,
        inputs=inputs,
        outputs=outputs,
        memory=memory_report(plan, sum(t.nbytes for t in inputs + outputs),
                             options.io_in_workspace),
        main=signatures[aot.main_symbol],
        kernels=tuple(kernels),
        constants=constants,
        workspace_mode=options.workspace,
    )
    return CompiledC(
        model=model,
        lib=lib,
        constant_pool=pack_constants(constants, schedule.constants, plan.constants_bytes),
        parameters={spec.name: schedule.constants[spec.name] for spec in constants},
        stages={"scheduled": scheduled.mod, "lowered": aot.mod, "codegen": final},
    )


def memory_report(plan: MemoryPlan, io_bytes: int, io_in_workspace: bool) -> MemoryReport:
    """The record's memory figures of a plan."""
    return MemoryReport(
        workspace_bytes=plan.workspace_bytes,
        constants_bytes=plan.constants_bytes,
        io_bytes=io_bytes,
        pools=tuple(PoolReport(p.name, plan.pool_bytes[p.name], p.size_limit, p.section)
                    for p in plan.pools),
        lower_bound_bytes=plan.lower_bound_bytes,
        planner=plan.strategy,
        alignment=plan.alignment,
        io_in_workspace=io_in_workspace,
    )


def pack_constants(
    specs: tuple[ConstantSpec, ...], arrays: dict[str, np.ndarray], nbytes: int
) -> bytes:
    """The constant pool: each constant little-endian at its offset, zero padding between."""
    pool = bytearray(nbytes)
    for spec in specs:
        data = np.ascontiguousarray(arrays[spec.name]).astype(
            np.dtype(spec.dtype).newbyteorder("<"), copy=False
        )
        pool[spec.offset : spec.offset + spec.nbytes] = data.tobytes()
    return bytes(pool)


def c_param_type(var: tirx.Var) -> str:
    """The C type of a PrimFunc parameter as TVM's C code generator declares it."""
    ty = var.ty
    if isinstance(ty, ir.PointerType):
        element = ty.element_type
        dtype = str(element.dtype) if isinstance(element, ir.PrimType) else "void"
        return ("void" if dtype in ("void", "handle") else c_type(dtype)) + "*"
    return c_type(str(ty.dtype))


def function_signature(symbol: str, func: tirx.PrimFunc) -> FunctionSignature:
    """The C signature of a generated PrimFunc (the record's view of a kernel or the main)."""
    return FunctionSignature(symbol, tuple(CParam(p.name, c_param_type(p)) for p in func.params))
