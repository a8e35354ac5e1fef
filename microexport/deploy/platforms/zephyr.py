"""The Zephyr platform: a complete Zephyr application serving the model over the serial protocol.

`create` renders, from `templates/zephyr/` and the protocol's device templates:

    CMakeLists.txt          find_package(Zephyr ...), the model's sources as a library
    prj.conf                console UART free for the protocol, stack and heap, FPU, libc
                            (minimal unless the model's C calls libm: `libm_calls`)
    src/main.c              microexport_port_init + microexport_serve_forever
    src/microexport_port.h  the port interface (main.c builds without Zephyr headers)
    src/port_zephyr.c       the transport on the console UART, k_cycle_get_32 as clock
    src/microexport_protocol.[ch]  microexport.deploy.protocol.render_device_sources
    Kconfig, selftest.conf  CONFIG_MICROEXPORT_SELFTEST and the overlay that turns it on
    src/selftest.c          the self-test: one run on embedded inputs, CRC-32s and PASS/FAIL
                            against embedded reference outputs (`SelftestData`,
                            `ZephyrPlatform.write_selftest`)
    testcase.yaml           twister's console harness over the self-test

On QEMU boards prj.conf asks for `-icount` (CONFIG_QEMU_ICOUNT, `icount_shift`) and `run`
reports instructions per inference (`QemuIcount`), as the bare-metal platform does.

`build` runs `west build -b <zephyr board> -d <project>/build <project>`, `flash` runs
`west flash -d <project>/build`. `run` on a board emulated by QEMU runs
`west build -d <project>/build -t run` with the console UART on a pipe of its own (Zephyr's
QEMU_PIPE) and talks the protocol over it; on hardware it opens the board's serial port (found
by the USB VID:PID in the board file, or `--port`) and talks the protocol there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from microexport.archive.glue import interface_variables
from microexport.deploy.platforms.baremetal import icount_shift, ticks_to_instructions
from microexport.deploy.platforms.base import (
    Build,
    Capabilities,
    Invocation,
    MemoryNeeds,
    Platform,
    Project,
    RawRun,
    RunOptions,
    RunStats,
    make_directory,
)
from microexport.deploy.protocol.discovery import find_board_port
from microexport.deploy.subproc import (
    CommandResult,
    debian_package,
    exit_description,
    last_line,
)
from microexport.errors import Error, MissingTool
from microexport.model import CompiledModel
from microexport.templating import glue_environment, render

_log = logging.getLogger(__name__)

SOURCE_DIR = "src"
ZEPHYR_STACK_BASE = 2048  # main thread, protocol frames, AOT main
STACK_ROUNDING = 256
# Flash and RAM of the Zephyr kernel, drivers and the protocol besides the model's pools and
# the main stack: a margin for the estimate before linking.
FLASH_OVERHEAD = 48 * 1024
RAM_OVERHEAD = 12 * 1024
BUILD_TIMEOUT = 1800.0
FLASH_TIMEOUT = 300.0
CMAKE_TIMEOUT = 300.0
QEMU_PIPE = "qemu-fifo"  # <build>/qemu-fifo-<pid>-<token>.in and .out (Zephyr's QEMU_PIPE)
QEMU_PID_FILE = "qemu.pid"  # written by Zephyr's QEMU targets in the build directory
PIPE_OPEN_POLL = 0.05
# Zephyr's QEMU_PIPE opens `-chardev pipe,id=con,mux=on`: QEMU's monitor shares the console and
# byte 0x01 (Ctrl-A) is the mux's escape character. QEMU consumes 0x01 and the byte after it as
# a command (0x01 'x' quits QEMU), and passes one literal 0x01 when it receives two
# (chardev/char-mux.c, mux_proc_byte). Only the host -> QEMU direction is escaped.
QEMU_MUX_ESCAPE = b"\x01"


def escape_qemu_mux(data: bytes) -> bytes:
    """`data` as QEMU's multiplexed chardev must receive it: every 0x01 doubled."""
    return data.replace(QEMU_MUX_ESCAPE, QEMU_MUX_ESCAPE * 2)

# Template → file name in the project directory.
APP_TEMPLATES: dict[str, str] = {
    "zephyr/CMakeLists.txt.j2": "CMakeLists.txt",
    "zephyr/prj.conf.j2": "prj.conf",
    "zephyr/zephyr_main.c.j2": f"{SOURCE_DIR}/main.c",
    "zephyr/microexport_port.h.j2": f"{SOURCE_DIR}/microexport_port.h",
    "zephyr/port_zephyr.c.j2": f"{SOURCE_DIR}/port_zephyr.c",
    "zephyr/Kconfig.j2": "Kconfig",
    "zephyr/selftest.conf.j2": "selftest.conf",
}
# The self-test (twister): rendered with the embedded inputs and reference outputs.
SELFTEST_TEMPLATES: dict[str, str] = {
    "zephyr/selftest.c.j2": f"{SOURCE_DIR}/selftest.c",
    "zephyr/testcase.yaml.j2": "testcase.yaml",
}
SELFTEST_SEED = 0  # the embedded inputs: compare.sample_inputs(model.inputs, SELFTEST_SEED)
HOST_REFERENCE = "the archive built for this machine with cc"
ZEPHYR_HELP = ("install Zephyr (pip install west; west init ~/zephyrproject; cd ~/zephyrproject; "
               "west update; west zephyr-export; and the Zephyr SDK) and set "
               "ZEPHYR_BASE=~/zephyrproject/zephyr")


