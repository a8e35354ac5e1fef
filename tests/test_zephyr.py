"""The Zephyr platform without Zephyr: the rendered application is complete, its portable sources
compile with arm-none-eabi-gcc against the real model and protocol headers, the west command
lines are exact, and what cannot work here fails with one line saying what to install."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fixture_model import fixture_files
from support import require_program

from microexport.archive.mlf import write_archive
from microexport.cli import main
from microexport.deploy.boards import list_boards, load_board
from microexport.deploy.platforms import RunOptions, Unsupported
from microexport.deploy.platforms.zephyr import (
    ZephyrPlatform,
    find_board_port,
    full_libc_source,
    libm_calls,
    zephyr_base,
)
from microexport.deploy.project import create_project
from microexport.errors import Error
from microexport.model import FunctionSignature, KernelSpec

ZEPHYR_BOARDS = [name for name in list_boards() if "zephyr" in load_board(name).platforms]
HARDWARE = ["nrf5340dk_nrf5340_cpuapp", "nucleo_f746zg", "nucleo_l4r5zi", "stm32f746g_disco"]
APP_FILES = ["CMakeLists.txt", "Kconfig", "board.yaml", "microexport.json", "prj.conf",
             "selftest.conf", "src/main.c", "src/microexport_port.h",
             "src/microexport_protocol.c", "src/microexport_protocol.h", "src/port_zephyr.c",
             "src/selftest.c", "testcase.yaml"]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "fixture.tar"
    write_archive(path, fixture_files())
    return path


def zephyr_project(archive: Path, board: str, directory: Path):  # noqa: ANN201
    return create_project(archive, board, directory, platform="zephyr")


def test_zephyr_boards_are_pinned() -> None:
    assert ZEPHYR_BOARDS == ["mps2_an385", "mps2_an521", "mps3_an547",
                             "nrf5340dk_nrf5340_cpuapp", "nucleo_f746zg", "nucleo_l4r5zi",
                             "qemu_cortex_m3", "qemu_x86", "stm32f746g_disco"]


@pytest.mark.parametrize("board", ZEPHYR_BOARDS)
def test_rendered_application_is_complete(board: str, archive: Path, tmp_path: Path) -> None:
    opened = zephyr_project(archive, board, tmp_path / "app")
    root = tmp_path / "app"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and p.parts[len(root.parts)] != "model")
    assert files == APP_FILES
    cmake = (root / "CMakeLists.txt").read_text()
    assert "find_package(Zephyr REQUIRED HINTS $ENV{ZEPHYR_BASE})" in cmake
    for source in ("tvmgen_fixture.c", "tvmgen_fixture_lib.c"):
        assert f"model/codegen/host/src/{source}" in cmake
    assert "target_link_libraries(app PRIVATE microexport_model)" in cmake
    conf = (root / "prj.conf").read_text()
    assert "CONFIG_MAIN_STACK_SIZE=2048" in conf and "CONFIG_HEAP_MEM_POOL_SIZE=0" in conf
    assert "CONFIG_UART_CONSOLE=n" in conf
    assert ("CONFIG_FPU=y" in conf) == (load_board(board).fpu is not None)
    assert opened.info.platform == "zephyr"


def test_stack_grows_with_the_kernels_c_locals(archive: Path, tmp_path: Path) -> None:
    opened = zephyr_project(archive, "nucleo_f746zg", tmp_path / "app")
    platform = opened.platform
    assert isinstance(platform, ZephyrPlatform)
    model = dataclasses.replace(opened.project.model, kernels=(
        KernelSpec(FunctionSignature("tvmgen_fixture_a", ()), stack_bytes=100),
        KernelSpec(FunctionSignature("tvmgen_fixture_b", ()), stack_bytes=1000)))
    assert platform.main_stack_size(model) == 3072  # 2048 + 1000, rounded up to 256


def test_west_command_lines(archive: Path, tmp_path: Path) -> None:
    opened = zephyr_project(archive, "nrf5340dk_nrf5340_cpuapp", tmp_path / "app")
    root, build_dir = tmp_path / "app", str(tmp_path / "app" / "build")
    platform = opened.platform
    (build,) = platform.build_plan(opened.project)
    assert build.argv == ("west", "build", "-b", "nrf5340dk/nrf5340/cpuapp", "-d", build_dir,
                          str(root))
    assert build.cwd == root
    expected = platform.expected_build(opened.project)
    (flash,) = platform.flash_plan(expected)
    assert flash.argv == ("west", "flash", "-d", build_dir)
    assert platform.run_plan(expected) == []  # hardware: the serial port, no command

    qemu = zephyr_project(archive, "qemu_cortex_m3", tmp_path / "qemu")
    qemu_build = qemu.platform.expected_build(qemu.project)
    (run,) = qemu.platform.run_plan(qemu_build)
    qemu_dir = tmp_path / "qemu" / "build"
    assert run.argv[:7] == ("west", "build", "-d", str(qemu_dir), "-t", "run", "--")
    fifo = rf"{re.escape(str(qemu_dir))}/qemu-fifo-{os.getpid()}-[0-9a-f]{{12}}"
    assert re.fullmatch(f"-DQEMU_PIPE={fifo}", run.argv[7])
    (qemu_west,) = qemu.platform.build_plan(qemu.project)
    assert qemu_west.argv[:4] == ("west", "build", "-b", "qemu_cortex_m3")
    assert load_board("mps2_an521").zephyr_board == "mps2/an521/cpu0"


def test_each_run_has_its_own_fifo(archive: Path, tmp_path: Path) -> None:
    """Two runs of one project (even at the same time) never share QEMU_PIPE's FIFOs."""
    qemu = zephyr_project(archive, "qemu_cortex_m3", tmp_path / "qemu")
    platform = qemu.platform
    assert isinstance(platform, ZephyrPlatform)
    build = platform.expected_build(qemu.project)
    pipes = {platform.pipe_path(build) for _ in range(100)}
    assert len(pipes) == 100
    assert all(pipe.parent == qemu.project.build_dir for pipe in pipes)
    plans = [platform.run_plan(build)[0].argv[-1] for _ in range(2)]
    assert plans[0] != plans[1]


