"""Finding and opening the serial port a board serves the protocol on.

`find_board_port` picks the port (`--port`, else the board's USB VID:PID), `open_port` opens it
(a device path or any pyserial URL). pyserial is imported only when a port is listed or opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from microexport.deploy.protocol.session import POLL_INTERVAL, SerialPort, one_line
from microexport.errors import Error

if TYPE_CHECKING:
    from microexport.deploy.boards import Board


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
    """`/dev/ttyACM0 0483:374b (STLink Virtual COM Port)`: device, USB id, description."""
    vid, pid = getattr(info, "vid", None), getattr(info, "pid", None)
    usb = f" {vid:04x}:{pid:04x}" if vid is not None and pid is not None else ""
    description = getattr(info, "description", None)
    what = description if description and description != "n/a" else ""
    return f"{info.device}{usb}" + (f" ({what})" if what else "")


def find_board_port(
    board: Board, available: Sequence[Any] | None = None, *, port: str | None = None
) -> str:
    """The serial port to talk to `board` on.

    `port` (`--port`) wins when given and is returned as is: a device path (`/dev/ttyACM0`,
    `COM3`) or a pyserial URL (`socket://host:4000`, `rfc2217://host:4000`, `loop://`), which
    `open_port` opens. Otherwise the USB serial port whose VID:PID is one of the board file's
    `serial.vid_pid`: several interfaces of one probe (the same USB serial number) give the first
    by location; ports of several probes, or several ports without a serial number to tell them
    apart, are an Error naming them and asking for --port; no match is an Error listing the ports
    seen. `available` replaces the ports pyserial's `serial.tools.list_ports.comports()` finds
    (for tests).
    """
    if port:
        return port
    if board.serial is None or not board.serial.vid_pid:
        raise Error(f"board '{board.name}' has no serial vid_pid: name its port with --port")
    ids = {parse_vid_pid(vid_pid) for vid_pid in board.serial.vid_pid}
    if available is None:
        from serial.tools import list_ports

        available = list_ports.comports()
    ports = sorted(available, key=lambda p: p.device)
    matches = sorted(
        (p for p in ports if (getattr(p, "vid", None), getattr(p, "pid", None)) in ids),
        key=lambda p: (getattr(p, "serial_number", None) or "", getattr(p, "location", None) or "",
                       p.device),
    )
    wanted = " or ".join(f"{vid:04x}:{pid:04x}" for vid, pid in sorted(ids))
    if not matches:
        seen = ", ".join(_describe_port(p) for p in ports) or "none"
        raise Error(f"no serial port of board '{board.name}' (USB {wanted}) found "
                    f"(ports seen: {seen}): connect the board or name its port with --port")
    # A port without a USB serial number is a probe of its own: nothing says it is not.
    probes = {getattr(p, "serial_number", None) or p.device for p in matches}
    if len(probes) > 1:
        found = ", ".join(
            f"{_describe_port(p)} (serial {getattr(p, 'serial_number', None) or 'unknown'})"
            for p in matches
        )
        raise Error(f"several boards with USB {wanted} found: {found}: pick one with --port")
    return str(matches[0].device)


def open_port(device: str, baudrate: int = 115200) -> SerialPort:
    """Open a serial port (a device path or a pyserial URL such as `socket://host:4000`).

    The port's read timeout is the protocol's poll interval; Error (one line) if it cannot be
    opened.
    """
    import serial

    try:
        return serial.serial_for_url(device, baudrate=baudrate, timeout=POLL_INTERVAL)
    except (OSError, ValueError) as err:
        raise Error(f"cannot open serial port {device}: {one_line(err)}") from None
