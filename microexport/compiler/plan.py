"""Static memory planning over the AOT schedule.

Every intermediate tensor and every kernel's scratch region gets a byte offset in one workspace
pool. A buffer is live from the call that writes it to the last call that reads it (reshape views
extend the life of the tensor they view); two buffers may share bytes only if their lives do not
overlap. Several placement strategies run and the smallest pool wins: greedy by size with first fit
between live buffers (as TFLite Micro does), greedy in schedule order, every placement order for
small graphs, and a seeded hill climb over the placement order for larger ones. Constants are laid
out back to back in a read-only constant pool.

Every plan is verified before it is used (`check_plan`): lives recomputed from the schedule, no
two buffers live at the same step share a byte, every view's root lives across all the view's
uses, everything fits and is aligned. A violation is a bug in microexport (`InvalidPlan`).

Run-time `If`s: the schedule lists the calls of both branches, each branch a contiguous range,
and the condition counts as read at the first call of the then branch. Planning over that one
order is valid for every path (a path runs a subsequence of the calls in the same order, so a
buffer's life on it lies within its life in schedule order), and it lets a buffer that lives only
in one branch share bytes with one of the other branch. `check_plan` also recomputes the lives
along every path (up to `MAX_CHECKED_PATHS`) and checks them for overlaps.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from microexport.compiler.lower import Schedule
from microexport.compiler.unpacked import ScratchLayout
from microexport.errors import Error
from microexport.model import WORD_BYTES, PoolSpec, dtype_bytes

DEFAULT_ALIGNMENT = 16


class PoolOverflow(Error):
    """The buffers do not fit in the workspace pools' size limits."""


class InvalidPlan(RuntimeError):
    """A memory plan breaks an invariant of static planning: an internal error (a bug in
    microexport, never in the model), so it is not an `Error` and keeps its traceback."""


@dataclass(frozen=True)
class Interval:
    """A buffer to place: its size and the schedule steps [first, last] during which it lives."""

    name: str
    nbytes: int
    first: int
    last: int

    def overlaps(self, other: Interval) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """Where every workspace buffer and every constant lives, and the pool sizes.

    `placements` maps each buffer to (pool name, byte offset); `pool_bytes` gives each pool's
    size (a pool of size zero is not used); `workspace_bytes` is their total. `lives` maps each
    placed buffer to the steps [first, last] of the schedule during which the planner kept its
    bytes reserved (with `io_in_workspace`, a model input's life starts at step 0 and an
    output's ends at the last step: the caller writes and reads them around the run).
    """

    pools: tuple[PoolSpec, ...]
    pool_bytes: dict[str, int]
    placements: dict[str, tuple[str, int]]
    workspace_bytes: int
    constant_offsets: dict[str, int]
    constants_bytes: int
    scratch_names: dict[int, str]  # call index → name of that call's scratch buffer
    lower_bound_bytes: int  # liveness lower bound of workspace + inputs + outputs
    alignment: int  # the alignment used: the requested one, raised to a word and to the
    # largest element size
    strategy: str  # the placement strategy that gave the smallest pool
    io_in_workspace: bool = False
    lives: dict[str, tuple[int, int]] = field(default_factory=dict)


def align(value: int, alignment: int) -> int:
    """Round `value` up to a multiple of `alignment`."""
    return (value + alignment - 1) // alignment * alignment


