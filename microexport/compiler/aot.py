"""Build the AOT main as a TIR PrimFunc.

`tvmgen_<name>___tvm_main__(inputs..., outputs..., uint8_t* constants, uint8_t* workspace)` calls
every kernel in schedule order with typed pointers into the inputs, outputs, the constant pool and
the workspace pool(s) at the byte offsets of the memory plan, and returns the first non-zero kernel
status. A pool of size zero is left out of the signature; with inputs and outputs planned inside
the workspace, they are not parameters either. A run-time `If` of the schedule is
`if (cond[0]) { then calls } else { else calls }` (a 0-d condition declared as one element);
every tensor is declared at the top level of the main, before the first statement that needs it.
Kernels and main end up in one IRModule of private functions, so the C codegen emits plain C calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import ir, tirx

from microexport.compiler.lower import Schedule, TensorInfo
from microexport.compiler.plan import MemoryPlan
from microexport.compiler.quantization import QUANTIZATION_ATTR
from microexport.compiler.unpacked import byte_pool, mark_unused, pool_pointer
from microexport.model import TensorSpec, c_identifier, symbol_prefix

CONSTANTS_PARAM = "constants"
CONSTANTS_ATTR = "microexport.constants"
IO_ATTR = "microexport.io"  # names of the main's input and output buffers, in model order


@dataclass(frozen=True)
class AotModule:
    """Kernels and AOT main in one TIR IRModule, with the C symbol names used."""

    mod: tvm.IRModule
    main_symbol: str
    kernel_symbols: dict[str, str]  # kernel name → C symbol


def build_aot_module(
    model_name: str,
    schedule: Schedule,
    kernels: tvm.IRModule,
    plan: MemoryPlan,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    *,
    pass_scratch: bool = True,
) -> AotModule:
    """Rename kernels to `tvmgen_<name>_<kernel>` and add the AOT main that calls them.

    Every tensor the main touches is declared as a named buffer (shape, dtype) on its pointer, so
    the graph (tensors, pools, offsets, producers, consumers) can be read back from the main alone.
    The constants travel with the main as its `microexport.constants` attribute (name → tensor);
    `microexport.io` lists the buffer names of the model inputs and outputs in order;
    `microexport.quantization` (quantized models only) maps a buffer name to the tensor's
    scales, zero points and per-channel axis in the source model.
    `pass_scratch=False` leaves out the kernels' scratch arguments (for kernels not yet unpacked).
    """
    prefix = symbol_prefix(model_name)
    kernel_vars = {gv.name_hint: ir.GlobalVar(kernel_symbol(prefix, gv.name_hint))
                   for gv in kernels.functions}
    funcs = {kernel_vars[gv.name_hint]: f for gv, f in kernels.functions.items()}

    params: list[tirx.Var] = []
    buffers: dict[str, tirx.Buffer] = {}
    body: list[tirx.Stmt] = []
    io_specs = zip(schedule.inputs + schedule.outputs, inputs + outputs, strict=True)
    # A 0-d condition of a run-time `If` is declared as one element: the main reads it with a
    # BufferLoad, which the C codegen accepts only on flat buffers.
    conditions = {schedule.root(b.condition) for b in schedule.branches}
    io_names = {schedule.root(tensor): spec.c_name for tensor, spec in io_specs}
    # A pool of size zero is left out of the signature: C compilers warn about unused parameters.
    pool_sizes = {CONSTANTS_PARAM: plan.constants_bytes, **plan.pool_bytes}
    pools = {name: byte_pool(name, size) for name, size in pool_sizes.items() if size}
    if not plan.io_in_workspace:
        for tensor, spec in zip(schedule.inputs + schedule.outputs, inputs + outputs, strict=True):
            dtype = schedule.tensors[tensor].dtype
            var = tirx.Var(spec.c_name, ir.PointerType(ir.PrimType(dtype)))
            params.append(var)
            root = schedule.root(tensor)
            info = schedule.tensors[root]
            if root in conditions and not info.shape:
                info = TensorInfo(info.name, (1,), info.dtype, info.kind)
            buffers[root] = _declare(info, var, body, spec.c_name)
    params += [ptr for ptr, _ in pools.values()]
    body[:0] = [tirx.DeclBuffer(pool, data=ptr) for ptr, pool in pools.values()]

    def pool_pointer_of(name: str, dtype: str) -> tirx.PrimExpr:
        pool, offset = plan.placements[name]
        return pool_pointer(pools[pool][1], offset, dtype)

    def data(name: str) -> tirx.PrimExpr:
        root = schedule.root(name)
        if root not in buffers:
            info = schedule.tensors[root]
            if root in conditions and not info.shape:
                info = TensorInfo(info.name, (1,), info.dtype, info.kind)
            if info.kind == "constant":
                value = pool_pointer(pools[CONSTANTS_PARAM][1], plan.constant_offsets[root],
                                     info.dtype)
            else:
                value = pool_pointer_of(root, info.dtype)
            var = tirx.Var(io_names.get(root, c_identifier(root)),
                           ir.PointerType(ir.PrimType(info.dtype)))
            body.append(tirx.Bind(var, value))
            buffers[root] = _declare(info, var, body, io_names.get(root))
        return buffers[root].data

    def call_statements(step: int, out: list[tirx.Stmt]) -> None:
        call = schedule.calls[step]
        args = [data(name) for name in call.inputs + call.outputs]
        if pass_scratch and step in plan.scratch_names:
            args.append(pool_pointer_of(plan.scratch_names[step], "uint8"))
        status = tirx.Var(f"status_{step}", ir.PrimType("int32"))
        kernel_call = ir.Call(kernel_vars[call.kernel], args, ret_ty=ir.PrimType("int32"))
        out.append(tirx.Bind(status, kernel_call))
        out.append(
            tirx.IfThenElse(tirx.NE(status, tirx.IntImm("int32", 0)), tirx.Return(status), None)
        )

    def emit(start: int, stop: int, out: list[tirx.Stmt]) -> None:
        """The calls [start, stop) into `out`; a run-time `If` as an IfThenElse on its
        condition's first element. Every tensor is declared at the top of the main (a C
        declaration inside a branch would not be seen after it), before the first statement
        that needs it."""
        step = start
        while step < stop:
            # The outermost `If` starting here within [start, stop) (never one of whose
            # branches [start, stop) is: both branches are non-empty).
            branch = max((b for b in schedule.branches
                          if b.span[0] == step and b.span[1] <= stop),
                         key=lambda b: b.span[1], default=None)
            if branch is None:
                call_statements(step, out)
                step += 1
                continue
            if out is body:
                for inner in range(*branch.span):
                    for name in schedule.calls[inner].inputs + schedule.calls[inner].outputs:
                        data(name)
                for nested in schedule.branches:
                    if branch.span[0] <= nested.span[0] < branch.span[1]:
                        data(nested.condition)
            then: list[tirx.Stmt] = []
            orelse: list[tirx.Stmt] = []
            emit(*branch.then, then)
            emit(*branch.orelse, orelse)
            out.append(tirx.IfThenElse(condition(branch.condition), tirx.SeqStmt(then),
                                       tirx.SeqStmt(orelse)))
            step = branch.span[1]

    def condition(name: str) -> tirx.PrimExpr:
        """`name[0] != 0` for the scalar condition tensor `name` (read through a one-element
        buffer on its pointer: the condition is a 0-d tensor)."""
        info = schedule.tensors[schedule.root(name)]
        data(name)
        buffer = buffers[schedule.root(name)]
        value = tirx.BufferLoad(buffer, [tirx.IntImm("int32", 0)] * len(buffer.shape))
        if info.dtype == "bool":
            return value
        return tirx.NE(value, tirx.IntImm(info.dtype, 0))

    emit(0, len(schedule.calls), body)
    body.append(tirx.Return(tirx.IntImm("int32", 0)))
    # A lone statement is not a SeqStmt (TVM refuses one of length 1): a model whose outputs
    # are all empty, with its inputs and outputs in the workspace, has only its `return 0`.
    body[:0] = mark_unused(params, _sequence(body))  # inputs the model ignores

    main_symbol = prefix + "__tvm_main__"
    # No kernel at all: a model whose outputs are all empty (nothing to compute).
    target = next(iter(funcs.values())).attrs["target"] if funcs else tvm.target.Target("c")
    main = tirx.PrimFunc(params, _sequence(body), ret_type=ir.PrimType("int32"))
    constants = {
        name: tvm.runtime.tensor(np.ascontiguousarray(schedule.constants[name]))
        for name in plan.constant_offsets
    }
    io = {"inputs": [spec.c_name for spec in inputs], "outputs": [spec.c_name for spec in outputs]}
    attrs = {"target": target, CONSTANTS_ATTR: constants, IO_ATTR: io}
    quantization = _quantization(schedule, buffers)
    if quantization:
        attrs[QUANTIZATION_ATTR] = quantization
    main = main.with_attrs(attrs)
    funcs[ir.GlobalVar(main_symbol)] = main
    symbols = {name: gv.name_hint for name, gv in kernel_vars.items()}
    return AotModule(tvm.IRModule(funcs), main_symbol, symbols)


def _sequence(stmts: list[tirx.Stmt]) -> tirx.Stmt:
    """`stmts` as one statement: the statement itself if it is alone, else a SeqStmt."""
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


MAX_SYMBOL_LENGTH = 200  # metadata.schema.json: a function symbol has at most 200 characters


def kernel_symbol(prefix: str, kernel: str) -> str:
    """`prefix + kernel`, shortened to `MAX_SYMBOL_LENGTH` with a hash of the full name when
    longer (FuseTIR names a fused kernel after every operator in it)."""
    symbol = prefix + kernel
    if len(symbol) <= MAX_SYMBOL_LENGTH:
        return symbol
    digest = hashlib.sha256(kernel.encode()).hexdigest()[:12]
    return f"{symbol[:MAX_SYMBOL_LENGTH - len(digest) - 1]}_{digest}"


def _quantization(schedule: Schedule, buffers: dict[str, tirx.Buffer]) -> dict[str, dict]:
    """Buffer name → `TensorQuantization.as_attr()` of each declared tensor that has one (a name
    two buffers share is left out: the graph could not tell them apart)."""
    names = [buffer.name for buffer in buffers.values()]
    return {buffer.name: schedule.quantization[root].as_attr()
            for root, buffer in sorted(buffers.items(), key=lambda item: item[1].name)
            if root in schedule.quantization and names.count(buffer.name) == 1}


def _declare(
    info: TensorInfo, data: tirx.Var, body: list[tirx.Stmt], name: str | None = None
) -> tirx.Buffer:
    """Declare `info` as a named buffer on pointer `data`, appending the DeclBuffer to `body`."""
    buffer = tirx.decl_buffer(info.shape, info.dtype, name or c_identifier(info.name), data=data)
    body.append(tirx.DeclBuffer(buffer, data=data))
    return buffer
