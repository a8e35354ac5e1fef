"""The serial protocol: frames and payloads, the rendered device C, and whole sessions with the
device C compiled for the host and served on a pseudo-terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
import tty
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fixture_model import (
    FIXTURE_LIB,
    INPUTS,
    NAME,
    OUTPUTS,
    constant_pool,
    expected_outputs,
    fixture_inputs,
    fixture_model,
)
from serial.tools.list_ports_common import ListPortInfo
from support import require_program

from microexport.archive.glue import render_glue
from microexport.archive.mlf import read_model
from microexport.deploy.boards import Board, SerialConfig, load_board
from microexport.deploy.protocol import (
    CHUNK_HEADER_SIZE,
    ERROR_TEXTS,
    FRAME_OVERHEAD,
    MAGIC,
    MAX_ERROR_TEXT,
    MAX_PAYLOAD,
    Ack,
    Chunk,
    DeviceInfo,
    DeviceRunFailed,
    DeviceTimeout,
    ErrorCode,
    ErrorReport,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Hello,
    ResultSummary,
    RunStats,
    SerialLink,
    crc32,
    crc32_nibble_table,
    decode_frame,
    encode_frame,
    find_board_port,
    model_signature,
    open_port,
    render_device_sources,
    render_host_board,
    run_inference,
    session_steps,
)
from microexport.deploy.subproc import run_command
from microexport.errors import Error, InputError
from microexport.model import (
    CompiledModel,
    CParam,
    FunctionSignature,
    MemoryReport,
    TensorSpec,
)

WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
BOARD_MAX_PAYLOAD = 24  # small: the fixture's 24-byte tensors travel in two chunks
CLOCK_HZ = 1_000_000


# --- frames and payloads --------------------------------------------------------------------


def test_crc32_check_value_and_nibble_table() -> None:
    assert crc32(b"123456789") == 0xCBF43926
    table = crc32_nibble_table()
    data = bytes(range(256)) * 3
    crc = 0xFFFFFFFF  # the device's algorithm, four bits at a time
    for byte in data:
        crc ^= byte
        crc = (crc >> 4) ^ table[crc & 15]
        crc = (crc >> 4) ^ table[crc & 15]
    assert crc ^ 0xFFFFFFFF == zlib.crc32(data) == crc32(data[100:], crc32(data[:100]))


def test_frame_layout() -> None:
    hello = Frame(FrameType.HELLO, 1, b"\x01")
    assert hello.encode() == bytes.fromhex("a55a 0101 0100 01 69e33b35")
    assert encode_frame(FrameType.RUN, 7) == bytes.fromhex("a55a 0307 0000 7766be36")


@pytest.mark.parametrize("size", [0, 1, 255, MAX_PAYLOAD])
@pytest.mark.parametrize("frame_type", list(FrameType) + [0x42])
def test_frame_round_trip(frame_type: int, size: int) -> None:
    frame = Frame(frame_type, 200, bytes(i % 251 for i in range(size)))
    data = frame.encode()
    assert len(data) == FRAME_OVERHEAD + size
    assert data[:2] == MAGIC
    assert decode_frame(data) == frame


def test_every_single_bit_error_is_rejected() -> None:
    data = Frame(FrameType.INPUT, 9, Chunk(1, 4, b"\x00\x10\xff\x7f").encode()).encode()
    for position in range(len(data)):
        for bit in range(8):
            corrupted = bytearray(data)
            corrupted[position] ^= 1 << bit
            with pytest.raises(FrameError):
                decode_frame(bytes(corrupted))


def test_truncated_and_padded_frames_are_rejected() -> None:
    data = encode_frame(FrameType.ACK, 3, Ack(FrameType.INPUT, 0, 24).encode())
    with pytest.raises(FrameError, match="too short"):
        decode_frame(data[:5])
    with pytest.raises(FrameError, match="length field says 6 payload bytes, the frame has 5"):
        decode_frame(data[:-1])
    with pytest.raises(FrameError, match="length field"):
        decode_frame(data + b"\x00")
    with pytest.raises(FrameError, match="magic"):
        decode_frame(b"\x00" + data[1:])
    corrupted = bytearray(data)
    corrupted[8] ^= 0x01
    with pytest.raises(FrameError, match=r"bad CRC in ACK frame \(seq 3, 6 payload bytes\)"):
        decode_frame(bytes(corrupted))


def test_frame_fields_are_range_checked() -> None:
    with pytest.raises(ValueError, match="sequence number 256"):
        Frame(FrameType.RUN, 256)
    with pytest.raises(ValueError, match="frame type"):
        Frame(0x100, 0)
    with pytest.raises(ValueError, match="payload"):
        Frame(FrameType.INPUT, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frame(FrameType.RUN, 0).seq = 1  # type: ignore[misc]


def test_stream_decoder_skips_garbage_and_corrupt_frames() -> None:
    first = Frame(FrameType.INFO, 1, b"abc")
    second = Frame(FrameType.RESULT, 2, ResultSummary(2, 40, 0x12345678).encode())
    corrupt = bytearray(Frame(FrameType.OUTPUT, 5, b"xyz" * 4).encode())
    corrupt[-6] ^= 0x80
    banner = b"*** Booting Zephyr OS ***\r\n\xa5"
    stream = banner + first.encode() + bytes(corrupt) + second.encode()
    decoder = FrameDecoder()
    results: list[Frame | str] = []
    for byte in stream:  # one byte at a time, as a slow UART delivers it
        decoder.feed(bytes([byte]))
        while True:
            try:
                frame = decoder.next_frame()
            except FrameError as err:
                results.append(str(err))
                continue
            if frame is None:
                break
            results.append(frame)
    assert results[0] == first
    assert isinstance(results[1], str) and results[1].startswith("bad CRC in OUTPUT frame")
    assert results[-1] == second
    assert decoder.skipped >= len(banner)


def test_stream_decoder_finds_a_frame_behind_a_corrupt_length() -> None:
    good = Frame(FrameType.ACK, 4, Ack(FrameType.INPUT, 1, 16).encode()).encode()
    bogus = bytearray(Frame(FrameType.ACK, 3, b"").encode())
    bogus[4] = 20  # says 20 payload bytes: swallows the good frame
    decoder = FrameDecoder()
    decoder.feed(bytes(bogus) + good + bytes(20))
    with pytest.raises(FrameError, match="bad CRC"):
        decoder.next_frame()
    assert decoder.next_frame() == decode_frame(good)


def test_decoder_needs_the_rest_of_a_frame() -> None:
    data = encode_frame(FrameType.STATS, 1, RunStats(0, 5, 1).encode())
    decoder = FrameDecoder()
    assert decoder.needed == 6
    decoder.feed(data[:3])
    assert decoder.needed == 3
    decoder.feed(data[3:8])
    assert decoder.needed == len(data) - 8
    assert decoder.next_frame() is None


@pytest.mark.parametrize("payload", [
    Hello(1),
    DeviceInfo(1, 3, 256, 0xDEADBEEF, 48_000_000, (24, 16), (24, 16, 0), "kws"),
    DeviceInfo(1, 0, 8, 0, 0, (), (4,), ""),
    Chunk(3, 0x01020304, b"\x00\xff" * 10),
    Chunk(0, 0, b""),
    Ack(FrameType.INPUT, 1, 123456),
    RunStats(-7, 0xFFFFFFFF, 1),
    ResultSummary(2, 40, 0xCBF43926),
    ErrorReport(ErrorCode.BAD_OFFSET, FrameType.INPUT, 19, ERROR_TEXTS[ErrorCode.BAD_OFFSET]),
])
def test_payload_round_trip(payload: object) -> None:
    assert type(payload).decode(payload.encode()) == payload  # type: ignore[attr-defined]


def test_malformed_payloads_are_rejected() -> None:
    with pytest.raises(FrameError, match="STATS payload has 8 bytes, expected 9"):
        RunStats.decode(bytes(8))
    with pytest.raises(FrameError, match="ACK payload has 7 bytes, expected 6"):
        Ack.decode(bytes(7))
    with pytest.raises(FrameError, match="at least 5"):
        Chunk.decode(bytes(4))
    info = DeviceInfo(1, 0, 64, 1, 0, (4,), (8,), "model").encode()
    with pytest.raises(FrameError, match="model name has 4 bytes, expected 5"):
        DeviceInfo.decode(info[:-1])
    with pytest.raises(FrameError, match="truncated"):
        DeviceInfo.decode(info[:16])


def test_error_codes_are_dense_and_texts_short() -> None:
    assert [code.value for code in ErrorCode] == list(range(1, len(ErrorCode) + 1))
    assert all(len(code.text) <= MAX_ERROR_TEXT and code.text.isascii() for code in ErrorCode)


def with_io(model: CompiledModel, inputs: tuple[TensorSpec, ...] | None = None,
            outputs: tuple[TensorSpec, ...] | None = None) -> CompiledModel:
    """`model` with other inputs or outputs, its AOT main and I/O bytes to match."""
    inputs = model.inputs if inputs is None else inputs
    outputs = model.outputs if outputs is None else outputs
    params = [CParam(t.c_name, f"{t.ctype}*") for t in inputs + outputs]
    params += [p for p in model.main.params if p.ctype == "uint8_t*"]  # the pools
    return dataclasses.replace(
        model, inputs=inputs, outputs=outputs,
        memory=dataclasses.replace(model.memory, io_bytes=sum(t.nbytes for t in inputs + outputs)),
        main=FunctionSignature(model.main.symbol, tuple(params)))


def test_model_signature_sees_names_shapes_and_dtypes() -> None:
    model = fixture_model()
    base = model_signature(model)
    assert model_signature(fixture_model("external")) == base  # memory does not matter
    for change in ({"name": "x"}, {"shape": (3, 2)}, {"dtype": "int32"}):
        first = dataclasses.replace(model.inputs[0], **change)
        assert model_signature(with_io(model, (first, *model.inputs[1:]))) != base


# --- finding the port -----------------------------------------------------------------------


def port_info(device: str, usb: tuple[int, int] | None = None, description: str = "n/a",
              serial_number: str | None = None, location: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    if usb is not None:
        info.vid, info.pid = usb
    info.description = description
    info.serial_number = serial_number
    info.location = location
    return info


def board_with_usb(*vid_pid: str) -> Board:
    return dataclasses.replace(load_board("nucleo_f746zg"), serial=SerialConfig(115200, vid_pid))


def test_find_board_port() -> None:
    nucleo = load_board("nucleo_f746zg")  # USB 0483:374b or 0483:3752
    ports = [
        port_info("/dev/ttyS0"),
        port_info("/dev/ttyACM0", (0x0483, 0x374B), "STLink Virtual COM Port", "066D", "1-2:1.2"),
        port_info("/dev/ttyUSB0", (0x10C4, 0xEA60), "CP2102", "0001", "1-3:1.0"),
    ]
    assert find_board_port(nucleo, ports, port="/dev/ttyX") == "/dev/ttyX"
    assert find_board_port(nucleo, ports, port="socket://localhost:4000") == (
        "socket://localhost:4000")  # a pyserial URL is passed on as it is, for open_port
    assert find_board_port(load_board("mps2_an385"), [], port="/dev/ttyX") == "/dev/ttyX"
    assert find_board_port(nucleo, ports) == "/dev/ttyACM0"
    assert find_board_port(board_with_usb("0483:374B"), ports) == "/dev/ttyACM0"
    assert find_board_port(nucleo, ports, port="") == "/dev/ttyACM0"  # empty: not given
    # One probe with several interfaces (the same USB serial number): its first by location.
    second_interface = port_info("/dev/ttyACM1", (0x0483, 0x374B), "STLink", "066D", "1-2:1.0")
    assert find_board_port(nucleo, [*ports, second_interface]) == "/dev/ttyACM1"
    other_probe = port_info("/dev/ttyACM2", (0x0483, 0x3752), "STLink V2-1", "0670", "1-4:1.2")
    with pytest.raises(Error, match=r"^several boards with USB 0483:374b or 0483:3752 found: "
                                    r"/dev/ttyACM0 0483:374b \(STLink Virtual COM Port\) "
                                    r"\(serial 066D\), /dev/ttyACM2 0483:3752 \(STLink V2-1\) "
                                    r"\(serial 0670\): pick one with --port$"):
        find_board_port(nucleo, [*ports, other_probe])
    anonymous = [port_info("/dev/ttyACM0", (0x0483, 0x374B)),
                 port_info("/dev/ttyACM1", (0x0483, 0x374B))]
    with pytest.raises(Error, match=r"^several boards with USB .* found: /dev/ttyACM0 0483:374b "
                                    r"\(serial unknown\), /dev/ttyACM1 .*: pick one with --port$"):
        find_board_port(nucleo, anonymous)  # no serial numbers: nothing says it is one probe
    with pytest.raises(Error, match=r"^no serial port of board 'nrf5340dk_nrf5340_cpuapp' \(USB "
                                    r"1366:1015 or 1366:1051 or 1366:1061\) found \(ports seen: "
                                    r"/dev/ttyACM0 0483:374b \(STLink Virtual COM Port\), "
                                    r"/dev/ttyS0, /dev/ttyUSB0 10c4:ea60 \(CP2102\)\): connect "
                                    r"the board or name its port with --port$"):
        find_board_port(load_board("nrf5340dk_nrf5340_cpuapp"), ports)
    with pytest.raises(Error, match=r"\(ports seen: none\)"):
        find_board_port(nucleo, [])
    with pytest.raises(Error, match="^board 'mps2_an385' has no serial vid_pid: name its port "
                                    "with --port$"):
        find_board_port(load_board("mps2_an385"), ports)
    with pytest.raises(Error, match="^USB id 'stlink' is not VID:PID in hex"):
        find_board_port(board_with_usb("stlink"), ports)


def test_find_board_port_lists_the_real_ports() -> None:
    with pytest.raises(Error, match=r"^no serial port of board 'nucleo_f746zg' \(USB ffff:fffe\) "
                                    r"found \(ports seen: .*\)"):
        find_board_port(board_with_usb("ffff:fffe"))


def test_the_zephyr_platform_finds_its_port_here() -> None:
    from microexport.deploy.platforms import zephyr

    assert zephyr.find_board_port is find_board_port


def test_open_port() -> None:
    with pytest.raises(Error, match="^cannot open serial port /nonexistent/tty: "):
        open_port("/nonexistent/tty")
    port = open_port("loop://", baudrate=9600)
    try:
        port.write(b"ping")
        assert port.read(4) == b"ping"
    finally:
        port.close()  # type: ignore[attr-defined]


# --- device sources -------------------------------------------------------------------------


def no_input_model() -> CompiledModel:
    memory = MemoryReport(workspace_bytes=0, constants_bytes=0, io_bytes=16)
    return CompiledModel(name="noin", inputs=(), outputs=(TensorSpec("out", (4,), "float32"),),
                         memory=memory,
                         main=FunctionSignature("tvmgen_noin___tvm_main__",
                                                (CParam("out", "float*"),)))


def write_device_sources(directory: Path, mode: str = "static") -> list[Path]:
    """The fixture's glue and library plus the protocol sources, written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model = fixture_model(mode)
    files = dict(render_glue(model, constant_pool()))
    files.update(render_device_sources(model))
    files[FIXTURE_LIB.name] = FIXTURE_LIB.read_text()
    for filename, text in files.items():
        (directory / filename).write_text(text)
    return [directory / f for f in sorted(files) if f.endswith(".c")]


