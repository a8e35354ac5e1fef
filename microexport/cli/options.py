"""Command-line building blocks: options declared once as data, and commands.

Each command module (`core`, and later ones) exports `COMMANDS`, a tuple of `Command`; `cli.py`
builds the argparse parser from all of them.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microexport.archive.tir_json.spec import STAGES as TIR_STAGES
from microexport.model import DEFAULT_KERNEL_STACK_LIMIT, PoolSpec, is_identifier, pool_problem


@dataclass(frozen=True)
class Option:
    """One command-line option, declared once and shared by the commands that take it."""

    flags: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, help=self.help, **self.kwargs)


# Limits of the values options take, each with the reason the error message gives.
MAX_NAME_LENGTH = 64  # the name is part of every C symbol and generated file name
MAX_TENSOR_ELEMENTS = 2**31 - 1  # the generated C indexes tensors with int32_t
MAX_ALIGNMENT = 4096  # every buffer is padded to it; a page is the most any target needs
MAX_STACK_LIMIT = 65536  # larger C locals overflow a microcontroller's stack
MAX_TIMEOUT = 86400.0  # one day
_DIM = re.compile(r"^[0-9]{1,10}$")


def parse_name(text: str) -> str:
    """`--name`: a C identifier of at most `MAX_NAME_LENGTH` characters."""
    if len(text) > MAX_NAME_LENGTH:
        raise argparse.ArgumentTypeError(
            f"--name is {len(text)} characters long: use at most {MAX_NAME_LENGTH} (it becomes "
            "part of every C symbol and generated file name, tvmgen_<name>_lib.c)"
        )
    if not is_identifier(text):
        suggestion = re.sub(r"[^0-9A-Za-z_]", "_", text)
        if not suggestion or suggestion[0].isdigit():
            suggestion = "m_" + suggestion
        raise argparse.ArgumentTypeError(
            f"--name '{text}' is not a C identifier (letters, digits and '_', not starting "
            f"with a digit): try '{suggestion}'"
        )
    return text


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:1x3x48x192` → ("NAME", (1, 3, 48, 192)); at most `MAX_TENSOR_ELEMENTS`
    elements."""
    name, sep, dims = text.rpartition(":")
    parts = dims.lower().split("x")
    shape = tuple(int(d) for d in parts) if all(_DIM.match(d) for d in parts) else ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"bad --input-shape '{text}': expected NAME:DIMxDIM... with positive dimensions, "
            "e.g. input:1x3x48x192"
        )
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"--input-shape '{text}' has {math.prod(shape)} elements: at most "
            f"{MAX_TENSOR_ELEMENTS} fit the int32 indices of the generated C"
        )
    return name, shape


def parse_constant(text: str) -> tuple[str, Path]:
    """`--constant NAME=FILE.npy` → ("NAME", Path("FILE.npy")); the file is read by
    `load_constants`."""
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise argparse.ArgumentTypeError(
            f"bad --constant '{text}': expected NAME=FILE.npy, e.g. sr=sample_rate.npy (write "
            "the file with numpy.save)"
        )
    return name, Path(file)


def load_constants(pairs: list[tuple[str, Path]]) -> dict[str, Any]:
    """The arrays of `--constant NAME=FILE.npy` arguments by input name; InputError for a
    file that cannot be read as a .npy array or an input named twice."""
    import numpy as np

    from microexport.errors import InputError

    arrays: dict[str, Any] = {}
    for name, path in pairs:
        if name in arrays:
            raise InputError(f"--constant '{name}' is given twice: give each input one value")
        try:
            array = np.load(path, allow_pickle=False)
        except OSError as err:
            raise InputError(f"cannot read --constant '{name}' from {path}: "
                             f"{err.strerror or err}") from None
        except (ValueError, EOFError):  # not .npy, pickled, truncated or empty
            array = None
        if not isinstance(array, np.ndarray):  # also a .npz archive of several arrays
            if isinstance(array, np.lib.npyio.NpzFile):
                array.close()
            raise InputError(f"--constant '{name}': {path} is not a .npy array file "
                             "(write one with numpy.save)")
        arrays[name] = array
    return arrays


