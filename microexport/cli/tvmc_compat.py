"""microTVM's `tvmc compile` flags, translated in one place into microexport's own options.

microTVM users compiled with command lines such as

    tvmc compile --target c --runtime crt --executor aot --executor-aot-unpacked-api 1 \\
        --executor-aot-interface-api c --pass-config tir.usmp.enable=1 --output-format mlf \\
        --module-name kws -o module.tar model.tflite

or, with older TVM, put the executor and runtime inside the target string
(`--target "c -keys=cpu -model=host -executor=aot -unpacked-api=1 -interface-api=c -runtime=c"`).
`microexport compile` accepts those flags (declared as data in `options.TVMC_OPTIONS`):

* a flag with an equivalent sets it (`--module-name` → `--name`, `--input-shapes` →
  `--input-shape`, `--executor-aot-workspace-byte-alignment` → `--workspace-alignment`,
  `--pass-config tir.usmp.use_workspace_io=1` → `--io-in-workspace`, `--workspace-pools` →
  `--workspace-pool`);
* a value that is what microexport always does (`--executor aot`, `--runtime crt`, unpacked API,
  C interface, `tir.usmp.enable=1`, ...) is accepted and changes nothing;
* any other value, and any flag without an equivalent, is a one-line error (exit status 2) naming
  the flag and value and saying what microexport does instead.

The table of every flag is in docs/migrating-from-microtvm.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from microexport.cli.options import (
    ALIGNMENT,
    NAME,
    TVMC_OPTIONS,
    Option,
    parse_pool,
    tvmc_dest,
)
from microexport.errors import Error
from microexport.model import PoolSpec


class TvmcFlagError(Error):
    """A tvmc flag or value that microexport cannot honour."""


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_bool(flag: str, value: str) -> bool:
    """A tvmc boolean: 1/0, true/false, yes/no, on/off (any case)."""
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise TvmcFlagError(f"{flag} {value}: expected a boolean (1 or 0)")


def _is_true(value: str, flag: str = "") -> bool:
    return parse_bool(flag, value)


def _is_false(value: str, flag: str = "") -> bool:
    return not parse_bool(flag, value)


def refuse(flag: str, value: Any, instead: str) -> NoReturn:
    """A value microexport cannot honour: `FLAG VALUE is not supported: what we do instead`."""
    raise TvmcFlagError(f"{flag} {value} is not supported: {instead}")


def no_equivalent(flag: str, reason: str) -> NoReturn:
    """A flag microexport has nothing for: `FLAG has no equivalent in microexport: reason`."""
    raise TvmcFlagError(f"{flag} has no equivalent in microexport: {reason}")


@dataclass(frozen=True)
class Fixed:
    """A setting whose accepted values are what microexport always does; others are refused."""

    accepts: Callable[[str, str], bool]  # (value, flag) → accepted?
    instead: str


def _one_of(*words: str) -> Callable[[str, str], bool]:
    return lambda value, flag: str(value).strip().lower() in words


# --- what microexport always does ---------------------------------------------------------------

_AOT = "microexport always generates an AOT main that calls every kernel in order (aot)"
_UNPACKED = "kernels are always plain C functions over typed pointers (unpacked API, 1)"
_INTERFACE_C = ("the entry point is always tvmgen_<name>_run(&inputs, &outputs) with one struct "
                "per direction (interface API c)")
_LINK_PARAMS = ("the weights are always compiled into tvmgen_<name>.c as a const pool "
                "(link-params 1)")
_RUNTIME = ("the generated C needs no TVM runtime; runtime crt is accepted and changes "
            "nothing")
_SYSTEM_LIB = ("no system library is generated: the AOT main calls the kernels directly "
               "(system-lib 0)")
_CPU = ("microexport generates portable C without CPU-specific schedules; pass the CPU to your C "
        "compiler instead (a --board does that for its CPU)")
_OPT_LEVEL = "microexport always fuses and schedules as tvmc's default level 3 did"
_PLANNERS = ("the planner always runs several strategies (greedy by size, greedy in schedule "
             "order, hill climb, exhaustive for small graphs) and keeps the smallest plan")

FIXED_FLAGS: Final[dict[str, Fixed]] = {
    "--output-format": Fixed(_one_of("mlf"), "microexport writes Model Library Format archives "
                             "(.tar, .tar.gz) only (mlf)"),
    "--executor": Fixed(_one_of("aot"), _AOT),
    "--executor-aot-unpacked-api": Fixed(_is_true, _UNPACKED),
    "--executor-aot-interface-api": Fixed(_one_of("c"), _INTERFACE_C),
    "--executor-aot-link-params": Fixed(_is_true, _LINK_PARAMS),
    "--runtime": Fixed(_one_of("crt"), _RUNTIME),
    "--runtime-crt-system-lib": Fixed(_is_false, _SYSTEM_LIB),
    "--opt-level": Fixed(_one_of("3"), _OPT_LEVEL),
}

_NO_GRAPH = "there is no graph executor: microexport always generates an AOT main"
_NO_TUNING = "kernels use fixed C schedules; there is no auto-tuning"
_NO_PASSES = ("the pass pipeline is fixed; the archive holds the IR as src/relax.txt and "
              "src/tir.txt (and src/tir-<stage>.json with --tir-stage)")
_NO_POOL_COSTS = ("the planner minimises the total bytes of the pools, filled in the order "
                  "given; it has no bandwidth or latency model")
_NO_PRECISION = ("kernels compute in the model's own data types (quantized TFLite in float32, "
                 "see the README's limitations)")

NO_EQUIVALENT_FLAGS: Final[dict[str, str]] = {
    "--executor-graph-link-params": _NO_GRAPH,
    "--runtime-cpp-system-lib": "there is no C++ runtime: the generated C needs no runtime",
    "--target-c-mcpu": _CPU,
    "--target-c-march": _CPU,
    "--tuning-records": _NO_TUNING,
    "--desired-layout": "tensors keep the model's own layout",
    "--desired-layout-ops": "tensors keep the model's own layout",
    "--mixed-precision": _NO_PRECISION,
    "--mixed-precision-ops": _NO_PRECISION,
    "--mixed-precision-calculation-type": _NO_PRECISION,
    "--mixed-precision-acc-type": _NO_PRECISION,
    "--cross-compiler": ("microexport writes C sources, not a library: compile "
                         "codegen/host/src/*.c with your toolchain, or use `microexport project "
                         "create` and `microexport build`"),
    "--cross-compiler-options": ("microexport writes C sources, not a library: pass the options "
                                 "to your C compiler"),
    "--dump-code": _NO_PASSES,
    "--dump-offloads": "there is no BYOC offloading: every operator becomes a C kernel",
    "--disabled-pass": _NO_PASSES,
    "--print-pass-times": _NO_PASSES,
    "--print-ir-before": _NO_PASSES,
    "--print-ir-after": _NO_PASSES,
    **{f"--workspace-pools-{attr}": _NO_POOL_COSTS
       for attr in ("clock-frequency-hz", "read-bandwidth-bytes-per-cycle",
                    "write-bandwidth-bytes-per-cycle", "read-latency-cycles",
                    "write-latency-cycles", "target-burst-bytes")},
}

# Flags translated by code below (they carry a value we use).
MAPPED_FLAGS: Final = frozenset({
    "--module-name", "--input-shapes", "--model-format", "--pass-config",
    "--executor-aot-workspace-byte-alignment", "--executor-aot-constant-byte-alignment",
    "--target-c-workspace-byte-alignment", "--target-c-constants-byte-alignment",
    "--workspace-pools", "--workspace-pools-size-hint-bytes", "--workspace-pools-targets",
})

# --- PassContext configurations (--pass-config NAME=VALUE) -----------------------------------

USMP_ALGORITHMS: Final = ("greedy_by_size", "greedy_by_conflicts", "hill_climb")

PASS_CONFIGS: Final[dict[str, Fixed]] = {
    "tir.usmp.enable": Fixed(_is_true, "microexport always plans every buffer statically at "
                             "compile time, as tir.usmp.enable=1 did"),
    "tir.usmp.algorithm": Fixed(_one_of(*USMP_ALGORITHMS),
                                f"{_PLANNERS}; USMP's {', '.join(USMP_ALGORITHMS)} are accepted"),
    "tir.disable_vectorize": Fixed(_is_true, "the C kernels are scalar loops without vector "
                                   "types, as tir.disable_vectorize=1 gave (your C compiler may "
                                   "still vectorize them)"),
    "relay.backend.use_auto_scheduler": Fixed(_is_false, _NO_TUNING),
    "relay.backend.use_meta_schedule": Fixed(_is_false, _NO_TUNING),
}
# tir.usmp.use_workspace_io is translated to --io-in-workspace below.
USE_WORKSPACE_IO: Final = "tir.usmp.use_workspace_io"

# --- attributes inside an old-style --target string ("c -key=value ...") ---------------------

TARGET_ATTRS: Final[dict[str, Fixed]] = {
    "executor": Fixed(_one_of("aot"), _AOT),
    "runtime": Fixed(_one_of("c", "crt"), _RUNTIME),  # old targets spelled CRT as -runtime=c
    "unpacked-api": Fixed(_is_true, _UNPACKED),
    "interface-api": Fixed(_one_of("c"), _INTERFACE_C),
    "link-params": Fixed(_is_true, _LINK_PARAMS),
    "system-lib": Fixed(_is_false, _SYSTEM_LIB),
    "keys": Fixed(lambda value, flag: set(value.split(",")) <= {"cpu"},
                  "the C schedules are portable: there are no Arm (arm_cpu) schedules; "
                  "-keys=cpu is accepted"),
    "model": Fixed(lambda value, flag: True, "a label for tuning logs"),
}
TARGET_ALIGNMENT_ATTRS: Final = ("workspace-byte-alignment", "constants-byte-alignment")
TARGET_CPU_ATTRS: Final = ("mcpu", "march", "mattr", "mtriple", "mfloat-abi", "mabi")


# ---------------------------------------------------------------------------------------------


def _check(flag: str, value: Any, rule: Fixed) -> None:
    if not rule.accepts(str(value), flag):
        refuse(flag, value, rule.instead)


def _native(option: Option, flag: str, value: Any) -> Any:
    """`value` converted and checked as the native option it maps to would be on the command
    line (its argparse `type`), so a tvmc flag is held to the same rules."""
    convert = option.kwargs.get("type")
    if convert is None:
        return value
    try:
        return convert(str(value))
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise TvmcFlagError(f"{flag} {value}: {err}") from None


def _positive_int(flag: str, value: Any) -> int:
    try:
        number = int(str(value), 0)
    except ValueError:
        number = 0
    if number <= 0:
        raise TvmcFlagError(f"{flag} {value}: expected a positive number of bytes")
    return int(_native(ALIGNMENT, flag, number))


@dataclass
class _Settings:
    """What the tvmc flags asked for, before it is written into the namespace."""

    alignments: list[tuple[str, int]]
    constant_alignments: list[tuple[str, int]]
    io_in_workspace: bool | None = None


def _given(args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
    """(long flag, value) of every tvmc flag on the command line, in declaration order."""
    for option in TVMC_OPTIONS:
        value = getattr(args, option.kwargs["dest"], None)
        if value is not None and value is not False:
            yield option.flags[-1], value


def parse_tvmc_shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """tvmc's `--input-shapes "input:[1,3,224,224] other:[1,8]"` → [(name, shape), ...].

    Names may contain `:`, `/` and `.`; spaces are allowed inside the brackets. A dimension of
    -1 (dynamic in tvmc) is refused: the shapes must be static.
    """
    entry = re.compile(r"\s*([^\s\[\]]+?):\s*\[([^\]]*)\]")
    shapes: list[tuple[str, tuple[int, ...]]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = entry.match(text, position)
        dims = match.group(2).split(",") if match else []
        try:
            shape = tuple(int(d) for d in dims)
        except ValueError:
            shape = ()
        if match is None or not shape:
            raise TvmcFlagError(f"--input-shapes '{text}': expected 'NAME:[DIM,DIM,...] "
                                "NAME2:[DIM,...]', e.g. 'input:[1,3,224,224]'")
        if any(d <= 0 for d in shape):
            refuse("--input-shapes", f"'{match.group(0).strip()}'",
                   "every dimension must be a fixed positive size (microexport plans all "
                   "memory at compile time)")
        shapes.append((match.group(1), shape))
        position = match.end()
        while position < len(text) and text[position] in " ,":
            position += 1
    if not shapes:
        raise TvmcFlagError("--input-shapes: expected 'NAME:[DIM,DIM,...]'")
    return shapes


def _split_targets(text: str) -> list[str]:
    """tvmc's composite targets are comma separated ("cmsis-nn, c"); a comma inside quotes or
    inside an attribute value (`-keys=arm_cpu,cpu`) does not split, unless a space follows it
    ("ethos-u -accelerator_config=ethos-u55-256, c")."""
    parts, current, quote = [], "", ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            in_value = re.search(r"-[\w-]+=\S*$", current) is not None
            followed_by_space = text[index + 1 : index + 2] in ("", " ", "\t")
            if not in_value or followed_by_space:
                parts.append(current)
                current = ""
                continue
        current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_target_string(text: str) -> tuple[str, dict[str, str]]:
    """An old `--target` string → (kind, {attribute: value}), as TVM < 0.19 read it:
    `-key=value`, `-key value` or a bare `-key` (true), one or two leading dashes."""
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise TvmcFlagError(f"--target '{text}': {err}") from None
    if not tokens:
        raise TvmcFlagError("--target is empty: use --target c")
    kind, attrs, index = tokens[0], {}, 1
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("-"):
            raise TvmcFlagError(f"--target '{text}': expected -key=value, got '{token}'")
        key, sep, value = token.lstrip("-").partition("=")
        index += 1
        if not sep:
            if index < len(tokens) and not tokens[index].startswith("-"):
                value, index = tokens[index], index + 1
            else:
                value = "1"
        if not key or not value:
            raise TvmcFlagError(f"--target '{text}': empty attribute in '{token}'")
        if key in attrs:
            raise TvmcFlagError(f"--target '{text}': -{key} appears twice")
        attrs[key] = value
    return kind, attrs


def translate_target(text: str, settings: _Settings) -> str:
    """Our `--target` for a tvmc target string: `c` for an old-style C target whose attributes
    are all what we do; JSON targets and plain kinds are returned unchanged."""
    stripped = text.strip()
    if stripped.startswith("{") or (len(stripped.split()) == 1 and "," not in stripped):
        return text
    parts = _split_targets(stripped)
    if len(parts) > 1:
        others = ", ".join(p.split()[0] for p in parts if p.split()[0] != "c")
        refuse("--target", f"'{text}'", f"BYOC targets ({others}) do not exist in microexport: "
               "every operator becomes a portable C kernel; use --target c")
    kind, attrs = parse_target_string(parts[0])
    if kind != "c":
        refuse("--target", f"'{text}'", "microexport generates C only; use --target c")
    for key, value in attrs.items():
        where = f"-{key}={value} in --target"
        if key in TARGET_ATTRS:
            rule = TARGET_ATTRS[key]
            if not rule.accepts(value, f"--target -{key}"):
                raise TvmcFlagError(f"{where} is not supported: {rule.instead}")
        elif key in TARGET_ALIGNMENT_ATTRS:
            number = _positive_int(where, value)
            bucket = settings.alignments if key.startswith("workspace") else \
                settings.constant_alignments
            bucket.append((where, number))
        elif key in TARGET_CPU_ATTRS:
            raise TvmcFlagError(f"{where} has no equivalent in microexport: {_CPU}")
        else:
            raise TvmcFlagError(f"{where} has no equivalent in microexport: only the executor, "
                                "runtime, API and alignment attributes of old C targets are "
                                "understood; use --target c")
    return "c"


_MODEL_SUFFIXES: Final = {"onnx": (".onnx",), "tflite": (".tflite",), "pytorch": (".pt2",)}


def _check_model_format(value: str, model: Path | None) -> None:
    fmt = str(value).lower()
    if fmt not in _MODEL_SUFFIXES:
        refuse("--model-format", value, "microexport imports ONNX (.onnx), TFLite (.tflite) and "
               "torch.export (.pt2) models")
    suffix = Path(model).suffix.lower() if model is not None else ""
    if suffix not in _MODEL_SUFFIXES[fmt]:
        if fmt == "pytorch":
            refuse("--model-format", value, "TorchScript models are not read: save a "
                   "torch.export program with torch.export.save as a .pt2 file")
        refuse("--model-format", value, f"microexport picks the importer from the file name; "
               f"{fmt} models must end in {', '.join(_MODEL_SUFFIXES[fmt])}, not "
               f"'{suffix or Path(str(model)).name}'")


def _translate_pass_config(item: str, settings: _Settings) -> None:
    name, sep, value = str(item).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise TvmcFlagError(f"--pass-config {item}: expected NAME=VALUE, e.g. "
                            "tir.usmp.enable=1")
    flag = f"--pass-config {name}"
    if name == USE_WORKSPACE_IO:
        settings.io_in_workspace = parse_bool(flag, value)
    elif name in PASS_CONFIGS:
        rule = PASS_CONFIGS[name]
        if not rule.accepts(value, flag):
            raise TvmcFlagError(f"--pass-config {name}={value} is not supported: {rule.instead}")
    else:
        raise TvmcFlagError(f"--pass-config {name}={value} has no equivalent in microexport: "
                            "it compiles through Relax and its own TIR pipeline, whose options "
                            "are not TVM PassContext configurations")


def _translate_pools(args: argparse.Namespace, names: str) -> tuple[PoolSpec, ...]:
    """tvmc's --workspace-pools NAME,NAME with --workspace-pools-size-hint-bytes NAME:BYTES →
    our pools (unlimited without a size hint), in the order named."""
    if getattr(args, "pools", None):
        raise TvmcFlagError("--workspace-pools and --workspace-pool both given: use one of them")
    pool_names = [n.strip() for n in str(names).split(",") if n.strip()]
    if not pool_names:
        raise TvmcFlagError(f"--workspace-pools '{names}': expected NAME,NAME...")
    hints: dict[str, str] = {}
    for item in getattr(args, tvmc_dest("--workspace-pools-size-hint-bytes")) or []:
        pool, sep, size = str(item).partition(":")
        if not sep or pool not in pool_names:
            raise TvmcFlagError(f"--workspace-pools-size-hint-bytes {item}: expected NAME:BYTES "
                                f"for a pool of --workspace-pools ({', '.join(pool_names)})")
        hints[pool] = size.strip()
    for item in getattr(args, tvmc_dest("--workspace-pools-targets")) or []:
        pool, sep, targets = str(item).partition(":")
        kinds = {t.strip().split(" ")[0] for t in targets.split(",") if t.strip()}
        if not sep or pool not in pool_names or not kinds:
            raise TvmcFlagError(f"--workspace-pools-targets {item}: expected NAME:TARGET for a "
                                f"pool of --workspace-pools ({', '.join(pool_names)})")
        if kinds != {"c"}:
            refuse("--workspace-pools-targets", item, "there is one target, c, and every pool "
                   "serves it")
    pools = []
    for pool in pool_names:
        size = hints.get(pool, "-1")
        text = f"{pool}:unlimited" if size == "-1" else f"{pool}:{size}"
        try:
            pools.append(parse_pool(text))
        except argparse.ArgumentTypeError:
            raise TvmcFlagError(f"--workspace-pools {names} with size hint '{size}' for {pool}: "
                                "expected a C identifier as the name and a positive number of "
                                "bytes (or -1, unlimited)") from None
    return tuple(pools)


def apply_tvmc_flags(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with every tvmc flag translated into microexport's own options.

    Raises TvmcFlagError (a one-line user error) for a flag or value microexport cannot honour,
    and for a tvmc flag that contradicts the native option it maps to.
    """
    new = argparse.Namespace(**vars(args))
    settings = _Settings(alignments=[], constant_alignments=[])
    if getattr(args, "target", None):
        new.target = translate_target(args.target, settings)
    for flag, value in _given(args):
        if flag in FIXED_FLAGS:
            _check(flag, value, FIXED_FLAGS[flag])
        elif flag in NO_EQUIVALENT_FLAGS:
            no_equivalent(flag, NO_EQUIVALENT_FLAGS[flag])
        elif flag == "--module-name":
            if args.name not in (NAME.kwargs["default"], value):
                raise TvmcFlagError(f"--module-name {value} and --name {args.name} disagree: "
                                    "give one of them")
            new.name = _native(NAME, flag, value)
        elif flag == "--input-shapes":
            shapes = dict(args.input_shape)
            for name, shape in parse_tvmc_shapes(value):
                if shapes.get(name, shape) != shape:
                    raise TvmcFlagError(f"--input-shapes and --input-shape disagree on '{name}'")
                shapes[name] = shape
            new.input_shape = list(shapes.items())
        elif flag == "--model-format":
            _check_model_format(value, getattr(args, "model", None))
        elif flag == "--pass-config":
            for item in value:
                _translate_pass_config(item, settings)
        elif flag in ("--executor-aot-workspace-byte-alignment",
                      "--target-c-workspace-byte-alignment"):
            settings.alignments.append((f"{flag} {value}", _positive_int(flag, value)))
        elif flag in ("--executor-aot-constant-byte-alignment",
                      "--target-c-constants-byte-alignment"):
            settings.constant_alignments.append((f"{flag} {value}", _positive_int(flag, value)))
        elif flag == "--workspace-pools":
            new.pools = list(_translate_pools(args, value))
        elif flag in ("--workspace-pools-size-hint-bytes", "--workspace-pools-targets"):
            if getattr(args, tvmc_dest("--workspace-pools")) is None:
                raise TvmcFlagError(f"{flag} needs --workspace-pools NAME,NAME...")
        else:  # a declared flag without a translation: a bug, caught by the tests
            raise AssertionError(f"tvmc flag {flag} has no translation")
    _apply_alignment(args, new, settings)
    if settings.io_in_workspace:
        new.io_in_workspace = True
    return new


def _apply_alignment(args: argparse.Namespace, new: argparse.Namespace,
                     settings: _Settings) -> None:
    default = ALIGNMENT.kwargs["default"]
    native = getattr(args, "workspace_alignment", default)
    if settings.alignments:
        values = {number for _, number in settings.alignments}
        first = settings.alignments[0][0]
        if len(values) > 1:
            shown = " and ".join(where for where, _ in settings.alignments)
            raise TvmcFlagError(f"{shown} disagree: give one workspace alignment")
        (alignment,) = values
        if native not in (default, alignment):
            raise TvmcFlagError(f"{first} and --workspace-alignment {native} disagree: give one "
                                "of them")
        new.workspace_alignment = alignment
    for where, number in settings.constant_alignments:
        if number != new.workspace_alignment:
            raise TvmcFlagError(
                f"{where} is not supported: the constant pool is aligned like the workspace, "
                f"to --workspace-alignment ({new.workspace_alignment}); give both the same value")