def test_render_device_sources() -> None:
    model = fixture_model()
    files = render_device_sources(model)
    assert sorted(files) == ["microexport_protocol.c", "microexport_protocol.h"]
    header, source = files["microexport_protocol.h"], files["microexport_protocol.c"]
    for declaration in (
        "int microexport_serve_once(const struct microexport_transport* transport);",
        "int microexport_serve_forever(const struct microexport_transport* transport);",
        "int (*read)(void* context, uint8_t* buffer, size_t length);",
        "int (*write)(void* context, const uint8_t* buffer, size_t length);",
        "uint32_t (*clock)(void* context);",
    ):
        assert declaration in header
    assert '#include "tvmgen_fixture.h"' in source
    assert "status = tvmgen_fixture_run(&me_inputs, &me_outputs);" in source
    assert "TVMGEN_FIXTURE_X_0_SIZE" in source and "TVMGEN_FIXTURE_COUNT_SIZE" in source
    assert f"0x{model_signature(model):08X}u" in source
    assert "malloc" not in source and "stdio" not in source
    external = render_device_sources(fixture_model("external"))["microexport_protocol.c"]
    assert "tvmgen_fixture_run(&me_inputs, &me_outputs, &me_pools)" in external


def test_device_template_override(tmp_path: Path) -> None:
    (tmp_path / "microexport_protocol.h.j2").write_text(
        '/* ACME {{ name }} */\n{% include "builtin/protocol/microexport_protocol.h.j2" %}')
    header = render_device_sources(fixture_model(), tmp_path)["microexport_protocol.h"]
    assert header.startswith("/* ACME fixture */\n/*\n * Serial protocol")