def zephyr_base(environ: Mapping[str, str] | None = None) -> Path:
    """The Zephyr tree named by ZEPHYR_BASE; Error saying what to install otherwise."""
    environ = os.environ if environ is None else environ
    value = environ.get("ZEPHYR_BASE")
    if not value:
        raise Error(f"ZEPHYR_BASE is not set: {ZEPHYR_HELP}")
    base = Path(value)
    if not (base / "cmake" / "modules").is_dir() and not (base / "share").is_dir():
        raise Error(f"ZEPHYR_BASE={value} is not a Zephyr tree (no cmake/modules): {ZEPHYR_HELP}")
    return base


def toolchain_cmake_args(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """CMake arguments for `west build` that the toolchain calls for.

    With `ZEPHYR_TOOLCHAIN_VARIANT=cross-compile` (or `gnuarmemb`) and a compiler that ships
    picolibc (Debian's picolibc-arm-none-eabi: `gcc -print-file-name=picolibc.specs` is a file),
    `-DTOOLCHAIN_HAS_PICOLIBC=ON` makes Zephyr link the toolchain's picolibc instead of
    compiling the picolibc module (3x faster builds). Nothing otherwise (the Zephyr SDK says so
    itself).
    """
    environ = os.environ if environ is None else environ
    variant = environ.get("ZEPHYR_TOOLCHAIN_VARIANT", "")
    if variant == "cross-compile" and environ.get("CROSS_COMPILE"):
        compiler = environ["CROSS_COMPILE"] + "gcc"
    elif variant == "gnuarmemb" and environ.get("GNUARMEMB_TOOLCHAIN_PATH"):
        compiler = str(Path(environ["GNUARMEMB_TOOLCHAIN_PATH"]) / "bin" / "arm-none-eabi-gcc")
    else:
        return ()
    try:
        found = subprocess.run([compiler, "-print-file-name=picolibc.specs"], capture_output=True,
                               text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ()  # west build names the missing compiler
    if os.path.isabs(found) and os.path.isfile(found):
        return ("-DTOOLCHAIN_HAS_PICOLIBC=ON",)
    return ()


def zephyr_version(base: Path) -> str | None:
    """The release of the Zephyr tree at `base` (`4.0.0`, from its VERSION file); None if the
    tree has no readable VERSION file."""
    try:
        text = (base / "VERSION").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S*)", text, re.MULTILINE))
    parts = [fields.get(key, "") for key in ("VERSION_MAJOR", "VERSION_MINOR", "PATCHLEVEL")]
    return ".".join(parts) if all(part.isdigit() for part in parts) else None


def _add_qualified(names: set[str], prefix: str, node: Mapping[str, Any]) -> None:
    names.add(prefix)
    for variant in node.get("variants") or []:
        # A variant of a CPU cluster (an521's ns of cpu0) is named by the twister files.
        if (isinstance(variant, dict) and isinstance(variant.get("name"), str)
                and "cpucluster" not in variant):
            _add_qualified(names, f"{prefix}/{variant['name']}", variant)


def zephyr_board_names(base: Path, board: str) -> set[str]:
    """The names `west build -b` takes in the tree at `base` for the Zephyr board of `board`
    (`mps2` for `mps2/an521/cpu0`): the board, board/SoC[/variant...] from its board.yml, and
    the identifiers of its twister files (which add CPU clusters: `mps2/an521/cpu0`). Empty
    when the tree has no such board."""
    wanted = board.split("/")[0]
    names: set[str] = set()
    for board_yml in sorted((base / "boards").rglob("board.yml")):
        try:
            text = board_yml.read_text(encoding="utf-8", errors="replace")
            if wanted not in text:
                continue
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict):
            continue
        entries = data.get("boards") or [data.get("board")]
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("name") != wanted:
                continue
            socs = entry.get("socs") or []
            if len(socs) <= 1:  # a board of several SoCs needs its qualifiers
                names.add(wanted)
            for soc in socs:
                if isinstance(soc, dict) and isinstance(soc.get("name"), str):
                    _add_qualified(names, f"{wanted}/{soc['name']}", soc)
            for twister in board_yml.parent.glob("*.yaml"):
                with contextlib.suppress(OSError):
                    found = re.search(r"^identifier:\s*(\S+)", twister.read_text(
                        encoding="utf-8", errors="replace"), re.MULTILINE)
                    if found:
                        names.add(found.group(1))
    return names


