"""The Zephyr platform against a real Zephyr tree: the rendered application is built with
`west build` and served in QEMU over Zephyr's QEMU_PIPE (QEMU's multiplexed chardev), and
`microexport.test` compares what the board computed with the reference runtime.

Zephyr is `ZEPHYR_BASE` when set, else the shared tree next to the repository
(`../shared/zephyr/zephyr`). The toolchain defaults to Debian's arm-none-eabi-gcc
(`ZEPHYR_TOOLCHAIN_VARIANT=cross-compile`), which with picolibc-arm-none-eabi installed makes the
platform pass `-DTOOLCHAIN_HAS_PICOLIBC=ON` (about 20 s per model and board on 2 cores).
Under CI=true a missing tree or tool is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zoo
from support import in_ci, require_program

import microexport
from microexport.deploy.boards import load_board
from microexport.deploy.platforms.zephyr import toolchain_cmake_args
from microexport.deploy.project import create_project
from microexport.errors import Error

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED_ZEPHYR = REPOSITORY.parent / "shared" / "zephyr" / "zephyr"
CROSS_COMPILE = "/usr/bin/arm-none-eabi-"

# Zoo builders: sine_float (tflite, FULLY_CONNECTED), whose C calls no libm function and so
# builds with Zephyr's minimal libc, and cnn_onnx, whose Softmax calls expf and so needs picolibc.
MODELS = {"sine_float": zoo.sine_float, "cnn_onnx": zoo.cnn_onnx}
LIBM = {"sine_float": [], "cnn_onnx": ["expf"]}
BOARDS = ["qemu_cortex_m3", "mps2_an521"]


def missing(message: str) -> None:
    """Fail under CI, skip locally."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def running_with(argument: str) -> list[int]:
    """Live (not zombie) processes with `argument` in their command line."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (argument.encode() in (proc / "cmdline").read_bytes()
                    and (proc / "stat").read_text().split(") ")[1][0] not in "ZX"):
                found.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture
def zephyr_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    """ZEPHYR_BASE (the environment's, else the shared tree) and a cross-compile toolchain,
    set for this test only."""
    base = Path(os.environ.get("ZEPHYR_BASE") or SHARED_ZEPHYR)
    if not (base / "cmake" / "modules").is_dir():
        missing(f"no Zephyr tree at {base}: set ZEPHYR_BASE or provide ../shared/zephyr")
    if shutil.which("west") is None:
        missing("west not installed (pip install microexport[deploy])")
    for program, package in [("cmake", "cmake"), ("ninja", "ninja-build"),
                             ("arm-none-eabi-gcc", "gcc-arm-none-eabi"),
                             ("qemu-system-arm", "qemu-system-arm")]:
        require_program(program, package)
    monkeypatch.setenv("ZEPHYR_BASE", str(base))
    if "ZEPHYR_TOOLCHAIN_VARIANT" not in os.environ:
        monkeypatch.setenv("ZEPHYR_TOOLCHAIN_VARIANT", "cross-compile")
        monkeypatch.setenv("CROSS_COMPILE", CROSS_COMPILE)
    return base


def test_debian_picolibc_is_used_with_cross_compile(zephyr_env: Path) -> None:
    if os.environ.get("CROSS_COMPILE") != CROSS_COMPILE:
        pytest.skip("the environment names its own toolchain")
    if not Path("/usr/lib/picolibc/arm-none-eabi").is_dir():
        missing("picolibc-arm-none-eabi not installed (apt-get install picolibc-arm-none-eabi)")
    assert toolchain_cmake_args() == ("-DTOOLCHAIN_HAS_PICOLIBC=ON",)
    assert toolchain_cmake_args({"ZEPHYR_TOOLCHAIN_VARIANT": "zephyr"}) == ()


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_runs_in_zephyr_on_qemu(model: str, board: str, zephyr_env: Path,
                                      tmp_path: Path) -> None:
    path, _ = MODELS[model](tmp_path)
    work = tmp_path / "work"
    report = microexport.test(path, board=board, build_dir=work)
    assert report.passed, report.summary()
    build = work / "build"
    assert (build / "zephyr" / "zephyr.elf").is_file()
    config = (build / "zephyr" / ".config").read_text()
    conf = (work / "prj.conf").read_text()
    if LIBM[model]:  # libm: a full libc, the toolchain's picolibc when it has one
        assert f"calls libm ({', '.join(LIBM[model])})" in conf
        assert "CONFIG_REQUIRES_FULL_LIBC=y" in conf and "CONFIG_PICOLIBC=y" in config
        if toolchain_cmake_args():
            assert "CONFIG_PICOLIBC_USE_TOOLCHAIN=y" in config
    else:  # no libm: Zephyr's minimal libc, chosen deliberately
        assert "CONFIG_MINIMAL_LIBC=y" in conf and "CONFIG_REQUIRES_FULL_LIBC" not in conf
        assert "CONFIG_MINIMAL_LIBC=y" in config and "CONFIG_PICOLIBC=y" not in config
    # The board file's FPU claim matches what Zephyr built (an521's CPU0 has none).
    assert ("CONFIG_FPU=y" in config) == (load_board(board).fpu is not None)
    # Nothing left behind: QEMU_PIPE is out of the CMake cache, QEMU has ended.
    assert "QEMU_PIPE" not in (build / "CMakeCache.txt").read_text()
    assert not running_with(str(build))


# Boards whose first platform is bare metal (so `microexport test --board` runs them bare metal)
# and that are also Zephyr boards: the Zephyr application is created, built and run as
# `microexport project create --platform zephyr` / `run` do, one model each (the libm one on the
# hard-float Cortex-M55). qemu_x86 is the one QEMU board left out: it needs an x86 Zephyr
# toolchain (../shared/zephyr/README.md).
ZEPHYR_SECOND = [("sine_float", "mps2_an385"), ("cnn_onnx", "mps3_an547")]


def test_every_qemu_zephyr_board_is_tested() -> None:
    from microexport.deploy.boards import list_boards

    qemu_zephyr = {name for name in list_boards() if "zephyr" in load_board(name).platforms
                   and load_board(name).qemu_machine is not None}
    assert qemu_zephyr == {*BOARDS, *(board for _, board in ZEPHYR_SECOND), "qemu_x86"}


@pytest.mark.parametrize(("model", "board"), ZEPHYR_SECOND)
def test_zephyr_platform_on_dual_platform_boards(model: str, board: str, zephyr_env: Path,
                                                 tmp_path: Path) -> None:
    from microexport.deploy.compare import compare, sample_inputs
    from microexport.deploy.project import build_project, run_project
    from microexport.deploy.reference import run_reference

    path, _ = MODELS[model](tmp_path)
    archive = tmp_path / "model.tar"
    result = microexport.compile(path, archive, name="model")
    assert load_board(board).platforms[0] == "baremetal"
    opened = create_project(archive, board, tmp_path / "app", platform="zephyr")
    build_project(opened)
    inputs = sample_inputs(result.model.inputs, 0)
    _, expected = run_reference(path, inputs)
    run = run_project(opened, inputs)
    for spec, want in zip(result.model.outputs, expected, strict=True):
        comparison = compare(spec.name, run.outputs[spec.name], want)
        assert comparison.passed, comparison
    assert run.stats.instructions is not None and run.stats.details["exact"]
    config = (tmp_path / "app" / "build" / "zephyr" / ".config").read_text()
    assert ("CONFIG_FPU=y" in config) == (load_board(board).fpu is not None)
    assert ("CONFIG_PICOLIBC=y" in config) == bool(LIBM[model])
    assert not running_with(str(tmp_path / "app" / "build"))


def test_compiler_error_is_surfaced(zephyr_env: Path, tmp_path: Path) -> None:
    """A failing `west build` names the compiler's error line and the full log, not west's
    `FATAL ERROR: command exited with status 1`."""
    path, _ = zoo.sine_float(tmp_path)
    archive = tmp_path / "sine.tar"
    microexport.compile(path, archive, name="sine")
    opened = create_project(archive, "qemu_cortex_m3", tmp_path / "app", platform="zephyr")
    main_c = tmp_path / "app" / "src" / "main.c"
    main_c.write_text(main_c.read_text() + "\n#error microexport-broken-on-purpose\n")
    with pytest.raises(Error) as failure:
        opened.platform.build(opened.project)
    message = str(failure.value)
    assert "\n" not in message
    assert f"{main_c}:" in message and "error: #error microexport-broken-on-purpose" in message
    assert f"full log: {tmp_path / 'app' / 'build' / 'west-build.log'}" in message
    assert "FATAL ERROR" not in message
