"""The bare-metal platform on the hand-written fixture model: real arm-none-eabi-gcc, real QEMU."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from fixture_model import FIXTURES, expected_outputs, fixture_files, fixture_inputs, fixture_model
from support import require_program

from microexport.archive.mlf import ArchiveLayout, write_archive
from microexport.deploy.boards import MemoryRegion, load_board
from microexport.deploy.platforms import DoesNotFit, RunOptions, Unsupported, get_platform
from microexport.deploy.platforms.baremetal import (
    BaremetalPlatform,
    icount_shift,
    ticks_to_instructions,
)
from microexport.errors import Error, MissingTool
from microexport.model import CompiledModel, FunctionSignature, KernelSpec

QEMU_BOARDS = ["mps2_an385", "mps2_an386", "mps2_an500", "mps3_an547"]


@pytest.fixture
def toolchain() -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")


def make_archive(tmp_path: Path, mode: str = "static", lib: Path | None = None) -> Path:
    files = fixture_files(mode)
    if lib is not None:
        files[ArchiveLayout.source("tvmgen_fixture_lib.c")] = lib.read_bytes()
    archive = tmp_path / f"fixture-{mode}.tar"
    write_archive(archive, files)
    return archive


def platform(board: str = "mps2_an385", **changes: object) -> BaremetalPlatform:
    info = dataclasses.replace(load_board(board), **changes) if changes else load_board(board)
    chosen = get_platform(info, "baremetal")
    assert isinstance(chosen, BaremetalPlatform)
    return chosen


def assert_fixture_outputs(got: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    for name, want in expected_outputs(inputs).items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_fixture_runs_on_every_qemu_board(board: str, tmp_path: Path, toolchain: None) -> None:
    inputs = fixture_inputs(3)
    result = platform(board).execute_archive(make_archive(tmp_path), inputs, tmp_path / "w")
    assert_fixture_outputs(result.outputs, inputs)
    assert result.stats.instructions is not None and 10 < result.stats.instructions < 10_000


@pytest.mark.parametrize("mode", ["static", "external"])
def test_workspace_modes(mode: str, tmp_path: Path, toolchain: None) -> None:
    inputs = fixture_inputs(1)
    got = platform("mps2_an386").run_archive(make_archive(tmp_path, mode), inputs, tmp_path / "w")
    assert_fixture_outputs(got, inputs)


def test_hard_float_flags_and_rendered_sources(tmp_path: Path) -> None:
    chosen = platform("mps2_an386")
    project = chosen.create(make_archive(tmp_path), tmp_path / "proj")
    (step,) = chosen.build_plan(project)
    argv = list(step.argv)
    assert argv[0] == "arm-none-eabi-gcc"
    assert argv[1:5] == ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
    assert "--specs=rdimon.specs" in argv and "-nostartfiles" in argv
    assert f"-T{tmp_path / 'proj/src/linker.ld'}" in argv
    assert step.cwd == tmp_path / "proj/build"
    linker = (tmp_path / "proj/src/linker.ld").read_text()
    assert "ORIGIN = 0x00000000, LENGTH = 4194304" in linker
    assert "ORIGIN = 0x20000000, LENGTH = 4194304" in linker
    for symbol in ("end = .;", "_end = .;", "__end__ = .;"):
        assert symbol in linker
    startup = (tmp_path / "proj/src/startup.c").read_text()
    assert "initialise_monitor_handles();" in startup and "SCB_CPACR" in startup


def test_qemu_command_is_deterministic(tmp_path: Path) -> None:
    chosen = platform("mps2_an385")
    project = chosen.create(make_archive(tmp_path), tmp_path / "proj")
    (step,) = chosen.run_plan(chosen.expected_build(project))
    assert list(step.argv) == [
        "qemu-system-arm", "-M", "mps2-an385", "-display", "none", "-monitor", "none",
        "-serial", "none", "-semihosting-config", "enable=on,target=native",
        "-icount", "shift=7,align=off,sleep=off", "-no-reboot",
        "-kernel", str(tmp_path / "proj/build/fixture.elf"),
    ]
    assert step.cwd == tmp_path / "proj/build" and step.timeout == 120


def test_two_runs_count_the_same_instructions(tmp_path: Path, toolchain: None) -> None:
    chosen = platform("mps2_an386")
    build = chosen.build(chosen.create(make_archive(tmp_path), tmp_path / "proj"))
    inputs = fixture_inputs(5)
    first = chosen.execute(build, inputs).stats
    second = chosen.execute(build, inputs).stats
    assert first.instructions == second.instructions
    assert first.details == second.details


@pytest.mark.parametrize(("clock", "shift"), [(25_000_000, 7), (32_000_000, 6), (12_000_000, 8)])
def test_icount_shift_gives_two_ticks_per_instruction(clock: int, shift: int) -> None:
    assert icount_shift(clock) == shift
    assert 2**shift >= 2 * 1e9 / clock


def test_ticks_to_instructions_is_exact() -> None:
    # Simulate the timer: n instructions of 2**shift ns starting at any phase of a tick.
    for clock in (25_000_000, 32_000_000):
        shift = icount_shift(clock)
        tick_ns = 1e9 / clock
        for n in (0, 1, 2, 3, 17, 1000, 123_457):
            for phase in (0.0, 0.3, 0.99):
                start = phase * tick_ns
                ticks = math.floor((start + n * 2**shift) / tick_ns) - math.floor(start / tick_ns)
                assert ticks_to_instructions(ticks, clock, shift) == n


def test_run_failure_is_one_line(tmp_path: Path, toolchain: None) -> None:
    inputs = fixture_inputs()
    inputs["x:0"][0, 0] = np.nan
    with pytest.raises(Error, match=r"exit status 3\): harness: tvmgen_fixture_run failed "
                                    r"with status 7") as info:
        platform().run_archive(make_archive(tmp_path), inputs, tmp_path / "w")
    assert "\n" not in str(info.value)


def test_fault_is_reported(tmp_path: Path, toolchain: None) -> None:
    inputs = fixture_inputs()
    inputs["x:0"][0, 0] = -np.inf
    archive = make_archive(tmp_path, lib=FIXTURES / "misbehaving_lib.c")
    with pytest.raises(Error, match=r"exit status 4\): microexport: (hard|usage) fault") as info:
        platform().run_archive(archive, inputs, tmp_path / "w")
    assert "\n" not in str(info.value)


def test_hang_is_caught_by_the_timeout(tmp_path: Path, toolchain: None) -> None:
    chosen = platform()
    build = chosen.build(chosen.create(make_archive(tmp_path, lib=FIXTURES / "misbehaving_lib.c"),
                                       tmp_path / "proj"))
    inputs = fixture_inputs()
    inputs["x:0"][0, 0] = np.inf
    with pytest.raises(Error, match=r"running 'fixture' on mps2_an385 \(QEMU mps2-an385\) timed "
                                    r"out after 2 s") as info:
        chosen.execute(build, inputs, RunOptions(timeout=2))
    assert "\n" not in str(info.value)
    inputs["x:0"][0, 0] = 0.5  # the same build still runs normally
    assert_fixture_outputs(chosen.execute(build, inputs).outputs, inputs)


def test_model_too_big_for_ram_is_refused_before_building(tmp_path: Path) -> None:
    small = platform(ram=MemoryRegion(0x20000000, 8 * 1024))
    with pytest.raises(DoesNotFit, match=r"does not fit the RAM of board 'mps2_an385': needs "
                                         r"about \d+ bytes .* the board has 8192 bytes"):
        small.create(make_archive(tmp_path), tmp_path / "proj")
    assert not (tmp_path / "proj").exists()


def test_link_overflow_names_needed_and_available_bytes(tmp_path: Path, toolchain: None) -> None:
    # The estimate before linking is generous; past it, the linker has the exact numbers.
    project = platform().create(make_archive(tmp_path), tmp_path / "proj")
    tiny = platform(flash=MemoryRegion(0, 16 * 1024))
    tiny.do_create(project)  # a linker script for 16 KiB of flash, skipping the estimate
    project.build_dir.mkdir()
    with pytest.raises(DoesNotFit, match=r"does not fit the flash of board 'mps2_an385': the "
                                         r"linked image needs \d+ bytes .* the board has 16384"):
        tiny.do_build(project)


def test_flash_and_port_are_refused(tmp_path: Path) -> None:
    chosen = platform()
    project = chosen.create(make_archive(tmp_path), tmp_path / "proj")
    with pytest.raises(Unsupported, match="^baremetal doesn't support flash"):
        chosen.flash(chosen.expected_build(project))
    with pytest.raises(Unsupported, match="^baremetal doesn't support --port"):
        chosen.execute(chosen.expected_build(project), fixture_inputs(),
                       RunOptions(port="/dev/ttyACM0"))


def test_missing_cross_compiler_names_the_package(tmp_path: Path) -> None:
    chosen = platform(compiler="arm-none-eabi-gcc-nope")
    with pytest.raises(MissingTool, match="apt-get install gcc-arm-none-eabi"):
        chosen.run_archive(make_archive(tmp_path), fixture_inputs(), tmp_path / "w")


def test_board_without_memories_is_refused(tmp_path: Path) -> None:
    chosen = platform(flash=None)
    with pytest.raises(Error, match="has no flash or ram region"):
        chosen.create(make_archive(tmp_path), tmp_path / "proj")


def test_stack_grows_with_the_kernels_c_locals() -> None:
    chosen = platform()
    def model(*stack_bytes: int) -> CompiledModel:
        kernels = tuple(KernelSpec(FunctionSignature(f"tvmgen_fixture_k{i}", ()), stack_bytes=b)
                        for i, b in enumerate(stack_bytes))
        return dataclasses.replace(fixture_model(), kernels=kernels)

    small, big = model(100), model(100, 30_000)
    assert chosen.stack_size(small) == 16 * 1024
    assert chosen.stack_size(big) == 34 * 1024  # 4 KiB margin + 30000, rounded up to 1 KiB
    assert platform(stack_size=2048).stack_size(big) == 2048  # the board file wins