def test_render_refuses_what_the_protocol_cannot_carry() -> None:
    outputs = tuple(TensorSpec(f"o{i}", (1,), "float32") for i in range(256))
    model = with_io(fixture_model(), outputs=outputs)
    with pytest.raises(Error, match="256 outputs: the serial protocol carries at most 255"):
        render_device_sources(model)


@pytest.mark.parametrize("mode", ["static", "external"])
def test_device_c_compiles_for_cortex_m4(tmp_path: Path, mode: str) -> None:
    cc = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    write_device_sources(tmp_path, mode)
    for max_payload in ("8", "65535"):
        run_command([cc, "-mcpu=cortex-m4", "-mthumb", *WARNINGS, "-Os",
                     f"-DMICROEXPORT_MAX_PAYLOAD={max_payload}", "-c", "microexport_protocol.c",
                     "-o", "protocol.o"], cwd=tmp_path, check=True)


@pytest.mark.parametrize("mode", ["static", "external", "no-inputs"])
def test_device_c_compiles_with_gcc(tmp_path: Path, mode: str) -> None:
    cc = require_program("gcc", "gcc")
    if mode == "no-inputs":
        model = no_input_model()
        files = {**render_glue(model, b""), **render_device_sources(model)}
        for filename, text in files.items():
            (tmp_path / filename).write_text(text)
    else:
        write_device_sources(tmp_path, mode)
    run_command([cc, *WARNINGS, "-pedantic", "-Wconversion", "-Wsign-conversion", "-Wshadow",
                 "-Wmissing-prototypes", "-c", "microexport_protocol.c", "-o", "protocol.o"],
                cwd=tmp_path, check=True)


