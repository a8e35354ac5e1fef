"""Schedules for C targets on cache-less microcontroller cores.

Relax legalization yields naive block-level PrimFuncs: every fused operator writes a full-size
intermediate buffer. For a microcontroller that costs RAM, so each kernel is rescheduled:

1. elementwise producers are inlined into their consumers (padding, casts, bias adds…);
2. elementwise epilogues are inlined into their producers where TIR allows it;
3. an epilogue after a reduction (conv/dense + bias + activation + requantize) is computed right
   after each output element's reduction, and the reduction's initialisation is split out, so the
   accumulator shrinks from a whole output tensor to one element (a C local under the default
   `--kernel-stack-limit`, which the C compiler keeps in a register);
   Before that, a sum whose one operand does not depend on the innermost output dimension (a
   dense layer's or an NHWC convolution's input) is register-blocked: `SPATIAL_BLOCK` adjacent
   outputs are accumulated together, so that operand is loaded once per `SPATIAL_BLOCK`
   multiply-adds (`_block_output_channels`);
4. the innermost reduction loop (sum, max or min) is unrolled, fully when short, else by
   `UNROLL_FACTOR`, so that a multiply-accumulate costs its two loads and one (fused)
   multiply-add, not a loop test too.

After TIR lowering, `hoist_invariant_conditions` moves a condition that does not change inside a
loop (the bounds test of padding inlined into a convolution) out of it: the loop is duplicated
under an `if`, each copy with the condition's value known (loop unswitching), and
`bind_repeated_loads`, after TVM's CommonSubexprElim, computes an integer subexpression that
reads memory and repeats within one stored value (a requantization inlined into the next one)
once, into a variable bound before the store.

Every step is an optimisation, never a requirement: each is tried on a copy of the schedule and
kept only if TVM accepts it (and, for step 3, only if the moved epilogue still runs over its whole
iteration domain, see `covers_iteration_domain`); otherwise the kernel stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
import tvm_ffi
from tvm import ir, s_tir, sym, tirx

_SPATIAL = 0  # tirx.IterVar.DataPar

# What a schedule primitive raises when it refuses a transformation: ScheduleError (a
# RuntimeError), an InternalError, or a ValueError from a failed check inside the primitive.
_REFUSED = (RuntimeError, ValueError)


def schedule_for_c(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Apply the C schedule above to one block-level PrimFunc; returns the rescheduled function.

    A function without a root block (TIR written directly, e.g. scatter operators) is returned
    unchanged.
    """
    sch = s_tir.Schedule(func, error_render_level="none")
    try:
        root = sch.get_sblock("root")
    except _REFUSED:
        return func
    for block in sch.get_child_blocks(root)[:-1]:
        if _inline_growth(sch, block) <= INLINE_BUDGET:
            sch = _attempt(sch, lambda trial, b=block: trial.compute_inline(b))
    for block in reversed(sch.get_child_blocks(root)):
        if _reverse_inline_growth(sch, block) <= INLINE_BUDGET:
            sch = _attempt(sch, lambda trial, b=block: trial.reverse_compute_inline(b))
    for block in sch.get_child_blocks(root):
        blocked = _block_output_channels(sch, block)
        sch = _fuse_epilogue_into_reduction(sch if blocked is None else blocked, block)
        if blocked is not None:
            sch = _unroll_blocked_loops(sch, block)
    for block in _reduction_blocks(sch, root):
        sch = _unroll_innermost_reduction(sch, block)
    return sch.mod["main"]


# Innermost reduction loops of at most this many iterations are unrolled completely (a 3x3
# kernel's input channels, a 2x2 average-pool window); longer ones are split and the inner part of
# `UNROLL_FACTOR` iterations unrolled. Four multiply-adds per loop test take most of the loop
# overhead away at a few dozen bytes of code per kernel (`microexport size` shows them).
FULL_UNROLL_MAX = 4
UNROLL_FACTOR = 4


