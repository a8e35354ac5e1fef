"""Board descriptions: the YAML files next to this module (package `microexport.boards`).

This package is the repository's top-level `boards/` directory (see pyproject.toml), so the loader
lives here rather than in a `microexport/boards.py` module, which the package would shadow.

A board names its CPU and memories, the C compiler and flags to build for it, and the platforms
(see `microexport.platforms`) that can build and run a model on it. The schema is in
docs/boards.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..errors import Error

_SIZE = re.compile(r"^\s*(\d+)\s*([KkMm]?)\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
DEFAULT_RUN_TIMEOUT = 60.0


@dataclass(frozen=True)
class MemoryRegion:
    """A flash or RAM region: start address and size in bytes."""

    origin: int
    size: int


@dataclass(frozen=True)
class SerialConfig:
    """How to reach a board over a serial port."""

    baud: int
    vid_pid: str | None = None  # "0483:374b"


@dataclass(frozen=True)
class Board:
    """One board: target CPU, memories, toolchain and the platforms that can run it."""

    name: str
    platforms: tuple[str, ...]
    compiler: str
    description: str = ""
    cpu: str | None = None  # e.g. "cortex-m3"; None for the host
    fpu: str | None = None  # e.g. "fpv4-sp-d16"
    float_abi: str | None = None  # "soft" | "softfp" | "hard"
    compiler_package: str | None = None  # Debian package providing the compiler
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    flash: MemoryRegion | None = None  # None: not constrained (host)
    ram: MemoryRegion | None = None
    qemu_machine: str | None = None
    zephyr_board: str | None = None
    serial: SerialConfig | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT  # seconds one inference may take

    @property
    def default_platform(self) -> str:
        """The platform used when none is asked for: the first listed."""
        return self.platforms[0]


def parse_size(value: object, where: str) -> int:
    """A byte count from an int or a string like `256K` / `1M`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise Error(f"{where}: expected a size in bytes like 65536, 64K or 1M, got {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _region(value: object, where: str) -> MemoryRegion | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"origin", "size"}:
        raise Error(f"{where}: expected a mapping with 'origin' and 'size'")
    return MemoryRegion(parse_size(value["origin"], f"{where}.origin"),
                        parse_size(value["size"], f"{where}.size"))


def _serial(value: object, where: str) -> SerialConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"baud", "vid_pid"} or "baud" not in value:
        raise Error(f"{where}: expected a mapping with 'baud' and optionally 'vid_pid'")
    baud = value["baud"]
    vid_pid = value.get("vid_pid")
    if not isinstance(baud, int) or (vid_pid is not None and not isinstance(vid_pid, str)):
        raise Error(f"{where}: 'baud' must be an integer and 'vid_pid' a string like '0483:374b'")
    return SerialConfig(baud, vid_pid)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Error(f"{where}: expected a list of strings")
    return tuple(value)


def _optional_str(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise Error(f"{where}: expected a string or null, got {value!r}")
    return value


def board_from_dict(data: dict[str, Any], origin: str) -> Board:
    """Validate the YAML mapping of one board and build the `Board`."""
    known = {f.name for f in fields(Board)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise Error(f"{origin}: unknown field(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known))}")
    for key in ("name", "platforms", "compiler"):
        if not data.get(key):
            raise Error(f"{origin}: missing required field '{key}'")
    timeout = data.get("run_timeout", DEFAULT_RUN_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise Error(f"{origin}.run_timeout: expected a positive number of seconds")
    optional = {key: _optional_str(data.get(key), f"{origin}.{key}")
                for key in ("description", "cpu", "fpu", "float_abi", "compiler_package",
                            "qemu_machine", "zephyr_board")}
    name = _optional_str(data["name"], f"{origin}.name")
    compiler = _optional_str(data["compiler"], f"{origin}.compiler")
    assert name is not None and compiler is not None
    return Board(
        name=name,
        platforms=_strings(data["platforms"], f"{origin}.platforms"),
        compiler=compiler,
        description=optional["description"] or "",
        cpu=optional["cpu"],
        fpu=optional["fpu"],
        float_abi=optional["float_abi"],
        compiler_package=optional["compiler_package"],
        cflags=_strings(data.get("cflags"), f"{origin}.cflags"),
        ldflags=_strings(data.get("ldflags"), f"{origin}.ldflags"),
        flash=_region(data.get("flash"), f"{origin}.flash"),
        ram=_region(data.get("ram"), f"{origin}.ram"),
        qemu_machine=optional["qemu_machine"],
        zephyr_board=optional["zephyr_board"],
        serial=_serial(data.get("serial"), f"{origin}.serial"),
        run_timeout=float(timeout),
    )


def parse_board(text: str, origin: str) -> Board:
    """A `Board` from YAML text; `origin` names the source in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise Error(f"{origin}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise Error(f"{origin}: expected a YAML mapping")
    return board_from_dict(data, origin)


def list_boards() -> list[str]:
    """Names of the boards shipped with microexport, sorted."""
    root = files("microexport.boards")
    return sorted(
        entry.name.removesuffix(".yaml") for entry in root.iterdir() if entry.name.endswith(".yaml")
    )


def load_board(name: str) -> Board:
    """A shipped board by name, or a board YAML file by path (`my_boards/custom.yaml`)."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return parse_board(Path(name).read_text(encoding="utf-8"), name)
    if name not in list_boards():
        raise Error(f"unknown board '{name}': known boards are {', '.join(list_boards())}")
    text = files("microexport.boards").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    board = parse_board(text, f"boards/{name}.yaml")
    if board.name != name:
        raise Error(f"boards/{name}.yaml: declares name '{board.name}', expected '{name}'")
    return board
