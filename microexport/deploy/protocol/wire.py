"""The wire format of the serial protocol: frames, their CRC, frame types and error codes.

Every frame is

    magic A5 5A | type u8 | seq u8 | length u16 LE | payload (length bytes) | CRC-32 u32 LE

with the CRC-32 (IEEE 802.3, as `zlib.crc32`) over type, seq, length and payload. What the
payloads hold is in `messages`; docs/serial-protocol.md is the specification.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from microexport.errors import Error

PROTOCOL_VERSION = 1
MAGIC = b"\xa5\x5a"
HEADER_SIZE = 6  # magic (2), type, seq, length (2)
CRC_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE
MAX_PAYLOAD = 0xFFFF  # the length field is 16 bits
DEFAULT_DEVICE_MAX_PAYLOAD = 256  # MICROEXPORT_MAX_PAYLOAD unless the build overrides it
MIN_DEVICE_MAX_PAYLOAD = 8


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
        """The board's text for this code (at most `messages.MAX_ERROR_TEXT` bytes)."""
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


class FrameError(Error):
    """A frame or payload that cannot be decoded (bad magic, length, CRC or layout)."""


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
