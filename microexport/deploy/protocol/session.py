"""The framed serial protocol between the host and a board running a compiled model.

The host sends a model's inputs, the board runs `tvmgen_<name>_run` and sends back the outputs,
the time the run took and a checksum. docs/serial-protocol.md is the specification; this module is
the host side (pure Python and numpy; pyserial only to find and open real ports) and renders the
device side, `microexport_protocol.h` / `microexport_protocol.c`, from templates/protocol/.

Every frame is

    magic A5 5A | type u8 | seq u8 | length u16 LE | payload (length bytes) | CRC-32 u32 LE

with the CRC-32 (IEEE 802.3, as `zlib.crc32`) over type, seq, length and payload. The host is the
only one that starts an exchange (HELLO, INPUT, RUN); every reply echoes the request's `seq`.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from microexport.archive.glue import glue_environment, harness_variables, render
from microexport.errors import Error

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAGIC = b"\xa5\x5a"
HEADER_SIZE = 6  # magic (2), type, seq, length (2)
CRC_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE
MAX_PAYLOAD = 0xFFFF  # the length field is 16 bits
CHUNK_HEADER_SIZE = 5  # INPUT / OUTPUT payload: tensor index (u8) + byte offset (u32)
MAX_ERROR_TEXT = 48  # longest text of an ERROR frame
DEFAULT_DEVICE_MAX_PAYLOAD = 256  # MICROEXPORT_MAX_PAYLOAD unless the build overrides it
MIN_DEVICE_MAX_PAYLOAD = 8
MAX_TENSORS = 255  # inputs and outputs are indexed with one byte
MAX_NAME_BYTES = 255  # the model name's length is one byte

HELLO_INTERVAL = 0.5  # seconds between HELLOs while the board does not answer (it may be booting)
POLL_INTERVAL = 0.05  # the port's read timeout while waiting: how often the deadline is checked
MAX_RETRANSMISSIONS = 3  # resends of a request the board received corrupted

DEVICE_HEADER_TEMPLATE = "protocol/microexport_protocol.h.j2"
DEVICE_SOURCE_TEMPLATE = "protocol/microexport_protocol.c.j2"
HOST_BOARD_TEMPLATE = "protocol/host_board_main.c.j2"
DEVICE_TEMPLATES: dict[str, str] = {
    DEVICE_HEADER_TEMPLATE: "microexport_protocol.h",
    DEVICE_SOURCE_TEMPLATE: "microexport_protocol.c",
}
HOST_BOARD_FILENAME = "host_board_main.c"


class FrameType(enum.IntEnum):
    """Frame types: host → board below 0x80, board → host from 0x80."""

    HELLO = 0x01  # open a session: u8 protocol version
    INPUT = 0x02  # one chunk of one input: u8 index, u32 offset, bytes
    RUN = 0x03  # run the model once (empty)
    INFO = 0x81  # reply to HELLO: version, limits, model name, tensor sizes, signature
    ACK = 0x82  # reply to INPUT: u8 acknowledged type, u8 index, u32 bytes received so far
    STATS = 0x83  # first reply to RUN: i32 status, u32 ticks, u8 flags
    OUTPUT = 0x84  # one chunk of one output: u8 index, u32 offset, bytes
    RESULT = 0x85  # last reply to RUN: u8 outputs, u32 total bytes, u32 CRC-32 of all outputs
    ERROR = 0xFF  # a request was rejected: u8 code, u8 request type, u32 detail, text


class ErrorCode(enum.IntEnum):
    """Codes of ERROR frames, with the short text the board sends."""

    BAD_CRC = 1
    TOO_LONG = 2
    UNKNOWN_TYPE = 3
    BAD_PAYLOAD = 4
    BAD_TENSOR = 5
    BAD_OFFSET = 6
    INCOMPLETE = 7
    NO_SESSION = 8

    @property
    def text(self) -> str:
        """The board's text for this code (at most MAX_ERROR_TEXT bytes)."""
        return ERROR_TEXTS[self]