def check_board_in_tree(board: Any, base: Path) -> None:
    """Error (one line) unless the Zephyr tree at `base` is a release the board file was checked
    with (`zephyr_versions`) and has the board's `zephyr_board`."""
    version = zephyr_version(base)
    checked = tuple(board.zephyr_versions)
    if version is None:
        _log.warning("ZEPHYR_BASE=%s has no VERSION file: cannot check board %s against it",
                     base, board.name)
    elif not checked:
        _log.warning("board %s names no zephyr_versions it was checked with (Zephyr at %s is "
                     "%s)", board.name, base, version)
    elif version not in checked:
        raise Error(f"board '{board.name}' was checked with Zephyr {', '.join(checked)}, but "
                    f"ZEPHYR_BASE={base} is Zephyr {version}: use a checked Zephyr release, or "
                    f"check the board and add {version} to zephyr_versions in its board file")
    if (base / "boards").is_dir() and board.zephyr_board not in zephyr_board_names(
            base, board.zephyr_board):
        raise Error(f"Zephyr board '{board.zephyr_board}' of board '{board.name}' does not "
                    f"exist in Zephyr {version or '(unknown version)'} at {base}: fix zephyr_board "
                    f"in the board file (see {base}/boards)")


# C99 <math.h> functions (double, float and long double forms): a call to one needs libm, which
# Zephyr's minimal libc does not have.
_LIBM_BASE = (
    "acos", "asin", "atan", "atan2", "cos", "sin", "tan", "acosh", "asinh", "atanh", "cosh",
    "sinh", "tanh", "exp", "exp2", "expm1", "frexp", "ilogb", "ldexp", "log", "log10", "log1p",
    "log2", "logb", "modf", "scalbn", "scalbln", "cbrt", "fabs", "hypot", "pow", "sqrt", "erf",
    "erfc", "lgamma", "tgamma", "ceil", "floor", "nearbyint", "rint", "lrint", "llrint", "round",
    "lround", "llround", "trunc", "fmod", "remainder", "remquo", "copysign", "nan", "nextafter",
    "nexttoward", "fdim", "fmax", "fmin", "fma",
)
# <math.h> classification macros: Zephyr's minimal libc's math.h has none of them.
_MATH_MACROS = ("isnan", "isinf", "isfinite", "isnormal", "signbit", "fpclassify")
LIBM_FUNCTIONS = frozenset({*(name + suffix for name in _LIBM_BASE for suffix in ("", "f", "l")),
                            *_MATH_MACROS})
_C_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def libm_calls(project: Project) -> list[str]:
    """The libm functions the model's C calls (kernel library and run wrapper), sorted; empty
    when the model needs no libm. The C in the archive is what Zephyr compiles, so this reads
    it rather than trusting a summary of it."""
    found: set[str] = set()
    for source in project.sources:
        text = source.read_text(encoding="utf-8", errors="replace")
        found.update(name for name in _C_CALL.findall(text) if name in LIBM_FUNCTIONS)
    return sorted(found)


LIBC_HELP = ("apt-get install picolibc-arm-none-eabi (the toolchain's picolibc), or add Zephyr's "
             "picolibc module to the workspace (west update picolibc)")


def full_libc_source(environ: Mapping[str, str] | None = None,
                     base: Path | None = None) -> str | None:
    """Where a Zephyr build gets a full C library (with libm) from, or None when it has none:
    the Zephyr SDK's picolibc, the cross toolchain's picolibc, or Zephyr's picolibc module
    (`<workspace>/modules/lib/picolibc`, or named in ZEPHYR_MODULES). Toolchain variants other
    than the SDK, cross-compile and gnuarmemb are not checked (west reports what is missing)."""
    environ = os.environ if environ is None else environ
    variant = environ.get("ZEPHYR_TOOLCHAIN_VARIANT", "") or "zephyr"
    if variant == "zephyr":
        return "the Zephyr SDK's picolibc"
    if variant not in ("cross-compile", "gnuarmemb"):
        return f"the {variant} toolchain's C library (not checked)"
    if toolchain_cmake_args(environ):
        return "the toolchain's picolibc"
    if "picolibc" in environ.get("ZEPHYR_MODULES", ""):
        return "the picolibc module in ZEPHYR_MODULES"
    if base is not None and (base.parent / "modules" / "lib" / "picolibc").is_dir():
        return "Zephyr's picolibc module"
    return None