def test_too_small_max_payload_is_a_compile_error(tmp_path: Path) -> None:
    cc = require_program("gcc", "gcc")
    write_device_sources(tmp_path)
    result = run_command([cc, *WARNINGS, "-DMICROEXPORT_MAX_PAYLOAD=4", "-c",
                          "microexport_protocol.c"], cwd=tmp_path)
    assert result.returncode != 0
    assert "MICROEXPORT_MAX_PAYLOAD must be between 8 and 65535" in result.stderr


# --- sessions on a pseudo-terminal ----------------------------------------------------------


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture model, the protocol and the host board main, built for the host."""
    cc = require_program("gcc", "gcc")
    directory = tmp_path_factory.mktemp("board")
    sources = write_device_sources(directory)
    (directory / "host_board_main.c").write_text(render_host_board(fixture_model()))
    program = directory / "fixture_board"
    run_command([cc, *WARNINGS, f"-DMICROEXPORT_MAX_PAYLOAD={BOARD_MAX_PAYLOAD}",
                 f"-DMICROEXPORT_CLOCK_HZ={CLOCK_HZ}", "-I", directory,
                 directory / "host_board_main.c", *sources, "-o", program, "-lm"], check=True)
    return program


class PtyPort:
    """The master side of a pseudo-terminal with pyserial's `read`, `write` and `timeout`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.timeout: float | None = None

    def read(self, size: int = 1) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        data = b""
        while len(data) < size:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                break
            data += os.read(self.fd, size - len(data))
        return data

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)


class CorruptingPort:
    """A port that flips one bit of the `at`-th byte the host writes (a noisy line)."""

    def __init__(self, port: PtyPort, at: int) -> None:
        self.port = port
        self.at = at
        self.written = 0

    @property
    def timeout(self) -> float | None:
        return self.port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.port.timeout = value

    def read(self, size: int = 1) -> bytes:
        return self.port.read(size)

    def write(self, data: bytes) -> int:
        data = bytearray(data)
        if 0 <= self.at - self.written < len(data):
            data[self.at - self.written] ^= 0x04
        self.written += len(data)
        return self.port.write(bytes(data))