ERROR_TEXTS: dict[ErrorCode, str] = {
    ErrorCode.BAD_CRC: "frame CRC mismatch",
    ErrorCode.TOO_LONG: "payload longer than the receive buffer",
    ErrorCode.UNKNOWN_TYPE: "unknown frame type",
    ErrorCode.BAD_PAYLOAD: "payload length wrong for this frame type",
    ErrorCode.BAD_TENSOR: "no input with this index",
    ErrorCode.BAD_OFFSET: "chunk leaves a gap or ends past the input",
    ErrorCode.INCOMPLETE: "RUN before every input was complete",
    ErrorCode.NO_SESSION: "no session: send HELLO first",
}

# Errors after which the request is sent again: the board never saw a valid request.
RETRANSMIT_CODES = frozenset({ErrorCode.BAD_CRC, ErrorCode.TOO_LONG})

INFO_FLAG_CLOCK = 0x01  # the transport has a clock: STATS carries ticks
INFO_FLAG_BIG_ENDIAN = 0x02  # the board stores tensors big-endian (unsupported by the host)
STATS_FLAG_TICKS = 0x01  # `ticks` was measured


class FrameError(Error):
    """A frame or payload that cannot be decoded (bad magic, length, CRC or layout)."""


class SerialPort(Protocol):
    """What the host needs of a port: pyserial's `read`, `write` and `timeout`."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes, fewer when `timeout` seconds pass first."""
        ...

    def write(self, data: bytes, /) -> int | None:
        """Send `data`."""
        ...


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 (IEEE 802.3, reflected 0xEDB88320, init and xor-out 0xFFFFFFFF) of `data`.

    `crc` continues a previous value: `crc32(b, crc32(a)) == crc32(a + b)`.
    """
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def crc32_nibble_table() -> list[int]:
    """The 16-entry table the device uses to compute the same CRC-32 four bits at a time."""
    table = []
    for nibble in range(16):
        crc = nibble
        for _ in range(4):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return table


def type_name(frame_type: int) -> str:
    """`INFO` for a known frame type, `0x42` otherwise."""
    try:
        return FrameType(frame_type).name
    except ValueError:
        return f"0x{frame_type:02x}"


# --- frames ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame: its type, sequence number and payload (without magic, header and CRC)."""

    type: int
    seq: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFF:
            raise ValueError(f"frame type {self.type} does not fit in one byte")
        if not 0 <= self.seq <= 0xFF:
            raise ValueError(f"sequence number {self.seq} does not fit in one byte")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")

    @property
    def name(self) -> str:
        """The frame type's name (`INFO`), or its hex value when unknown."""
        return type_name(self.type)

    def encode(self) -> bytes:
        """The frame on the wire: magic, header, payload, CRC-32."""
        body = struct.pack("<BBH", self.type, self.seq, len(self.payload)) + bytes(self.payload)
        return MAGIC + body + struct.pack("<I", crc32(body))


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    return Frame(frame_type, seq, payload).encode()


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one frame; FrameError if the magic, length or CRC is wrong."""
    data = bytes(data)
    if len(data) < FRAME_OVERHEAD:
        raise FrameError(f"frame too short: {len(data)} bytes, at least {FRAME_OVERHEAD} needed")
    if data[:2] != MAGIC:
        raise FrameError(f"frame does not start with the magic {MAGIC.hex()}: {data[:2].hex()}")
    frame_type, seq, length = struct.unpack_from("<BBH", data, 2)
    if len(data) != FRAME_OVERHEAD + length:
        raise FrameError(
            f"{type_name(frame_type)} frame length field says {length} payload bytes, "
            f"the frame has {len(data) - FRAME_OVERHEAD}"
        )
    _check_crc(data)
    return Frame(frame_type, seq, data[HEADER_SIZE : HEADER_SIZE + length])


def _check_crc(data: bytes) -> None:
    """FrameError if the CRC at the end of a complete frame does not match."""
    (received,) = struct.unpack_from("<I", data, len(data) - CRC_SIZE)
    computed = crc32(data[2 : len(data) - CRC_SIZE])
    if received != computed:
        frame_type, seq, length = struct.unpack_from("<BBH", data, 2)
        raise FrameError(
            f"bad CRC in {type_name(frame_type)} frame (seq {seq}, {length} payload bytes): "
            f"received 0x{received:08x}, computed 0x{computed:08x}"
        )


class FrameDecoder:
    """Incremental decoder of a byte stream into frames.

    Bytes before a magic are skipped (counted in `skipped`). A frame with a bad CRC raises
    FrameError from `next_frame`; decoding then resumes one byte after its magic, so a frame
    hidden behind a corrupted length field is still found.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def needed(self) -> int:
        """How many more bytes the frame being received needs, at least 1."""
        self._sync()
        if len(self._buffer) < HEADER_SIZE:
            return HEADER_SIZE - len(self._buffer)
        (length,) = struct.unpack_from("<H", self._buffer, 4)
        return max(1, FRAME_OVERHEAD + length - len(self._buffer))

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed; FrameError for a bad CRC."""
        self._sync()
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = struct.unpack_from("<H", self._buffer, 4)
        total = FRAME_OVERHEAD + length
        if len(self._buffer) < total:
            return None
        data = bytes(self._buffer[:total])
        try:
            _check_crc(data)
        except FrameError:
            del self._buffer[:1]
            raise
        del self._buffer[:total]
        frame_type, seq = data[2], data[3]
        return Frame(frame_type, seq, data[HEADER_SIZE : HEADER_SIZE + length])

    def _sync(self) -> None:
        """Drop bytes before the first magic (keeping a trailing first magic byte)."""
        start = self._buffer.find(MAGIC)
        if start < 0:
            start = len(self._buffer)
            if self._buffer.endswith(MAGIC[:1]):
                start -= 1
        if start:
            self.skipped += start
            del self._buffer[:start]


# --- payloads -------------------------------------------------------------------------------


def _unpack(fmt: str, payload: bytes, what: str, exact: bool = True) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    if len(payload) < size or (exact and len(payload) != size):
        want = f"{size}" if exact else f"at least {size}"
        raise FrameError(f"{what} payload has {len(payload)} bytes, expected {want}")
    return struct.unpack_from(fmt, payload)


@dataclass(frozen=True)
class Hello:
    """HELLO (host → board): opens a session in the host's protocol version."""

    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<B", self.version)

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        """Parse a payload; FrameError if malformed (extra bytes are ignored)."""
        return cls(*_unpack("<B", payload, "HELLO", exact=False))