def check_libc(project: Project, base: Path, environ: Mapping[str, str] | None = None) -> None:
    """Error (one line, saying what to install) if the model calls libm and the build has no
    full C library; a model without libm calls builds with Zephyr's minimal libc."""
    calls = libm_calls(project)
    if calls and full_libc_source(environ, base) is None:
        raise Error(f"model '{project.name}' calls libm ({', '.join(calls[:4])}) and needs a full "
                    f"C library, but neither the toolchain nor the Zephyr workspace at "
                    f"{base.parent} has picolibc: {LIBC_HELP}")


@dataclasses.dataclass(frozen=True)
class QemuIcount:
    """QEMU's `-icount shift=N`: one instruction every 2**N ns of virtual time, read through a
    timer of `timer_hz` (the emulated machine's SysTick clock, the board file's `clock_hz`)."""

    shift: int
    timer_hz: int

    @property
    def exact(self) -> bool:
        """Whether the timer ticks at least twice per instruction (ticks -> instructions is
        then exact, `ticks_to_instructions`)."""
        return (1 << self.shift) * self.timer_hz >= 2 * 10**9

    def instructions(self, ticks: int) -> int:
        """Instructions executed while the timer advanced `ticks` (rounded when not exact)."""
        if self.exact:
            return ticks_to_instructions(ticks, self.timer_hz, self.shift)
        return round(ticks * 10**9 / (self.timer_hz << self.shift))


