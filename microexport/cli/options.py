"""Command-line building blocks: options declared once as data, and commands.

Each command module (`core`, and later ones) exports `COMMANDS`, a tuple of `Command`; `cli.py`
builds the argparse parser from all of them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microexport.archive.tir_json.spec import STAGES as TIR_STAGES
from microexport.model import PoolSpec


@dataclass(frozen=True)
class Option:
    """One command-line option, declared once and shared by the commands that take it."""

    flags: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, help=self.help, **self.kwargs)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:1x3x48x192` → ("NAME", (1, 3, 48, 192))."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"bad --input-shape '{text}': expected NAME:DIMxDIM..., e.g. input:1x3x48x192"
        )
    return name, shape


NAME = Option(("--name",), "model name used in C symbols (tvmgen_<name>_...)",
              {"default": "model"})
TARGET = Option(("--target",), "TVM target; only C targets are supported", {"default": "c"})
INPUT_SHAPE = Option(
    ("--input-shape",),
    "fix a dynamic input dimension, NAME:1x3x48x192 (repeatable)",
    {"type": parse_input_shape, "action": "append", "default": [], "metavar": "NAME:SHAPE"},
)
WORKSPACE = Option(
    ("--workspace",),
    "where the workspace pool lives: a static array in the generated glue, or passed by the "
    "caller to tvmgen_<name>_run",
    {"choices": ["static", "external"], "default": "static"},
)
ALIGNMENT = Option(
    ("--workspace-alignment",),
    "byte alignment of pools and of every buffer inside them (power of two)",
    {"type": int, "default": 16},
)
TEMPLATES = Option(
    ("--templates",),
    "directory of Jinja templates overriding the packaged ones by file name",
    {"type": Path, "metavar": "DIR"},
)
BOARD = Option(("--board",), "board to run on (see boards/)", {"default": "host"})
INPUT = Option(
    ("--input",),
    "input tensor as .npy, NAME=FILE or FILE in model input order (repeatable)",
    {"action": "append", "default": [], "metavar": "[NAME=]FILE.npy"},
)
BUILD_DIR = Option(("--build-dir",), "keep build files here (default: a temporary directory)",
                   {"type": Path})


_POOL = re.compile(r"^([A-Za-z_]\w*):(?:(\d+)([KkMm]?)|unlimited)(?::([.\w]+))?$")


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
                 {"type": float})
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
    "the compiler can hold in registers, instead of workspace scratch (default 0: every buffer "
    "in the workspace)",
    {"type": int, "default": 0, "metavar": "BYTES"},
)
COMPILE_OPTIONS = (NAME, TARGET, INPUT_SHAPE, WORKSPACE, ALIGNMENT, POOL, IO_IN_WORKSPACE,
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