_INFO_FIXED = "<BBHIIBB"  # version, flags, max payload, signature, clock Hz, #inputs, #outputs


@dataclass(frozen=True)
class DeviceInfo:
    """INFO (board → host): who the board is and what model it runs."""

    version: int
    flags: int
    max_payload: int  # largest payload the board accepts
    signature: int  # model_signature() of the model the firmware was built for
    clock_hz: int  # ticks per second of the board's clock, 0 if unknown
    input_sizes: tuple[int, ...]
    output_sizes: tuple[int, ...]
    model_name: str

    @property
    def has_clock(self) -> bool:
        """Whether the board measures the run time."""
        return bool(self.flags & INFO_FLAG_CLOCK)

    @property
    def big_endian(self) -> bool:
        """Whether the board stores tensors big-endian."""
        return bool(self.flags & INFO_FLAG_BIG_ENDIAN)

    def encode(self) -> bytes:
        """The payload bytes."""
        name = self.model_name.encode()
        return (
            struct.pack(_INFO_FIXED, self.version, self.flags, self.max_payload, self.signature,
                        self.clock_hz, len(self.input_sizes), len(self.output_sizes))
            + struct.pack(f"<{len(self.input_sizes) + len(self.output_sizes)}I",
                          *self.input_sizes, *self.output_sizes)
            + struct.pack("<B", len(name)) + name
        )

    @classmethod
    def decode(cls, payload: bytes) -> DeviceInfo:
        """Parse a payload; FrameError if malformed."""
        version, flags, max_payload, signature, clock_hz, n_in, n_out = _unpack(
            _INFO_FIXED, payload, "INFO", exact=False
        )
        offset = struct.calcsize(_INFO_FIXED)
        sizes_end = offset + 4 * (n_in + n_out)
        if len(payload) < sizes_end + 1:
            raise FrameError(f"INFO payload truncated: {len(payload)} bytes for "
                             f"{n_in} inputs and {n_out} outputs")
        sizes = struct.unpack_from(f"<{n_in + n_out}I", payload, offset)
        name_length = payload[sizes_end]
        name = payload[sizes_end + 1 :]
        if len(name) != name_length:
            raise FrameError(f"INFO model name has {len(name)} bytes, expected {name_length}")
        return cls(version, flags, max_payload, signature, clock_hz, tuple(sizes[:n_in]),
                   tuple(sizes[n_in:]), name.decode("ascii", errors="replace"))


