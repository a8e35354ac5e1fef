"""Static memory planning over the AOT schedule.

Every intermediate tensor and every kernel's scratch region gets a byte offset in one workspace
pool. A buffer is live from the call that writes it to the last call that reads it (reshape views
extend the life of the tensor they view); two buffers may share bytes only if their lives do not
overlap. Several placement strategies run and the smallest pool wins: greedy by size with first fit
between live buffers (as TFLite Micro does), greedy in schedule order, every placement order for
small graphs, and a seeded hill climb over the placement order for larger ones. Constants are laid
out back to back in a read-only constant pool.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .lower import Schedule
from .unpacked import ScratchLayout

DEFAULT_ALIGNMENT = 16


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
    """Byte offsets of every workspace buffer and every constant, and the pool sizes."""

    workspace_offsets: dict[str, int]
    workspace_bytes: int
    constant_offsets: dict[str, int]
    constants_bytes: int
    scratch_names: dict[int, str]  # call index → name of that call's scratch buffer
    lower_bound_bytes: int  # liveness lower bound of workspace + inputs + outputs
    alignment: int
    strategy: str  # the placement strategy that gave the smallest pool


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
        for name in call.inputs:
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


Placement = dict[str, int]
EXHAUSTIVE_MAX_BUFFERS = 7
HILL_CLIMB_STEPS = 400
HILL_CLIMB_SEED = 0


def first_fit(order: Sequence[Interval], alignment: int) -> Placement:
    """Place buffers in `order`, each at the lowest aligned offset free during its life."""
    placed: list[tuple[Interval, int]] = []
    offsets: Placement = {}
    for buf in order:
        busy = sorted((off, off + other.nbytes) for other, off in placed if other.overlaps(buf))
        offset = 0
        for start, end in busy:
            if offset + buf.nbytes <= start:
                break
            offset = max(offset, align(end, alignment))
        offsets[buf.name] = offset
        placed.append((buf, offset))
    return offsets


def pool_size(intervals: Sequence[Interval], offsets: Placement) -> int:
    """Bytes a placement needs: the highest end of any buffer."""
    return max((offsets[b.name] + b.nbytes for b in intervals), default=0)


def greedy_by_size(intervals: list[Interval], alignment: int) -> Placement:
    """TFLite Micro's strategy: largest buffers first, first fit."""
    return first_fit(sorted(intervals, key=lambda b: (-b.nbytes, b.first, b.name)), alignment)


def greedy_by_schedule(intervals: list[Interval], alignment: int) -> Placement:
    """Buffers in the order the schedule creates them, first fit."""
    return first_fit(sorted(intervals, key=lambda b: (b.first, -b.nbytes, b.name)), alignment)


def exhaustive(intervals: list[Interval], alignment: int) -> Placement:
    """Every placement order (small graphs only), first fit; the smallest pool wins."""
    best: Placement = greedy_by_size(intervals, alignment)
    best_size = pool_size(intervals, best)
    for order in itertools.permutations(sorted(intervals, key=lambda b: b.name)):
        offsets = first_fit(order, alignment)
        size = pool_size(intervals, offsets)
        if size < best_size:
            best, best_size = offsets, size
    return best


def hill_climb(intervals: list[Interval], alignment: int) -> Placement:
    """Swap two buffers of the size-ordered placement order at a time; keep swaps that do not
    grow the pool. Seeded, so the result is the same on every run."""
    rng = random.Random(HILL_CLIMB_SEED)
    order = sorted(intervals, key=lambda b: (-b.nbytes, b.first, b.name))
    best = first_fit(order, alignment)
    best_size = pool_size(intervals, best)
    if len(order) < 2:
        return best
    for _ in range(HILL_CLIMB_STEPS):
        i, j = rng.sample(range(len(order)), 2)
        order[i], order[j] = order[j], order[i]
        offsets = first_fit(order, alignment)
        size = pool_size(intervals, offsets)
        if size <= best_size:
            best, best_size = offsets, size
        else:
            order[i], order[j] = order[j], order[i]
    return best


STRATEGIES: dict[str, Callable[[list[Interval], int], Placement]] = {
    "greedy_by_size": greedy_by_size,
    "greedy_by_schedule": greedy_by_schedule,
    "hill_climb": hill_climb,
    "exhaustive": exhaustive,
}


def best_placement(intervals: list[Interval], alignment: int) -> tuple[str, Placement]:
    """Run every applicable strategy; return the name and placement of the smallest pool
    (ties go to the earlier strategy in `STRATEGIES`)."""
    results = []
    for name, strategy in STRATEGIES.items():
        if name == "exhaustive" and len(intervals) > EXHAUSTIVE_MAX_BUFFERS:
            continue
        offsets = strategy(intervals, alignment)
        results.append((pool_size(intervals, offsets), name, offsets))
    size, name, offsets = min(results, key=lambda r: r[0])
    return name, offsets


def io_intervals(schedule: Schedule) -> list[Interval]:
    """Live ranges of model inputs (first step to last read) and outputs (write to the end)."""
    steps = len(schedule.calls)
    last_read: dict[str, int] = {}
    written: dict[str, int] = {}
    for step, call in enumerate(schedule.calls):
        for name in call.inputs:
            last_read[schedule.root(name)] = step
        for name in call.outputs:
            written.setdefault(schedule.root(name), step)
    intervals = [
        Interval(name, schedule.tensors[name].nbytes, 0, last_read.get(name, 0))
        for name in schedule.inputs
    ]
    for name in schedule.outputs:
        root = schedule.root(name)
        intervals.append(Interval(root, schedule.tensors[root].nbytes, written[root], steps - 1))
    return intervals


def lower_bound(intervals: list[Interval], steps: int) -> int:
    """Largest total of bytes live at any one step: no plan can use less."""
    return max(
        (sum(b.nbytes for b in intervals if b.first <= step <= b.last) for step in range(steps)),
        default=0,
    )


def plan_memory(
    schedule: Schedule, scratch: dict[str, ScratchLayout], alignment: int = DEFAULT_ALIGNMENT
) -> MemoryPlan:
    """Compute the static memory plan for a schedule."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    intervals, scratch_names = live_intervals(schedule, scratch)
    strategy, offsets = best_placement(intervals, alignment)
    size = pool_size(intervals, offsets)
    constant_offsets: dict[str, int] = {}
    cursor = 0
    for name in schedule.constants:
        if name in schedule.views:
            continue
        constant_offsets[name] = cursor
        cursor = align(cursor + schedule.tensors[name].nbytes, alignment)
    return MemoryPlan(
        workspace_offsets=offsets,
        workspace_bytes=align(size, alignment) if size else 0,
        constant_offsets=constant_offsets,
        constants_bytes=cursor,
        scratch_names=scratch_names,
        lower_bound_bytes=lower_bound(intervals + io_intervals(schedule), len(schedule.calls)),
        alignment=alignment,
        strategy=strategy,
    )
