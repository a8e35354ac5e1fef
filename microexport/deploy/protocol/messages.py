"""The payloads of the serial protocol's frames: one codec per frame type.

Each class is one payload (`encode()` → bytes, `decode(payload)` → instance, FrameError when
malformed); the frames around them are in `wire`. docs/serial-protocol.md has every layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from microexport.deploy.protocol.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    FrameError,
    type_name,
)

CHUNK_HEADER_SIZE = 5  # INPUT / OUTPUT payload: tensor index (u8) + byte offset (u32)
MAX_ERROR_TEXT = 48  # longest text of an ERROR frame
MAX_TENSORS = 255  # inputs and outputs are indexed with one byte
MAX_NAME_BYTES = 255  # the model name's length is one byte

INFO_FLAG_CLOCK = 0x01  # the transport has a clock: STATS carries ticks
INFO_FLAG_BIG_ENDIAN = 0x02  # the board stores tensors big-endian (unsupported by the host)
STATS_FLAG_TICKS = 0x01  # `ticks` was measured


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