@dataclass(frozen=True)
class Chunk:
    """INPUT (host → board) or OUTPUT (board → host): bytes of one tensor at an offset."""

    index: int
    offset: int
    data: bytes

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<BI", self.index, self.offset) + bytes(self.data)

    @classmethod
    def decode(cls, payload: bytes) -> Chunk:
        """Parse a payload; FrameError if malformed."""
        index, offset = _unpack("<BI", payload, "chunk", exact=False)
        return cls(index, offset, bytes(payload[CHUNK_HEADER_SIZE:]))


@dataclass(frozen=True)
class Ack:
    """ACK (board → host): a request was accepted; for INPUT, bytes of that input so far."""

    acked_type: int
    index: int
    received: int

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<BBI", self.acked_type, self.index, self.received)

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        """Parse a payload; FrameError if malformed."""
        return cls(*_unpack("<BBI", payload, "ACK"))


@dataclass(frozen=True)
class RunStats:
    """STATS (board → host): status of `tvmgen_<name>_run` and the ticks it took."""

    status: int
    ticks: int
    flags: int

    @property
    def has_ticks(self) -> bool:
        """Whether `ticks` was measured (the transport has a clock)."""
        return bool(self.flags & STATS_FLAG_TICKS)

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<iIB", self.status, self.ticks, self.flags)

    @classmethod
    def decode(cls, payload: bytes) -> RunStats:
        """Parse a payload; FrameError if malformed."""
        return cls(*_unpack("<iIB", payload, "STATS"))


@dataclass(frozen=True)
class ResultSummary:
    """RESULT (board → host): number of outputs, their total bytes and CRC-32."""

    outputs: int
    total_bytes: int
    crc32: int

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<BII", self.outputs, self.total_bytes, self.crc32)

    @classmethod
    def decode(cls, payload: bytes) -> ResultSummary:
        """Parse a payload; FrameError if malformed."""
        return cls(*_unpack("<BII", payload, "RESULT"))


@dataclass(frozen=True)
class ErrorReport:
    """ERROR (board → host): why the board rejected a request."""

    code: int
    request_type: int  # type of the rejected frame (as received, maybe corrupted)
    detail: int  # a number that helps: the limit, the index, the bytes received so far
    text: str

    @property
    def code_name(self) -> str:
        """`bad_crc` for a known code, `error 42` otherwise."""
        try:
            return ErrorCode(self.code).name.lower()
        except ValueError:
            return f"error {self.code}"

    def encode(self) -> bytes:
        """The payload bytes."""
        return struct.pack("<BBI", self.code, self.request_type, self.detail) + self.text.encode()

    @classmethod
    def decode(cls, payload: bytes) -> ErrorReport:
        """Parse a payload; FrameError if malformed."""
        code, request_type, detail = _unpack("<BBI", payload, "ERROR", exact=False)
        text = bytes(payload[6:]).decode("ascii", errors="replace")
        return cls(code, request_type, detail, "".join(ch if ch.isprintable() else "?"
                                                        for ch in text))

    def describe(self) -> str:
        """One line: what the board said."""
        return (f"the device rejected {type_name(self.request_type)}: {self.text} "
                f"({self.code_name}, detail {self.detail})")


# --- the model ------------------------------------------------------------------------------


def model_signature(metadata: Mapping[str, Any]) -> int:
    """CRC-32 of the model's name and its inputs' and outputs' names, shapes and dtypes.

    Compiled into the firmware and sent in INFO, so the host can tell that the board runs the
    model of `metadata` and not another one with the same name and sizes.
    """

    def tensors(key: str) -> list[list[Any]]:
        return [[t["name"], [int(d) for d in t["shape"]], str(t["dtype"])] for t in metadata[key]]

    canonical = json.dumps(
        {"model_name": metadata["model_name"], "inputs": tensors("inputs"),
         "outputs": tensors("outputs")},
        sort_keys=True, separators=(",", ":"),
    )
    return crc32(canonical.encode())


