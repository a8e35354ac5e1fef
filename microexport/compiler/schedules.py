"""Schedules for C targets on cache-less microcontroller cores.

Relax legalization yields naive block-level PrimFuncs: every fused operator writes a full-size
intermediate buffer. For a microcontroller that costs RAM, so each kernel is rescheduled:

1. elementwise producers are inlined into their consumers (padding, casts, bias adds…);
2. elementwise epilogues are inlined into their producers where TIR allows it;
3. an epilogue after a reduction (conv/dense + bias + activation + requantize) is computed right
   after each output element's reduction, and the reduction's initialisation is split out, so the
   accumulator shrinks from a whole output tensor to one element (a C local).

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
        sch = _fuse_epilogue_into_reduction(sch, block)
    return sch.mod["main"]


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