def live_intervals(
    schedule: Schedule, scratch: dict[str, ScratchLayout]
) -> tuple[list[Interval], dict[int, str]]:
    """Live ranges of intermediate tensors and kernel scratch regions over the call order."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, call in enumerate(schedule.calls):
        for name in call.outputs:
            root = schedule.root(name)
            first.setdefault(root, step)
            last[root] = max(last.get(root, step), step)
        for name in schedule.reads(step):
            root = schedule.root(name)
            last[root] = max(last.get(root, step), step)
    intervals = [
        Interval(name, schedule.tensors[name].nbytes, first[name], last[name])
        for name in first
        if schedule.tensors[name].kind == "intermediate"
    ]
    scratch_names: dict[int, str] = {}
    for step, call in enumerate(schedule.calls):
        layout = scratch.get(call.kernel)
        if layout is not None and layout.nbytes:
            name = f"{call.kernel}_scratch_{step}"
            scratch_names[step] = name
            intervals.append(Interval(name, layout.nbytes, step, step))
    return intervals, scratch_names


Placement = dict[str, tuple[int, int]]  # buffer → (pool index, byte offset)
Strategy = Callable[[list[Interval], int, Sequence[PoolSpec]], Placement]
EXHAUSTIVE_MAX_BUFFERS = 7
HILL_CLIMB_STEPS = 400
HILL_CLIMB_SEED = 0
UNLIMITED = (PoolSpec(),)


def first_fit(
    order: Sequence[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED,
    neighbours: Mapping[str, Sequence[Interval]] | None = None,
) -> Placement:
    """Place buffers in `order`, each in the first pool where it fits within the pool's limit,
    at the lowest aligned offset free during its life. PoolOverflow if it fits nowhere.
    `neighbours` (from `overlapping`, for callers that place the same buffers many times): each
    buffer's name → the buffers alive at the same time."""
    if neighbours is None:
        neighbours = overlapping(order)
    placement: Placement = {}
    for buf in order:
        for index, pool in enumerate(pools):
            busy = sorted((offset, offset + other.nbytes) for other in neighbours[buf.name]
                          for pool_index, offset in [placement.get(other.name, (-1, 0))]
                          if pool_index == index)
            offset = _lowest_offset(buf.nbytes, busy, alignment)
            # Pools are rounded up to the alignment, so the aligned end must fit the limit.
            end = align(offset + buf.nbytes, alignment)
            if pool.size_limit is None or end <= pool.size_limit:
                placement[buf.name] = (index, offset)
                break
        else:
            limits = ", ".join(f"{p.name} ({p.size_limit} B)" for p in pools)
            raise PoolOverflow(
                f"workspace buffer '{buf.name}' ({buf.nbytes} B) fits in none of the pools "
                f"{limits}: raise a limit or add a pool"
            )
    return placement


def overlapping(intervals: Sequence[Interval]) -> dict[str, list[Interval]]:
    """Each buffer's name → the other buffers whose lives overlap its own."""
    by_start = sorted(intervals, key=lambda b: (b.first, b.name))
    neighbours: dict[str, list[Interval]] = {buf.name: [] for buf in intervals}
    for position, buf in enumerate(by_start):
        for other in by_start[position + 1:]:
            if other.first > buf.last:  # every later one starts later still
                break
            neighbours[buf.name].append(other)
            neighbours[other.name].append(buf)
    return neighbours


def _lowest_offset(nbytes: int, busy: list[tuple[int, int]], alignment: int) -> int:
    """The lowest aligned offset where `nbytes` fit between the sorted busy ranges."""
    offset = 0
    for start, end in busy:
        if offset + nbytes <= start:
            break
        offset = max(offset, align(end, alignment))
    return offset


def pool_sizes(intervals: Sequence[Interval], placement: Placement, count: int) -> list[int]:
    """Bytes each pool needs under `placement`: the highest end of any of its buffers."""
    sizes = [0] * count
    for buf in intervals:
        index, offset = placement[buf.name]
        sizes[index] = max(sizes[index], offset + buf.nbytes)
    return sizes


def pool_size(intervals: Sequence[Interval], placement: Placement) -> int:
    """Total bytes of all pools under `placement`."""
    count = 1 + max((index for index, _ in placement.values()), default=0)
    return sum(pool_sizes(intervals, placement, count))