def check_device(info: DeviceInfo, metadata: Mapping[str, Any]) -> None:
    """Error if the board does not speak this protocol version or runs another model."""
    name = str(metadata["model_name"])
    if info.version != PROTOCOL_VERSION:
        raise version_mismatch(info.version)
    if info.big_endian:
        raise Error("the device is big-endian: only little-endian boards are supported")
    want_in = tuple(int(t["size_bytes"]) for t in metadata["inputs"])
    want_out = tuple(int(t["size_bytes"]) for t in metadata["outputs"])
    if info.model_name != name or (info.input_sizes, info.output_sizes) != (want_in, want_out):
        raise Error(
            f"the device runs model '{info.model_name}' ({_sizes(info.input_sizes)} in, "
            f"{_sizes(info.output_sizes)} out), expected '{name}' ({_sizes(want_in)} in, "
            f"{_sizes(want_out)} out): flash the firmware built for this archive or pick "
            f"another --port"
        )
    if info.signature != model_signature(metadata):
        raise Error(
            f"the device's model '{name}' has other tensor names, shapes or dtypes than this "
            f"archive (signature 0x{info.signature:08x}, expected "
            f"0x{model_signature(metadata):08x}): flash the firmware built for this archive"
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
            raise Error(f"writing to the serial port failed: {_one_line(err)}") from None
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
                raise Error(f"reading from the serial port failed: {_one_line(err)}") from None
            self.bytes_received += len(data)
            self.decoder.feed(data)


def _one_line(err: BaseException) -> str:
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


@dataclass(frozen=True)
class _Exchange:
    """One session's view of the link: the model's metadata and the silence timeout."""

    link: SerialLink
    metadata: Mapping[str, Any]
    timeout: float

    def stopped(self, what: str) -> Error:
        return Error(f"device stopped answering after {self.timeout:g} s while waiting for {what}")

    def hello(self) -> DeviceInfo:
        """HELLO until an INFO answers (the board may be booting); corrupt frames are skipped."""
        self.link.discard_input()
        deadline = time.monotonic() + self.timeout
        sent: set[int] = set()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                port = getattr(self.link.port, "port", None) or getattr(self.link.port, "name", "")
                where = f" on {port}" if isinstance(port, str) and port else ""
                raise Error(
                    f"device did not answer HELLO within {self.timeout:g} s{where}: is the "
                    f"microexport firmware of '{self.metadata['model_name']}' running, at the "
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
                    return DeviceInfo.decode(frame.payload)
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
            reply = self.reply(seq, expect, what)
            if reply is not None:
                return reply
        raise Error(f"the device received {type_name(frame_type)} corrupted "
                    f"{MAX_RETRANSMISSIONS + 1} times: check the wiring and baud rate")

    def reply(self, seq: int, expect: FrameType, what: str) -> Frame | None:
        """The next frame of type `expect` answering `seq`; None if the board asks to resend."""
        while True:
            frame = self.link.receive(self.timeout)
            if frame is None:
                raise self.stopped(what)
            if frame.type == FrameType.ERROR:
                report = ErrorReport.decode(frame.payload)
                if report.code in RETRANSMIT_CODES:
                    log.debug("device asks to resend: %s", report.describe())
                    return None
                if frame.seq == seq:
                    raise Error(report.describe())
                log.debug("ignored a stale ERROR (seq %d): %s", frame.seq, report.describe())
                continue
            if frame.seq != seq:
                log.debug("ignored %s seq %d while waiting for seq %d", frame.name, frame.seq, seq)
                continue
            if frame.type != expect:
                raise FrameError(f"the device sent {frame.name} while {what} was expected")
            return frame

    def send_input(self, index: int, data: bytes, chunk_size: int) -> None:
        """Send one input in chunks, each acknowledged."""
        name = self.metadata["inputs"][index]["name"]
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
        specs = self.metadata["outputs"]
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

        run_symbol = f"tvmgen_{self.metadata['model_name']}_run"
        if run.status != 0:
            raise DeviceRunFailed(f"{run_symbol} failed on the device with status {run.status}",
                                  stats(None))
        while True:
            frame = self.link.receive(self.timeout)
            if frame is None:
                raise self.stopped("RESULT")
            if frame.seq != seq:
                log.debug("ignored %s seq %d after RUN", frame.name, frame.seq)
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
            size = int(specs[chunk.index]["size_bytes"])
            if chunk.offset != len(buffer) or len(buffer) + len(chunk.data) > size:
                raise FrameError(
                    f"the device sent bytes {chunk.offset}..{chunk.offset + len(chunk.data)} of "
                    f"output '{specs[chunk.index]['name']}' ({size} bytes) after "
                    f"{len(buffer)} bytes"
                )
            buffer += chunk.data
        summary = ResultSummary.decode(frame.payload)
        received = b"".join(buffers)
        crc = crc32(received)
        for spec, buffer in zip(specs, buffers, strict=True):
            if len(buffer) != int(spec["size_bytes"]):
                raise FrameError(f"the device sent {len(buffer)} bytes of output "
                                 f"'{spec['name']}', expected {spec['size_bytes']}")
        if (summary.outputs, summary.total_bytes) != (len(specs), len(received)):
            raise FrameError(
                f"the device's RESULT counts {summary.outputs} outputs of {summary.total_bytes} "
                f"bytes, expected {len(specs)} of {len(received)}"
            )
        if summary.crc32 != crc:
            raise FrameError(f"output checksum mismatch: the device computed "
                             f"0x{summary.crc32:08x}, the received outputs give 0x{crc:08x}")
        raw = {spec["name"]: bytes(buffer) for spec, buffer in zip(specs, buffers, strict=True)}
        return raw, stats(crc)


def run_inference(
    port: SerialPort,
    metadata: Mapping[str, Any],
    inputs: Mapping[str, np.ndarray],
    timeout: float = 10.0,
) -> tuple[dict[str, np.ndarray], InferenceStats]:
    """Run the model once on a board serving the protocol; outputs by name and the stats.

    `port` is an open pyserial-like port (`serial.Serial`, `serial.serial_for_url(...)`, ...),
    `metadata` the archive's metadata.json contents, `inputs` name → array. `timeout` is the
    longest the board may stay silent, the model's run included. Raises InputError for inputs
    that do not match the model (before anything is sent), DeviceRunFailed when
    `tvmgen_<name>_run` fails on the board, and a one-line Error when the board runs another
    model, stops answering, or a frame or the outputs' checksum is corrupt.
    """
    from microexport.deploy.platforms.base import decode_outputs, encode_inputs

    if timeout <= 0:
        raise Error(f"timeout must be positive, got {timeout:g} s")
    raw_inputs = encode_inputs(metadata, inputs)
    with SerialLink(port) as link:
        exchange = _Exchange(link, metadata, timeout)
        info = exchange.hello()
        check_device(info, metadata)
        chunk_size = info.max_payload - CHUNK_HEADER_SIZE
        for index, spec in enumerate(metadata["inputs"]):
            exchange.send_input(index, raw_inputs[spec["name"]], chunk_size)
        raw_outputs, stats = exchange.run(info)
    return decode_outputs(metadata, raw_outputs), stats


# --- ports ----------------------------------------------------------------------------------


def parse_vid_pid(vid_pid: str) -> tuple[int, int]:
    """`0483:374b` → (0x0483, 0x374b); Error if malformed."""
    parts = vid_pid.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        vid, pid = (int(part, 16) for part in parts)
    except ValueError:
        raise Error(f"USB id '{vid_pid}' is not VID:PID in hex, e.g. 0483:374b") from None
    if not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
        raise Error(f"USB id '{vid_pid}' is out of range: VID and PID are 16-bit hex numbers")
    return vid, pid


def _describe_port(info: Any) -> str:
    usb = f" {info.vid:04x}:{info.pid:04x}" if info.vid is not None else ""
    what = info.description if info.description and info.description != "n/a" else ""
    return f"{info.device}{usb}" + (f" ({what})" if what else "")


def find_port(
    vid_pid: str | None, port: str | None, *, available: Sequence[Any] | None = None
) -> str:
    """The serial port to talk to the board on.

    `port` wins when given. Otherwise the USB serial port with USB id `vid_pid` (`VID:PID` in
    hex), or, without one, the only USB serial port. `available` replaces the ports pyserial's
    `serial.tools.list_ports.comports()` finds (for tests). Error, listing the ports seen and
    suggesting --port, when none or several match.
    """
    if port:
        return port
    if available is None:
        from serial.tools import list_ports

        available = list_ports.comports()
    ports = sorted(available, key=lambda p: p.device)
    seen = ", ".join(_describe_port(p) for p in ports) or "none"
    if vid_pid:
        vid, pid = parse_vid_pid(vid_pid)
        matches = [p for p in ports if (p.vid, p.pid) == (vid, pid)]
        wanted = f"with USB id {vid:04x}:{pid:04x}"
    else:
        matches = [p for p in ports if p.vid is not None]
        wanted = "on USB"
    if len(matches) == 1:
        return str(matches[0].device)
    if not matches:
        raise Error(f"no serial port {wanted} found (seen: {seen}): connect the board or name "
                    f"its port with --port")
    raise Error(f"{len(matches)} serial ports {wanted} found "
                f"({', '.join(_describe_port(p) for p in matches)}): pick one with --port")


def open_port(device: str, baudrate: int = 115200) -> SerialPort:
    """Open a serial port (a device path or a pyserial URL such as `socket://host:4000`)."""
    import serial

    try:
        return serial.serial_for_url(device, baudrate=baudrate, timeout=POLL_INTERVAL)
    except (OSError, ValueError) as err:
        raise Error(f"cannot open serial port {device}: {_one_line(err)}") from None


# --- device sources -------------------------------------------------------------------------


def _check_renderable(metadata: Mapping[str, Any]) -> None:
    name = str(metadata["model_name"])
    if len(name.encode()) > MAX_NAME_BYTES:
        raise Error(f"model name '{name[:20]}...' is longer than {MAX_NAME_BYTES} bytes: the "
                    f"serial protocol cannot carry it")
    for key in ("inputs", "outputs"):
        if len(metadata[key]) > MAX_TENSORS:
            raise Error(f"the model has {len(metadata[key])} {key}: the serial protocol carries "
                        f"at most {MAX_TENSORS}")
        for tensor in metadata[key]:
            if int(tensor["size_bytes"]) > 0xFFFFFFFF:
                raise Error(f"{key[:-1]} '{tensor['name']}' has {tensor['size_bytes']} bytes: "
                            f"the serial protocol carries at most 4 GiB per tensor")


def protocol_variables(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of the protocol templates: the harness variables plus the protocol's."""
    _check_renderable(metadata)
    variables = harness_variables(metadata)
    variables.update(
        protocol_version=PROTOCOL_VERSION,
        magic=[f"0x{b:02X}" for b in MAGIC],
        frame_types=list(FrameType),
        error_codes=list(ErrorCode),
        model_signature=f"0x{model_signature(metadata):08X}u",
        crc_table=[f"0x{v:08X}u" for v in crc32_nibble_table()],
        default_max_payload=DEFAULT_DEVICE_MAX_PAYLOAD,
        min_max_payload=MIN_DEVICE_MAX_PAYLOAD,
        chunk_header_size=CHUNK_HEADER_SIZE,
        max_error_text=MAX_ERROR_TEXT,
        info_flag_clock=INFO_FLAG_CLOCK,
        info_flag_big_endian=INFO_FLAG_BIG_ENDIAN,
        stats_flag_ticks=STATS_FLAG_TICKS,
        device_header="microexport_protocol.h",
    )
    return variables


def render_device_sources(
    metadata: Mapping[str, Any], template_dir: Path | None = None
) -> dict[str, str]:
    """The board side of the protocol for one model: file name → C text.

    `microexport_protocol.h` (the transport struct, `microexport_serve_once`,
    `microexport_serve_forever`) and `microexport_protocol.c` (the session, the model's static
    input and output buffers, the call of `tvmgen_<name>_run`). Compile them with the archive's
    sources and `-I codegen/host/include`. `template_dir` overrides templates like `--templates`.
    """
    env = glue_environment(template_dir)
    variables = protocol_variables(metadata)
    return {filename: render(env, template, variables)
            for template, filename in DEVICE_TEMPLATES.items()}


def render_host_board(metadata: Mapping[str, Any], template_dir: Path | None = None) -> str:
    """A POSIX `main` serving the protocol on a tty (`--fd N` or `--device PATH`).

    Stands in for a board when testing the protocol on the host; compile it with the device
    sources and the archive's sources.
    """
    return render(glue_environment(template_dir), HOST_BOARD_TEMPLATE,
                  protocol_variables(metadata))