def read_kconfig(path: Path) -> dict[str, str]:
    """`CONFIG_X=value` lines of a Zephyr build's `.config` (quotes kept); empty if unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.MULTILINE))


def qemu_icount(config_path: Path, board: Any) -> QemuIcount | None:
    """The `-icount` setting a built application runs QEMU with (CONFIG_QEMU_ICOUNT and
    CONFIG_QEMU_ICOUNT_SHIFT of its `.config`), None without one or without the board's timer
    clock (`clock_hz`)."""
    config = read_kconfig(config_path)
    shift = config.get("CONFIG_QEMU_ICOUNT_SHIFT", "")
    if config.get("CONFIG_QEMU_ICOUNT") != "y" or not shift.isdigit() or not board.clock_hz:
        return None
    return QemuIcount(int(shift), int(board.clock_hz))


@dataclasses.dataclass(frozen=True)
class SelftestData:
    """What the self-test embeds: inputs and the reference outputs for them (name -> array),
    and where the outputs come from (printed by the self-test)."""

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    reference: str


def _tensor_bytes(array: Any, dtype: str) -> bytes:
    import numpy as np

    want = np.dtype(dtype).newbyteorder("<")
    return np.ascontiguousarray(np.asarray(array).astype(want, copy=False)).tobytes()


def selftest_variables(model: CompiledModel, data: SelftestData) -> dict[str, Any]:
    """The self-test templates' variables: each input and reference output as hex rows of its
    little-endian bytes (`rows`), with its CRC-32 and C type, and the comparison tolerances."""
    import zlib

    from microexport.archive.glue import hex_rows, tensor_var
    from microexport.deploy.compare import FLOAT_ATOL, FLOAT_RTOL, QUANTIZED_MAX_DIFF

    def entries(specs: Any, arrays: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
        found = []
        for spec in specs:
            if spec.name not in arrays:
                raise Error(f"self-test data of model '{model.name}' has no {what} "
                            f"'{spec.name}'")
            raw = _tensor_bytes(arrays[spec.name], spec.dtype)
            if len(raw) != spec.nbytes:
                raise Error(f"self-test {what} '{spec.name}' has {len(raw)} bytes, the model's "
                            f"has {spec.nbytes}")
            rows = [", ".join(f"0x{b}" for b in row) + "," for row in hex_rows(raw)]
            found.append({**dataclasses.asdict(tensor_var(spec)), "rows": rows,
                          "crc32": zlib.crc32(raw), "is_float": spec.dtype.startswith("float")})
        return found

    return {
        "selftest_inputs": entries(model.inputs, data.inputs, "input"),
        "selftest_outputs": entries(model.outputs, data.outputs, "output"),
        "reference": comment_text(data.reference),
        "rtol": repr(FLOAT_RTOL), "atol": repr(FLOAT_ATOL), "max_int_diff": QUANTIZED_MAX_DIFF,
    }


def comment_text(text: str) -> str:
    """`text` safe inside a C comment, a C string and a YAML comment: printable ASCII without
    `*/`, quotes or backslashes."""
    cleaned = "".join(c if " " <= c <= "~" and c not in "\\\"" else "?" for c in text)
    return cleaned.replace("*/", "*?")


def host_reference(project: Project, inputs: Mapping[str, Any]) -> SelftestData:
    """Reference outputs from the archive's C built and run on this machine (the `host`
    platform), for `inputs`."""
    import tempfile

    from microexport.deploy.boards import load_board
    from microexport.deploy.platforms.host import HostPlatform

    host = HostPlatform(load_board("host"))
    with tempfile.TemporaryDirectory(prefix="microexport-selftest-") as tmp:
        work = Path(tmp)
        copy = Project(project.root, work / "build", project.model, work)
        make_directory(copy.build_dir, "build directory")
        build = host.do_build(copy)
        outputs = host.execute(build, inputs).outputs
    return SelftestData(dict(inputs), outputs, HOST_REFERENCE)


def check_west() -> None:
    """MissingTool-like Error if west is not installed, or Zephyr is not set up."""
    if shutil.which("west") is None:
        raise Error(f"'west' not found: {ZEPHYR_HELP}")
    zephyr_base()


class ZephyrPlatform(Platform):
    """A Zephyr application per model, built and flashed with west."""

    name = "zephyr"
    capabilities = Capabilities(
        runs_models=True, can_flash=True, emulated=True, has_serial=True,
        measures_instructions=True, needs_hardware=True, reports_size=True,
    )

    @classmethod
    def board_capabilities(cls, board: Any) -> Capabilities:
        if board.qemu_machine is not None:  # `west build -t run`: no flash, no serial port
            return Capabilities(runs_models=True, emulated=True, measures_instructions=True,
                                reports_size=True)
        return Capabilities(runs_models=True, can_flash=True, has_serial=True,
                            measures_instructions=True, needs_hardware=True, reports_size=True)

    @property
    def zephyr_board(self) -> str:
        """The board for `west build -b` (Zephyr v4 qualifiers: nrf5340dk/nrf5340/cpuapp)."""
        if not self.board.zephyr_board:
            raise Error(f"board '{self.board.name}' has no zephyr_board: add the Zephyr board "
                        f"name to its YAML file")
        return self.board.zephyr_board

    # --- create ---------------------------------------------------------------------------

    def main_stack_size(self, model: CompiledModel) -> int:
        """CONFIG_MAIN_STACK_SIZE: the board's stack_size, else a base plus the largest C locals
        of a kernel (`KernelSpec.stack_bytes`), rounded up."""
        if self.board.stack_size:
            return self.board.stack_size
        need = ZEPHYR_STACK_BASE + model.max_kernel_stack_bytes
        return -(-need // STACK_ROUNDING) * STACK_ROUNDING

    def icount_shift(self) -> int | None:
        """The `-icount shift` the application asks QEMU for (CONFIG_QEMU_ICOUNT_SHIFT): the
        smallest giving at least two SysTick ticks per instruction, so that the ticks around a
        run convert exactly to instructions, as on the bare-metal platform. None on hardware
        and on boards without a known timer clock."""
        if self.board.qemu_machine is None or not self.board.clock_hz:
            return None
        return icount_shift(self.board.clock_hz)

    def template_variables(self, project: Project) -> dict[str, Any]:
        """What the templates in templates/zephyr/ receive (see docs/templates.md)."""
        model = project.model
        return {
            **interface_variables(model),
            "board": self.board,
            "zephyr_board": self.zephyr_board,
            "model_sources": [source.name for source in project.sources],
            "app_sources": ["main.c", "port_zephyr.c", "microexport_protocol.c"],
            "main_stack_size": self.main_stack_size(model),
            "heap_size": self.board.heap_size or 0,
            "kernel_stack_bytes": model.max_kernel_stack_bytes,
            "libm_calls": libm_calls(project),
            "icount_shift": self.icount_shift(),
        }

    def render_sources(self, project: Project) -> dict[str, str]:
        """Relative path → text of every file `create` writes besides the model."""
        from microexport.deploy.protocol import render_device_sources

        env = glue_environment(self.templates)
        variables = self.template_variables(project)
        files = {path: render(env, template, variables)
                 for template, path in APP_TEMPLATES.items()}
        for filename, text in render_device_sources(project.model, self.templates).items():
            files[f"{SOURCE_DIR}/{filename}"] = text
        return files

    def selftest_data(self, project: Project) -> SelftestData:
        """What `create` embeds in the self-test: seeded inputs (`compare.sample_inputs`) and
        the outputs of the archive's C built for this machine (`write_selftest` embeds a
        reference runtime's instead)."""
        from microexport.deploy.compare import sample_inputs

        return host_reference(project, sample_inputs(project.model.inputs, SELFTEST_SEED))

    def write_selftest(self, project: Project, data: SelftestData) -> None:
        """Embed `data` (inputs and reference outputs, e.g. a reference runtime's) in the
        project's self-test: renders src/selftest.c and testcase.yaml again. For a project
        directory: `opened = open_project(dir); opened.platform.write_selftest(opened.project,
        data)`."""
        for relative, text in self.render_selftest(project, data).items():
            (project.home / relative).write_text(text, encoding="utf-8")

    def render_selftest(self, project: Project, data: SelftestData) -> dict[str, str]:
        """Relative path -> text of the self-test's files (src/selftest.c, testcase.yaml)."""
        env = glue_environment(self.templates)
        variables = {**self.template_variables(project),
                     **selftest_variables(project.model, data)}
        return {path: render(env, template, variables)
                for template, path in SELFTEST_TEMPLATES.items()}

    def do_create(self, project: Project) -> None:
        make_directory(project.home / SOURCE_DIR, "source directory")
        files = {**self.render_sources(project),
                 **self.render_selftest(project, self.selftest_data(project))}
        for relative, text in files.items():
            (project.home / relative).write_text(text, encoding="utf-8")

    def do_overhead(self, model: CompiledModel) -> MemoryNeeds:
        return MemoryNeeds(flash=FLASH_OVERHEAD,
                           ram=RAM_OVERHEAD + self.main_stack_size(model)
                           + (self.board.heap_size or 0))

    # --- build ----------------------------------------------------------------------------

    def do_expected_build(self, project: Project) -> Build:
        elf = project.build_dir / "zephyr" / "zephyr.elf"
        return Build(project, elf, elf=elf)

    def do_build_plan(self, project: Project) -> list[Invocation]:
        cmake_args = toolchain_cmake_args()
        return [Invocation(
            ("west", "build", "-b", self.zephyr_board, "-d", str(project.build_dir),
             str(project.home), *(("--", *cmake_args) if cmake_args else ())),
            cwd=project.home,
            timeout=BUILD_TIMEOUT,
            what=f"west build for {self.board.name}",
        )]

    def do_build(self, project: Project) -> Build:
        check_west()
        base = zephyr_base()
        check_board_in_tree(self.board, base)
        check_libc(project, base)
        (step,) = self.do_build_plan(project)
        result = GroupProcess(step).wait()
        log = project.build_dir / "west-build.log"
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            raise Error(f"west build for {self.board.name} failed "
                        f"({exit_description(result.returncode)}): "
                        f"{_west_error(result)} (full log: {log})")
        return self.do_expected_build(project)

    # --- flash ----------------------------------------------------------------------------

    def do_flash_plan(self, build: Build) -> list[Invocation]:
        argv = ["west", "flash", "-d", str(build.project.build_dir)]
        if self.board.west_runner:
            argv += ["--runner", self.board.west_runner]
        return [Invocation(tuple(argv), cwd=build.project.home, timeout=FLASH_TIMEOUT,
                           what=f"west flash to {self.board.name}")]

    def do_flash(self, build: Build) -> None:
        check_west()
        for step in self.do_flash_plan(build):
            result = GroupProcess(step).wait()
            if result.returncode != 0:
                raise Error(f"west flash to {self.board.name} failed "
                            f"({exit_description(result.returncode)}): {_west_error(result)}")

    # --- run ------------------------------------------------------------------------------

    def runs_without_build(self) -> bool:
        """On hardware `run` talks to the flashed board; it does not build."""
        return self.board.qemu_machine is None

    def pipe_path(self, build: Build) -> Path:
        """A new QEMU_PIPE for one run: QEMU reads `<path>.in` and writes `<path>.out`. The name
        is unique per run (process id and a random token), so two runs of one project never
        share a FIFO."""
        return build.project.build_dir / f"{QEMU_PIPE}-{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def do_run_plan(self, build: Build, options: RunOptions,
                    pipe: Path | None = None) -> list[Invocation]:
        if self.board.qemu_machine is None:
            return []  # hardware: the serial port only
        pipe = pipe if pipe is not None else self.pipe_path(build)
        return [Invocation(
            ("west", "build", "-d", str(build.project.build_dir), "-t", "run", "--",
             f"-DQEMU_PIPE={pipe}"),
            cwd=build.project.home,
            timeout=BUILD_TIMEOUT + self.run_timeout(options),
            what=f"west build -t run for {self.board.name}",
        )]

    def serial_port(self, options: RunOptions) -> str:
        """The board's serial port: `--port`, else the one with the board's USB VID:PID."""
        return find_board_port(self.board, port=options.port)

    def do_run(self, build: Build, inputs: dict[str, bytes], options: RunOptions) -> RawRun:
        from microexport.deploy import protocol

        model = build.project.model
        arrays = _decode_inputs(model, inputs)
        timeout = self.run_timeout(options)
        if self.board.qemu_machine is None:
            device = self.serial_port(options)
            baud = self.board.serial.baud if self.board.serial else 115200
            port = protocol.open_port(device, baud)
            try:
                outputs, stats = protocol.run_inference(port, model, arrays, timeout)
            finally:
                port.close()
        else:
            check_west()
            outputs, stats = self.run_in_qemu(build, arrays, options)
        raw = {name: _encode(array) for name, array in outputs.items()}
        return RawRun(raw, self.run_stats(build, stats.ticks, stats.clock_hz,
                                          stats.host_seconds))

    def icount(self, build: Build) -> QemuIcount | None:
        """How QEMU counts instructions for this build (from its Kconfig), None on hardware or
        when the build does not run QEMU with `-icount`."""
        if self.board.qemu_machine is None:
            return None
        return qemu_icount(build.project.build_dir / "zephyr" / ".config", self.board)

    def run_stats(self, build: Build, ticks: int | None, clock_hz: int,
                  host_seconds: float | None = None) -> RunStats:
        """What a run measured: in QEMU with `-icount`, the instructions the model's run took
        (exact when the cycle counter ticks at least twice per instruction); on hardware, the
        ticks of the board's cycle counter as cycles."""
        details: dict[str, Any] = {"clock_hz": clock_hz, "host_seconds": host_seconds}
        counting = self.icount(build) if ticks is not None else None
        if counting is None or ticks is None:
            return RunStats(cycles=ticks, details=details)
        details.update(ticks=ticks, icount_shift=counting.shift, timer_hz=counting.timer_hz,
                       exact=counting.exact)
        return RunStats(instructions=counting.instructions(ticks), details=details)

    def run_in_qemu(
        self, build: Build, inputs: Mapping[str, Any], options: RunOptions
    ) -> tuple[dict[str, Any], Any]:
        """Start `west build -t run` with the console on a pipe, run the protocol over it,
        then stop QEMU (its pid file)."""
        from microexport.deploy import protocol

        pipe = self.pipe_path(build)
        (step,) = self.do_run_plan(build, options, pipe)
        fifos = [pipe.with_name(pipe.name + suffix) for suffix in (".in", ".out")]
        for path in fifos:
            path.unlink(missing_ok=True)
            os.mkfifo(path)
        west = GroupProcess(step)
        finished: list[CommandResult | BaseException] = []
        worker = threading.Thread(target=lambda: finished.append(_capture(west)), daemon=True)
        worker.start()
        timeout = self.run_timeout(options)
        port = FifoPort(pipe, deadline=time.monotonic() + BUILD_TIMEOUT, alive=worker.is_alive)
        try:
            return protocol.run_inference(port, build.project.model, inputs, timeout)
        except Error:
            worker.join(1.0)
            failed = next((r for r in finished if isinstance(r, BaseException)
                           or r.returncode != 0), None)
            if isinstance(failed, Error):
                raise failed from None
            if isinstance(failed, CommandResult):  # west failed: that is the real error
                log = build.project.build_dir / "west-run.log"
                log.write_text(failed.stdout + failed.stderr, encoding="utf-8")
                raise Error(f"west build -t run for {self.board.name} failed "
                            f"({exit_description(failed.returncode)}): {_west_error(failed)} "
                            f"(full log: {log})") from None
            raise
        finally:
            port.close()
            _stop_qemu(build.project.build_dir / QEMU_PID_FILE)
            worker.join(10.0)
            west.kill()  # whatever of west, ninja and QEMU is left
            for path in (*fifos, pipe):  # Zephyr's run target also touches <pipe> itself
                path.unlink(missing_ok=True)
            _forget_qemu_pipe(build.project.build_dir, self.board.name)