def _reduction_blocks(sch: s_tir.Schedule, root: s_tir.schedule.SBlockRV
                      ) -> list[s_tir.schedule.SBlockRV]:
    """Every block under `root` (nested ones too) with a reduction iteration variable."""
    blocks = []
    pending = list(sch.get_child_blocks(root))
    while pending:
        block = pending.pop(0)
        if any(int(iv.iter_type) != _SPATIAL for iv in sch.get(block).iter_vars):
            blocks.append(block)
        pending.extend(sch.get_child_blocks(block))
    return blocks


def _unroll_innermost_reduction(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
                                ) -> s_tir.Schedule:
    """Unroll the innermost loop of a sum, max or min reduction block if it is a reduction loop
    of constant extent: completely up to `FULL_UNROLL_MAX` iterations, else by the largest
    factor of its extent up to `UNROLL_FACTOR` (no remainder loop)."""
    iter_types = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if not loops or not iter_types or iter_types[-1] == _SPATIAL:
        return sch
    # Sums, maxima and minima. TVM's C codegen binds `max(acc, x)` operands to temporaries
    # (`float v_ = acc[i];`) and reuses a temporary for the same load text later in the scope,
    # even after a store to `acc`, so unrolled `acc = max(acc, x0); acc = max(acc, x1);` read a
    # stale acc; codegen's `min_max_as_select` now prints a min or max that reads a stored
    # buffer as an inline select, which unrolls safely (tests/test_schedules.py checks it).
    body = sch.get(block).body
    if not (isinstance(body, tirx.BufferStore)
            and isinstance(body.value, (tirx.Add, tirx.Max, tirx.Min))
            and _count_nodes(body.value, tvm.ir.expr.TensorLoad,
                             lambda load: load.source.same_as(body.buffer)) == 1):
        return sch
    if not _loop_binds_only_last(sch, block):
        return sch
    return _unroll_reduction_loop(sch, loops[-1])


def _unroll_reduction_loop(sch: s_tir.Schedule, loop_rv: s_tir.schedule.LoopRV
                           ) -> s_tir.Schedule:
    """Unroll a loop of constant extent completely up to `FULL_UNROLL_MAX` iterations, else
    split it by the largest factor of its extent up to `UNROLL_FACTOR` and unroll the inner
    part (no remainder loop); any other loop stays."""
    loop = sch.get(loop_rv)
    if not isinstance(loop.extent, tirx.IntImm):
        return sch
    extent = int(loop.extent)
    if extent <= 1:
        return sch
    if extent <= FULL_UNROLL_MAX:
        return _attempt(sch, lambda trial: trial.unroll(loop_rv))
    factor = next((f for f in range(UNROLL_FACTOR, 1, -1) if extent % f == 0), 1)
    if factor == 1:
        return sch

    def split_and_unroll(trial: s_tir.Schedule) -> None:
        _, inner = trial.split(loop_rv, [None, factor])
        trial.unroll(inner)

    return _attempt(sch, split_and_unroll)


# Register blocking: a reduction that reads one operand independently of its innermost output
# dimension (the input of a dense layer or of an NHWC convolution, the same for every output
# channel) computes `SPATIAL_BLOCK` adjacent outputs at once: the output-channel loop is split
# and its inner part moved inside the reduction loops (and unrolled), so each input element is
# loaded once for `SPATIAL_BLOCK` multiply-adds into as many accumulators (C locals the compiler
# keeps in registers), and weights stored output-channel-innermost (TVM folds a TFLite dense
# layer's weights transposed: [in, out]) are read contiguously instead of one cache line per
# multiply-add on a host. Each output is still summed in the same order: results are unchanged.
SPATIAL_BLOCK = 4
# An epilogue (bias, activation, requantization) after a blocked reduction is unrolled only up to
# this many expression nodes; a longer one (integer requantization) keeps its loop.
EPILOGUE_UNROLL_BUDGET = 64


