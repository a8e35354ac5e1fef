"""microTVM `tvmc compile` command lines: same archive as our own flags, or one-line refusals."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import require_module
from zoo import Builder, Inputs, dynamic_onnx, int8_tflite

from microexport.cli import build_parser, main
from microexport.cli.options import TVMC_OPTIONS
from microexport.cli.tvmc_compat import (
    FIXED_FLAGS,
    MAPPED_FLAGS,
    NO_EQUIVALENT_FLAGS,
    TvmcFlagError,
    apply_tvmc_flags,
    parse_target_string,
    parse_tvmc_shapes,
)
from microexport.model import PoolSpec

BuildModel = Callable[[Builder], tuple[Path, Inputs]]

# The command line microTVM users ran (docs/migrating-from-microtvm.md), without FILE and -o.
CANONICAL_TVMC = ["--target", "c", "--runtime", "crt", "--executor", "aot",
                  "--executor-aot-unpacked-api", "1", "--executor-aot-interface-api", "c",
                  "--pass-config", "tir.usmp.enable=1", "--output-format", "mlf"]


def run_cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def translated(argv: list[str]) -> argparse.Namespace:
    """`compile` arguments after the tvmc translation (no model is read)."""
    return apply_tvmc_flags(build_parser().parse_args(["compile", *argv]))


OUR_FIELDS = ("name", "target", "input_shape", "workspace_alignment", "pools", "io_in_workspace")


def our_options(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in OUR_FIELDS}


# --- the same archive ----------------------------------------------------------------------


def test_canonical_tvmc_command_gives_the_same_archive(
    build_model: BuildModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_module("tflite", "tflite")
    model, _ = build_model(int8_tflite)
    tvmc = tmp_path / "tvmc" / "module.tar"
    ours = tmp_path / "ours" / "module.tar"
    status, _, err = run_cli(["compile", *CANONICAL_TVMC, "--module-name", "kws", model,
                              "-o", tvmc], capsys)
    assert status == 0, err
    status, _, err = run_cli(["compile", model, "-o", ours, "--name", "kws"], capsys)
    assert status == 0, err
    assert tvmc.read_bytes() == ours.read_bytes()


def test_tvmc_variants_give_the_same_archive(
    build_model: BuildModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = build_model(dynamic_onnx)
    tvmc_flags = [
        "--target", "c -keys=cpu -model=host -executor=aot -unpacked-api=1 -interface-api=c "
        "-runtime=c -link-params=1 -system-lib=0 -workspace-byte-alignment=8",
        "--model-format", "onnx", "--module-name", "dyn", "--input-shapes", "x:[1,8]",
        "--executor-aot-constant-byte-alignment", "8", "--runtime-crt-system-lib", "0",
        "--executor-aot-link-params", "1", "-O3", "-f", "mlf",
        "--pass-config", "tir.usmp.algorithm=hill_climb", "--pass-config",
        "tir.disable_vectorize=1", "--pass-config", "tir.usmp.use_workspace_io=1",
        "--workspace-pools", "sram,flash", "--workspace-pools-size-hint-bytes", "sram:64",
        "--workspace-pools-targets", "sram:c",
    ]
    native_flags = ["--name", "dyn", "--input-shape", "x:1x8", "--workspace-alignment", "8",
                    "--io-in-workspace", "--workspace-pool", "sram:64",
                    "--workspace-pool", "flash:unlimited"]
    tvmc, ours = tmp_path / "tvmc.tar", tmp_path / "ours.tar"
    status, _, err = run_cli(["compile", model, "-o", tvmc, *tvmc_flags], capsys)
    assert status == 0, err
    status, _, err = run_cli(["compile", model, "-o", ours, *native_flags], capsys)
    assert status == 0, err
    assert tvmc.read_bytes() == ours.read_bytes()


# --- translation without compiling -----------------------------------------------------------


@pytest.mark.parametrize(("tvmc", "native"), [
    (CANONICAL_TVMC, []),
    (["--module-name", "kws"], ["--name", "kws"]),
    (["--module-name", "kws", "--name", "kws"], ["--name", "kws"]),
    (["--input-shapes", "input:[1,3,224,224] serving_default_x:0:[1, 8]"],
     ["--input-shape", "input:1x3x224x224", "--input-shape", "serving_default_x:0:1x8"]),
    (["--executor-aot-workspace-byte-alignment", "32"], ["--workspace-alignment", "32"]),
    (["--target-c-workspace-byte-alignment", "4", "--target-c-constants-byte-alignment", "4"],
     ["--workspace-alignment", "4"]),
    (["--executor-aot-workspace-byte-alignment", "8", "--workspace-alignment", "8"],
     ["--workspace-alignment", "8"]),
    (["--executor-aot-constant-byte-alignment", "16"], []),
    (["--pass-config", "tir.usmp.use_workspace_io=1"], ["--io-in-workspace"]),
    (["--pass-config", "tir.usmp.use_workspace_io=false"], []),
    (["--pass-config", "tir.usmp.algorithm=greedy_by_conflicts", "--pass-config",
      "relay.backend.use_auto_scheduler=0"], []),
    (["--workspace-pools", "dtcm,sram", "--workspace-pools-size-hint-bytes", "dtcm:65536"],
     ["--workspace-pool", "dtcm:64K", "--workspace-pool", "sram:unlimited"]),
    (["--executor-aot-link-params", "true", "--runtime-crt-system-lib", "false", "-O", "3"], []),
    (["--model-format", "tflite"], []),
])
def test_tvmc_flags_translate(tvmc: list[str], native: list[str]) -> None:
    model = "model.onnx" if "onnx" in " ".join(tvmc) else "model.tflite"
    got = translated([model, "-o", "m.tar", *tvmc])
    want = build_parser().parse_args(["compile", model, "-o", "m.tar", *native])
    assert our_options(got) == our_options(want)


@pytest.mark.parametrize(("target", "alignment"), [
    ("c", 16),
    ("c -keys=cpu -model=host", 16),
    ("c -keys=cpu -model=host -executor=aot -unpacked-api=1 -interface-api=c -runtime=c", 16),
    ("c -runtime=c -executor=aot -link-params -unpacked-api=1", 16),
    ("c --executor=aot --interface-api=c --unpacked-api=true --system-lib=0", 16),
    ("c -executor aot -workspace-byte-alignment 8 -constants-byte-alignment 8", 8),
    ("c -model=stm32f746xx -keys=cpu", 16),
    ("  c  -executor=aot  ", 16),
])
def test_old_target_strings_parse(target: str, alignment: int) -> None:
    args = translated(["m.tflite", "-o", "m.tar", "--target", target])
    assert args.target == "c"
    assert args.workspace_alignment == alignment


def test_json_targets_pass_unchanged() -> None:
    target = '{"kind": "c", "keys": ["cpu"]}'
    assert translated(["m.tflite", "-o", "m.tar", "--target", target]).target == target


def test_target_string_grammar() -> None:
    assert parse_target_string("c -a=1 --b 2 -c -d") == ("c", {"a": "1", "b": "2", "c": "1",
                                                               "d": "1"})
    with pytest.raises(TvmcFlagError, match="appears twice"):
        parse_target_string("c -a=1 -a=2")
    with pytest.raises(TvmcFlagError, match="expected -key=value"):
        parse_target_string("c stray")


def test_tvmc_input_shapes() -> None:
    assert parse_tvmc_shapes("a:[1,2] b/c.d:[3]") == [("a", (1, 2)), ("b/c.d", (3,))]
    assert parse_tvmc_shapes("input:0:[ 1, 49, 10 ]") == [("input:0", (1, 49, 10))]
    for bad in ("a", "a:[]", "a:[1,x]", "a:1x2", "a:[1,2] junk"):
        with pytest.raises(TvmcFlagError, match="--input-shapes"):
            parse_tvmc_shapes(bad)


def test_every_declared_flag_has_one_translation() -> None:
    declared = {option.flags[-1] for option in TVMC_OPTIONS}
    tables = (set(FIXED_FLAGS), set(NO_EQUIVALENT_FLAGS), set(MAPPED_FLAGS))
    assert set.union(*tables) == declared
    assert sum(len(t) for t in tables) == len(declared)  # disjoint


def test_help_shows_flags_with_a_meaning_only() -> None:
    result = subprocess.run([sys.executable, "-m", "microexport.cli", "compile", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--module-name", "--executor-aot-unpacked-api", "--pass-config",
                 "--input-shapes", "--runtime-crt-system-lib"):
        assert flag in result.stdout
    for flag in ("--tuning-records", "--desired-layout", "--cross-compiler"):
        assert flag not in result.stdout


# --- refusals: exit status 2, one line naming the flag and value ---------------------------


REFUSED: list[tuple[list[str], tuple[str, ...]]] = [
    (["--executor", "graph"], ("--executor graph", "AOT")),
    (["--executor-aot-unpacked-api", "0"], ("--executor-aot-unpacked-api 0", "unpacked")),
    (["--executor-aot-interface-api", "packed"], ("--executor-aot-interface-api packed",
                                                   "tvmgen_<name>_run")),
    (["--executor-aot-link-params", "0"], ("--executor-aot-link-params 0", "weights")),
    (["--executor-aot-unpacked-api", "maybe"], ("--executor-aot-unpacked-api maybe",
                                                 "boolean")),
    (["--runtime", "cpp"], ("--runtime cpp", "no TVM runtime")),
    (["--runtime-crt-system-lib", "1"], ("--runtime-crt-system-lib 1", "system library")),
    (["--output-format", "so"], ("--output-format so", "Model Library Format")),
    (["-f", "so"], ("--output-format so",)),
    (["-O", "2"], ("--opt-level 2", "level 3")),
    (["--model-format", "keras"], ("--model-format keras", ".onnx")),
    (["--model-format", "onnx"], ("--model-format onnx", ".onnx", ".tflite")),
    (["--executor-aot-constant-byte-alignment", "8"],
     ("--executor-aot-constant-byte-alignment 8", "--workspace-alignment (16)")),
    (["--executor-aot-workspace-byte-alignment", "0"],
     ("--executor-aot-workspace-byte-alignment 0", "positive")),
    (["--executor-aot-workspace-byte-alignment", "8", "--workspace-alignment", "32"],
     ("--executor-aot-workspace-byte-alignment 8", "--workspace-alignment 32", "disagree")),
    (["--module-name", "a", "--name", "b"], ("--module-name a", "--name b", "disagree")),
    (["--input-shapes", "x:[-1,8]"], ("--input-shapes", "'x:[-1,8]'", "fixed")),
    (["--pass-config", "tir.usmp.enable=0"], ("--pass-config tir.usmp.enable=0", "statically")),
    (["--pass-config", "tir.usmp.algorithm=my_algo"],
     ("--pass-config tir.usmp.algorithm=my_algo", "smallest")),
    (["--pass-config", "tir.disable_vectorize=0"], ("--pass-config tir.disable_vectorize=0",
                                                     "scalar")),
    (["--pass-config", "relay.backend.use_auto_scheduler=1"],
     ("--pass-config relay.backend.use_auto_scheduler=1", "tuning")),
    (["--pass-config", "relay.FuseOps.max_depth=2"],
     ("--pass-config relay.FuseOps.max_depth=2", "no equivalent")),
    (["--pass-config", "tir.usmp.enable"], ("--pass-config tir.usmp.enable", "NAME=VALUE")),
    (["--workspace-pools", "sram", "--workspace-pool", "dtcm:4K"],
     ("--workspace-pools", "--workspace-pool")),
    (["--workspace-pools-size-hint-bytes", "sram:4"],
     ("--workspace-pools-size-hint-bytes", "needs --workspace-pools")),
    (["--workspace-pools", "sram", "--workspace-pools-targets", "sram:llvm"],
     ("--workspace-pools-targets sram:llvm", "one target")),
    (["--workspace-pools", "sram", "--workspace-pools-clock-frequency-hz", "sram:100"],
     ("--workspace-pools-clock-frequency-hz", "no equivalent")),
    (["--tuning-records", "log.json"], ("--tuning-records", "no equivalent", "tuning")),
    (["--desired-layout", "NHWC"], ("--desired-layout", "no equivalent")),
    (["--mixed-precision"], ("--mixed-precision", "no equivalent")),
    (["--cross-compiler", "arm-none-eabi-gcc"], ("--cross-compiler", "C sources")),
    (["--dump-code", "relay,tir"], ("--dump-code", "src/tir.txt")),
    (["--disabled-pass", "AlterOpLayout"], ("--disabled-pass", "no equivalent")),
    (["--target-c-mcpu", "cortex-m55"], ("--target-c-mcpu", "C compiler")),
    (["--target-c-march", "armv8.1-m.main"], ("--target-c-march", "no equivalent")),
    (["--executor-graph-link-params", "1"], ("--executor-graph-link-params", "graph")),
    (["--runtime-cpp-system-lib", "1"], ("--runtime-cpp-system-lib", "C++")),
    (["--target", "c -executor=graph"], ("-executor=graph in --target", "AOT")),
    (["--target", "c -unpacked-api=0"], ("-unpacked-api=0 in --target",)),
    (["--target", "c -interface-api=packed"], ("-interface-api=packed in --target",)),
    (["--target", "c -runtime=c++"], ("-runtime=c++ in --target",)),
    (["--target", "c --system-lib"], ("-system-lib=1 in --target", "system library")),
    (["--target", "c -link-params=0"], ("-link-params=0 in --target",)),
    (["--target", "c -mcpu=cortex-m55"], ("-mcpu=cortex-m55 in --target", "C compiler")),
    (["--target", "c -mattr=+mve"], ("-mattr=+mve in --target", "no equivalent")),
    (["--target", "c -keys=arm_cpu,cpu"], ("-keys=arm_cpu,cpu in --target", "arm_cpu")),
    (["--target", "c -device=arm_cpu"], ("-device=arm_cpu in --target", "no equivalent")),
    (["--target", "c -constants-byte-alignment=4"],
     ("-constants-byte-alignment=4 in --target", "--workspace-alignment")),
    (["--target", "llvm -mcpu=cortex-m7"], ("--target 'llvm -mcpu=cortex-m7'", "--target c")),
    (["--target", "cmsis-nn, c"], ("--target 'cmsis-nn, c'", "cmsis-nn", "--target c")),
    (["--target", "ethos-u -accelerator_config=ethos-u55-256, c"], ("ethos-u", "BYOC")),
    (["--target", "c -executor=aot -executor=aot"], ("--target", "twice")),
]


@pytest.mark.parametrize(("flags", "fragments"), REFUSED,
                         ids=[" ".join(flags) for flags, _ in REFUSED])
def test_refused_flags_are_one_line_exit_2(flags: list[str], fragments: tuple[str, ...],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "m.tar"
    status, out, err = run_cli(["compile", tmp_path / "model.tflite", "-o", output, *flags],
                               capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("microexport: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not output.exists() and not out


def test_pools_from_size_hints() -> None:
    args = translated(["m.tflite", "-o", "m.tar", "--workspace-pools", "a, b",
                       "--workspace-pools-size-hint-bytes", "b:1024",
                       "--workspace-pools-size-hint-bytes", "a:-1"])
    assert args.pools == [PoolSpec("a", None, None), PoolSpec("b", 1024, None)]