class GroupProcess:
    """An Invocation started in its own process group (session), so that a timeout or `kill`
    ends all of it: west, the ninja it runs and the QEMU that ninja starts."""

    def __init__(self, step: Invocation) -> None:
        self.step = step
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._killed = False

    def wait(self) -> CommandResult:
        """Run to the end (or the step's timeout, which kills the group) and capture output."""
        step = self.step
        label = step.what or f"'{step.argv[0]}'"
        env = {**os.environ, **dict(step.env)} if step.env else None
        _log.info("running: %s  (in %s)", step.command_line, step.cwd)
        with self._lock:
            if self._killed:
                raise Error(f"{label} was stopped before it started")
            try:
                self._process = subprocess.Popen(
                    step.argv, cwd=step.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            except FileNotFoundError:
                raise MissingTool(step.argv[0], step.package or debian_package(step.argv[0])) \
                    from None
        process = self._process
        try:
            stdout, stderr = process.communicate(timeout=step.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            process.communicate()
            raise Error(f"{label} timed out after {step.timeout:g} s: "
                        f"{shlex.join(step.argv)}") from None
        return CommandResult(step.argv, process.returncode, stdout.decode(errors="replace"),
                             stderr.decode(errors="replace"))

    def kill(self) -> None:
        """SIGKILL the whole process group (nothing if it has not started or has ended)."""
        with self._lock:
            self._killed = True
            if self._process is None:
                return
            with contextlib.suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)


class FifoPort:
    """A pyserial-like port over Zephyr's QEMU_PIPE FIFOs (`<path>.in`, `<path>.out`).

    What is written is escaped for QEMU's chardev mux (`escape_qemu_mux`); what is read comes
    from the emulated UART unchanged.
    """

    def __init__(self, path: Path, deadline: float, alive: Any) -> None:
        self.timeout: float | None = 0.05
        self._path = path
        self._deadline = deadline
        self._alive = alive
        self._read_fd: int | None = None
        self._write_fd: int | None = None

    def _open(self) -> None:
        if self._read_fd is not None:
            return
        read_fd = os.open(str(self._path) + ".out", os.O_RDONLY | os.O_NONBLOCK)
        while True:
            try:
                self._write_fd = os.open(str(self._path) + ".in", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:  # ENXIO until QEMU opens its end
                if time.monotonic() > self._deadline or not self._alive():
                    os.close(read_fd)
                    raise Error("QEMU did not open its serial pipe: see the build directory's "
                                "west output (west build -t run)") from None
                time.sleep(PIPE_OPEN_POLL)
        self._read_fd = read_fd

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes, fewer after `timeout` seconds."""
        import select

        self._open()
        assert self._read_fd is not None
        ready, _, _ = select.select([self._read_fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self._read_fd, size)
        except BlockingIOError:
            return b""

    def write(self, data: bytes, /) -> int:
        """Write all of `data` (escaped for QEMU's mux); returns `len(data)`."""
        self._open()
        assert self._write_fd is not None
        view = memoryview(escape_qemu_mux(bytes(data)))
        while view:
            try:
                written = os.write(self._write_fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[written:]
        return len(data)

    def close(self) -> None:
        """Close both FIFOs."""
        for fd in (self._read_fd, self._write_fd):
            if fd is not None:
                os.close(fd)
        self._read_fd = self._write_fd = None


def _capture(process: GroupProcess) -> CommandResult | BaseException:
    try:
        return process.wait()
    except BaseException as err:  # noqa: BLE001 - reported by the caller
        return err


def _forget_qemu_pipe(build_dir: Path, board: str) -> None:
    """Take QEMU_PIPE out of the build's CMake cache again (`cmake -UQEMU_PIPE`, which
    reconfigures, about 5 s), so that a later `west build -t run` has its console back."""
    cache = build_dir / "CMakeCache.txt"
    try:
        if "QEMU_PIPE:" not in cache.read_text(encoding="utf-8", errors="replace"):
            return
    except OSError:
        return
    step = Invocation(("cmake", "-UQEMU_PIPE", str(build_dir)), cwd=build_dir,
                      timeout=CMAKE_TIMEOUT, what=f"cmake -UQEMU_PIPE for {board}")
    try:
        result = GroupProcess(step).wait()
    except Error as err:
        _log.warning("%s", err)
        return
    if result.returncode != 0:
        _log.warning("%s failed (%s): %s; QEMU_PIPE stays in %s", step.what,
                     exit_description(result.returncode), _west_error(result), cache)


def _stop_qemu(pid_file: Path) -> None:
    """Stop the QEMU that Zephyr's run target started (its pid file), if still running."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)


# The lines that say why a west build failed, most specific first: a compiler or linker error,
# a CMake error (its first message line follows it), Kconfig's warning that aborted the build.
_COMPILER_ERROR = re.compile(r":\d+(?::\d+)?: (?:fatal )?error: |: undefined reference to |"
                             r"\bld(?:\.\w+)?: .*(?:error|cannot find|will not fit|overflowed)|"
                             r"^collect2: error: ")
_CMAKE_ERROR = re.compile(r"^CMake Error\b")
_KCONFIG_ABORT = re.compile(r"^error: Aborting due to Kconfig warnings")
_ERROR_WORD = re.compile(r"\berror\b", re.IGNORECASE)


def _west_error(result: CommandResult) -> str:
    """The first real error line of a failed west command (compiler, linker, CMake, Kconfig),
    rather than west's closing `FATAL ERROR: command exited with status 1`."""
    lines = [line.rstrip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
    for line in lines:
        if _COMPILER_ERROR.search(line):
            return line.strip()
    for index, line in enumerate(lines):
        if _CMAKE_ERROR.search(line):
            message = next((later.strip() for later in lines[index + 1:] if later.strip()), "")
            return f"{line.strip()} {message}".strip()
    for index, line in enumerate(lines):
        if _KCONFIG_ABORT.search(line):
            warning = next((earlier.strip() for earlier in lines[:index]
                            if earlier.startswith("warning: ") or ": warning: " in earlier), "")
            return warning or line.strip()
    for line in lines:
        if _ERROR_WORD.search(line) and not line.startswith("FATAL ERROR"):
            return line.strip()
    fatal = next((line.strip() for line in lines if line.startswith("FATAL ERROR")), "")
    return fatal or last_line(result.stderr or result.stdout) or result.command_line


def _decode_inputs(model: CompiledModel, raw: Mapping[str, bytes]) -> dict[str, Any]:
    import numpy as np

    arrays = {}
    for spec in model.inputs:
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        arrays[spec.name] = (np.frombuffer(raw[spec.name], dtype=dtype)
                             .reshape(spec.shape).astype(dtype.newbyteorder("=")))
    return arrays


def _encode(array: Any) -> bytes:
    import numpy as np

    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