def test_capabilities_depend_on_the_board(archive: Path, tmp_path: Path) -> None:
    qemu = zephyr_project(archive, "qemu_x86", tmp_path / "qemu")
    assert qemu.platform.caps.emulated and not qemu.platform.caps.can_flash
    with pytest.raises(Unsupported, match="^zephyr doesn't support flash on board 'qemu_x86'"):
        qemu.platform.flash_plan(qemu.platform.expected_build(qemu.project))
    with pytest.raises(Unsupported, match="^zephyr doesn't support --port"):
        qemu.platform.run_plan(qemu.platform.expected_build(qemu.project), RunOptions(port="x"))
    board = zephyr_project(archive, "nucleo_l4r5zi", tmp_path / "board")
    assert board.platform.caps.can_flash and board.platform.caps.has_serial


@pytest.mark.parametrize("board", ["nucleo_f746zg", "qemu_cortex_m3", "mps2_an521",
                                   "nrf5340dk_nrf5340_cpuapp"])
def test_portable_sources_compile_for_the_board(board: str, archive: Path,
                                                tmp_path: Path) -> None:
    compiler = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    zephyr_project(archive, board, tmp_path / "app")
    root = tmp_path / "app"
    info = load_board(board)
    sources = [*sorted((root / "model/codegen/host/src").glob("*.c")), root / "src/main.c",
               root / "src/microexport_protocol.c"]
    for source in sources:
        subprocess.run(
            [compiler, *info.cpu_flags, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
             "-DMICROEXPORT_CLOCK_HZ=1000000", "-I", str(root / "model/codegen/host/include"),
             "-I", str(root / "src"), "-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")],
            check=True, capture_output=True, text=True,
        )
    # port_zephyr.c needs Zephyr's headers, which are not installed here.
    assert "#include <zephyr/drivers/uart.h>" in (root / "src/port_zephyr.c").read_text()