def greedy_by_size(
    intervals: list[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED
) -> Placement:
    """TFLite Micro's strategy: largest buffers first, first fit."""
    order = sorted(intervals, key=lambda b: (-b.nbytes, b.first, b.name))
    return first_fit(order, alignment, pools)


def greedy_by_schedule(
    intervals: list[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED
) -> Placement:
    """Buffers in the order the schedule creates them, first fit."""
    order = sorted(intervals, key=lambda b: (b.first, -b.nbytes, b.name))
    return first_fit(order, alignment, pools)


def exhaustive(
    intervals: list[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED
) -> Placement:
    """Every placement order (small graphs only), first fit; the smallest total wins."""
    best: Placement | None = None
    best_size = 0
    for order in itertools.permutations(sorted(intervals, key=lambda b: b.name)):
        try:
            placement = first_fit(order, alignment, pools)
        except PoolOverflow:
            continue
        size = pool_size(intervals, placement)
        if best is None or size < best_size:
            best, best_size = placement, size
    if best is None:
        return greedy_by_size(intervals, alignment, pools)  # raises the overflow
    return best


def hill_climb(
    intervals: list[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED
) -> Placement:
    """Swap two buffers of the size-ordered placement order at a time; keep swaps that do not
    grow the total. Seeded, so the result is the same on every run."""
    rng = random.Random(HILL_CLIMB_SEED)
    order = sorted(intervals, key=lambda b: (-b.nbytes, b.first, b.name))
    neighbours = overlapping(intervals)
    best = first_fit(order, alignment, pools, neighbours)
    best_size = pool_size(intervals, best)
    if len(order) < 2:
        return best
    for _ in range(HILL_CLIMB_STEPS):
        i, j = rng.sample(range(len(order)), 2)
        order[i], order[j] = order[j], order[i]
        try:
            placement = first_fit(order, alignment, pools, neighbours)
        except PoolOverflow:
            placement = None
        if placement is not None and pool_size(intervals, placement) <= best_size:
            best, best_size = placement, pool_size(intervals, placement)
        else:
            order[i], order[j] = order[j], order[i]
    return best


STRATEGIES: dict[str, Strategy] = {
    "greedy_by_size": greedy_by_size,
    "greedy_by_schedule": greedy_by_schedule,
    "hill_climb": hill_climb,
    "exhaustive": exhaustive,
}


def best_placement(
    intervals: list[Interval], alignment: int, pools: Sequence[PoolSpec] = UNLIMITED
) -> tuple[str, Placement]:
    """Run every applicable strategy; return the name and placement with the smallest total
    (ties go to the earlier strategy in `STRATEGIES`). PoolOverflow if none fits."""
    results = []
    failure: PoolOverflow | None = None
    for name, strategy in STRATEGIES.items():
        if name == "exhaustive" and len(intervals) > EXHAUSTIVE_MAX_BUFFERS:
            continue
        try:
            placement = strategy(intervals, alignment, pools)
        except PoolOverflow as err:
            failure = failure or err
            continue
        results.append((pool_size(intervals, placement), name, placement))
    if not results:
        assert failure is not None
        raise failure
    _, name, placement = min(results, key=lambda r: r[0])
    return name, placement


def io_intervals(schedule: Schedule) -> list[Interval]:
    """Live ranges of model inputs (first step to last read) and outputs (write to the end)."""
    steps = len(schedule.calls)
    last_read: dict[str, int] = {}
    written: dict[str, int] = {}
    for step, call in enumerate(schedule.calls):
        for name in schedule.reads(step):
            last_read[schedule.root(name)] = step
        for name in call.outputs:
            written.setdefault(schedule.root(name), step)
    intervals = [
        Interval(name, schedule.tensors[name].nbytes, 0, last_read.get(name, 0))
        for name in schedule.inputs
    ]
    for name in schedule.outputs:
        root = schedule.root(name)
        first = written.get(root, 0)  # an empty output no kernel writes: none needs writing
        intervals.append(Interval(root, schedule.tensors[root].nbytes, first,
                                  max(steps - 1, first)))
    return intervals


def lower_bound(intervals: list[Interval], steps: int) -> int:
    """Largest total of bytes live at any one step: no plan can use less."""
    return max(
        (sum(b.nbytes for b in intervals if b.first <= step <= b.last) for step in range(steps)),
        default=0,
    )


def _lower_bound(schedule: Schedule, buffers: list[Interval], scratch_names: dict[int, str]
                 ) -> int:
    """`lower_bound` of the buffers; with run-time `If`s the largest over the paths through
    them (lives recomputed along each path, inputs and outputs live throughout as in
    `io_intervals`), or over the schedule order when there are more than
    `MAX_CHECKED_PATHS` paths."""
    paths = schedule.paths(MAX_CHECKED_PATHS) if schedule.branches else None
    if paths is None:
        return lower_bound(buffers, len(schedule.calls))
    sizes = {b.name: b.nbytes for b in buffers}
    best = 0
    for path in paths:
        lives = path_lives(path, schedule, scratch_names, set(sizes), True)
        best = max(best, lower_bound([Interval(name, sizes[name], first, last)
                                      for name, (first, last) in lives.items()], len(path)))
    return best


def plan_memory(
    schedule: Schedule,
    scratch: dict[str, ScratchLayout],
    alignment: int = DEFAULT_ALIGNMENT,
    pools: Sequence[PoolSpec] = UNLIMITED,
    io_in_workspace: bool = False,
) -> MemoryPlan:
    """Compute the static memory plan for a schedule.

    With `io_in_workspace`, model inputs and outputs are workspace buffers too (inputs live
    from before the first call to their last read, outputs from their write to after the last).
    """
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    # Every buffer must at least be aligned for its elements (Cortex-M4/M7 fault otherwise), and
    # to a word: the int8 micro-kernels read packed weights and scratch columns with LDRD.
    element_sizes = [dtype_bytes(t.dtype) for t in schedule.tensors.values()]
    element_sizes += [dtype_bytes(b.dtype) for layout in scratch.values() for b in layout.buffers]
    alignment = max(alignment, WORD_BYTES, *element_sizes)
    names = [pool.name for pool in pools]
    if not pools or len(set(names)) != len(names):
        raise ValueError(f"workspace pools need distinct names, got {names}")
    intervals, scratch_names = live_intervals(schedule, scratch)
    io = io_intervals(schedule)
    placed = intervals + io if io_in_workspace else intervals
    strategy, placement = best_placement(placed, alignment, pools)
    sizes = pool_sizes(placed, placement, len(pools))
    pool_bytes = {p.name: align(size, alignment) for p, size in zip(pools, sizes, strict=True)}
    constant_offsets: dict[str, int] = {}
    cursor = 0
    for name in schedule.constants:
        if name in schedule.views:
            continue
        constant_offsets[name] = cursor
        cursor = align(cursor + schedule.tensors[name].nbytes, alignment)
    plan = MemoryPlan(
        pools=tuple(pools),
        pool_bytes=pool_bytes,
        placements={name: (pools[index].name, off) for name, (index, off) in placement.items()},
        workspace_bytes=sum(pool_bytes.values()),
        constant_offsets=constant_offsets,
        constants_bytes=cursor,
        scratch_names=scratch_names,
        lower_bound_bytes=_lower_bound(schedule, intervals + io, scratch_names),
        alignment=alignment,
        strategy=strategy,
        io_in_workspace=io_in_workspace,
        lives={buf.name: (buf.first, buf.last) for buf in placed},
    )
    check_plan(plan, schedule, scratch)
    return plan


def _required_lives(
    plan: MemoryPlan, schedule: Schedule, scratch: dict[str, ScratchLayout]
) -> dict[str, tuple[int, int, int]]:
    """Recomputed from the schedule alone: every buffer that needs workspace bytes →
    (size in bytes, first step, last step) it must keep them. A tensor's storage (its root) is
    needed at every step that reads or writes the tensor or any view of it."""
    steps = len(schedule.calls)
    used: dict[str, list[int]] = {}
    for step, call in enumerate(schedule.calls):
        for name in schedule.reads(step) + call.outputs:
            used.setdefault(schedule.root(name), []).append(step)
    kinds = {"intermediate"} | ({"input", "output"} if plan.io_in_workspace else set())
    required: dict[str, tuple[int, int, int]] = {}
    roots = set(used) | (set(schedule.inputs) | {schedule.root(n) for n in schedule.outputs}
                         if plan.io_in_workspace else set())
    for root in roots:
        info = schedule.tensors[root]
        if info.kind not in kinds:
            continue
        touched = used.get(root, [0])
        first, last = min(touched), max(touched)
        if info.kind == "input":
            first = 0
        elif info.kind == "output":
            last = steps - 1
        required[root] = (info.nbytes, first, last)
    for step, call in enumerate(schedule.calls):
        layout = scratch.get(call.kernel)
        if layout is not None and layout.nbytes:
            name = plan.scratch_names.get(step, f"<scratch of {call.kernel} at step {step}>")
            required[name] = (layout.nbytes, step, step)
    return required


def check_plan(plan: MemoryPlan, schedule: Schedule, scratch: dict[str, ScratchLayout]) -> None:
    """Verify a memory plan against its schedule; raise `InvalidPlan` naming the first problem.

    Checked: every buffer that needs workspace (intermediates, scratch, and inputs/outputs with
    `io_in_workspace`) is placed, in a known pool, aligned, inside the pool's size and limit;
    a view has no storage of its own, fits in its root and the root's planned life covers every
    step that uses the root or any view of it; no two buffers whose planned lives share a step
    share a byte; constants do not overlap and fit the constant pool. Cost: the number of
    buffers times the most buffers live at once, far below the planner's own.
    """

    def fail(problem: str) -> None:
        raise InvalidPlan(f"invalid memory plan (a bug in microexport): {problem}")

    pools = {pool.name: pool for pool in plan.pools}
    required = _required_lives(plan, schedule, scratch)
    spans: dict[str, tuple[str, int, int]] = {}  # buffer → (pool, start byte, end byte)
    for name, (size, first, last) in sorted(required.items()):
        if name not in plan.placements:
            fail(f"buffer '{name}' ({size} B, used at steps {first}..{last}) has no placement")
        pool, offset = plan.placements[name]
        if pool not in pools:
            fail(f"buffer '{name}' is placed in unknown pool '{pool}'")
        limit = pools[pool].size_limit
        end = offset + size
        if offset < 0 or offset % plan.alignment or end > plan.pool_bytes.get(pool, 0) or (
                limit is not None and end > limit):
            fail(f"buffer '{name}' at [{offset}, {end}) of pool '{pool}' is misaligned "
                 f"(alignment {plan.alignment}) or outside the pool ({plan.pool_bytes.get(pool)} "
                 f"B, limit {limit})")
        life = plan.lives.get(name)
        if life is None or life[0] > first or life[1] < last:
            fail(f"buffer '{name}' is used (itself or through a view) at steps {first}..{last} "
                 f"but its planned life is {life}")
        spans[name] = (pool, offset, end)
    for view in schedule.views:
        root = schedule.root(view)
        if view in plan.placements and view != root:
            fail(f"view '{view}' of '{root}' has a placement of its own")
        if schedule.tensors[view].nbytes > schedule.tensors[root].nbytes:
            fail(f"view '{view}' ({schedule.tensors[view].nbytes} B) is larger than its root "
                 f"'{root}' ({schedule.tensors[root].nbytes} B)")
        if schedule.tensors[root].kind == "constant" and root not in plan.constant_offsets:
            fail(f"constant view '{view}' has a root '{root}' missing from the constant pool")
    _check_no_overlap(plan.lives, spans, fail)
    _check_paths(plan, schedule, scratch, spans, fail)
    _check_constants(plan, schedule, fail)


def _check_no_overlap(
    lives: dict[str, tuple[int, int]], spans: dict[str, tuple[str, int, int]],
    fail: Callable[[str], None], where: str = "",
) -> None:
    """No two buffers of `spans` whose `lives` share a step may share a byte of the same pool.

    Two lives that overlap both hold at the later of their first steps, so a sweep over the
    buffers in order of first step compares each one only with the buffers still live then."""
    order = sorted((name for name in spans if name in lives), key=lambda n: (lives[n][0], n))
    active: list[str] = []
    for name in order:
        first = lives[name][0]
        pool, start, end = spans[name]
        active = [other for other in active if lives[other][1] >= first]
        for other in active:
            other_pool, other_start, other_end = spans[other]
            if other_pool == pool and start < other_end and other_start < end:
                fail(f"buffers '{other}' [{other_start}, {other_end}) and '{name}' "
                     f"[{start}, {end}) of pool '{pool}' overlap and are both live at step "
                     f"{first}{where}")
        active.append(name)


MAX_CHECKED_PATHS = 4096  # paths through the run-time `If`s checked one by one


def path_lives(
    path: list, schedule: Schedule, scratch_names: dict[int, str], names: set[str],
    io_in_workspace: bool,
) -> dict[str, tuple[int, int]]:
    """Buffer (of `names`) → the first and last point of `path` (a `Schedule.paths` entry:
    call indices and the `Branch`es whose condition is read there) at which it must hold its
    bytes: from its first to its last use on the path; with `io_in_workspace` a model input
    from the start and an output to the end."""
    lives: dict[str, tuple[int, int]] = {}

    def touch(name: str, point: int) -> None:
        if name in names:
            first, last = lives.get(name, (point, point))
            lives[name] = (min(first, point), max(last, point))

    for point, item in enumerate(path):
        if isinstance(item, int):
            call = schedule.calls[item]
            for name in call.inputs + call.outputs:
                touch(schedule.root(name), point)
            if item in scratch_names:
                touch(scratch_names[item], point)
        else:
            touch(schedule.root(item.condition), point)
    if io_in_workspace:
        end = len(path) - 1
        for name in names:
            kind = schedule.tensors[name].kind if name in schedule.tensors else "scratch"
            if kind == "input":
                lives[name] = (0, lives.get(name, (0, 0))[1])
            elif kind == "output":
                lives[name] = (lives.get(name, (end, end))[0], end)
    return lives


def _check_paths(
    plan: MemoryPlan, schedule: Schedule, scratch: dict[str, ScratchLayout],
    spans: dict[str, tuple[str, int, int]], fail: Callable[[str], None],
) -> None:
    """With run-time `If`s: on every path through them (the calls one run executes, and each
    condition read before its branch), no two buffers live at the same point share a byte.

    Lives are recomputed along each path from its calls alone, independently of the call order
    the planner used; so a buffer of one branch may share memory with one of the other branch,
    and a buffer read after an `If` must survive whichever branch ran. More paths than
    `MAX_CHECKED_PATHS` are not enumerated: the order-based check above covers them (every path
    runs its calls in schedule order, so a buffer's life on a path lies within its life there)."""
    if not schedule.branches:
        return
    paths = schedule.paths(MAX_CHECKED_PATHS)
    if paths is None:
        return
    for path in paths:
        lives = path_lives(path, schedule, plan.scratch_names, set(spans), plan.io_in_workspace)
        taken = ", ".join(f"call {item}" if isinstance(item, int)
                          else f"If on '{item.condition}'" for item in path)
        _check_no_overlap(lives, spans, fail, f" of the path [{taken}]")


def _check_constants(plan: MemoryPlan, schedule: Schedule, fail: Callable[[str], None]) -> None:
    """Constants are aligned, inside the constant pool and pairwise disjoint."""
    spans = sorted(
        (offset, offset + schedule.tensors[name].nbytes, name)
        for name, offset in plan.constant_offsets.items()
    )
    previous_end, previous = 0, ""
    for start, end, name in spans:
        if start % plan.alignment or end > plan.constants_bytes or start < previous_end:
            fail(f"constant '{name}' at [{start}, {end}) is misaligned, outside the "
                 f"{plan.constants_bytes}-byte constant pool or overlaps '{previous}'")
        previous_end, previous = max(previous_end, end), name
