"""Build the AOT main as a TIR PrimFunc.

`tvmgen_<name>___tvm_main__(inputs..., outputs..., uint8_t* constants, uint8_t* workspace)` calls
every kernel in schedule order with typed pointers into the inputs, outputs, the constant pool and
the workspace pool at the byte offsets of the memory plan, and returns the first non-zero kernel
status.
Kernels and main end up in one IRModule of private functions, so the C codegen emits plain C calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import ir, tirx

from .artifacts import TensorSpec, c_identifier
from .lower import LoweredModel
from .plan import MemoryPlan
from .unpacked import byte_pool, pool_pointer

CONSTANTS_PARAM = "constants"
WORKSPACE_PARAM = "workspace"


@dataclass(frozen=True)
class AotModule:
    """Kernels and AOT main in one TIR IRModule, with the C symbol names used."""

    mod: tvm.IRModule
    main_symbol: str
    kernel_symbols: dict[str, str]  # kernel name → C symbol


def symbol_prefix(model_name: str) -> str:
    """`tvmgen_<name>_`: the prefix of every generated C symbol."""
    return f"tvmgen_{c_identifier(model_name)}_"


def build_aot_module(
    model_name: str,
    lowered: LoweredModel,
    plan: MemoryPlan,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> AotModule:
    """Rename kernels to `tvmgen_<name>_<kernel>` and add the AOT main that calls them."""
    prefix = symbol_prefix(model_name)
    schedule = lowered.schedule
    kernel_vars = {
        gv.name_hint: ir.GlobalVar(prefix + gv.name_hint) for gv in lowered.kernels.functions
    }
    funcs = {kernel_vars[gv.name_hint]: f for gv, f in lowered.kernels.functions.items()}

    params: list[tirx.Var] = []
    pointers: dict[str, tirx.PrimExpr] = {}
    for tensor, spec in zip(schedule.inputs + schedule.outputs, inputs + outputs, strict=True):
        dtype = schedule.tensors[tensor].dtype
        var = tirx.Var(spec.c_name, ir.PointerType(ir.PrimType(dtype)))
        params.append(var)
        pointers[schedule.root(tensor)] = var
    const_ptr, const_pool = byte_pool(CONSTANTS_PARAM, plan.constants_bytes)
    ws_ptr, ws_pool = byte_pool(WORKSPACE_PARAM, plan.workspace_bytes)
    params += [const_ptr, ws_ptr]

    body: list[tirx.Stmt] = [
        tirx.DeclBuffer(const_pool, data=const_ptr),
        tirx.DeclBuffer(ws_pool, data=ws_ptr),
    ]

    def pointer(name: str) -> tirx.PrimExpr:
        root = schedule.root(name)
        if root not in pointers:
            info = schedule.tensors[root]
            if info.kind == "constant":
                value = pool_pointer(const_pool, plan.constant_offsets[root], info.dtype)
            else:
                value = pool_pointer(ws_pool, plan.workspace_offsets[root], info.dtype)
            var = tirx.Var(c_identifier(root), ir.PointerType(ir.PrimType(info.dtype)))
            body.append(tirx.Bind(var, value))
            pointers[root] = var
        return pointers[root]

    for step, call in enumerate(schedule.calls):
        args = [pointer(name) for name in call.inputs + call.outputs]
        if step in plan.scratch_names:
            args.append(
                pool_pointer(ws_pool, plan.workspace_offsets[plan.scratch_names[step]], "uint8")
            )
        status = tirx.Var(f"status_{step}", ir.PrimType("int32"))
        kernel_call = ir.Call(kernel_vars[call.kernel], args, ret_ty=ir.PrimType("int32"))
        body.append(tirx.Bind(status, kernel_call))
        body.append(
            tirx.IfThenElse(tirx.NE(status, tirx.IntImm("int32", 0)), tirx.Return(status), None)
        )
    body.append(tirx.Return(tirx.IntImm("int32", 0)))

    main_symbol = prefix + "__tvm_main__"
    target = next(iter(funcs.values())).attrs["target"]
    main = tirx.PrimFunc(params, tirx.SeqStmt(body), ret_type=ir.PrimType("int32"))
    main = main.with_attr("target", target)
    funcs[ir.GlobalVar(main_symbol)] = main
    symbols = {name: gv.name_hint for name, gv in kernel_vars.items()}
    return AotModule(tvm.IRModule(funcs), main_symbol, symbols)
