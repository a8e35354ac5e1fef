"""The host side of a session: frames over a port, the exchange with the board, run_inference.

The host leads, stop-and-wait: it sends one request (HELLO, INPUT, RUN) and waits for its reply
before the next; every reply echoes the request's `seq`. `run_inference` runs one session: HELLO
until INFO answers, INPUT chunks each acknowledged, RUN, then STATS, the OUTPUT chunks and
RESULT. Frames are in `wire`, payloads in `messages`; docs/serial-protocol.md is the
specification.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from microexport.deploy.protocol.messages import (
    CHUNK_HEADER_SIZE,
    Ack,
    Chunk,
    DeviceInfo,
    ErrorReport,
    Hello,
    ResultSummary,
    RunStats,
)
from microexport.deploy.protocol.wire import (
    MIN_DEVICE_MAX_PAYLOAD,
    PROTOCOL_VERSION,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    crc32,
    type_name,
)
from microexport.deploy.tensors import decode_outputs, encode_inputs
from microexport.errors import Error
from microexport.model import CompiledModel, TensorSpec

log = logging.getLogger(__name__)

HELLO_INTERVAL = 0.5  # seconds between HELLOs while the board does not answer (it may be booting)
POLL_INTERVAL = 0.05  # the port's read timeout while waiting: how often the deadline is checked
MAX_RETRANSMISSIONS = 3  # resends of a request the board received corrupted

# Errors after which the request is sent again: the board never saw a valid request.
RETRANSMIT_CODES = frozenset({ErrorCode.BAD_CRC, ErrorCode.TOO_LONG})


class DeviceTimeout(Error):
    """The board did not answer in time: no reply within `timeout` seconds, or the session
    passed its deadline."""


class SerialPort(Protocol):
    """What the host needs of a port: pyserial's `read`, `write` and `timeout`."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes, fewer when `timeout` seconds pass first."""
        ...

    def write(self, data: bytes, /) -> int | None:
        """Send `data`."""
        ...


# --- the model ------------------------------------------------------------------------------


def model_signature(model: CompiledModel) -> int:
    """CRC-32 of the model's name and its inputs' and outputs' names, shapes and dtypes.

    Compiled into the firmware and sent in INFO, so the host can tell that the board runs
    `model` and not another one with the same name and sizes.
    """

    def tensors(specs: tuple[TensorSpec, ...]) -> list[list[Any]]:
        return [[t.name, [int(d) for d in t.shape], t.dtype] for t in specs]

    canonical = json.dumps(
        {"model_name": model.name, "inputs": tensors(model.inputs),
         "outputs": tensors(model.outputs)},
        sort_keys=True, separators=(",", ":"),
    )
    return crc32(canonical.encode())


def check_device(info: DeviceInfo, model: CompiledModel) -> None:
    """Error if the board does not speak this protocol version or runs another model."""
    name = model.name
    if info.version != PROTOCOL_VERSION:
        raise version_mismatch(info.version)
    if info.big_endian:
        raise Error("the device is big-endian: only little-endian boards are supported")
    want_in = tuple(t.nbytes for t in model.inputs)
    want_out = tuple(t.nbytes for t in model.outputs)
    if info.model_name != name or (info.input_sizes, info.output_sizes) != (want_in, want_out):
        raise Error(
            f"the device runs model '{info.model_name}' ({_sizes(info.input_sizes)} in, "
            f"{_sizes(info.output_sizes)} out), expected '{name}' ({_sizes(want_in)} in, "
            f"{_sizes(want_out)} out): flash the firmware built for this archive or pick "
            f"another --port"
        )
    if info.signature != model_signature(model):
        raise Error(
            f"the device's model '{name}' has other tensor names, shapes or dtypes than this "
            f"archive (signature 0x{info.signature:08x}, expected "
            f"0x{model_signature(model):08x}): flash the firmware built for this archive"
        )
    if info.max_payload < MIN_DEVICE_MAX_PAYLOAD:
        raise Error(f"the device accepts payloads of only {info.max_payload} bytes, "
                    f"at least {MIN_DEVICE_MAX_PAYLOAD} are needed")