def _block_output_channels(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
                           ) -> s_tir.Schedule | None:
    """`sch` with the innermost spatial loop of the sum reduction `block` split by
    `SPATIAL_BLOCK` and the inner part moved innermost (register blocking, see above); None
    where it does not apply: not a sum, no operand independent of that loop, an extent not a
    multiple of `SPATIAL_BLOCK`, or that loop in a condition (padding's bounds test, which
    unswitching would no longer hoist)."""
    spatial = _leading_spatial_loops(sch, block)
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if spatial == 0 or len(loops) <= spatial or len(stmt.iter_vars) != len(loops):
        return None
    body = stmt.body
    if not (isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add)
            and _count_nodes(body.value, tvm.ir.expr.TensorLoad,
                             lambda load: load.source.same_as(body.buffer)) == 1):
        return None
    realize = _block_realize(sch.mod["main"], stmt)
    if realize is None or not _is_true(realize.predicate):
        return None
    # Loops and iteration variables must correspond one to one (loop k binds variable k only).
    for index, (loop_rv, value) in enumerate(zip(loops, realize.iter_values, strict=True)):
        loop = sch.get(loop_rv)
        if not isinstance(loop.extent, tirx.IntImm) or not (
                isinstance(value, tirx.Var) and value.same_as(loop.loop_var)):
            return None
        if index < spatial and int(stmt.iter_vars[index].iter_type) != _SPATIAL:
            return None
    extent = int(sch.get(loops[spatial - 1]).extent)
    if extent < SPATIAL_BLOCK or extent % SPATIAL_BLOCK:
        return None
    channel = stmt.iter_vars[spatial - 1].var
    reduction = [iv.var for iv in stmt.iter_vars[spatial:]]

    def uses(node: object, var: tirx.Var) -> bool:
        return bool(_count_nodes(node, tirx.Var, lambda v: v.same_as(var)))

    shared = [load for load in _loads(body.value) if not load.source.same_as(body.buffer)
              and not any(uses(index, channel) for index in load.indices)
              and any(uses(index, r) for index in load.indices for r in reduction)]
    conditions: list[tirx.PrimExpr] = []

    def visit_call(call: ir.Call) -> ir.Call:
        if call.op.same_as(_IF_THEN_ELSE):
            conditions.append(call.args[0])
        return call

    tvm_ffi.structural_map(body.value, (ir.Call, visit_call), order="pre")
    if not shared or any(uses(cond, channel) for cond in conditions):
        return None

    def split_and_reorder(trial: s_tir.Schedule) -> None:
        _, inner = trial.split(loops[spatial - 1], [None, SPATIAL_BLOCK])
        trial.reorder(*loops[spatial:], inner)

    trial = _attempt(sch, split_and_reorder)
    return None if trial is sch else trial


def _loads(expr: tirx.PrimExpr) -> list[tvm.ir.expr.TensorLoad]:
    """Every buffer load in `expr`."""
    found: list[tvm.ir.expr.TensorLoad] = []
    _count_nodes(expr, tvm.ir.expr.TensorLoad, lambda load: found.append(load) is None)
    return found


def _unroll_blocked_loops(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
                          ) -> s_tir.Schedule:
    """Unroll the `SPATIAL_BLOCK` loops register blocking left: the blocked reduction's
    innermost loop, and the loop of every block beside it under the outer channel loop (the
    accumulators' initialisation, an epilogue within `EPILOGUE_UNROLL_BUDGET`), so that every
    accumulator index is a constant and the C compiler keeps them in registers; then the
    reduction loop around the blocked channels, as `_unroll_reduction_loop` unrolls one."""
    spatial = _leading_spatial_loops(sch, block)
    outer = sch.get_loops(block)[spatial - 1]
    for member in sch.get_child_blocks(outer):
        loops = sch.get_loops(member)
        innermost = sch.get(loops[-1])
        if innermost.same_as(sch.get(outer)) or not isinstance(innermost.extent, tirx.IntImm) \
                or int(innermost.extent) != SPATIAL_BLOCK:
            continue
        if not sch.get(member).same_as(sch.get(block)) and _count_nodes(
                sch.get(member).body, tvm.ir.expr.Expr) > EPILOGUE_UNROLL_BUDGET:
            continue
        sch = _attempt(sch, lambda trial, loop=loops[-1]: trial.unroll(loop))
    # The reduction loop around the unrolled channels, by the rule of the innermost one.
    return _unroll_reduction_loop(sch, sch.get_loops(block)[-2])


