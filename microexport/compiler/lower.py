"""Relax → TIR lowering for C targets.

TVM 0.27's default Relax pipeline does not support target `c`, so this module spells out the
pipeline: Relax legalization and operator fusion (stage `scheduled`), extraction of the call
schedule from the Relax `main`, then TIR lowering of every kernel up to buffer flattening,
followed by our unpacked-API pass (stage `lowered`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import ir, relax, s_tir, tirx

from microexport.compiler.frontend import ImportedModel, cumsum, reduction_identity
from microexport.compiler.frontend.common import relax_failure
from microexport.compiler.frontend.control_flow import structure_branches
from microexport.compiler.frontend.reduction_identity import infinite_reduction_identities
from microexport.compiler.quantization import (
    TensorQuantization,
    fusion_origins,
    fusion_recorder,
)
from microexport.compiler.schedules import (
    bind_repeated_loads,
    hoist_invariant_conditions,
    schedule_for_c,
)
from microexport.compiler.unpacked import (
    DEFAULT_STACK_LIMIT,
    ScratchLayout,
    bind_buffer_offsets,
    drop_unread_params,
    make_unpacked,
)
from microexport.errors import DynamicShape, ModelError, UnsupportedOperator
from microexport.model import TensorSpec, dtype_bytes

SUPPORTED_TARGETS = ("c",)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the schedule: a model input, output, intermediate or constant."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "input" | "output" | "intermediate" | "constant"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class KernelCall:
    """One step of the AOT schedule: `kernel(*args)`, inputs first, then outputs."""

    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Branch:
    """A run-time `If` of the schedule: calls `then[0]` to `then[1] - 1` run when the scalar
    tensor `condition` is non-zero, calls `orelse[0]` to `orelse[1] - 1` otherwise (half-open
    ranges of call indices, `then[1] == orelse[0]`, neither empty). The values the `If` gives are
    tensors both branches write (their last producers write into them directly, or a copy does).
    A branch nested in another lies inside one range of it."""

    condition: str
    then: tuple[int, int]
    orelse: tuple[int, int]

    @property
    def span(self) -> tuple[int, int]:
        """The call indices of both branches (half-open)."""
        return self.then[0], self.orelse[1]


@dataclass(frozen=True)
class Schedule:
    """The model as an ordered list of kernel calls over named tensors.

    `views` maps a reshaped tensor to the tensor whose memory it shares (reshapes are views,
    and so is a tensor a branch of an `If` computes as the `If`'s value). `branches` lists the
    run-time `If`s (inner ones first); the calls are in one order, each branch's calls a
    contiguous range, so a plan valid for that order is valid for every path through it.
    """

    tensors: dict[str, TensorInfo]
    calls: tuple[KernelCall, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    views: dict[str, str]
    constants: dict[str, np.ndarray]
    # kernels the schedule adds itself (copies into outputs), by kernel name, block-level TIR
    extra_kernels: dict[str, tirx.PrimFunc] = dataclasses.field(default_factory=dict)
    # tensor → its quantization in the source model (quantized TFLite and ONNX models; views
    # included)
    quantization: dict[str, TensorQuantization] = dataclasses.field(default_factory=dict)
    branches: tuple[Branch, ...] = ()

    def reads(self, step: int) -> tuple[str, ...]:
        """The tensors call `step` reads: its inputs, and the condition of every `If` whose then
        branch starts there (read before the call, counted at it)."""
        conditions = tuple(b.condition for b in self.branches if b.then[0] == step)
        return self.calls[step].inputs + conditions

    def paths(self, limit: int) -> list[list[int | Branch]] | None:
        """Every path through the schedule: the call indices run, in order, with each `If` it
        passes as the `Branch` at the point where the condition is read. None if there are more
        than `limit`."""
        def walk(start: int, stop: int) -> list[list[int | Branch]] | None:
            results: list[list[int | Branch]] = [[]]
            step = start
            while step < stop:
                # The outermost `If` starting here within [start, stop) (an `If` never lies
                # within one of its own branches: both are non-empty).
                outer = max((b for b in self.branches if b.span[0] == step and b.span[1] <= stop),
                            key=lambda b: b.span[1], default=None)
                if outer is None:
                    results = [path + [step] for path in results]
                    step += 1
                    continue
                sides = [walk(*outer.then), walk(*outer.orelse)]
                if sides[0] is None or sides[1] is None:
                    return None
                results = [path + [outer] + side for path in results
                           for side in sides[0] + sides[1]]
                if len(results) > limit:
                    return None
                step = outer.span[1]
            return results

        return walk(0, len(self.calls))

    def root(self, name: str) -> str:
        """The tensor that owns the memory of `name` (follows reshape views)."""
        while name in self.views:
            name = self.views[name]
        return name


@dataclass(frozen=True)
class LoweredModel:
    """Output of lowering: the schedule of kernel calls and the kernels, before and after TIR
    lowering."""

    schedule: Schedule
    block_kernels: tvm.IRModule  # the used PrimFuncs, scheduled, before TIR lowering
    kernels: tvm.IRModule  # flattened, unpacked PrimFuncs
    scratch: dict[str, ScratchLayout]  # kernel name → its internal scratch needs


def check_target(target: str) -> tvm.target.Target:
    """Accept only C targets; anything else is a one-line error."""
    kind = target.split()[0] if target else ""
    if kind not in SUPPORTED_TARGETS:
        raise ModelError(f"unsupported target '{target}': microexport generates C; use --target c")
    try:
        return tvm.target.Target(target)
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. the old "c -keys=cpu" syntax
        first = str(err).split(". ")[0].splitlines()[0]
        raise ModelError(f"unsupported target '{target}' ({first}): use --target c (the "
                         f"command line also takes tvmc's target strings)") from None


def relax_pipeline() -> tvm.transform.Pass:
    """Relax passes from an imported model to fused `call_tir` kernels (stage `scheduled`)."""
    reduction_identity.install()  # max/min of constants fold as the kernels compute them
    cumsum.install()  # relax.cumsum has no legalization in TVM 0.27
    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.LegalizeOps(),
            relax.transform.FoldConstant(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ]
    )


def tir_pipeline() -> tvm.transform.Pass:
    """TIR passes from block-level kernels to flattened loops, before our unpacked-API pass."""
    return tvm.transform.Sequential(
        [
            s_tir.transform.CanonicalizeLoop(),
            s_tir.transform.LowerCrossThreadReduction(),
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.CompactBufferAllocation(),
            s_tir.transform.LowerMatchBuffer(),
            s_tir.transform.StmtSimplify(),
            s_tir.transform.LowerOpaqueBlock(),
            tirx.transform.FlattenBuffer(),
            tirx.transform.NarrowDataType(32),
            s_tir.transform.LoopPartition(),
            hoist_invariant_conditions,
            tirx.transform.VectorizeLoop(False),
            tirx.transform.StorageRewrite(),
            tirx.transform.UnrollLoop(),
            tirx.transform.StmtSimplify(),
            tirx.transform.RemoveNoOp(),
            tirx.transform.CommonSubexprElim(),
            bind_repeated_loads,
        ]
    )


def lower(
    model: ImportedModel, target: str = "c", kernel_stack_limit: int = DEFAULT_STACK_LIMIT
) -> LoweredModel:
    """Lower an imported model: fuse in Relax, extract the schedule, lower kernels to flat TIR.

    Kernel-internal buffers of at most `kernel_stack_limit` bytes stay C locals; all others
    become scratch in the workspace.
    """
    tvm_target = check_target(target)
    # For a quantized model, watch FuseOps: the variables it binds fused calls to are new and
    # are traced back to the bindings that carry the quantization (quantization.fusion_origins).
    recorder, fused = fusion_recorder() if model.quantization else (None, {})
    instruments = [recorder] if recorder is not None else []
    with tvm_target, tvm.transform.PassContext(instruments=instruments):
        try:
            scheduled = relax_pipeline()(structure_branches(model.mod))
        except Exception as err:  # noqa: BLE001 - TVM fails in every way on what it cannot lower
            raise relax_failure(err, "lower") from err
    origins = fusion_origins(fused["before"], fused["after"]) if "after" in fused else {}
    schedule = extract_schedule(scheduled, model, origins)
    used = {call.kernel for call in schedule.calls}
    functions = [(gv, func) for gv, func in scheduled.functions.items()
                 if isinstance(func, tirx.PrimFunc) and gv.name_hint in used]
    functions += [(ir.GlobalVar(name), func) for name, func in schedule.extra_kernels.items()]
    prim_funcs = {
        gv: bind_buffer_offsets(schedule_for_c(infinite_reduction_identities(func)))
        .with_attr("target", tvm_target)
        for gv, func in functions
    }
    block_kernels = tvm.IRModule(prim_funcs)
    kernels, scratch = make_unpacked(tir_pipeline()(block_kernels), kernel_stack_limit)
    schedule, kernels = drop_empty_arguments(schedule, kernels)
    return LoweredModel(
        schedule=schedule,
        block_kernels=block_kernels,
        kernels=kernels,
        scratch=scratch,
    )


class _ScheduleBuilder:
    """Walks the fused Relax `main` and records tensors, kernel calls and views."""

    def __init__(self, model: ImportedModel, origins: dict[ir.Var, ir.Var] | None = None,
                 module: tvm.IRModule | None = None) -> None:
        self.model = model
        self.module = module if module is not None else model.mod
        self.origins = origins or {}
        self.quantization: dict[str, TensorQuantization] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.calls: list[KernelCall] = []
        self.views: dict[str, str] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.names: dict[ir.Var, str | tuple[str, ...]] = {}
        self.const_names: list[tuple[ir.Constant, str]] = []
        self.used_names: set[str] = set()
        self.extra_kernels: dict[str, tirx.PrimFunc] = {}
        self.branches: list[Branch] = []

    def copy(self, source: str, name: str) -> str:
        """A new tensor `name` (unique) computed as a copy of tensor `source`."""
        info = self.tensors[source]
        target = self.unique(name)
        self.tensors[target] = TensorInfo(target, info.shape, info.dtype, "intermediate")
        self.copy_into(source, target)
        if source in self.quantization:
            self.quantization[target] = self.quantization[source]
        return target

    def quantize(self, name: str, key: ir.Expr) -> None:
        """Record the source model's quantization of the Relax value `key` for tensor `name`."""
        found = self.model.quantization.get(self.origins.get(key, key))
        if found is not None:
            self.quantization[name] = found

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def add_tensor(self, name: str, ty: ir.Type, kind: str) -> None:
        shape = _static_shape(ty, name)
        self.tensors[name] = TensorInfo(name, shape, str(ty.dtype), kind)

    def constant(self, const: ir.Constant) -> str:
        for seen, name in self.const_names:
            if seen.same_as(const):
                return name
        name = self.unique(f"constant_{len(self.constants)}")
        self.const_names.append((const, name))
        data = const.value.numpy()
        self.constants[name] = data
        self.tensors[name] = TensorInfo(name, tuple(data.shape), str(data.dtype), "constant")
        self.quantize(name, const)
        return name

    def arg(self, expr: ir.Expr) -> str:
        if isinstance(expr, ir.Constant):
            return self.constant(expr)
        if isinstance(expr, ir.Var) and isinstance(self.names.get(expr), str):
            return self.names[expr]  # type: ignore[return-value]
        raise ModelError(f"unsupported argument in the Relax main: {expr}")

    def bind(self, var: ir.Var, value: ir.Expr) -> None:
        if isinstance(value, ir.Call) and isinstance(value.op, ir.Op):
            op = value.op.name
            if op == "relax.call_tir":
                self.call_tir(var, value)
            elif op in ("relax.reshape", "relax.memory.view"):
                self.view(var, value.args[0])
            else:
                raise UnsupportedOperator(op.removeprefix("relax."), "no C lowering for it")
        elif isinstance(value, ir.TupleGetItem):
            outs = self.names[value.tuple_value]
            self.names[var] = outs[value.index]  # type: ignore[index]
            if self.names[var] not in self.quantization:  # a field of a kernel's tuple result
                self.quantize(self.names[var], var)  # type: ignore[arg-type]
        elif isinstance(value, ir.Tuple):
            self.names[var] = tuple(self.arg(f) for f in value.fields)
        elif isinstance(value, ir.Var):
            self.names[var] = self.names[value]
        elif isinstance(value, ir.Constant):
            self.names[var] = self.constant(value)
        elif isinstance(value, relax.If):
            self.branch(var, value)
        elif (isinstance(value, ir.Call) and isinstance(value.op, ir.GlobalVar)
              and isinstance(self.module[value.op], relax.Function)):
            # A branch of an `If` that control_flow.structure_branches outlined (so that its
            # kernels fuse): its body stands in place of the call.
            func = self.module[value.op]
            for param, arg in zip(func.params, value.args, strict=True):
                self.names[param] = self.names[arg] if isinstance(arg, ir.Var) else self.arg(arg)
            results = self.sequence(func.body)
            self.names[var] = tuple(results) if isinstance(var.ty, ir.TupleType) else results[0]
        else:
            raise ModelError(f"unsupported binding in the Relax main: {value}")

    def sequence(self, seq: relax.SeqExpr) -> list[str]:
        """Walk the bindings of `seq`; the tensors of its result (a tuple flattened)."""
        for block in seq.blocks:
            for binding in block.bindings:
                self.bind(binding.var, binding.value)
        result = seq.body
        fields = result.fields if isinstance(result, ir.Tuple) else [result]
        results: list[str] = []
        for field in fields:
            value = self.names.get(field) if isinstance(field, ir.Var) else self.arg(field)
            if value is None:
                raise ModelError(f"unsupported result in the Relax main: {field}")
            results.extend(value if isinstance(value, tuple) else [value])
        return results

    def branch(self, var: ir.Var, node: relax.If) -> None:
        """A run-time `If`: the calls of each branch in a range of their own, the `If`'s values
        tensors both branches write (see `Branch`)."""
        condition = self.arg(node.cond)
        info = self.tensors[condition]
        if int(np.prod(info.shape, dtype=np.int64)) != 1 or not (
                info.dtype == "bool" or info.dtype.startswith(("int", "uint"))):
            raise ModelError(f"the condition of an If is a {info.dtype} tensor of shape "
                             f"{list(info.shape)}: it must be one bool or integer element")
        fields = var.ty.fields if isinstance(var.ty, ir.TupleType) else [var.ty]
        merged = []
        for index, field in enumerate(fields):
            shape = getattr(field, "shape", None)
            if shape is None or any(not isinstance(v, tirx.IntImm) for v in shape):
                raise ModelError(
                    f"the branches of an If (condition '{condition}') give values of different "
                    f"or unknown shapes ({field}): a compiled If needs both branches to give the "
                    "same static shape and dtype, or freeze its condition with --constant")
            name = self.unique(var.name if len(fields) == 1 else f"{var.name}_{index}")
            self.add_tensor(name, field, "intermediate")
            merged.append(name)
        ranges = []
        for side in (node.true_branch, node.false_branch):
            start = len(self.calls)
            results = self.sequence(side)
            claimed: set[str] = set()
            for result, target in zip(results, merged, strict=True):
                self._write_into(result, target, start, claimed)
            if len(self.calls) == start:
                raise ModelError(f"an If (condition '{condition}') gives no values: nothing "
                                 "to compile")
            ranges.append((start, len(self.calls)))
        self.branches.append(Branch(condition, ranges[0], ranges[1]))
        self.names[var] = tuple(merged) if isinstance(var.ty, ir.TupleType) else merged[0]

    def _write_into(self, result: str, target: str, start: int, claimed: set[str]) -> None:
        """Make the branch whose calls start at `start` leave tensor `result` in `target`: the
        call that computes it writes into `target` directly (`result` becomes a view of it)
        when it is an intermediate only this branch writes; else a copy kernel does."""
        root = self.root(result)
        got, want = self.tensors[result], self.tensors[target]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelError(
                f"the branches of an If give {got.dtype}{list(got.shape)} and "
                f"{want.dtype}{list(want.shape)} for one value: a compiled If needs both "
                "branches to give the same static shape and dtype, or freeze its condition "
                "with --constant")
        writers = [step for step, call in enumerate(self.calls)
                   if any(self.root(name) == root for name in call.outputs)]
        if (self.tensors[root].kind == "intermediate" and root not in claimed
                and writers and min(writers) >= start):
            self.views[root] = target
            claimed.add(root)
            return
        self.copy_into(result, target)

    def root(self, name: str) -> str:
        while name in self.views:
            name = self.views[name]
        return name

    def copy_into(self, source: str, target: str) -> None:
        """A call of a copy kernel from tensor `source` into tensor `target`."""
        info = self.tensors[source]
        count = int(np.prod(info.shape, dtype=np.int64))
        if count == 0:  # an empty tensor: nothing to copy
            return
        kernel = f"copy_{info.dtype}_{count}"
        if kernel not in self.extra_kernels:
            self.used_names.add(kernel)
            self.extra_kernels[kernel] = copy_kernel(count, info.dtype)
        self.calls.append(KernelCall(kernel, (source,), (target,)))

    def call_tir(self, var: ir.Var, call: ir.Call) -> None:
        kernel = call.args[0].name_hint
        inputs = tuple(self.arg(a) for a in call.args[1].fields)
        if len(call.args) > 2:
            raise DynamicShape(f"kernel '{kernel}' needs symbolic shape arguments")
        out_ty = call.ty_args[0]
        if isinstance(out_ty, ir.TupleType):
            outs = []
            for i, field in enumerate(out_ty.fields):
                name = self.unique(f"{var.name}_{i}")
                self.add_tensor(name, field, "intermediate")
                outs.append(name)
            self.names[var] = tuple(outs)
        else:
            name = self.unique(var.name)
            self.add_tensor(name, out_ty, "intermediate")
            outs = [name]
            self.names[var] = name
            self.quantize(name, var)
        if all(0 in self.tensors[out].shape for out in outs):
            return  # only empty tensors to compute: nothing to call (their kernel is not built)
        self.calls.append(KernelCall(kernel, inputs, tuple(outs)))

    def view(self, var: ir.Var, source: ir.Expr) -> None:
        base = self.arg(source)
        name = self.unique(var.name)
        self.add_tensor(name, var.ty, self.tensors[base].kind)
        if self.tensors[base].kind == "constant":
            self.constants[name] = self.constants[base].reshape(self.tensors[name].shape)
        self.views[name] = base
        self.names[var] = name
        self.quantize(name, var)


def extract_schedule(scheduled: tvm.IRModule, model: ImportedModel,
                     origins: dict[ir.Var, ir.Var] | None = None) -> Schedule:
    """Turn the fused Relax `main` into a `Schedule` of kernel calls over named tensors.

    `origins` maps variables FuseOps introduced to the ones they replace (for the quantization
    of fused kernels' results)."""
    main = scheduled["main"]
    builder = _ScheduleBuilder(model, origins, scheduled)
    input_names = []
    for param, spec in zip(main.params, model.inputs, strict=True):
        name = builder.unique(spec.c_name)
        builder.add_tensor(name, param.ty, "input")
        builder.names[param] = name
        builder.quantize(name, param)
        input_names.append(name)
    results = builder.sequence(main.body)
    outputs = _bind_outputs(builder, results, model.outputs)
    return Schedule(
        tensors=builder.tensors,
        calls=tuple(builder.calls),
        inputs=tuple(input_names),
        outputs=outputs,
        views=builder.views,
        constants=builder.constants,
        extra_kernels=builder.extra_kernels,
        quantization=_with_views(builder.quantization, builder.views, builder.tensors),
        branches=tuple(builder.branches),
    )


def drop_empty_arguments(schedule: Schedule, kernels: tvm.IRModule
                         ) -> tuple[Schedule, tvm.IRModule]:
    """The schedule and unpacked kernels without the kernel parameters of empty input tensors
    that the kernels never read (a concatenation with an empty operand): such a tensor has no
    bytes to point to, in the workspace or the constant pool. A kernel whose body still uses
    one keeps it."""
    def empty(name: str) -> bool:
        return 0 in schedule.tensors[schedule.root(name)].shape

    wanted: dict[str, set[int]] = {}
    for call in schedule.calls:
        found = {i for i, name in enumerate(call.inputs) if empty(name)}
        wanted[call.kernel] = wanted.get(call.kernel, found) & found
    if not any(wanted.values()):
        return schedule, kernels
    funcs = {}
    dropped: dict[str, set[int]] = {}
    for gv, func in kernels.functions.items():
        indices = wanted.get(gv.name_hint) or set()
        smaller = drop_unread_params(func, indices) if indices else None
        funcs[gv] = smaller or func
        if smaller is not None:
            dropped[gv.name_hint] = indices
    calls = tuple(
        KernelCall(call.kernel, tuple(name for i, name in enumerate(call.inputs)
                                      if i not in dropped.get(call.kernel, ())), call.outputs)
        for call in schedule.calls)
    return dataclasses.replace(schedule, calls=calls), tvm.IRModule(funcs)


def _with_views(quantization: dict[str, TensorQuantization], views: dict[str, str],
                tensors: dict[str, TensorInfo]) -> dict[str, TensorQuantization]:
    """`quantization` plus, for a tensor without its own, that of a view of it or of the
    tensor it views (a reshape keeps the quantization; a per-channel one only with the shape
    unchanged)."""
    result = dict(quantization)
    for view, base in views.items():
        for source, target in ((view, base), (base, view)):
            found = result.get(source)
            if found is None or target in result:
                continue
            if found.axis is None or tensors[source].shape == tensors[target].shape:
                result[target] = found
    return result


def copy_kernel(count: int, dtype: str) -> tirx.PrimFunc:
    """A block-level kernel copying `count` elements of `dtype` (`dst[i] = src[i]`)."""
    from tvm import te

    src = te.placeholder((count,), dtype, name="src")
    dst = te.compute((count,), lambda i: src[i], name="dst")
    return te.create_prim_func([src, dst]).without_attr("global_symbol")


def _bind_outputs(
    builder: _ScheduleBuilder, results: list[str], specs: tuple[TensorSpec, ...]
) -> tuple[str, ...]:
    """Mark the tensors the main returns as model outputs, renamed after the model's outputs."""
    if len(results) != len(specs):
        raise ModelError(f"the model returns {len(results)} tensors but declares {len(specs)}")
    outputs = []
    roots: set[str] = set()
    for name, spec in zip(results, specs, strict=True):
        root = name
        while root in builder.views:
            root = builder.views[root]
        if builder.tensors[root].kind != "intermediate" or root in roots:
            # A model input, a constant or (a view of) another output: the output gets its own
            # memory, filled by a copy kernel (none for an empty one).
            name = root = builder.copy(name, spec.c_name)
        roots.add(root)
        for tensor in (name, root):
            info = builder.tensors[tensor]
            builder.tensors[tensor] = TensorInfo(info.name, info.shape, info.dtype, "output")
        outputs.append(name)
    return tuple(outputs)


def _static_shape(ty: ir.Type, name: str) -> tuple[int, ...]:
    shape = getattr(ty, "shape", None)
    if shape is None or any(not isinstance(v, tirx.IntImm) for v in shape):
        raise DynamicShape(f"tensor '{name}' has a dynamic shape {shape}: use --input-shape")
    return tuple(int(v) for v in shape)
