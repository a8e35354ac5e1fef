"""Board descriptions: the YAML files of the repository's top-level `boards/` directory, shipped
as the data package `microexport.boards` (see pyproject.toml) and read here.

A board names its CPU and memories, the C compiler and flags to build for it, and the platforms
(see `microexport.deploy.platforms`) that can build and run a model on it. The schema is in
docs/boards.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from microexport.errors import Error
from microexport.model import PoolSpec, pool_problem

_SIZE = re.compile(r"^\s*(\d+)\s*([KkMm]?)\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
_VID_PID = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$")
_ZEPHYR_VERSION = re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,4}")  # as in $ZEPHYR_BASE/VERSION: 4.0.0
# Board fields rendered into generated files (C comments, CMakeLists.txt, prj.conf, linker
# scripts): a plain token, so no newline, quote or `*/` can reach them.
_TOKEN = re.compile(r"[A-Za-z0-9_.+@/-]{1,128}")
TOKEN_FIELDS = ("name", "cpu", "fpu", "qemu_machine", "zephyr_board", "west_runner")
DEFAULT_RUN_TIMEOUT = 60.0
MAX_RUN_TIMEOUT = 86400.0  # one day
ADDRESS_SPACE = 2**32  # microcontrollers have 32-bit addresses: no region ends beyond 4 GiB


@dataclass(frozen=True)
class MemoryRegion:
    """A flash or RAM region: start address and size in bytes."""

    origin: int
    size: int


@dataclass(frozen=True)
class SerialConfig:
    """How to reach a board over a serial port: baud rate and the USB VID:PID of its probe(s)."""

    baud: int
    vid_pid: tuple[str, ...] = ()  # ("0483:374b", ...): any of these identifies the board's port


@dataclass(frozen=True)
class Board:
    """One board: target CPU, memories, toolchain and the platforms that can run it."""

    name: str
    platforms: tuple[str, ...]
    compiler: str
    description: str = ""
    cpu: str | None = None  # e.g. "cortex-m3"; None for the host
    fpu: str | None = None  # e.g. "fpv4-sp-d16"
    # The core has the DSP extension (SIMD32: SMLAD, SXTB16, ...; Cortex-M4, M7, M33, M55): the
    # int8 micro-kernels use it. Checked against the compiler for the board's flags
    # (tests/test_boards.py), which is what selects the code (`__ARM_FEATURE_SIMD32`).
    dsp: bool = False
    float_abi: str | None = None  # "soft" | "softfp" | "hard"
    compiler_package: str | None = None  # Debian package providing the compiler
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    flash: MemoryRegion | None = None  # None: not constrained (host)
    ram: MemoryRegion | None = None
    qemu_machine: str | None = None
    zephyr_board: str | None = None
    # Zephyr releases the board file was checked with ("4.0.0"): its zephyr_board exists there
    # and its CPU and FPU flags match what that Zephyr builds for.
    zephyr_versions: tuple[str, ...] = ()
    serial: SerialConfig | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT  # seconds one inference may take
    clock_hz: int | None = None  # core clock (SysTick processor clock); QEMU instruction counts
    stack_size: int | None = None  # bytes of stack to reserve; None: the platform's default
    heap_size: int | None = None  # bytes of heap to reserve; None: the platform's default
    west_runner: str | None = None  # `west flash --runner`; None: the Zephyr board's default
    # Workspace pools to plan for this board, filled in order (e.g. fast DTCM, then SRAM);
    # empty: one unlimited pool.
    workspace_pools: tuple[PoolSpec, ...] = ()

    @property
    def default_platform(self) -> str:
        """The platform used when none is asked for: the first listed."""
        return self.platforms[0]

    @property
    def cpu_flags(self) -> tuple[str, ...]:
        """GCC flags selecting the CPU and float ABI (`-mcpu=cortex-m4 -mthumb -mfloat-abi=hard
        -mfpu=fpv4-sp-d16`); empty for the host."""
        flags: list[str] = []
        if self.cpu:
            flags.append(f"-mcpu={self.cpu}")
            if self.cpu.startswith("cortex-m"):
                flags.append("-mthumb")
        if self.float_abi:
            flags.append(f"-mfloat-abi={self.float_abi}")
        if self.fpu:
            flags.append(f"-mfpu={self.fpu}")
        return tuple(flags)


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
    region = MemoryRegion(parse_size(value["origin"], f"{where}.origin"),
                          parse_size(value["size"], f"{where}.size"))
    if region.origin + region.size > ADDRESS_SPACE:
        raise Error(f"{where}: origin {region.origin:#x} + size {region.size} ends beyond the "
                    "4 GiB (32-bit) address space")
    return region


def _serial(value: object, where: str) -> SerialConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"baud", "vid_pid"} or "baud" not in value:
        raise Error(f"{where}: expected a mapping with 'baud' and optionally 'vid_pid'")
    baud = value["baud"]
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise Error(f"{where}.baud: expected a positive integer, got {baud!r}")
    raw = value.get("vid_pid")
    ids = [] if raw is None else [raw] if isinstance(raw, str) else raw
    if not isinstance(ids, list) or not all(isinstance(i, str) and _VID_PID.match(i) for i in ids):
        raise Error(f"{where}.vid_pid: expected a USB id like '0483:374b' or a list of them, "
                    f"got {raw!r}")
    return SerialConfig(baud, tuple(i.lower() for i in ids))


def _pools(value: object, where: str) -> tuple[PoolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Error(f"{where}: expected a list of {{name, size, section}} mappings")
    pools = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if (not isinstance(item, dict) or not set(item) <= {"name", "size", "section"}
                or not isinstance(item.get("name"), str)):
            raise Error(f"{at}: expected {{name: C identifier, size: bytes or unlimited, "
                        f"section: optional linker section}}")
        size = item.get("size", "unlimited")
        limit = None if size == "unlimited" else parse_size(size, f"{at}.size")
        section = _optional_str(item.get("section"), f"{at}.section")
        problem = pool_problem(item["name"], section)
        if problem is not None:
            raise Error(f"{at}: {problem}")
        pools.append(PoolSpec(item["name"], limit, section))
    return tuple(pools)


def _optional_size(value: object, where: str) -> int | None:
    return None if value is None else parse_size(value, where)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Error(f"{where}: expected a list of strings")
    return tuple(value)


def _zephyr_versions(value: object, where: str, zephyr_board: str | None) -> tuple[str, ...]:
    versions = _strings(value, where) if isinstance(value, list) else None
    if value is not None and (versions is None
                              or not all(_ZEPHYR_VERSION.fullmatch(v) for v in versions)):
        raise Error(f"{where}: expected a list of Zephyr versions like [\"4.0.0\"], got "
                    f"{str(value)[:80]!r}")
    if versions and zephyr_board is None:
        raise Error(f"{where}: Zephyr versions without a zephyr_board: name the Zephyr board")
    return versions or ()


def _optional_str(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise Error(f"{where}: expected a string or null, got {value!r}")
    return value


def board_from_dict(data: dict[str, Any], origin: str) -> Board:
    """Validate the YAML mapping of one board and build the `Board`."""
    known = {f.name for f in fields(Board)}
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise Error(f"{origin}: field name {odd[0]!r} is not a string; known fields: "
                    f"{', '.join(sorted(known))}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise Error(f"{origin}: unknown field(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known))}")
    for key in ("name", "platforms", "compiler"):
        if not data.get(key):
            raise Error(f"{origin}: missing required field '{key}'")
    timeout = data.get("run_timeout", DEFAULT_RUN_TIMEOUT)
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_RUN_TIMEOUT):  # also refuses .nan
        raise Error(f"{origin}.run_timeout: expected a positive number of seconds, at most "
                    f"{MAX_RUN_TIMEOUT:g}, got {timeout!r}")
    optional = {key: _optional_str(data.get(key), f"{origin}.{key}")
                for key in ("description", "cpu", "fpu", "float_abi", "compiler_package",
                            "qemu_machine", "zephyr_board", "west_runner")}
    if optional["float_abi"] not in (None, "soft", "softfp", "hard"):
        raise Error(f"{origin}.float_abi: expected soft, softfp or hard, "
                    f"got {optional['float_abi']!r}")
    dsp = data.get("dsp", False)
    if not isinstance(dsp, bool):
        raise Error(f"{origin}.dsp: expected true or false, got {dsp!r}")
    clock = data.get("clock_hz")
    if clock is not None and (isinstance(clock, bool) or not isinstance(clock, int) or clock <= 0):
        raise Error(f"{origin}.clock_hz: expected a positive integer (Hz), got {clock!r}")
    name = _optional_str(data["name"], f"{origin}.name")
    compiler = _optional_str(data["compiler"], f"{origin}.compiler")
    assert name is not None and compiler is not None
    for key, value in (("name", name), *((k, optional[k]) for k in TOKEN_FIELDS[1:])):
        if value is not None and _TOKEN.fullmatch(value) is None:
            raise Error(f"{origin}.{key}: {value[:80]!r} is not a plain name (at most 128 ASCII "
                        f"letters, digits and _ . + @ / -)")
    return Board(
        name=name,
        platforms=_strings(data["platforms"], f"{origin}.platforms"),
        compiler=compiler,
        description=optional["description"] or "",
        cpu=optional["cpu"],
        fpu=optional["fpu"],
        dsp=dsp,
        float_abi=optional["float_abi"],
        compiler_package=optional["compiler_package"],
        cflags=_strings(data.get("cflags"), f"{origin}.cflags"),
        ldflags=_strings(data.get("ldflags"), f"{origin}.ldflags"),
        flash=_region(data.get("flash"), f"{origin}.flash"),
        ram=_region(data.get("ram"), f"{origin}.ram"),
        qemu_machine=optional["qemu_machine"],
        zephyr_board=optional["zephyr_board"],
        zephyr_versions=_zephyr_versions(data.get("zephyr_versions"), f"{origin}.zephyr_versions",
                                         optional["zephyr_board"]),
        serial=_serial(data.get("serial"), f"{origin}.serial"),
        run_timeout=float(timeout),
        clock_hz=clock,
        stack_size=_optional_size(data.get("stack_size"), f"{origin}.stack_size"),
        heap_size=_optional_size(data.get("heap_size"), f"{origin}.heap_size"),
        west_runner=optional["west_runner"],
        workspace_pools=_pools(data.get("workspace_pools"), f"{origin}.workspace_pools"),
    )


def board_to_dict(board: Board) -> dict[str, Any]:
    """The YAML mapping of `board` (the inverse of `board_from_dict`)."""
    data: dict[str, Any] = {}
    for f in fields(Board):
        value = getattr(board, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, MemoryRegion):
            value = {"origin": value.origin, "size": value.size}
        elif isinstance(value, SerialConfig):
            value = {"baud": value.baud, "vid_pid": list(value.vid_pid)}
        if f.name == "workspace_pools":
            value = [{"name": p.name, "size": "unlimited" if p.size_limit is None
                      else p.size_limit, "section": p.section} for p in board.workspace_pools]
        data[f.name] = value
    return data


def dump_board(board: Board) -> str:
    """`board` as YAML text that `parse_board` reads back to an equal `Board`."""
    return yaml.safe_dump(board_to_dict(board), sort_keys=False)


def parse_board(text: str, origin: str) -> Board:
    """A `Board` from YAML text; `origin` names the source in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise Error(f"{origin}: invalid YAML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise Error(f"{origin}: invalid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise Error(f"{origin}: expected a YAML mapping")
    return board_from_dict(data, origin)


def read_board_file(path: Path) -> str:
    """The text of a board YAML file; Error if it cannot be read or is not UTF-8."""
    if path.is_dir():
        raise Error(f"board file {path} is a directory: give a board YAML file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise Error(f"cannot read board file {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Error(f"board file {path} is not UTF-8 text (byte {data[err.start]:#04x} at "
                    f"offset {err.start}): save it as UTF-8") from None


def list_boards() -> list[str]:
    """Names of the boards shipped with microexport, sorted."""
    root = files("microexport.boards")
    return sorted(
        entry.name.removesuffix(".yaml") for entry in root.iterdir() if entry.name.endswith(".yaml")
    )


def load_board(name: str) -> Board:
    """A shipped board by name, or a board YAML file by path (`my_boards/custom.yaml`)."""
    if name.endswith((".yaml", ".yml")):
        if not Path(name).exists():
            raise Error(f"board file {name} not found: give a board YAML file or one of the "
                        f"boards {', '.join(list_boards())}")
        return parse_board(read_board_file(Path(name)), name)
    if name not in list_boards():
        raise Error(f"unknown board '{name}': known boards are {', '.join(list_boards())}")
    text = files("microexport.boards").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    board = parse_board(text, f"boards/{name}.yaml")
    if board.name != name:
        raise Error(f"boards/{name}.yaml: declares name '{board.name}', expected '{name}'")
    return board