def _loop_binds_only_last(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the block's innermost loop variable appears only in the binding of its last
    iteration variable (the reduction one), so that the loop is a reduction loop."""
    realize = _block_realize(sch.mod["main"], sch.get(block))
    if realize is None:
        return False
    loop_var = sch.get(sch.get_loops(block)[-1]).loop_var
    values = list(realize.iter_values)
    uses = [_count_nodes(value, tirx.Var, lambda v: v.same_as(loop_var)) for value in values]
    return bool(values) and uses[-1] > 0 and not any(uses[:-1])


# Expression nodes a consumer may gain by inlining one producer. Integer requantization uses its
# input several times (rounding shifts, saturation tests), so inlining a chain of requantizing
# elementwise kernels into each other multiplies the expression at every step; past this budget
# the producer keeps its own loop (and buffer) instead.
INLINE_BUDGET = 512


def _inline_growth(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    """How many expression nodes inlining `block` would copy into its consumers: the size of
    its value times the number of times the consumers read it."""
    producer = sch.get(block)
    if len(producer.writes) != 1:
        return 0
    buffer = producer.writes[0].source
    size = _count_nodes(producer.body, tvm.ir.expr.Expr)
    reads = 0
    for consumer in sch.get_consumers(block):
        reads += _count_nodes(sch.get(consumer).body, tvm.ir.expr.TensorLoad,
                              lambda load: load.source.same_as(buffer))
    return size * reads


def _reverse_inline_growth(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    """How many expression nodes inlining the consumer `block` into its producer would copy:
    the producer's value is substituted for each of the consumer's reads of it."""
    producers = sch.get_producers(block)
    if len(producers) != 1:
        return 0
    return _inline_growth(sch, producers[0])


def _count_nodes(node: object, kind: type, accept: Callable[[object], bool] = lambda _: True
                 ) -> int:
    count = 0

    def visit(value: object) -> object:
        nonlocal count
        count += bool(accept(value))
        return value

    tvm_ffi.structural_map(node, (kind, visit), order="pre")
    return count


def _attempt(
    sch: s_tir.Schedule, step: Callable[[s_tir.Schedule], object],
    accept: Callable[[s_tir.Schedule], bool] = lambda _: True,
) -> s_tir.Schedule:
    """Run `step` on a copy of `sch` (block and loop handles stay valid in a copy); return the
    copy if the step succeeded and `accept` approves the result, else `sch` untouched."""
    trial = sch.copy()
    try:
        step(trial)
        return trial if accept(trial) else sch
    except _REFUSED:
        return sch


def _leading_spatial_loops(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    """How many of the block's outer loops are spatial (0 for a non-reduction block)."""
    iter_types = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    if all(t == _SPATIAL for t in iter_types):
        return 0
    count = 0
    for t in iter_types:
        if t != _SPATIAL:
            break
        count += 1
    return count


def _fuse_epilogue_into_reduction(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
) -> s_tir.Schedule:
    """Move the single consumer of a reduction block under the reduction's spatial loops and
    split out the reduction's initialisation; each part is kept only where it is valid."""
    spatial = _leading_spatial_loops(sch, block)
    loops = sch.get_loops(block)
    if spatial == 0 or len(loops) <= spatial:
        return sch
    consumers = sch.get_consumers(block)
    if len(consumers) == 1:
        consumer = consumers[0]
        sch = _attempt(
            sch,
            lambda trial: trial.reverse_compute_at(consumer, loops[spatial - 1],
                                                   preserve_unit_loops=True),
            lambda trial: covers_iteration_domain(trial, consumer),
        )
    return _attempt(sch, lambda trial: trial.decompose_reduction(
        block, trial.get_loops(block)[spatial]))


def covers_iteration_domain(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the loops around `block` run it exactly once for every point of its iteration
    domain, proved from the loop nest alone.

    `reverse_compute_at` derives the moved block's loops from the region its producer writes; when
    the block also reads outside that region (a pad's `if_then_else` reading past the producer's
    extent) the new loops cover only part of the domain and the rest is silently never computed.
    The check: every enclosing loop has a constant extent and the block has no predicate; the
    bindings are a bijective affine map of the loop variables (`detect_iter_map`), so the loops
    visit as many distinct domain points as the product of their extents; that product equals the
    domain's size; and each binding stays inside its iteration variable's range. A bijection of
    equally many points into the domain is onto it.
    """
    realize = _block_realize(sch.mod["main"], sch.get(block))
    if realize is None or not _is_true(realize.predicate):
        return False
    domain: dict[tirx.Var, ir.Range] = {}
    points = 1
    for loop_rv in sch.get_loops(block):
        loop = sch.get(loop_rv)
        if not isinstance(loop.min, tirx.IntImm) or not isinstance(loop.extent, tirx.IntImm):
            return False
        domain[loop.loop_var] = ir.Range.from_min_extent(loop.min, loop.extent)
        points *= int(loop.extent)
    size = 1
    for iter_var in realize.block.iter_vars:
        if not (isinstance(iter_var.dom.min, tirx.IntImm)
                and isinstance(iter_var.dom.extent, tirx.IntImm)):
            return False
        size *= int(iter_var.dom.extent)
    if points != size:
        return False
    bindings = list(realize.iter_values)
    if bindings:
        mapped = sym.detect_iter_map(bindings, domain, check_level="bijective",
                                     simplify_trivial_iterators=False)
        if len(mapped.indices) != len(bindings):
            return False
    analyzer = sym.Analyzer()
    for var, dom in domain.items():
        analyzer.bind(var, dom)
    for iter_var, value in zip(realize.block.iter_vars, bindings, strict=True):
        bound = analyzer.const_int_bound(value)
        low = int(iter_var.dom.min)
        if bound.min_value < low or bound.max_value > low + int(iter_var.dom.extent) - 1:
            return False
    return True


def _block_realize(func: tirx.PrimFunc, block: s_tir.SBlock) -> s_tir.SBlockRealize | None:
    """The realize statement of `block` in `func`, or None."""
    found: list[s_tir.SBlockRealize] = []

    def visit(realize: s_tir.SBlockRealize, visitor: object) -> None:
        if realize.block.same_as(block):
            found.append(realize)
        visitor.default_visit(realize)  # type: ignore[attr-defined]

    tvm_ffi.structural_visit(func.body, (s_tir.SBlockRealize, visit))
    return found[0] if found else None


def _is_true(predicate: tirx.Expr) -> bool:
    return isinstance(predicate, tirx.IntImm) and int(predicate) == 1


# --------------------------------------------------------------------------------------------
# Loop unswitching on lowered TIR
# --------------------------------------------------------------------------------------------

_IF_THEN_ELSE = ir.Op.get("prim.if_then_else")
# Conditions hoisted out of one loop, and out of all loops of one kernel, at most: each hoist
# doubles a loop's code.
MAX_HOISTED_CONDITIONS = 2
MAX_HOISTS_PER_KERNEL = 8


def _defined_vars(stmt: tirx.Stmt) -> list[tirx.Var]:
    """Variables bound inside `stmt`: loop variables and let bindings."""
    found: list[tirx.Var] = []

    def visit(node: object) -> object:
        var = getattr(node, "loop_var", None) if isinstance(node, tirx.For) else getattr(
            node, "var", None)
        if var is not None:
            found.append(var)
        return node

    tvm_ffi.structural_map(stmt, ((tirx.For, tirx.Bind, tirx.LetStmt, tirx.Let), visit),
                           order="pre")
    return found


def _is_index_condition(cond: tirx.PrimExpr) -> bool:
    """Whether `cond` is arithmetic and comparisons of variables and constants only: no memory
    read and no call, so evaluating it earlier, once, gives the same value."""
    return not (_count_nodes(cond, tvm.ir.expr.TensorLoad) or _count_nodes(cond, ir.Call))


def _invariant_condition(loop: tirx.For) -> tirx.PrimExpr | None:
    """The condition of an `if_then_else` or an `if` statement in `loop`'s body that no variable
    bound by the loop or inside it affects, if there is one. (An `if` statement is what an
    inner loop's unswitching left: hoisting it further tests padding once per (ry, rx) tap
    rather than once per unrolled group of channels.)"""
    inner = _defined_vars(loop)
    found: list[tirx.PrimExpr] = []

    def consider(cond: tirx.PrimExpr) -> None:
        if not found and _is_index_condition(cond) and not any(
                _count_nodes(cond, tirx.Var, lambda v, var=var: v.same_as(var)) for var in inner):
            found.append(cond)

    def visit_call(call: ir.Call) -> ir.Call:
        if call.op.same_as(_IF_THEN_ELSE):
            consider(call.args[0])
        return call

    def visit_if(stmt: tirx.IfThenElse) -> tirx.IfThenElse:
        consider(stmt.condition)
        return stmt

    tvm_ffi.structural_map(loop.body, [(ir.Call, visit_call), (tirx.IfThenElse, visit_if)],
                           order="pre")
    return found[0] if found else None


def _assume(stmt: tirx.Stmt, cond: tirx.PrimExpr, value: bool) -> tirx.Stmt:
    """`stmt` with every `if_then_else(cond, a, b)` replaced by `a` (value true) or `b`, and
    every `if (cond)` statement by its `then` or `else` part."""
    def pick(call: ir.Call) -> tirx.PrimExpr:
        if call.op.same_as(_IF_THEN_ELSE) and tvm_ffi.structural_equal(call.args[0], cond):
            return call.args[1] if value else call.args[2]
        return call

    def branch(node: tirx.IfThenElse) -> tirx.Stmt:
        if not tvm_ffi.structural_equal(node.condition, cond):
            return node
        if value:
            return node.then_case
        return node.else_case if node.else_case is not None else tirx.Evaluate(
            tirx.IntImm("int32", 0))

    return tvm_ffi.structural_map(stmt, [(ir.Call, pick), (tirx.IfThenElse, branch)])


def _unswitch(loop: tirx.For, hoists: list[int], budget: int = MAX_HOISTED_CONDITIONS
              ) -> tirx.Stmt:
    """`loop` with an invariant `if_then_else` condition hoisted out: `if (c) loop[c=true] else
    loop[c=false]`, recursively for up to `budget` conditions; `hoists` counts the kernel's
    hoists against `MAX_HOISTS_PER_KERNEL`."""
    if budget <= 0 or hoists[0] >= MAX_HOISTS_PER_KERNEL:
        return loop
    cond = _invariant_condition(loop)
    if cond is None:
        return loop
    hoists[0] += 1

    def copy(value: bool) -> tirx.Stmt:
        body = _assume(loop.body, cond, value)
        new = tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body,
                       loop.thread_binding, loop.annotations, step=loop.step, span=loop.span)
        return _unswitch(new, hoists, budget - 1)

    return tirx.IfThenElse(cond, copy(True), copy(False))


@tirx.transform.prim_func_pass(opt_level=0, name="microexport.UnswitchLoops")
def _unswitch_loops(func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
                    ) -> tirx.PrimFunc:
    del mod, ctx
    hoists = [0]
    # Post-order: inner loops are rewritten first, so a condition is hoisted out of the
    # innermost loop it does not depend on, and the loop around it sees an `if` statement.
    return tvm_ffi.structural_map(func, (tirx.For, lambda loop: _unswitch(loop, hoists)))


# Loop unswitching: every loop whose body holds an `if_then_else` with a condition the loop does
# not change (padding's bounds test inlined into a convolution's channel loop) becomes
# `if (c) { loop with c true } else { loop with c false }`; the test runs once per loop instead of
# once per iteration. In a padded convolution the `else` copy accumulates `0.0f * w`, which TVM's
# simplifier then drops (x * 0 -> 0, acc + 0 -> acc): padded taps are skipped, as TFLite Micro's
# reference kernels skip them, which differs from multiplying only for an infinite or NaN weight.
# The two copies bind the same loop variables; ConvertSSA renames them, without which
# CommonSubexprElim takes an index expression of both copies for one and hoists it above the
# `if`, out of its loop variable's scope.
hoist_invariant_conditions = tvm.transform.Sequential(
    [_unswitch_loops, tirx.transform.ConvertSSA()], name="microexport.HoistInvariantConditions")


# --------------------------------------------------------------------------------------------
# Repeated subexpressions that read memory, bound once per store
# --------------------------------------------------------------------------------------------

# A fused integer epilogue repeats its input inside one stored value: RoundingDivideByPOT reads
# its operand three times, and a requantization inlined into the next one (a convolution's
# into a batch norm's) is then repeated three times inside each of those (codegen's
# min_max_as_select doubles a clamped value once more). TVM's CommonSubexprElim leaves every
# expression that reads a buffer alone, so a conv + batch norm kernel's one store held 144
# copies of the convolution's requantization: 60 KB of C, and nine minutes in LowerIntrin, whose
# analyzer simplifies each select condition under the conditions of the selects around it.

_PURE_CALLS = frozenset({"tirx.shift_right", "tirx.shift_left", "tirx.bitwise_and",
                         "tirx.bitwise_or", "tirx.bitwise_xor", "tirx.bitwise_not"})
# Bind an expression only if it has at least this many nodes (a load and an operation); a
# bare load is never bound.
_MIN_BOUND_SIZE = 2
# Bindings per store at most (each round rescans the value).
_MAX_BINDINGS = 64


def _children(node: object) -> tuple[list[object], list[object]] | None:
    """The operands of an expression node: (always evaluated, evaluated only under a
    condition); None for a node whose evaluation is not plain arithmetic on its operands (a
    call with effects, a let, vector nodes), which is never bound nor looked into."""
    if isinstance(node, (tirx.Var, tirx.IntImm, tirx.FloatImm)):
        return [], []
    if isinstance(node, tvm.ir.expr.TensorLoad):
        return list(node.indices), []
    if isinstance(node, (tvm.ir.prim.expr.BinaryOpExpr, tvm.ir.prim.expr.CmpExpr)):
        return [node.a, node.b], []
    if isinstance(node, (tirx.And, tirx.Or)):  # C's && and || skip their second operand
        return [node.a], [node.b]
    if isinstance(node, (tirx.Not, tvm.ir.prim.expr.BitwiseNot)):
        return [node.a], []
    if isinstance(node, tirx.Cast):
        return [node.value], []
    if isinstance(node, tirx.Select):
        # C prints a select as `c ? a : b`: its arms may rely on the condition (a bound load).
        return [node.condition], [node.true_value, node.false_value]
    if isinstance(node, ir.Call):
        if node.op.same_as(_IF_THEN_ELSE):
            return [node.args[0]], list(node.args[1:])
        if isinstance(node.op, ir.Op) and node.op.name in _PURE_CALLS:
            return list(node.args), []
        if isinstance(node.op, ir.Op) and node.op.name == "tirx.call_pure_extern":
            return list(node.args[1:]), []  # after the callee's name (a function of its args)
    return None


class _Occurrences:
    """Structurally equal subexpressions of some expressions: how often each occurs, how often
    outside any conditionally evaluated operand, and whether it may be bound."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}
        self.unguarded: dict[int, int] = {}
        self.first: dict[int, object] = {}
        self.order: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.bindable: dict[int, bool] = {}
        self._info: dict[int, tuple[int, int, bool, bool]] = {}  # handle -> key, size, ...

    def _describe(self, node: object) -> tuple[int, int, bool, bool]:
        """(structural hash, node count, free of opaque nodes, reads memory) of `node`."""
        handle = node.__chandle__()  # type: ignore[attr-defined]
        if handle not in self._info:
            parts = _children(node)
            if parts is None:
                info = (tvm_ffi.structural_hash(node), 1, False, False)
            else:
                described = [self._describe(child) for child in parts[0] + parts[1]]
                info = (tvm_ffi.structural_hash(node), 1 + sum(d[1] for d in described),
                        all(d[2] for d in described),
                        isinstance(node, tvm.ir.expr.TensorLoad) or any(
                            d[3] for d in described))
            self._info[handle] = info
        return self._info[handle]

    def add(self, node: object, guarded: bool = False) -> None:
        """Count `node` and its subexpressions (a tree walk: every occurrence counts)."""
        key, size, pure, reads = self._describe(node)
        if key not in self.count:
            dtype = getattr(node, "ty", None)
            dtype = str(getattr(dtype, "dtype", ""))
            self.count[key], self.unguarded[key] = 0, 0
            self.first[key], self.order[key], self.size[key] = node, len(self.order), size
            self.bindable[key] = (pure and reads and size >= _MIN_BOUND_SIZE
                                  and not isinstance(node, tvm.ir.expr.TensorLoad)
                                  and dtype.startswith(("int", "uint")) and "x" not in dtype)
        self.count[key] += 1
        self.unguarded[key] += not guarded
        parts = _children(node)
        if parts is None:
            return
        for child in parts[0]:
            self.add(child, guarded)
        for child in parts[1]:
            self.add(child, True)

    def largest_repeated(self) -> object | None:
        """The largest bindable expression occurring twice or more, once at least outside a
        conditional operand (so binding it evaluates nothing that was not evaluated)."""
        keys = [k for k, n in self.count.items()
                if n >= 2 and self.unguarded[k] and self.bindable[k]]
        if not keys:
            return None
        return self.first[max(keys, key=lambda k: (self.size[k], -self.order[k]))]


def _replace(expr: tirx.PrimExpr, target: tirx.PrimExpr, var: tirx.Var) -> tirx.PrimExpr:
    """`expr` with every subexpression structurally equal to `target` replaced by `var`."""
    key = tvm_ffi.structural_hash(target)

    def visit(node: object) -> object:
        if (_children(node) is not None and tvm_ffi.structural_hash(node) == key
                and tvm_ffi.structural_equal(node, target)):
            return var
        return node

    return tvm_ffi.structural_map(expr, (tvm.ir.expr.Expr, visit), order="pre")


def _bind_repeated(store: tirx.BufferStore) -> tirx.Stmt:
    """`store` preceded by `Bind`s of the repeated integer subexpressions of its value that
    read memory, each occurrence replaced by the bound variable. Within one stored value every
    load reads the memory as it was before the store, so evaluating a repeated part once, just
    before, gives the same value."""
    value = store.value
    bindings: list[tuple[tirx.Var, tirx.PrimExpr]] = []
    for _ in range(_MAX_BINDINGS):
        found = _Occurrences()
        found.add(value)
        for _, bound in bindings:
            found.add(bound)
        target = found.largest_repeated()
        if target is None:
            break
        var = tirx.Var("shared", str(target.ty.dtype))  # type: ignore[attr-defined]
        value = _replace(value, target, var)
        bindings = [(v, _replace(bound, target, var)) for v, bound in bindings]
        bindings.append((var, target))
    if not bindings:
        return store
    # Each binding after the ones its expression uses (later, smaller ones usually).
    ordered: list[tuple[tirx.Var, tirx.PrimExpr]] = []
    pending = list(reversed(bindings))
    while pending:
        for index, (var, bound) in enumerate(pending):
            if not any(_count_nodes(bound, tirx.Var, lambda v, o=other: v.same_as(o))
                       for other, _ in pending if other is not var):
                ordered.append(pending.pop(index))
                break
        else:  # unreachable: a binding never uses itself
            return store
    return tirx.SeqStmt([tirx.Bind(var, bound) for var, bound in ordered]
                        + [tirx.BufferStore(store.buffer, value, store.indices)])


@tirx.transform.prim_func_pass(opt_level=0, name="microexport.BindRepeatedLoads")
def _bind_repeated_loads(func: tirx.PrimFunc, mod: tvm.IRModule,
                         ctx: tvm.transform.PassContext) -> tirx.PrimFunc:
    del mod, ctx
    return tvm_ffi.structural_map(func, (tirx.BufferStore, _bind_repeated))


bind_repeated_loads = _bind_repeated_loads
"""TIR pass (after CommonSubexprElim): in each store, integer subexpressions that read memory
and occur more than once are computed once into a `Bind` before the store."""