def parse_alignment(text: str) -> int:
    """`--workspace-alignment`: a power of two from 1 to `MAX_ALIGNMENT`."""
    value = _parse_int(text, "--workspace-alignment")
    if not 1 <= value <= MAX_ALIGNMENT or value & (value - 1):
        raise argparse.ArgumentTypeError(
            f"--workspace-alignment {text}: use a power of two from 1 to {MAX_ALIGNMENT} "
            "(bytes; every buffer in the workspace is padded to it)"
        )
    return value


def parse_stack_limit(text: str) -> int:
    """`--kernel-stack-limit`: bytes from 0 to `MAX_STACK_LIMIT`."""
    value = _parse_int(text, "--kernel-stack-limit")
    if not 0 <= value <= MAX_STACK_LIMIT:
        raise argparse.ArgumentTypeError(
            f"--kernel-stack-limit {text}: use 0 to {MAX_STACK_LIMIT} bytes (larger C locals "
            "overflow a microcontroller's stack)"
        )
    return value


def parse_timeout(text: str) -> float:
    """`--timeout`: a finite number of seconds, more than 0 and at most `MAX_TIMEOUT`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"--timeout {text}: use a number of seconds greater than 0 and at most "
            f"{MAX_TIMEOUT:g}, e.g. --timeout 120"
        )
    return value


def parse_indent(text: str) -> int:
    """`--indent`: 0 to 16 spaces."""
    value = _parse_int(text, "--indent")
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"--indent {text}: use 0 to 16 spaces")
    return value


def _parse_int(text: str, flag: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} '{text}' is not an integer") from None


NAME = Option(("--name",), "model name used in C symbols (tvmgen_<name>_...): a C identifier "
              f"of at most {MAX_NAME_LENGTH} characters", {"default": "model", "type": parse_name})
TARGET = Option(("--target",), "TVM target; only C targets are supported", {"default": "c"})
INPUT_SHAPE = Option(
    ("--input-shape",),
    "fix a dynamic input dimension, NAME:1x3x48x192 (repeatable)",
    {"type": parse_input_shape, "action": "append", "default": [], "metavar": "NAME:SHAPE"},
)
CONSTANT = Option(
    ("--constant",),
    "freeze model input NAME to the value in FILE.npy at compile time (same dtype and shape as "
    "the input): it is no longer an input of the compiled model, and shape/axes/starts/ends/"
    "sizes inputs and an ONNX If on it fold away (repeatable)",
    {"type": parse_constant, "action": "append", "default": [], "metavar": "NAME=FILE.npy",
     "dest": "constants"},
)
WORKSPACE = Option(
    ("--workspace",),
    "where the workspace pool lives: a static array in the generated glue, or passed by the "
    "caller to tvmgen_<name>_run",
    {"choices": ["static", "external"], "default": "static"},
)
ALIGNMENT = Option(
    ("--workspace-alignment",),
    f"byte alignment of pools and of every buffer inside them (power of two, at most "
    f"{MAX_ALIGNMENT}; raised to 4 and to the largest element size)",
    {"type": parse_alignment, "default": 16, "metavar": "BYTES"},
)
TEMPLATES = Option(
    ("--templates",),
    "directory of Jinja templates overriding the packaged ones by file name",
    {"type": Path, "metavar": "DIR"},
)
BOARD = Option(("--board",), "board to run on (see boards/)", {"default": "host"})
# Kept in step with microexport.deploy.reference.REFERENCES (not imported: --help stays light).
REFERENCE = Option(
    ("--reference",),
    "what to compare with: tvm (TVM's own LLVM build of the same imported Relax module, on the "
    "host: a failure is in our pipeline, not the import) or a runtime by name; default: the "
    "format's runtime (onnxruntime; tflite-micro, falling back to litert; torch)",
    {"choices": ["tvm", "onnxruntime", "tflite-micro", "litert", "torch"], "default": None},
)
INPUT = Option(
    ("--input",),
    "input tensor as .npy, NAME=FILE or FILE in model input order (repeatable)",
    {"action": "append", "default": [], "metavar": "[NAME=]FILE.npy"},
)
BUILD_DIR = Option(("--build-dir",), "keep build files here (default: a temporary directory)",
                   {"type": Path})


_POOL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(?:(\d+)([KkMm]?)|unlimited)"
                   r"(?::([.A-Za-z0-9_]+))?$")


def parse_pool(text: str) -> PoolSpec:
    """`NAME:SIZE[:SECTION]` → PoolSpec; SIZE in bytes with an optional K/M suffix, or
    `unlimited`; SECTION a linker section name such as `.dtcm_bss`."""
    match = _POOL.match(text)
    if match is None or (match.group(2) is not None and int(match.group(2)) == 0):
        raise argparse.ArgumentTypeError(
            f"bad --workspace-pool '{text}': expected NAME:SIZE[:SECTION], e.g. dtcm:64K:.dtcm "
            "or sram:unlimited"
        )
    name, digits, unit, section = match.groups()
    problem = pool_problem(name, section)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"bad --workspace-pool {text[:80]!r}: {problem}")
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[(unit or "").lower()]
    return PoolSpec(name, None if digits is None else int(digits) * factor, section)


POOL = Option(
    ("--workspace-pool",),
    "split the workspace into pools, filled in the order given, e.g. --workspace-pool "
    "dtcm:64K:.dtcm --workspace-pool sram:unlimited (repeatable; SECTION places the static "
    "array in a linker section)",
    {"type": parse_pool, "action": "append", "default": [], "metavar": "NAME:SIZE[:SECTION]",
     "dest": "pools"},
)
IO_IN_WORKSPACE = Option(
    ("--io-in-workspace",),
    "plan inputs and outputs inside the workspace; tvmgen_<name>_map_inputs/_map_outputs give "
    "their addresses",
    {"action": "store_true"},
)
PLATFORM = Option(("--platform",), "platform to use on the board: host, baremetal or zephyr "
                  "(default: the board's first; see `microexport boards`)", {})
PORT = Option(("--port",), "serial port of the board (default: found by the board's USB VID:PID); "
              "a pyserial URL such as socket://host:4000 works too", {})
TIMEOUT = Option(("--timeout",), "seconds one run may take (default: the board's run_timeout)",
                 {"type": parse_timeout, "metavar": "SECONDS"})
DRY_RUN = Option(("--dry-run",), "print the commands instead of running them",
                 {"action": "store_true"})
TIR_STAGE = Option(
    ("--tir-stage",),
    "write the TIR of this pipeline stage as src/tir-<stage>.json: scheduled (block-level "
    "kernels), lowered (flat, unpacked) or codegen (what the C code generator received) "
    "(repeatable; default: codegen only; see docs/tir-json.md)",
    {"action": "append", "choices": list(TIR_STAGES), "default": [],
     "metavar": "STAGE", "dest": "tir_stages"},
)
KERNEL_STACK_LIMIT = Option(
    ("--kernel-stack-limit",),
    "keep kernel-internal buffers of at most BYTES (e.g. one-element accumulators) as C locals "
    "the compiler can hold in registers, instead of workspace scratch (default "
    f"{DEFAULT_KERNEL_STACK_LIMIT}; 0: every buffer in the workspace; at most {MAX_STACK_LIMIT})",
    {"type": parse_stack_limit, "default": DEFAULT_KERNEL_STACK_LIMIT, "metavar": "BYTES"},
)
COMPILE_OPTIONS = (NAME, TARGET, INPUT_SHAPE, CONSTANT, WORKSPACE, ALIGNMENT, POOL, IO_IN_WORKSPACE,
                   KERNEL_STACK_LIMIT, TEMPLATES, TIR_STAGE)


# --- microTVM `tvmc compile` flags -------------------------------------------------------------
# `compile` accepts the flags of microTVM's `tvmc compile` so old command lines keep working
# (docs/migrating-from-microtvm.md). Each value lands in `tvmc_<flag>` (None when not given);
# microexport/cli/tvmc_compat.py translates them into the options above, or refuses in one line a
# value we cannot honour. Flags without help are hidden: they exist only to be refused clearly.


def tvmc_dest(flag: str) -> str:
    """The namespace attribute of a tvmc flag: `--executor-aot-unpacked-api` →
    `tvmc_executor_aot_unpacked_api`."""
    return "tvmc_" + flag.lstrip("-").replace("-", "_")


def _tvmc(flags: str | tuple[str, ...], help_text: str | None, **kwargs: Any) -> Option:
    names = (flags,) if isinstance(flags, str) else flags
    return Option(names, f"(tvmc) {help_text}" if help_text else argparse.SUPPRESS,
                  {"dest": tvmc_dest(names[-1]), "default": None, **kwargs})


TVMC_OPTIONS = (
    _tvmc("--module-name", "same as --name (tvmc's default was 'default')", metavar="NAME"),
    _tvmc("--input-shapes", "'NAME:[1,3,224,224] NAME2:[1,8]', same as --input-shape",
          metavar="SHAPES"),
    _tvmc(("-f", "--output-format"), "mlf, what we write (so is refused)", metavar="FORMAT"),
    _tvmc("--model-format", "onnx, tflite or pytorch (.pt2); must match the file's suffix",
          metavar="FORMAT"),
    _tvmc("--executor", "aot, what we do (graph is refused)", metavar="EXECUTOR"),
    _tvmc("--executor-aot-unpacked-api", "1, what we do", metavar="BOOL"),
    _tvmc("--executor-aot-interface-api", "c, what we do", metavar="API"),
    _tvmc("--executor-aot-link-params", "1, what we do (weights are compiled in)",
          metavar="BOOL"),
    _tvmc("--executor-aot-workspace-byte-alignment", "same as --workspace-alignment",
          metavar="N"),
    _tvmc("--executor-aot-constant-byte-alignment",
          "must equal --workspace-alignment, which aligns the constants too", metavar="N"),
    _tvmc("--executor-graph-link-params", None, metavar="BOOL"),
    _tvmc("--runtime", "crt, accepted (the generated C needs no runtime)", metavar="RUNTIME"),
    _tvmc("--runtime-crt-system-lib", "0, what we do", metavar="BOOL"),
    _tvmc("--runtime-cpp-system-lib", None, metavar="BOOL"),
    _tvmc("--pass-config", "NAME=VALUE: tir.usmp.enable=1, tir.usmp.algorithm=..., "
          "tir.disable_vectorize=1 are what we do; tir.usmp.use_workspace_io=1 is "
          "--io-in-workspace (repeatable)", action="append", metavar="NAME=VALUE"),
    _tvmc("--target-c-workspace-byte-alignment", "same as --workspace-alignment", metavar="N"),
    _tvmc("--target-c-constants-byte-alignment", None, metavar="N"),
    _tvmc("--target-c-mcpu", None, metavar="CPU"),
    _tvmc("--target-c-march", None, metavar="ARCH"),
    _tvmc(("-O", "--opt-level"), "3, what we do", metavar="LEVEL"),
    _tvmc("--workspace-pools", "NAME,NAME...: same as one --workspace-pool per name",
          metavar="NAMES"),
    _tvmc("--workspace-pools-size-hint-bytes", "NAME:BYTES, the size limit of that pool "
          "(repeatable)", action="append", metavar="NAME:BYTES"),
    _tvmc("--workspace-pools-targets", None, action="append", metavar="NAME:TARGETS"),
    *(_tvmc(f"--workspace-pools-{attr}", None, action="append", metavar="VALUE")
      for attr in ("clock-frequency-hz", "read-bandwidth-bytes-per-cycle",
                   "write-bandwidth-bytes-per-cycle", "read-latency-cycles",
                   "write-latency-cycles", "target-burst-bytes")),
    _tvmc("--tuning-records", None, metavar="PATH"),
    _tvmc("--desired-layout", None, metavar="LAYOUT"),
    _tvmc("--desired-layout-ops", None, metavar="OPS"),
    _tvmc("--mixed-precision", None, action="store_true"),
    _tvmc("--mixed-precision-ops", None, metavar="OPS"),
    _tvmc("--mixed-precision-calculation-type", None, metavar="DTYPE"),
    _tvmc("--mixed-precision-acc-type", None, metavar="DTYPE"),
    _tvmc("--cross-compiler", None, metavar="CC"),
    _tvmc("--cross-compiler-options", None, metavar="FLAGS"),
    _tvmc("--dump-code", None, metavar="FORMATS"),
    _tvmc("--dump-offloads", None, metavar="PATH"),
    _tvmc("--disabled-pass", None, metavar="PASSES"),
    _tvmc("--print-pass-times", None, action="store_true"),
    _tvmc("--print-ir-before", None, metavar="PASSES"),
    _tvmc("--print-ir-after", None, metavar="PASSES"),
)


@dataclass(frozen=True)
class Command:
    """A subcommand: name, help, positional arguments, shared options and its handler."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    positionals: tuple[Option, ...]
    options: tuple[Option, ...]