def version_mismatch(version: int) -> Error:
    """The error for a board speaking another protocol version."""
    return Error(f"the device speaks serial protocol version {version}, this microexport "
                 f"speaks {PROTOCOL_VERSION}: rebuild and flash the firmware")


def _sizes(sizes: Sequence[int]) -> str:
    return "[" + ", ".join(f"{s} B" for s in sizes) + "]"


# --- the link -------------------------------------------------------------------------------


class SerialLink:
    """Frames over a pyserial-like port.

    While open, the port's `timeout` is the short poll interval (restored by `close`), so that
    waiting for a frame can end at a deadline. Counts the bytes it sends and receives.
    """

    def __init__(self, port: SerialPort, poll_interval: float = POLL_INTERVAL) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._seq = 0
        self._saved_timeout = port.timeout
        port.timeout = poll_interval

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Give the port its timeout back (the port stays open)."""
        try:
            self.port.timeout = self._saved_timeout
        except (OSError, ValueError):
            log.debug("cannot restore the port's timeout", exc_info=True)

    def next_seq(self) -> int:
        """A new sequence number for a request (1..255, then 0 again)."""
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def discard_input(self) -> None:
        """Drop bytes already received (pyserial's `reset_input_buffer`, when the port has it)."""
        self.decoder = FrameDecoder()
        reset = getattr(self.port, "reset_input_buffer", None)
        if callable(reset):
            try:
                reset()
            except OSError as err:
                raise Error(f"serial port failed: {err}") from None

    def send(self, frame: Frame) -> None:
        """Write one frame; Error if the port fails."""
        data = frame.encode()
        log.debug("send %s seq %d, %d payload bytes", frame.name, frame.seq, len(frame.payload))
        try:
            self.port.write(data)
        except OSError as err:  # serial.SerialException is an OSError
            raise Error(f"writing to the serial port failed: {one_line(err)}") from None
        self.bytes_sent += len(data)

    def receive(self, timeout: float) -> Frame | None:
        """The next frame, None if none completes within `timeout` seconds.

        FrameError for a frame with a bad CRC; Error if the port fails.
        """
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                log.debug("received %s seq %d, %d payload bytes", frame.name, frame.seq,
                          len(frame.payload))
                return frame
            if time.monotonic() >= deadline:
                return None
            try:
                data = self.port.read(self.decoder.needed)
            except OSError as err:
                raise Error(f"reading from the serial port failed: {one_line(err)}") from None
            self.bytes_received += len(data)
            self.decoder.feed(data)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


# --- inference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceStats:
    """What one inference on the board reported, and what the exchange cost."""

    status: int  # return value of tvmgen_<name>_run (0: success)
    ticks: int | None  # clock ticks the run took, None if the board has no clock
    clock_hz: int | None  # ticks per second, None if unknown
    output_crc32: int | None  # CRC-32 of all outputs, checked; None when the run failed
    host_seconds: float  # wall time on the host from sending RUN to receiving RESULT
    bytes_sent: int  # bytes the host wrote in the session, frame overhead included
    bytes_received: int  # bytes the host read in the session, frame overhead included

    @property
    def device_seconds(self) -> float | None:
        """The run time in seconds, if the board reports both ticks and its clock rate."""
        if self.ticks is None or not self.clock_hz:
            return None
        return self.ticks / self.clock_hz


class DeviceRunFailed(Error):
    """`tvmgen_<name>_run` returned a non-zero status on the board."""

    def __init__(self, message: str, stats: InferenceStats) -> None:
        super().__init__(message)
        self.stats = stats


def session_steps(info: DeviceInfo) -> int:
    """How many steps one session with this board takes, each allowed the run timeout.

    HELLO (until INFO), every INPUT chunk (until its ACK), RUN (until STATS, the model's run
    included), every OUTPUT chunk and RESULT; chunks of `info.max_payload - CHUNK_HEADER_SIZE`
    bytes of the tensor sizes INFO announces.
    """
    chunk = max(1, info.max_payload - CHUNK_HEADER_SIZE)
    chunks = sum(-(-size // chunk) for size in (*info.input_sizes, *info.output_sizes))
    return 3 + chunks


@dataclass
class _Wait:
    """Waiting for one step's frame: what for, and until when (`timeout` after it began)."""

    what: str
    until: float
    ignored: int = 0  # frames received meanwhile that answer nothing the host waits for
    last_ignored: str = ""


@dataclass
class _Exchange:
    """One session's view of the link: the model, the timeout and the deadline.

    Every step (a request and its reply, or the next OUTPUT / RESULT after RUN) must complete
    within `timeout` seconds of its start: frames that answer nothing the host waits for (another
    seq, a stale ERROR, a repeated INFO) do not restart that clock. Once INFO has told how many
    steps the session takes, the whole session also has a deadline, `timeout` × steps after the
    first HELLO; normally only retransmitted requests can reach it.
    """

    link: SerialLink
    model: CompiledModel
    timeout: float
    started: float = field(default_factory=time.monotonic)
    steps: int = 0  # of the session, known once INFO arrived; 0 before
    deadline: float = math.inf  # started + timeout × steps, once known

    def wait(self, what: str) -> _Wait:
        """Start waiting for `what`: the step's `timeout` counts from now."""
        return _Wait(what, time.monotonic() + self.timeout)

    def receive(self, wait: _Wait) -> Frame:
        """The next frame for `wait`; DeviceTimeout when its time or the session's is up."""
        until = min(wait.until, self.deadline)
        frame = self.link.receive(max(0.0, until - time.monotonic()))
        if frame is not None:
            return frame
        if self.deadline <= wait.until:
            raise DeviceTimeout(
                f"the session did not end within its deadline of {self.timeout * self.steps:g} s "
                f"({self.steps} steps × the {self.timeout:g} s timeout) while waiting for "
                f"{wait.what}"
            )
        if wait.ignored:
            raise DeviceTimeout(
                f"device sent no answer within {self.timeout:g} s while waiting for {wait.what}, "
                f"only {wait.ignored} stale frames (the last {wait.last_ignored})"
            )
        raise DeviceTimeout(
            f"device stopped answering after {self.timeout:g} s while waiting for {wait.what}"
        )

    def ignore(self, wait: _Wait, frame: Frame, why: str) -> None:
        """Skip a frame that answers nothing the host waits for (it does not extend the wait)."""
        wait.ignored += 1
        wait.last_ignored = f"{frame.name} seq {frame.seq}"
        log.debug("ignored %s seq %d %s", frame.name, frame.seq, why)

    def hello(self) -> DeviceInfo:
        """HELLO until an INFO answers (the board may be booting); corrupt frames are skipped.

        Sets the session's step count and deadline from INFO.
        """
        self.link.discard_input()
        self.started = time.monotonic()
        deadline = self.started + self.timeout
        sent: set[int] = set()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                port = getattr(self.link.port, "port", None) or getattr(self.link.port, "name", "")
                where = f" on {port}" if isinstance(port, str) and port else ""
                raise DeviceTimeout(
                    f"device did not answer HELLO within {self.timeout:g} s{where}: is the "
                    f"microexport firmware of '{self.model.name}' running, at the "
                    f"right baud rate?"
                )
            seq = self.link.next_seq()
            sent.add(seq)
            self.link.send(Frame(FrameType.HELLO, seq, Hello().encode()))
            wait_until = time.monotonic() + min(HELLO_INTERVAL, remaining)
            while (left := wait_until - time.monotonic()) > 0:
                try:
                    frame = self.link.receive(left)
                except FrameError as err:
                    log.debug("ignored while connecting: %s", err)
                    continue
                if frame is None:
                    break
                if frame.type == FrameType.INFO and frame.seq in sent:
                    # The version comes first in every version's INFO; the rest may differ.
                    if frame.payload[:1] != bytes([PROTOCOL_VERSION]):
                        raise version_mismatch(frame.payload[0] if frame.payload else 0)
                    info = DeviceInfo.decode(frame.payload)
                    self.steps = session_steps(info)
                    self.deadline = self.started + self.timeout * self.steps
                    return info
                log.debug("ignored %s seq %d while connecting", frame.name, frame.seq)

    def request(self, frame_type: FrameType, payload: bytes, expect: FrameType,
                what: str) -> Frame:
        """Send a request and return its reply of type `expect`.

        A request the board received corrupted (ERROR bad_crc / too_long) is sent again, at most
        MAX_RETRANSMISSIONS times; replies to other requests (another seq) are skipped.
        """
        seq = self.link.next_seq()
        frame = Frame(frame_type, seq, payload)
        for _attempt in range(MAX_RETRANSMISSIONS + 1):
            self.link.send(frame)
            reply = self.reply(seq, expect, self.wait(what))
            if reply is not None:
                return reply
        raise Error(f"the device received {type_name(frame_type)} corrupted "
                    f"{MAX_RETRANSMISSIONS + 1} times: check the wiring and baud rate")

    def reply(self, seq: int, expect: FrameType, wait: _Wait) -> Frame | None:
        """The next frame of type `expect` answering `seq`; None if the board asks to resend."""
        while True:
            frame = self.receive(wait)
            if frame.type == FrameType.ERROR:
                report = ErrorReport.decode(frame.payload)
                if report.code in RETRANSMIT_CODES:
                    log.debug("device asks to resend: %s", report.describe())
                    return None
                if frame.seq == seq:
                    raise Error(report.describe())
                self.ignore(wait, frame, f"(stale: {report.describe()})")
                continue
            if frame.seq != seq:
                self.ignore(wait, frame, f"while waiting for seq {seq}")
                continue
            if frame.type != expect:
                raise FrameError(f"the device sent {frame.name} while {wait.what} was expected")
            return frame

    def send_input(self, index: int, data: bytes, chunk_size: int) -> None:
        """Send one input in chunks, each acknowledged."""
        name = self.model.inputs[index].name
        for offset in range(0, len(data), chunk_size):
            chunk = Chunk(index, offset, data[offset : offset + chunk_size])
            what = f"ACK of input '{name}' bytes {offset}..{offset + len(chunk.data)}"
            reply = self.request(FrameType.INPUT, chunk.encode(), FrameType.ACK, what)
            ack = Ack.decode(reply.payload)
            if (ack.acked_type, ack.index, ack.received) != (
                FrameType.INPUT, index, offset + len(chunk.data)
            ):
                raise FrameError(
                    f"the device acknowledged {type_name(ack.acked_type)} {ack.index} with "
                    f"{ack.received} bytes, expected input {index} with "
                    f"{offset + len(chunk.data)} bytes"
                )

    def run(self, info: DeviceInfo) -> tuple[dict[str, bytes], InferenceStats]:
        """RUN, then STATS, every OUTPUT chunk and RESULT; raw outputs by name."""
        started = time.monotonic()
        reply = self.request(FrameType.RUN, b"", FrameType.STATS, "STATS")
        seq = reply.seq
        run = RunStats.decode(reply.payload)
        specs = self.model.outputs
        buffers = [bytearray() for _ in specs]

        def stats(crc: int | None) -> InferenceStats:
            return InferenceStats(
                status=run.status,
                ticks=run.ticks if run.has_ticks else None,
                clock_hz=info.clock_hz or None,
                output_crc32=crc,
                host_seconds=time.monotonic() - started,
                bytes_sent=self.link.bytes_sent,
                bytes_received=self.link.bytes_received,
            )

        run_symbol = self.model.run_symbol
        if run.status != 0:
            raise DeviceRunFailed(f"{run_symbol} failed on the device with status {run.status}",
                                  stats(None))
        wait = self.wait("RESULT")
        while True:
            frame = self.receive(wait)
            if frame.seq != seq:
                self.ignore(wait, frame, "after RUN")
                continue
            if frame.type == FrameType.RESULT:
                break
            if frame.type == FrameType.ERROR:
                raise Error(ErrorReport.decode(frame.payload).describe())
            if frame.type != FrameType.OUTPUT:
                raise FrameError(f"the device sent {frame.name} while OUTPUT or RESULT was "
                                 f"expected")
            chunk = Chunk.decode(frame.payload)
            if chunk.index >= len(specs):
                raise FrameError(f"the device sent output {chunk.index}, the model has "
                                 f"{len(specs)} outputs")
            buffer = buffers[chunk.index]
            size = specs[chunk.index].nbytes
            if chunk.offset != len(buffer) or len(buffer) + len(chunk.data) > size:
                raise FrameError(
                    f"the device sent bytes {chunk.offset}..{chunk.offset + len(chunk.data)} of "
                    f"output '{specs[chunk.index].name}' ({size} bytes) after "
                    f"{len(buffer)} bytes"
                )
            buffer += chunk.data
            wait = self.wait("RESULT")  # a chunk is progress: the next one gets its own timeout
        summary = ResultSummary.decode(frame.payload)
        received = b"".join(buffers)
        crc = crc32(received)
        for spec, buffer in zip(specs, buffers, strict=True):
            if len(buffer) != spec.nbytes:
                raise FrameError(f"the device sent {len(buffer)} bytes of output "
                                 f"'{spec.name}', expected {spec.nbytes}")
        if (summary.outputs, summary.total_bytes) != (len(specs), len(received)):
            raise FrameError(
                f"the device's RESULT counts {summary.outputs} outputs of {summary.total_bytes} "
                f"bytes, expected {len(specs)} of {len(received)}"
            )
        if summary.crc32 != crc:
            raise FrameError(f"output checksum mismatch: the device computed "
                             f"0x{summary.crc32:08x}, the received outputs give 0x{crc:08x}")
        raw = {spec.name: bytes(buffer) for spec, buffer in zip(specs, buffers, strict=True)}
        return raw, stats(crc)


def run_inference(
    port: SerialPort,
    model: CompiledModel,
    inputs: Mapping[str, np.ndarray],
    timeout: float = 10.0,
) -> tuple[dict[str, np.ndarray], InferenceStats]:
    """Run the model once on a board serving the protocol; outputs by name and the stats.

    `port` is an open pyserial-like port (`serial.Serial`, `serial.serial_for_url(...)`, ...),
    `model` the archive's compiled-model record, `inputs` name → array.

    `timeout` (seconds) bounds every step of the session: the board must answer HELLO, each
    INPUT chunk and RUN (the model's run included), and send each next OUTPUT chunk or RESULT,
    within `timeout` of the step's start; frames that answer nothing (stale sequence numbers,
    duplicates) do not extend it. The whole session has a deadline of `timeout` ×
    `session_steps(info)` seconds from the first HELLO, so run_inference returns or raises
    within that (plus the 50 ms poll interval) whatever the board sends.

    Raises InputError for inputs that do not match the model (before anything is sent),
    DeviceRunFailed when `tvmgen_<name>_run` fails on the board, DeviceTimeout when the board
    does not answer in time or the deadline passes, and a one-line Error when the board runs
    another model or a frame or the outputs' checksum is corrupt.
    """
    if not timeout > 0:  # NaN too
        raise Error(f"timeout must be positive, got {timeout:g} s")
    raw_inputs = encode_inputs(model, inputs)
    with SerialLink(port) as link:
        exchange = _Exchange(link, model, timeout)
        info = exchange.hello()
        check_device(info, model)
        chunk_size = info.max_payload - CHUNK_HEADER_SIZE
        for index, spec in enumerate(model.inputs):
            exchange.send_input(index, raw_inputs[spec.name], chunk_size)
        raw_outputs, stats = exchange.run(info)
    return decode_outputs(model, raw_outputs), stats