def test_build_without_zephyr_says_what_to_install(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    zephyr_project(archive, "nucleo_f746zg", tmp_path / "app")
    monkeypatch.delenv("ZEPHYR_BASE", raising=False)
    if __import__("shutil").which("west") is None:
        expected = "'west' not found"
    else:
        expected = "ZEPHYR_BASE is not set"
    status = main(["build", str(tmp_path / "app")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert expected in err and "ZEPHYR_BASE=" in err and "west init" in err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status = main(["build", str(tmp_path / "app")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "'west' not found: install Zephyr (pip install west" in err


def test_zephyr_base_must_be_a_zephyr_tree(tmp_path: Path) -> None:
    with pytest.raises(Error, match="is not a Zephyr tree"):
        zephyr_base({"ZEPHYR_BASE": str(tmp_path)})
    (tmp_path / "cmake" / "modules").mkdir(parents=True)
    assert zephyr_base({"ZEPHYR_BASE": str(tmp_path)}) == tmp_path


def test_build_dry_run_prints_west(archive: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    zephyr_project(archive, "stm32f746g_disco", tmp_path / "app")
    assert main(["build", str(tmp_path / "app"), "--dry-run"]) == 0
    assert main(["flash", str(tmp_path / "app"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"(cd {tmp_path / 'app'} && west build -b stm32f746g_disco -d "
                   f"{tmp_path / 'app/build'} {tmp_path / 'app'})",
                   f"(cd {tmp_path / 'app'} && west flash -d {tmp_path / 'app/build'})"]


def test_no_serial_port_is_one_line(archive: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    zephyr_project(archive, "nucleo_f746zg", tmp_path / "app")
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, np.int32))
    from serial.tools import list_ports

    if any((p.vid, p.pid) in {(0x0483, 0x374B), (0x0483, 0x3752)} for p in list_ports.comports()):
        pytest.skip("an ST-LINK is attached")
    status = main(["run", str(tmp_path / "app"), "--input", str(tmp_path / "x.npy"),
                   "--input", str(tmp_path / "b.npy"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert ("no serial port of board 'nucleo_f746zg' (USB 0483:374b or 0483:3752) found" in err
            and "--port" in err)


def test_device_that_stops_answering_is_one_line(archive: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    zephyr_project(archive, "nucleo_l4r5zi", tmp_path / "app")
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, np.int32))
    controller, device = os.openpty()  # a serial port whose board never answers
    try:
        status = main(["run", str(tmp_path / "app"), "--port", os.ttyname(device),
                       "--timeout", "1", "--input", str(tmp_path / "x.npy"),
                       "--input", str(tmp_path / "b.npy"), "-o", str(tmp_path / "out")])
    finally:
        os.close(controller)
        os.close(device)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "did not answer HELLO within 1 s" in err


def _port(device: str, vid: int | None, pid: int | None, serial: str | None = None,
          location: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial,
                           location=location)


def test_find_board_port_by_vid_pid() -> None:
    nrf = load_board("nrf5340dk_nrf5340_cpuapp")
    ports = [_port("/dev/ttyS0", None, None),
             _port("/dev/ttyACM1", 0x1366, 0x1051, "1050", "1-2:1.2"),
             _port("/dev/ttyACM0", 0x1366, 0x1051, "1050", "1-2:1.0")]
    assert find_board_port(nrf, ports) == "/dev/ttyACM0"  # one probe: its first interface
    two = [*ports, _port("/dev/ttyACM2", 0x1366, 0x1015, "2000", "1-3:1.0")]
    with pytest.raises(Error, match="several boards with USB .* pick one with --port"):
        find_board_port(nrf, two)
    with pytest.raises(Error, match=r"no serial port of board 'nucleo_f746zg' .*ttyS0"):
        find_board_port(load_board("nucleo_f746zg"), ports)


def test_fifo_port_talks_through_qemu_pipes(tmp_path: Path) -> None:
    """FifoPort against an echoing peer that opens the FIFOs as QEMU's `-serial pipe:` does."""
    import threading

    from microexport.deploy.platforms.zephyr import FifoPort

    pipe = tmp_path / "qemu-fifo"
    for suffix in (".in", ".out"):
        os.mkfifo(f"{pipe}{suffix}")

    seen: list[bytes] = []

    def echo() -> None:
        guest_in = os.open(f"{pipe}.in", os.O_RDWR)
        guest_out = os.open(f"{pipe}.out", os.O_RDWR)
        data = os.read(guest_in, 5)
        os.write(guest_out, data.upper())
        while len(data) < 5 + 5:  # b"\x01x\x01" escaped for QEMU's mux
            data += os.read(guest_in, 16)
        seen.append(data)
        os.write(guest_out, b"\x01x")  # QEMU -> host is never escaped
        os.close(guest_in)
        os.close(guest_out)

    peer = threading.Thread(target=echo)
    peer.start()
    port = FifoPort(pipe, deadline=__import__("time").monotonic() + 10, alive=lambda: True)
    try:
        assert port.write(b"hello") == 5
        received = b""
        while len(received) < 5:
            received += port.read(5 - len(received))
        assert received == b"HELLO"
        assert port.write(b"\x01x\x01") == 3
        received = b""
        while len(received) < 2:
            received += port.read(2 - len(received))
        assert received == b"\x01x"
    finally:
        port.close()
        peer.join(5)
    assert seen == [b"hello\x01\x01x\x01\x01"]


def test_qemu_mux_escape_doubles_ctrl_a_only() -> None:
    from microexport.deploy import protocol
    from microexport.deploy.platforms.zephyr import escape_qemu_mux

    assert escape_qemu_mux(b"") == b""
    assert escape_qemu_mux(b"\x01\x01x\x02") == b"\x01\x01\x01\x01x\x02"
    hello = protocol.encode_frame(protocol.FrameType.HELLO, 0x78, protocol.Hello().encode())
    assert b"\x01" in hello  # why the escape is needed: every HELLO has one
    escaped = escape_qemu_mux(hello)
    assert escaped.replace(b"\x01\x01", b"\x01") == hello


WEST_FAILURES = [
    ("[5/120] Building C object CMakeFiles/app.dir/src/main.c.obj\nFAILED: x.obj\n"
     "/p/src/main.c:3:2: error: #error broken\n    3 | #error broken\n",
     "FATAL ERROR: command exited with status 1: /usr/bin/cmake --build /p/build\n",
     "/p/src/main.c:3:2: error: #error broken"),
    ("", "/usr/bin/arm-none-eabi-ld: zephyr_pre0.elf section `bss' will not fit in region `RAM'\n"
     "collect2: error: ld returned 1 exit status\nFATAL ERROR: command exited with status 1\n",
     "/usr/bin/arm-none-eabi-ld: zephyr_pre0.elf section `bss' will not fit in region `RAM'"),
    ("-- Board: nope\n", "CMake Error at /z/cmake/modules/boards.cmake:304 (message):\n"
     "  Invalid BOARD; see above.\nFATAL ERROR: command exited with status 1: cmake -B build\n",
     "CMake Error at /z/cmake/modules/boards.cmake:304 (message): Invalid BOARD; see above."),
    ("Parsing /z/Kconfig\n", "\nwarning: FPU (defined at arch/Kconfig:1) was assigned the value "
     "'y' but got the value 'n'.\nerror: Aborting due to Kconfig warnings\n"
     "FATAL ERROR: command exited with status 1\n",
     "warning: FPU (defined at arch/Kconfig:1) was assigned the value 'y' but got the value 'n'."),
    ("", "FATAL ERROR: command exited with status 1: ninja\n",
     "FATAL ERROR: command exited with status 1: ninja"),
]


@pytest.mark.parametrize(("stdout", "stderr", "expected"), WEST_FAILURES)
def test_west_errors_name_the_real_error(stdout: str, stderr: str, expected: str) -> None:
    from microexport.deploy.platforms.zephyr import CommandResult, _west_error

    assert _west_error(CommandResult(("west", "build"), 1, stdout, stderr)) == expected


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    from microexport.deploy.platforms import Invocation
    from microexport.deploy.platforms.zephyr import GroupProcess

    pid_file = tmp_path / "grandchild.pid"
    step = Invocation(("sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"), cwd=tmp_path,
                      timeout=1.0, what="sleepers")
    with pytest.raises(Error, match="^sleepers timed out after 1 s"):
        GroupProcess(step).wait()
    grandchild = int(pid_file.read_text())
    deadline = __import__("time").monotonic() + 5
    while __import__("time").monotonic() < deadline:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().split(") ")[1][0]
        except (OSError, IndexError):
            break  # gone
        if state in "ZX":
            break  # killed, not yet reaped
        __import__("time").sleep(0.05)
    else:
        pytest.fail(f"sleep {grandchild} survived the timeout")


def fake_zephyr(root: Path, version: tuple[int, int, int] = (4, 0, 0)) -> Path:
    """A stand-in Zephyr tree: cmake/modules, VERSION and one board (qemu_cortex_m3)."""
    base = root / "zephyr"
    (base / "cmake" / "modules").mkdir(parents=True)
    major, minor, patch = version
    (base / "VERSION").write_text(f"VERSION_MAJOR = {major}\nVERSION_MINOR = {minor}\n"
                                  f"PATCHLEVEL = {patch}\nVERSION_TWEAK = 0\nEXTRAVERSION =\n")
    board = base / "boards" / "qemu" / "cortex_m3"
    board.mkdir(parents=True)
    (board / "board.yml").write_text("board:\n  name: qemu_cortex_m3\n  vendor: qemu\n"
                                     "  socs:\n    - name: ti_lm3s6965\n")
    (board / "qemu_cortex_m3.yaml").write_text("identifier: qemu_cortex_m3\narch: arm\n")
    return base


def build_error(project: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line error of `microexport build project` (exit status 2)."""
    status = main(["build", str(project)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    return err


def test_minimal_libc_without_libm_calls(archive: Path, tmp_path: Path) -> None:
    """The fixture's kernel library calls isnan, a <math.h> macro that Zephyr's minimal libc
    lacks (a real twister build failed on it): a full libc. Without it, the minimal libc."""
    opened = zephyr_project(archive, "qemu_cortex_m3", tmp_path / "app")
    assert libm_calls(opened.project) == ["isnan"]
    conf = (tmp_path / "app" / "prj.conf").read_text()
    assert "CONFIG_REQUIRES_FULL_LIBC=y" in conf and "CONFIG_MINIMAL_LIBC" not in conf
    lib = next(p for p in opened.project.sources if p.name.endswith("_lib.c"))
    lib.write_text(lib.read_text().replace("isnan(x_0[0])", "(x_0[0] != x_0[0])"))
    assert libm_calls(opened.project) == []
    conf = render_prj_conf(opened)
    assert "CONFIG_MINIMAL_LIBC=y" in conf and "CONFIG_REQUIRES_FULL_LIBC" not in conf


def test_libm_calls_need_a_full_libc(archive: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    if __import__("shutil").which("west") is None:
        pytest.skip("west not installed")
    opened = zephyr_project(archive, "qemu_cortex_m3", tmp_path / "app")
    lib = next(p for p in opened.project.sources if p.name.endswith("_lib.c"))
    lib.write_text(lib.read_text() + "\nfloat tvmgen_fixture_extra(float x) { return expf(x) "
                   "+ tvmgen_fixture_sqrtf_like(x) + sqrtf (x); }\n")
    assert libm_calls(opened.project) == ["expf", "isnan", "sqrtf"]
    conf = render_prj_conf(opened)
    assert "CONFIG_REQUIRES_FULL_LIBC=y" in conf and "CONFIG_MINIMAL_LIBC" not in conf
    assert "calls libm (expf, isnan, sqrtf)" in conf
    base = fake_zephyr(tmp_path / "ws")
    monkeypatch.setenv("ZEPHYR_BASE", str(base))
    monkeypatch.setenv("ZEPHYR_TOOLCHAIN_VARIANT", "cross-compile")
    monkeypatch.setenv("CROSS_COMPILE", str(tmp_path / "no-such-toolchain-"))
    monkeypatch.delenv("ZEPHYR_MODULES", raising=False)
    err = build_error(tmp_path / "app", capsys)
    assert "model 'fixture' calls libm (expf, isnan, sqrtf) and needs a full C library" in err
    assert "apt-get install picolibc-arm-none-eabi" in err and "picolibc module" in err
    assert not (tmp_path / "app" / "build" / "west-build.log").exists()  # west never ran
    assert full_libc_source({"ZEPHYR_TOOLCHAIN_VARIANT": "zephyr"}) == "the Zephyr SDK's picolibc"
    (tmp_path / "ws" / "modules" / "lib" / "picolibc").mkdir(parents=True)
    assert full_libc_source({"ZEPHYR_TOOLCHAIN_VARIANT": "cross-compile"}, base) == (
        "Zephyr's picolibc module")


def render_prj_conf(opened: Any) -> str:
    """prj.conf as `create` would render it now for `opened`'s project."""
    return opened.platform.render_sources(opened.project)["prj.conf"]


def test_zephyr_release_and_board_are_checked_before_west(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if __import__("shutil").which("west") is None:
        pytest.skip("west not installed")
    zephyr_project(archive, "qemu_cortex_m3", tmp_path / "app")
    old = fake_zephyr(tmp_path / "old", (3, 7, 0))
    monkeypatch.setenv("ZEPHYR_BASE", str(old))
    err = build_error(tmp_path / "app", capsys)
    assert err == (f"microexport: error: board 'qemu_cortex_m3' was checked with Zephyr 4.0.0, "
                   f"but ZEPHYR_BASE={old} is Zephyr 3.7.0: use a checked Zephyr release, or check "
                   f"the board and add 3.7.0 to zephyr_versions in its board file")
    zephyr_project(archive, "mps2_an521", tmp_path / "an521")
    monkeypatch.setenv("ZEPHYR_BASE", str(fake_zephyr(tmp_path / "new")))
    err = build_error(tmp_path / "an521", capsys)
    assert "Zephyr board 'mps2/an521/cpu0' of board 'mps2_an521' does not exist in Zephyr 4.0.0" \
        in err
    assert not (tmp_path / "an521" / "build" / "west-build.log").exists()


def test_selftest_embeds_inputs_and_reference_outputs(archive: Path, tmp_path: Path) -> None:
    """The self-test files: testcase.yaml for twister's console harness over selftest.conf, and
    src/selftest.c with the inputs and reference outputs as bytes (the host build's at create,
    any others through write_selftest)."""
    import zlib

    import numpy as np
    import yaml
    from fixture_model import expected_outputs, fixture_inputs

    from microexport.deploy.platforms.zephyr import HOST_REFERENCE, SelftestData

    root = tmp_path / "app"
    opened = zephyr_project(archive, "mps2_an521", root)
    assert isinstance(opened.platform, ZephyrPlatform)

    def write_selftest(directory: Path, data: SelftestData) -> None:
        assert directory == root
        opened.platform.write_selftest(opened.project, data)

    testcase = yaml.safe_load((root / "testcase.yaml").read_text())
    common = testcase["common"]
    assert common["harness"] == "console"
    assert common["harness_config"]["regex"] == ["microexport selftest: PASS"]
    assert common["extra_args"] == ["EXTRA_CONF_FILE=selftest.conf"]
    assert common["platform_allow"] == ["mps2/an521/cpu0"]
    assert list(testcase["tests"]) == ["microexport.fixture.selftest"]
    assert "CONFIG_MICROEXPORT_SELFTEST=y" in (root / "selftest.conf").read_text()
    assert "config MICROEXPORT_SELFTEST" in (root / "Kconfig").read_text()
    assert "if(CONFIG_MICROEXPORT_SELFTEST)" in (root / "CMakeLists.txt").read_text()
    selftest = (root / "src" / "selftest.c").read_text()
    assert HOST_REFERENCE in selftest
    inputs = fixture_inputs(3)
    outputs = expected_outputs(inputs)
    write_selftest(root, SelftestData(inputs, outputs, 'odd */ "name"\n'))
    selftest = (root / "src" / "selftest.c").read_text()
    assert 'reference odd *? ?name??' in selftest and "*/ \"name\"" not in selftest
    for name, array in outputs.items():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        assert f"CRC-32 0x{zlib.crc32(data):08x}" in selftest, name
        assert ", ".join(f"0x{b:02x}" for b in data[:16]) in selftest
    with pytest.raises(Error, match="^self-test data of model 'fixture' has no output 'y'$"):
        write_selftest(root, SelftestData(inputs, {"count": outputs["count"]}, "x"))
    with pytest.raises(Error, match="^self-test input 'x:0' has 48 bytes, the model's has 24$"):
        write_selftest(root, SelftestData({**inputs, "x:0": np.zeros(12, np.float32)},
                                          outputs, "x"))