@contextmanager
def serve(program: Path, *options: str, host_side: str = "master") -> Iterator[PtyPort]:
    """Run the board on one side of a fresh pty pair and yield the host's port on the other.

    `host_side="master"`: the board opens the slave by name, the host talks on the master fd.
    `host_side="slave"`: the board serves the master fd, the host opens the slave by name with
    pyserial. Both fds stay open here, so a board that dies leaves a silent line, as a hung board
    behind a USB serial adapter does.
    """
    master, slave = os.openpty()
    tty.setraw(slave)  # before the board writes anything: no echo, no translation
    port: object
    if host_side == "master":
        argv = [str(program), "--device", os.ttyname(slave), *options]
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        port = PtyPort(master)
    else:
        import serial

        argv = [str(program), "--fd", str(master), *options]
        proc = subprocess.Popen(argv, pass_fds=(master,), stderr=subprocess.PIPE)
        port = serial.Serial(os.ttyname(slave), baudrate=115200, timeout=1)
    try:
        yield port  # type: ignore[misc]
    finally:
        close = getattr(port, "close", None)
        if callable(close):
            close()
        os.close(master)
        os.close(slave)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.returncode == 0, stderr


def assert_outputs(got: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    want = expected_outputs(inputs)
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


@pytest.mark.parametrize("host_side", ["master", "slave"])
def test_inference_over_a_pty(board: Path, host_side: str) -> None:
    model = fixture_model()
    with serve(board, host_side=host_side) as port:
        saved_timeout = port.timeout
        for seed in range(3):  # one board, several sessions
            inputs = fixture_inputs(seed)
            outputs, stats = run_inference(port, model, inputs, timeout=5)
            assert_outputs(outputs, inputs)
            assert stats.status == 0
            assert stats.ticks is not None and 0 <= stats.ticks < 5 * CLOCK_HZ
            assert stats.clock_hz == CLOCK_HZ
            assert stats.device_seconds is not None and stats.device_seconds < 5
            raw = b"".join(outputs[t.name].astype(np.dtype(t.dtype).newbyteorder("<"))
                           .tobytes() for t in OUTPUTS)
            assert stats.output_crc32 == crc32(raw)
            assert stats.bytes_received > 0 and 0 < stats.host_seconds < 5
        assert port.timeout == saved_timeout  # given back


def test_inputs_are_checked_before_anything_is_sent(board: Path) -> None:
    inputs = fixture_inputs()
    inputs["bias"] = inputs["bias"].astype(np.int64)
    with serve(board) as port:
        with pytest.raises(InputError, match=r"input 'bias': expected shape \(4,\) int32, got "
                                              r"shape \(4,\) int64"):
            run_inference(port, fixture_model(), inputs, timeout=2)
        port.timeout = 0.2
        assert port.read(1) == b""  # nothing was sent, so the board said nothing
        good = fixture_inputs(1)
        assert_outputs(run_inference(port, fixture_model(), good, timeout=2)[0], good)


def test_run_failure_reports_the_status(board: Path) -> None:
    inputs = fixture_inputs()
    inputs["x:0"][0, 0] = np.nan  # the fixture model returns 7
    with serve(board) as port:
        with pytest.raises(DeviceRunFailed, match="^tvmgen_fixture_run failed on the device "
                                                  "with status 7$") as info:
            run_inference(port, fixture_model(), inputs, timeout=2)
        assert info.value.stats.status == 7 and info.value.stats.ticks is not None
        good = fixture_inputs(2)  # the board serves the next session
        assert_outputs(run_inference(port, fixture_model(), good, timeout=2)[0], good)


def test_wrong_model_is_refused(board: Path) -> None:
    base = fixture_model()
    other = dataclasses.replace(base, name="kws", main=dataclasses.replace(
        base.main, symbol="tvmgen_kws___tvm_main__"), kernels=())
    renamed = dataclasses.replace(base, inputs=(
        dataclasses.replace(base.inputs[0], name="x"), *base.inputs[1:]))
    inputs = fixture_inputs()
    with serve(board) as port:
        with pytest.raises(Error, match=r"^the device runs model 'fixture' \(\[24 B, 16 B\] in, "
                                        r"\[24 B, 16 B\] out\), expected 'kws' .*--port$"):
            run_inference(port, other, inputs, timeout=2)
        with pytest.raises(Error, match="other tensor names, shapes or dtypes"):
            run_inference(port, renamed, {"x": inputs["x:0"], "bias": inputs["bias"]}, timeout=2)


def session_bytes_before_outputs() -> int:
    """Bytes the board writes in a session before the first OUTPUT frame."""
    info = DeviceInfo(1, 0, 0, 0, 0, tuple(t.nbytes for t in INPUTS),
                      tuple(t.nbytes for t in OUTPUTS), NAME).encode()
    chunk = BOARD_MAX_PAYLOAD - CHUNK_HEADER_SIZE
    acks = sum(-(-t.nbytes // chunk) for t in INPUTS)
    stats = RunStats(0, 0, 0).encode()
    return 2 * FRAME_OVERHEAD + len(info) + len(stats) + acks * (FRAME_OVERHEAD + 6)


@pytest.mark.parametrize("fault", ["--exit-after-bytes", "--mute-after-bytes"])
def test_device_that_stops_answering(board: Path, fault: str) -> None:
    died_at = session_bytes_before_outputs() + 7  # inside the first OUTPUT frame
    with serve(board, fault, str(died_at)) as port:
        started = time.monotonic()
        with pytest.raises(Error) as info:
            run_inference(port, fixture_model(), fixture_inputs(), timeout=0.5)
        elapsed = time.monotonic() - started
    assert str(info.value) == "device stopped answering after 0.5 s while waiting for RESULT"
    assert 0.5 <= elapsed < 1.5


def test_device_that_never_answers(board: Path) -> None:
    with serve(board, "--mute-after-bytes", "0") as port:
        started = time.monotonic()
        with pytest.raises(Error, match=r"^device did not answer HELLO within 0.4 s: is the "
                                        r"microexport firmware of 'fixture' running"):
            run_inference(port, fixture_model(), fixture_inputs(), timeout=0.4)
        assert time.monotonic() - started < 1.4


def test_corrupt_frame_from_the_device_is_an_error(board: Path) -> None:
    info_frame = session_bytes_before_outputs() - 19 - 3 * 16  # INFO, then 3 ACKs and STATS
    message = (r"^bad CRC in ACK frame \(seq 2, 6 payload bytes\): "
               r"received 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}$")
    with (serve(board, "--corrupt-byte", str(info_frame + 8)) as port,  # first ACK's payload
          pytest.raises(Error, match=message)):
        run_inference(port, fixture_model(), fixture_inputs(), timeout=2)


def test_request_corrupted_on_the_way_is_sent_again(board: Path) -> None:
    hello = len(encode_frame(FrameType.HELLO, 1, Hello().encode()))
    inputs = fixture_inputs(4)
    with serve(board) as port:
        _, clean = run_inference(port, fixture_model(), inputs, timeout=2)
        noisy = CorruptingPort(port, hello + 8)  # a data byte of the first INPUT frame
        outputs, stats = run_inference(noisy, fixture_model(), inputs, timeout=2)
    assert_outputs(outputs, inputs)
    first_input = FRAME_OVERHEAD + BOARD_MAX_PAYLOAD
    assert stats.bytes_sent == clean.bytes_sent + first_input


# --- a misbehaving board on a socket: the session's deadline ---------------------------------


FAKE_MAX_PAYLOAD = 256  # every fixture tensor in one chunk: 3 + 2 + 2 = 7 steps per session


class FakeBoard:
    """A board written in Python with the package's own codecs, behind a TCP socket that the host
    opens as `socket://127.0.0.1:PORT` (pyserial), as `microexport run --port` would.

    It answers HELLO with the fixture's INFO and then misbehaves as `mode` says:

    * `stale-acks`: never acknowledges INPUT, but keeps sending valid stale frames (a repeated
      INFO, ACKs and an ERROR of old sequence numbers) every few milliseconds.
    * `stale-outputs`: acknowledges every INPUT and answers RUN with STATS, then keeps sending
      valid OUTPUT, STATS and ACK frames of old sequence numbers instead of the outputs.
    * `slow-and-noisy`: answers every request only after `delay` seconds, and with ERROR bad_crc
      (please resend) three times out of four.
    """

    def __init__(self, mode: str, delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        self.sent_stale = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> FakeBoard:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()
        assert not self.thread.is_alive()

    def serve(self) -> None:
        self.server.settimeout(5)
        try:
            connection, _ = self.server.accept()
        except OSError:
            return
        with connection, contextlib.suppress(OSError):  # OSError: the host closed the port
            connection.settimeout(0.005)
            self.talk(connection)

    def talk(self, connection: socket.socket) -> None:
        model = fixture_model()
        info = DeviceInfo(1, 0, FAKE_MAX_PAYLOAD, model_signature(model), 0,
                          tuple(t.nbytes for t in INPUTS), tuple(t.nbytes for t in OUTPUTS),
                          NAME).encode()
        decoder = FrameDecoder()
        hello_seq = None
        stale: list[Frame] = []  # sent round-robin, one every 5 ms, once not empty
        attempts: dict[int, int] = {}
        while not self.stop.is_set():
            try:
                data = connection.recv(4096)
                if not data:
                    return
                decoder.feed(data)
            except TimeoutError:
                pass
            while (frame := decoder.next_frame()) is not None:
                if frame.type == FrameType.HELLO:
                    hello_seq = frame.seq
                    connection.sendall(encode_frame(FrameType.INFO, frame.seq, info))
                    continue
                assert hello_seq is not None
                old = (frame.seq - 1) & 0xFF
                if self.mode == "stale-acks":
                    stale = [Frame(FrameType.INFO, hello_seq, info),
                             Frame(FrameType.ACK, old, Ack(FrameType.INPUT, 0, 24).encode()),
                             Frame(FrameType.ERROR, old, ErrorReport(
                                 ErrorCode.NO_SESSION, FrameType.INPUT, 0,
                                 ErrorCode.NO_SESSION.text).encode())]
                elif self.mode == "stale-outputs" and frame.type == FrameType.INPUT:
                    chunk = Chunk.decode(frame.payload)
                    ack = Ack(FrameType.INPUT, chunk.index, chunk.offset + len(chunk.data))
                    connection.sendall(encode_frame(FrameType.ACK, frame.seq, ack.encode()))
                elif self.mode == "stale-outputs":
                    connection.sendall(encode_frame(FrameType.STATS, frame.seq,
                                                    RunStats(0, 0, 0).encode()))
                    stale = [Frame(FrameType.OUTPUT, old, Chunk(0, 0, bytes(24)).encode()),
                             Frame(FrameType.STATS, old, RunStats(0, 0, 0).encode()),
                             Frame(FrameType.ACK, old, Ack(FrameType.INPUT, 1, 16).encode())]
                else:  # slow-and-noisy
                    time.sleep(self.delay)
                    attempts[frame.seq] = attempts.get(frame.seq, 0) + 1
                    if attempts[frame.seq] % 4:
                        report = ErrorReport(ErrorCode.BAD_CRC, frame.type, 0,
                                             ErrorCode.BAD_CRC.text)
                        connection.sendall(encode_frame(FrameType.ERROR, frame.seq,
                                                        report.encode()))
                    elif frame.type == FrameType.INPUT:
                        chunk = Chunk.decode(frame.payload)
                        ack = Ack(FrameType.INPUT, chunk.index, chunk.offset + len(chunk.data))
                        connection.sendall(encode_frame(FrameType.ACK, frame.seq, ack.encode()))
                    else:
                        connection.sendall(encode_frame(FrameType.STATS, frame.seq,
                                                        RunStats(0, 0, 0).encode()))
            if stale:
                connection.sendall(stale[self.sent_stale % len(stale)].encode())
                self.sent_stale += 1


def test_session_steps() -> None:
    info = DeviceInfo(1, 0, FAKE_MAX_PAYLOAD, 0, 0, (24, 16), (24, 16), NAME)
    assert session_steps(info) == 7  # HELLO, 2 INPUT, RUN, 2 OUTPUT, RESULT
    small = dataclasses.replace(info, max_payload=BOARD_MAX_PAYLOAD)  # 19-byte chunks
    assert session_steps(small) == 3 + 2 + 1 + 2 + 1
    assert session_steps(dataclasses.replace(info, input_sizes=(0,), output_sizes=(4,))) == 4


@pytest.mark.parametrize(("mode", "waiting_for"), [
    ("stale-acks", "ACK of input 'x:0' bytes 0..24"),
    ("stale-outputs", "RESULT"),
])
def test_stale_frames_do_not_keep_the_host_waiting(mode: str, waiting_for: str) -> None:
    timeout = 0.5
    deadline = timeout * 7
    with FakeBoard(mode) as board:
        port = open_port(board.url)
        started = time.monotonic()
        try:
            with pytest.raises(DeviceTimeout) as info:
                run_inference(port, fixture_model(), fixture_inputs(), timeout=timeout)
        finally:
            elapsed = time.monotonic() - started
            port.close()  # type: ignore[attr-defined]
    message = str(info.value)
    assert re.fullmatch(rf"device sent no answer within 0\.5 s while waiting for "
                        rf"{re.escape(waiting_for)}, only \d+ stale frames \(the last "
                        rf"[A-Z]+ seq \d+\)", message), message
    assert isinstance(info.value, Error)
    assert board.sent_stale > 20  # the board really kept talking all along
    assert timeout <= elapsed < min(deadline, timeout + 1.0)


def test_session_deadline() -> None:
    """Every request is answered within the timeout, but only at its fourth attempt (ERROR
    bad_crc three times): no step is ever silent for the timeout, yet the session passes
    timeout × steps (7 × 0.5 s) while the third request, RUN, is still being resent."""
    timeout = 0.5
    deadline = timeout * 7
    with FakeBoard("slow-and-noisy", delay=0.6 * timeout) as board:  # 12 attempts: 3.6 s
        port = open_port(board.url)
        started = time.monotonic()
        try:
            with pytest.raises(DeviceTimeout, match=r"^the session did not end within its "
                                                    r"deadline of 3\.5 s \(7 steps × the 0\.5 s "
                                                    r"timeout\) while waiting for STATS$"):
                run_inference(port, fixture_model(), fixture_inputs(), timeout=timeout)
        finally:
            elapsed = time.monotonic() - started
            port.close()  # type: ignore[attr-defined]
    assert deadline <= elapsed < deadline + 1.0


def exchange(link: SerialLink, frame_type: int, seq: int, payload: bytes = b"") -> Frame:
    link.send(Frame(frame_type, seq, payload))
    reply = link.receive(2.0)
    assert reply is not None, f"no reply to {frame_type:#x}"
    assert reply.seq == seq
    return reply


def rejected(reply: Frame) -> tuple[str, int, int]:
    assert reply.type == FrameType.ERROR
    report = ErrorReport.decode(reply.payload)
    assert report.text == ErrorCode(report.code).text
    return ErrorCode(report.code).name, report.request_type, report.detail


def test_device_rejects_bad_requests(board: Path) -> None:
    model = fixture_model()
    with serve(board) as port, SerialLink(port) as link:
        assert rejected(exchange(link, FrameType.RUN, 1)) == ("NO_SESSION", FrameType.RUN, 0)
        assert rejected(exchange(link, FrameType.INPUT, 2, Chunk(0, 0, b"1234").encode())) == (
            "NO_SESSION", FrameType.INPUT, 0)

        info = DeviceInfo.decode(exchange(link, FrameType.HELLO, 3, Hello().encode()).payload)
        assert info == DeviceInfo(1, 1, BOARD_MAX_PAYLOAD, model_signature(model), CLOCK_HZ,
                                  (24, 16), (24, 16), "fixture")
        assert info.has_clock and not info.big_endian

        assert rejected(exchange(link, 0x42, 4)) == ("UNKNOWN_TYPE", 0x42, 0)
        assert rejected(exchange(link, FrameType.INPUT, 5, b"\x00\x00\x00")) == (
            "BAD_PAYLOAD", FrameType.INPUT, 3)
        assert rejected(exchange(link, FrameType.INPUT, 6, Chunk(2, 0, b"1").encode())) == (
            "BAD_TENSOR", FrameType.INPUT, 2)
        assert rejected(exchange(link, FrameType.INPUT, 7, Chunk(0, 4, b"1").encode())) == (
            "BAD_OFFSET", FrameType.INPUT, 0)
        ack = Ack.decode(exchange(link, FrameType.INPUT, 8, Chunk(1, 0, bytes(10)).encode())
                         .payload)
        assert ack == Ack(FrameType.INPUT, 1, 10)
        assert rejected(exchange(link, FrameType.INPUT, 9, Chunk(1, 8, bytes(9)).encode())) == (
            "BAD_OFFSET", FrameType.INPUT, 10)  # would end past the 16-byte input
        assert Ack.decode(exchange(link, FrameType.INPUT, 10, Chunk(1, 4, bytes(12)).encode())
                          .payload) == Ack(FrameType.INPUT, 1, 16)  # overlap is fine
        assert rejected(exchange(link, FrameType.RUN, 11)) == ("INCOMPLETE", FrameType.RUN, 0)
        assert rejected(exchange(link, FrameType.RUN, 12, b"\x00")) == (
            "BAD_PAYLOAD", FrameType.RUN, 1)

        corrupt = bytearray(Frame(FrameType.RUN, 13).encode())
        corrupt[-1] ^= 0xFF
        port.write(bytes(corrupt))
        reply = link.receive(2.0)
        assert reply is not None and rejected(reply) == ("BAD_CRC", FrameType.RUN, 0)

        # A length beyond the receive buffer is refused at once; the board resynchronises.
        port.write(MAGIC + struct.pack("<BBH", FrameType.INPUT, 14, 1000))
        reply = link.receive(2.0)
        assert reply is not None and rejected(reply) == (
            "TOO_LONG", FrameType.INPUT, BOARD_MAX_PAYLOAD)

        # HELLO in another version: INFO says ours, and no session opens.
        assert DeviceInfo.decode(exchange(link, FrameType.HELLO, 15, b"\x02").payload).version == 1
        assert rejected(exchange(link, FrameType.RUN, 16)) == ("NO_SESSION", FrameType.RUN, 0)
        assert rejected(exchange(link, FrameType.HELLO, 17)) == ("BAD_PAYLOAD", FrameType.HELLO, 0)


def test_board_streams_chunked_outputs(board: Path) -> None:
    inputs = fixture_inputs(5)
    raw = {t.name: np.ascontiguousarray(inputs[t.name]).tobytes() for t in INPUTS}
    with serve(board) as port, SerialLink(port) as link:
        exchange(link, FrameType.HELLO, 1, Hello().encode())
        seq = 2
        for index, spec in enumerate(INPUTS):
            for offset in range(0, spec.nbytes, 8):
                exchange(link, FrameType.INPUT, seq,
                         Chunk(index, offset, raw[spec.name][offset : offset + 8]).encode())
                seq += 1
        stats = RunStats.decode(exchange(link, FrameType.RUN, seq).payload)
        assert stats.status == 0 and stats.has_ticks
        frames = []
        while not frames or frames[-1].type != FrameType.RESULT:
            frame = link.receive(2.0)
            assert frame is not None and frame.seq == seq
            frames.append(frame)
    chunks = [Chunk.decode(f.payload) for f in frames[:-1]]
    chunk = BOARD_MAX_PAYLOAD - CHUNK_HEADER_SIZE
    assert [(c.index, c.offset, len(c.data)) for c in chunks] == [
        (0, 0, chunk), (0, chunk, 24 - chunk), (1, 0, 16)]
    data = b"".join(c.data for c in chunks)
    assert ResultSummary.decode(frames[-1].payload) == ResultSummary(2, 40, crc32(data))
    want = expected_outputs(inputs)
    assert data == want["y"].tobytes() + want["count"].tobytes()


@pytest.mark.parametrize(
    ("workspace", "io_in_workspace"), [("external", False), ("static", True), ("external", True)]
)
def test_real_model_with_pools_over_a_pty(workspace: str, io_in_workspace: bool,
                                          build_model: Callable, tmp_path: Path) -> None:
    """A compiled zoo model with two workspace pools, served by the host board: the device code
    passes every pool and, with inputs/outputs in the workspace, writes and reads them there."""
    import tarfile

    from zoo import mlp_onnx

    import microexport
    from microexport.model import PoolSpec

    cc = require_program("gcc", "gcc")
    path, inputs = build_model(mlp_onnx)
    archive = microexport.compile(
        path, tmp_path / "mlp.tar", name="mlp", workspace=workspace,
        io_in_workspace=io_in_workspace, pools=(PoolSpec("fast", 64), PoolSpec("slow", None)),
    ).archive
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "archive", filter="data")
    root = tmp_path / "archive"
    model = read_model(root)
    assert [p.name for p in model.workspace_pools] == ["fast", "slow"]
    for name, text in render_device_sources(model).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "host_board_main.c").write_text(render_host_board(model))
    program = tmp_path / "mlp_board"
    sources = [*sorted((root / "codegen/host/src").glob("*.c")),
               tmp_path / "microexport_protocol.c", tmp_path / "host_board_main.c"]
    run_command([cc, *WARNINGS, "-I", root / "codegen/host/include", "-I", tmp_path, *sources,
                 "-o", program, "-lm"], check=True)
    expected = microexport.run(microexport.compile(path, tmp_path / "plain.tar", name="mlp")
                               .archive, inputs)
    with serve(program) as port:
        for _ in range(2):
            outputs, stats = run_inference(port, model, inputs, timeout=5)
            assert stats.status == 0
            for name, array in expected.items():
                np.testing.assert_array_equal(outputs[name], array)
