"""The Zephyr application's portable half on an emulated Cortex-M3, without Zephyr: its main.c and
the serial protocol, with a bare-metal UART port (tests/fixtures/port_cmsdk_uart.c) standing in
for port_zephyr.c, run in `qemu-system-arm -M mps2-an385` with UART0 on a TCP socket; the host
side is `microexport.deploy.protocol.run_inference`, as `microexport run` uses it on a real
board."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
from fixture_model import FIXTURES, expected_outputs, fixture_files, fixture_inputs
from support import require_program

from microexport.archive.mlf import write_archive
from microexport.deploy import protocol
from microexport.deploy.boards import load_board
from microexport.deploy.platforms.baremetal import BaremetalPlatform
from microexport.deploy.project import create_project

BOARD = "mps2_an385"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connect(url: str, deadline: float) -> protocol.SerialPort:
    while True:
        try:
            return protocol.open_port(url)
        except Exception:  # noqa: BLE001 - QEMU is not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_zephyr_main_and_protocol_serve_the_model(tmp_path: Path) -> None:
    compiler = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    qemu = require_program("qemu-system-arm", "qemu-system-arm")
    archive = tmp_path / "fixture.tar"
    write_archive(archive, fixture_files())
    app = create_project(archive, BOARD, tmp_path / "app", platform="zephyr")
    baremetal = BaremetalPlatform(load_board(BOARD))  # startup code and linker script
    support = tmp_path / "support"
    support.mkdir()
    for name, text in baremetal.render_sources(app.project.model).items():
        (support / name).write_text(text)
    board = load_board(BOARD)
    elf = tmp_path / "app.elf"
    subprocess.run(
        [compiler, *board.cpu_flags, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
         "-DMICROEXPORT_CLOCK_HZ=25000000", f"-I{app.project.include_dir}",
         f"-I{tmp_path / 'app/src'}", f"-I{support}", "--specs=rdimon.specs", "-nostartfiles",
         f"-T{support / 'linker.ld'}", "-o", str(elf), *map(str, app.project.sources),
         str(tmp_path / "app/src/main.c"), str(tmp_path / "app/src/microexport_protocol.c"),
         str(FIXTURES / "port_cmsdk_uart.c"), str(support / "startup.c"), "-lm"],
        check=True, capture_output=True, text=True,
    )
    tcp = free_port()
    device = subprocess.Popen(
        [qemu, "-M", "mps2-an385", "-display", "none", "-monitor", "none",
         "-semihosting-config", "enable=on,target=native",
         "-serial", f"tcp:127.0.0.1:{tcp},server=on,wait=on", "-kernel", str(elf)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        port = connect(f"socket://127.0.0.1:{tcp}", time.monotonic() + 20)
        try:
            for seed in (1, 2):  # two sessions: main.c serves for ever
                inputs = fixture_inputs(seed)
                outputs, stats = protocol.run_inference(port, app.project.model, inputs,
                                                        timeout=20)
                for name, want in expected_outputs(inputs).items():
                    np.testing.assert_array_equal(outputs[name], want)
                assert stats.status == 0 and stats.clock_hz == 25_000_000
                assert stats.ticks is not None and stats.ticks > 0
        finally:
            port.close()  # type: ignore[attr-defined]
    finally:
        device.kill()
        device.communicate(timeout=10)
