"""Schedules for C targets on cache-less microcontroller cores.

Relax legalization yields naive block-level PrimFuncs: every fused operator writes a full-size
intermediate buffer. For a microcontroller that costs RAM, so each kernel is rescheduled:

1. elementwise producers are inlined into their consumers (padding, casts, bias adds…);
2. elementwise epilogues are inlined into their producers where TIR allows it;
3. an epilogue after a reduction (conv/dense + bias + activation + requantize) is computed right
   after each output element's reduction, and the reduction's initialisation is split out, so the
   accumulator shrinks from a whole output tensor to one element (a C local).
"""

from __future__ import annotations

import contextlib

from tvm import s_tir, tirx

_SPATIAL = 0  # tirx.IterVar.DataPar


def schedule_for_c(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Apply the C schedule above to one block-level PrimFunc; returns the rescheduled function."""
    sch = s_tir.Schedule(func, error_render_level="none")
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root)[:-1]:
        with contextlib.suppress(s_tir.ScheduleError):
            sch.compute_inline(block)
    for block in reversed(sch.get_child_blocks(root)):
        with contextlib.suppress(s_tir.ScheduleError):
            sch.reverse_compute_inline(block)
    for block in sch.get_child_blocks(root):
        _fuse_epilogue_into_reduction(sch, block)
    return sch.mod["main"]


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


def _fuse_epilogue_into_reduction(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    spatial = _leading_spatial_loops(sch, block)
    loops = sch.get_loops(block)
    if spatial == 0 or len(loops) <= spatial:
        return
    consumers = sch.get_consumers(block)
    if len(consumers) == 1:
        with contextlib.suppress(s_tir.ScheduleError):
            sch.reverse_compute_at(consumers[0], loops[spatial - 1], preserve_unit_loops=True)
    with contextlib.suppress(s_tir.ScheduleError):
        sch.decompose_reduction(block, sch.get_loops(block)[spatial])
