"""Memory planner: liveness, greedy placement, lower bound, no overlap between live buffers,
and the plan checker that every compile runs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO, Builder, Inputs

from microexport.compiler.lower import KernelCall, LoweredModel, Schedule, TensorInfo, lower
from microexport.compiler.plan import (
    STRATEGIES,
    Interval,
    InvalidPlan,
    MemoryPlan,
    PoolOverflow,
    PoolSpec,
    align,
    best_placement,
    check_plan,
    greedy_by_size,
    io_intervals,
    lower_bound,
    plan_memory,
    pool_size,
)
from microexport.compiler.unpacked import ScratchBuffer, ScratchLayout


def chain_schedule(sizes: list[int]) -> Schedule:
    """input → k0 → t0 → k1 → t1 … → output, each tensor `sizes[i]` float32 elements."""
    tensors = {"x": TensorInfo("x", (4,), "float32", "input")}
    calls = []
    prev = "x"
    for i, n in enumerate(sizes):
        name = f"t{i}" if i < len(sizes) - 1 else "y"
        kind = "intermediate" if name != "y" else "output"
        tensors[name] = TensorInfo(name, (n,), "float32", kind)
        calls.append(KernelCall(f"k{i}", (prev,), (name,)))
        prev = name
    return Schedule(tensors, tuple(calls), ("x",), ("y",), {}, {})


def test_chain_reuses_memory_of_dead_tensors() -> None:
    schedule = chain_schedule([100, 100, 100, 100, 4])
    plan = plan_memory(schedule, {})
    # at most two intermediates live at once (producer input and output)
    assert plan.workspace_bytes == 2 * 400
    # steps 1-3 each hold two 400-byte intermediates; the 16-byte input dies after step 0
    assert plan.lower_bound_bytes == 800
    assert plan.placements["t0"][1] != plan.placements["t1"][1]
    assert plan.placements["t0"][1] == plan.placements["t2"][1]


def test_scratch_lives_only_during_its_call() -> None:
    schedule = chain_schedule([10, 10, 4])
    scratch = {"k1": ScratchLayout((ScratchBuffer("acc", 0, 64),))}
    plan = plan_memory(schedule, scratch)
    assert plan.scratch_names == {1: "k1_scratch_1"}
    start = plan.placements["k1_scratch_1"][1]
    for name in ("t0", "t1"):
        other = plan.placements[name][1]
        assert start + 64 <= other or other + 48 <= start


def test_views_extend_the_life_of_their_base() -> None:
    tensors = {
        "x": TensorInfo("x", (8,), "float32", "input"),
        "a": TensorInfo("a", (8,), "float32", "intermediate"),
        "a2": TensorInfo("a2", (2, 4), "float32", "intermediate"),
        "b": TensorInfo("b", (8,), "float32", "intermediate"),
        "y": TensorInfo("y", (8,), "float32", "output"),
    }
    calls = (
        KernelCall("k0", ("x",), ("a",)),
        KernelCall("k1", ("x",), ("b",)),
        KernelCall("k2", ("a2", "b"), ("y",)),
    )
    schedule = Schedule(tensors, calls, ("x",), ("y",), {"a2": "a"}, {})
    plan = plan_memory(schedule, {})
    assert "a2" not in plan.placements
    assert plan.placements["a"][1] != plan.placements["b"][1]


@pytest.mark.parametrize("seed", range(20))
def test_greedy_never_overlaps_live_buffers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    intervals = []
    for i in range(12):
        first = int(rng.integers(0, 10))
        intervals.append(Interval(f"b{i}", int(rng.integers(1, 500)), first,
                                  first + int(rng.integers(0, 4))))
    offsets = {name: off for name, (_, off) in greedy_by_size(intervals, 16).items()}
    for a, b in itertools.combinations(intervals, 2):
        if a.overlaps(b):
            oa, ob = offsets[a.name], offsets[b.name]
            assert oa + a.nbytes <= ob or ob + b.nbytes <= oa, (a, b, oa, ob)
    assert all(o % 16 == 0 for o in offsets.values())
    size = max(offsets[b.name] + b.nbytes for b in intervals)
    assert size >= lower_bound(intervals, 14)


def test_constants_are_aligned_back_to_back() -> None:
    tensors = {
        "x": TensorInfo("x", (3,), "float32", "input"),
        "c0": TensorInfo("c0", (3,), "float32", "constant"),
        "c1": TensorInfo("c1", (5,), "int8", "constant"),
        "y": TensorInfo("y", (3,), "float32", "output"),
    }
    consts = {"c0": np.zeros(3, np.float32), "c1": np.zeros(5, np.int8)}
    schedule = Schedule(tensors, (KernelCall("k", ("x", "c0", "c1"), ("y",)),), ("x",), ("y",),
                        {}, consts)
    plan = plan_memory(schedule, {}, alignment=8)
    assert plan.constant_offsets == {"c0": 0, "c1": 16}
    assert plan.constants_bytes == align(21, 8)


def test_alignment_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        plan_memory(chain_schedule([4]), {}, alignment=12)


def test_io_is_part_of_the_lower_bound() -> None:
    schedule = chain_schedule([100, 4])  # x(16 B) → t0(400 B) → y(16 B)
    intervals = io_intervals(schedule)
    assert [(b.name, b.first, b.last) for b in intervals] == [("x", 0, 0), ("y", 1, 1)]
    assert plan_memory(schedule, {}).lower_bound_bytes == 416


def random_intervals(seed: int, count: int) -> list[Interval]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        first = int(rng.integers(0, 8))
        out.append(Interval(f"b{i}", int(rng.integers(1, 300)), first,
                            first + int(rng.integers(0, 3))))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_every_strategy_is_valid_and_the_best_is_chosen(seed: int) -> None:
    intervals = random_intervals(seed, 6)
    sizes = {}
    for name, strategy in STRATEGIES.items():
        offsets = strategy(intervals, 8)
        for a, b in itertools.combinations(intervals, 2):
            if a.overlaps(b):
                oa, ob = offsets[a.name][1], offsets[b.name][1]
                assert oa + a.nbytes <= ob or ob + b.nbytes <= oa, name
        sizes[name] = pool_size(intervals, offsets)
    name, best = best_placement(intervals, 8)
    assert pool_size(intervals, best) == min(sizes.values()) == sizes[name]
    assert sizes["exhaustive"] <= sizes["greedy_by_size"]
    assert sizes["hill_climb"] <= sizes["greedy_by_size"]


def test_planning_is_deterministic() -> None:
    intervals = random_intervals(3, 12)
    assert best_placement(intervals, 16) == best_placement(intervals, 16)


def test_pools_respect_their_limits_and_spill_in_order() -> None:
    schedule = chain_schedule([100, 100, 100, 4])  # three 400 B intermediates, two live at once
    pools = (PoolSpec("fast", 512), PoolSpec("slow", None))
    plan = plan_memory(schedule, {}, pools=pools)
    assert plan.pool_bytes["fast"] <= 512 and plan.pool_bytes["fast"] > 0
    assert plan.pool_bytes["slow"] > 0
    assert plan.workspace_bytes == sum(plan.pool_bytes.values())
    for name, (pool, offset) in plan.placements.items():
        size = schedule.tensors[name].nbytes
        assert pool != "fast" or offset + size <= 512


def test_pools_too_small_is_a_clear_error() -> None:
    schedule = chain_schedule([100, 100, 4])
    with pytest.raises(PoolOverflow, match=r"fits in none of the pools a \(64 B\), b \(128 B\)"):
        plan_memory(schedule, {}, pools=(PoolSpec("a", 64), PoolSpec("b", 128)))


def test_io_in_workspace_places_inputs_and_outputs() -> None:
    schedule = chain_schedule([100, 100, 4])
    plan = plan_memory(schedule, {}, io_in_workspace=True)
    assert {"x", "y"} <= set(plan.placements)
    # the 16-byte input dies after the first call, so t1 may reuse its bytes; the pool is
    # never smaller than the lower bound and never larger than everything side by side
    everything = 16 + 400 + 400 + 16
    assert plan.lower_bound_bytes <= plan.workspace_bytes <= everything


@pytest.mark.parametrize(("io_dtype", "c1_dtype", "alignment"), [
    # int8 micro-kernels read weights and columns with LDRD, which needs word alignment
    ("int8", "int8", 4),
    ("float32", "float64", 8),  # the largest element size
])
def test_alignment_is_raised_to_a_word_and_the_largest_element(
        io_dtype: str, c1_dtype: str, alignment: int) -> None:
    tensors = {
        "x": TensorInfo("x", (3,), io_dtype, "input"),
        "c0": TensorInfo("c0", (5,), "int8", "constant"),
        "c1": TensorInfo("c1", (3,), c1_dtype, "constant"),
        "y": TensorInfo("y", (3,), io_dtype, "output"),
    }
    consts = {"c0": np.zeros(5, np.int8), "c1": np.zeros(3, c1_dtype)}
    schedule = Schedule(tensors, (KernelCall("k", ("x", "c0", "c1"), ("y",)),), ("x",), ("y",),
                        {}, consts)
    plan = plan_memory(schedule, {}, alignment=1)
    assert plan.alignment == alignment
    assert plan.constant_offsets == {"c0": 0, "c1": 8}


def test_pool_limits_hold_after_rounding_up() -> None:
    schedule = chain_schedule([5, 5, 4])  # 20-byte intermediates, 16-byte alignment
    plan = plan_memory(schedule, {}, pools=(PoolSpec("a", 20), PoolSpec("b", None)))
    assert plan.pool_bytes["a"] <= 20


# --------------------------------------------------------------------------------------------
# The plan checker: corrupted plans are caught, real plans pass
# --------------------------------------------------------------------------------------------


def hand_plan(
    placements: dict[str, int],
    lives: dict[str, tuple[int, int]],
    pool_bytes: int = 4096,
    **fields: object,
) -> MemoryPlan:
    """A plan written by hand: every buffer in one unlimited pool 'workspace'."""
    values: dict[str, object] = {
        "pools": (PoolSpec(),),
        "pool_bytes": {PoolSpec().name: pool_bytes},
        "placements": {name: (PoolSpec().name, offset) for name, offset in placements.items()},
        "workspace_bytes": pool_bytes,
        "constant_offsets": {},
        "constants_bytes": 0,
        "scratch_names": {},
        "lower_bound_bytes": 0,
        "alignment": 16,
        "strategy": "by hand",
        "lives": lives,
    }
    values.update(fields)
    return MemoryPlan(**values)  # type: ignore[arg-type]


def view_schedule() -> Schedule:
    """x → k0 → a; k1 → b; k2 reads the view a2 of a (and b) → y: a must live until step 2."""
    tensors = {
        "x": TensorInfo("x", (8,), "float32", "input"),
        "a": TensorInfo("a", (8,), "float32", "intermediate"),
        "a2": TensorInfo("a2", (2, 4), "float32", "intermediate"),
        "b": TensorInfo("b", (8,), "float32", "intermediate"),
        "y": TensorInfo("y", (8,), "float32", "output"),
    }
    calls = (
        KernelCall("k0", ("x",), ("a",)),
        KernelCall("k1", ("x",), ("b",)),
        KernelCall("k2", ("a2", "b"), ("y",)),
    )
    return Schedule(tensors, calls, ("x",), ("y",), {"a2": "a"}, {})


def test_checker_accepts_a_correct_hand_written_plan() -> None:
    schedule = chain_schedule([100, 100, 4])  # t0 steps 0..1, t1 steps 1..2
    check_plan(hand_plan({"t0": 0, "t1": 400}, {"t0": (0, 1), "t1": (1, 2)}), schedule, {})


def test_checker_catches_live_buffers_sharing_bytes() -> None:
    schedule = chain_schedule([100, 100, 4])
    plan = hand_plan({"t0": 0, "t1": 384}, {"t0": (0, 1), "t1": (1, 2)})
    with pytest.raises(InvalidPlan, match=r"'t0' \[0, 400\) and 't1' \[384, 784\) of pool "
                                          r"'workspace' overlap and are both live at step 1"):
        check_plan(plan, schedule, {})


def test_checker_catches_a_view_read_after_its_root_died() -> None:
    """What a planner that forgot views would do: end `a` at its last direct use (step 0) and
    give its bytes to `b`, which overwrites them before k2 reads the view `a2`."""
    schedule = view_schedule()
    plan = hand_plan({"a": 0, "b": 0}, {"a": (0, 0), "b": (1, 2)})
    with pytest.raises(InvalidPlan, match=r"'a' is used \(itself or through a view\) at steps "
                                          r"0\.\.2 but its planned life is \(0, 0\)"):
        check_plan(plan, schedule, {})


def test_checker_catches_overlap_hidden_by_a_true_life() -> None:
    """Lives right but bytes shared: the root of a view and a buffer live with it."""
    schedule = view_schedule()
    plan = hand_plan({"a": 0, "b": 16}, {"a": (0, 2), "b": (1, 2)})
    with pytest.raises(InvalidPlan, match="'a' .* and 'b' .* overlap and are both live at step 1"):
        check_plan(plan, schedule, {})


def test_checker_catches_a_view_with_storage_of_its_own() -> None:
    schedule = view_schedule()
    plan = hand_plan({"a": 0, "a2": 64, "b": 32}, {"a": (0, 2), "a2": (2, 2), "b": (1, 2)})
    with pytest.raises(InvalidPlan, match="view 'a2' of 'a' has a placement of its own"):
        check_plan(plan, schedule, {})


@pytest.mark.parametrize(
    ("placements", "pool_bytes", "message"),
    [
        ({"t0": 0}, 4096, "buffer 't1' .* has no placement"),
        ({"t0": 0, "t1": 408}, 4096, "'t1' at \\[408, 808\\) .* misaligned"),
        ({"t0": 0, "t1": 400}, 512, "'t1' at \\[400, 800\\) .* outside the pool"),
    ],
)
def test_checker_catches_missing_misaligned_and_out_of_pool_buffers(
    placements: dict[str, int], pool_bytes: int, message: str
) -> None:
    schedule = chain_schedule([100, 100, 4])
    plan = hand_plan(placements, {"t0": (0, 1), "t1": (1, 2)}, pool_bytes)
    with pytest.raises(InvalidPlan, match=message):
        check_plan(plan, schedule, {})


def test_checker_catches_scratch_overlapping_a_live_tensor_or_missing() -> None:
    schedule = chain_schedule([10, 10, 4])  # t0 and t1 are 40 B
    scratch = {"k1": ScratchLayout((ScratchBuffer("acc", 0, 64),))}
    names = {1: "k1_scratch_1"}
    lives = {"t0": (0, 1), "t1": (1, 2), "k1_scratch_1": (1, 1)}
    good = hand_plan({"t0": 0, "t1": 48, "k1_scratch_1": 96}, lives, scratch_names=names)
    check_plan(good, schedule, scratch)
    bad = hand_plan({"t0": 0, "t1": 48, "k1_scratch_1": 32}, lives, scratch_names=names)
    with pytest.raises(InvalidPlan, match="'k1_scratch_1' .* overlap"):
        check_plan(bad, schedule, scratch)
    with pytest.raises(InvalidPlan, match="'<scratch of k1 at step 1>' .* has no placement"):
        check_plan(hand_plan({"t0": 0, "t1": 48}, lives), schedule, scratch)


def test_checker_catches_overlapping_constants() -> None:
    tensors = {
        "x": TensorInfo("x", (3,), "float32", "input"),
        "c0": TensorInfo("c0", (8,), "float32", "constant"),
        "c1": TensorInfo("c1", (8,), "float32", "constant"),
        "y": TensorInfo("y", (3,), "float32", "output"),
    }
    consts = {"c0": np.zeros(8, np.float32), "c1": np.zeros(8, np.float32)}
    schedule = Schedule(tensors, (KernelCall("k", ("x", "c0", "c1"), ("y",)),), ("x",), ("y",),
                        {}, consts)
    plan = hand_plan({}, {}, 0, constant_offsets={"c0": 0, "c1": 16}, constants_bytes=64)
    with pytest.raises(InvalidPlan, match="constant 'c1' at \\[16, 48\\) .* overlaps 'c0'"):
        check_plan(plan, schedule, {})


def test_checker_covers_inputs_and_outputs_in_the_workspace() -> None:
    """With io_in_workspace the input lives from before the first call: t1 may not take its
    bytes while it is still to be read."""
    schedule = chain_schedule([100, 100, 4])  # x read at step 0 only, y written at step 2
    lives = {"x": (0, 0), "t0": (0, 1), "t1": (1, 2), "y": (2, 2)}
    check_plan(hand_plan({"x": 0, "t0": 16, "t1": 416, "y": 0}, lives, io_in_workspace=True),
               schedule, {})
    with pytest.raises(InvalidPlan, match="'t0' .* and 'x' .* overlap .* at step 0"):
        check_plan(hand_plan({"x": 16, "t0": 16, "t1": 416, "y": 0}, lives,
                             io_in_workspace=True), schedule, {})
    short = dict(lives, y=(2, 1))
    with pytest.raises(InvalidPlan, match="'y' is used .* at steps 2\\.\\.2"):
        check_plan(hand_plan({"x": 0, "t0": 16, "t1": 416, "y": 0}, short,
                             io_in_workspace=True), schedule, {})


@pytest.fixture(scope="module")
def zoo_lowered(
    build_model: Callable[[Builder], tuple[Path, Inputs]],
) -> Callable[[str], LoweredModel]:
    """`zoo_lowered(name)` → the lowered zoo model, once per module."""
    from microexport.api import import_model

    cache: dict[str, LoweredModel] = {}

    def get(name: str) -> LoweredModel:
        if name not in cache:
            _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
            path, _ = build_model(builder)
            cache[name] = lower(import_model(path, input_shapes=shapes))
        return cache[name]

    return get


PLAN_VARIANTS = {
    "default": {},
    "io_in_workspace": {"io_in_workspace": True},
    "small_pools": {"pools": (PoolSpec("fast", 256), PoolSpec("slow", None)), "alignment": 4},
}


@pytest.mark.parametrize("variant", sorted(PLAN_VARIANTS))
@pytest.mark.parametrize("name", [name for name, _, _ in ZOO])
def test_checker_passes_on_the_zoo(name: str, variant: str, zoo_lowered: Callable) -> None:
    lowered = zoo_lowered(name)
    plan = plan_memory(lowered.schedule, lowered.scratch, **PLAN_VARIANTS[variant])
    assert set(plan.lives) == set(plan.placements)
    check_plan(plan, lowered.schedule, lowered.scratch)
