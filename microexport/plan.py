"""Static memory planning over the AOT schedule.

Every intermediate tensor and every kernel's scratch region gets a byte offset in one workspace
pool. A buffer is live from the call that writes it to the last call that reads it (reshape views
extend the life of the tensor they view); two buffers may share bytes only if their lives do not
overlap. Placement is greedy by size with first fit between live buffers, as TFLite Micro does.
Constants are laid out back to back in a read-only constant pool.
"""

from __future__ import annotations

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
    lower_bound_bytes: int
    alignment: int


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


def greedy_by_size(intervals: list[Interval], alignment: int) -> dict[str, int]:
    """Place buffers largest first, each at the lowest aligned offset free during its life."""
    order = sorted(intervals, key=lambda b: (-b.nbytes, b.first, b.name))
    placed: list[tuple[Interval, int]] = []
    offsets: dict[str, int] = {}
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


def lower_bound(intervals: list[Interval], steps: int) -> int:
    """Largest total of workspace bytes live at any one step: no plan can use less."""
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
    offsets = greedy_by_size(intervals, alignment)
    size = max((offsets[b.name] + b.nbytes for b in intervals), default=0)
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
        lower_bound_bytes=lower_bound(intervals, len(schedule.calls)),
        alignment=alignment,
    )
