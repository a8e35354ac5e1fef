"""Float kernels on the emulated Cortex-M4F (mps2_an386) with the default schedule and flags:
accumulators in registers, padding tested outside the channel loop, fused multiply-add,
unrolled reduction loops. Outputs agree with TFLite Micro; instructions per multiply-accumulate
stay at most TFLite Micro's reference kernels' on the same board (bench/tflm_cortexm.py,
bench/RESULTS.md); `microexport size` lists every kernel's code bytes, checked against binutils'
`nm`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import require_program
from zoo import TfliteWriter

import microexport
from microexport.api import import_model
from microexport.cli import main
from microexport.deploy.boards import load_board
from microexport.deploy.compare import compare, sample_inputs
from microexport.deploy.platforms import RunOptions, get_platform
from microexport.deploy.reference import run_reference

BOARD = "mps2_an386"
# TFLite Micro's reference float kernels on mps2_an386, instructions per MAC, measured by
# bench/tflm_cortexm.py (bench/RESULTS.md): float_mlp (FULLY_CONNECTED) and float_cnn (3x3
# SAME CONV_2D layers, with max pools and a FULLY_CONNECTED).
TFLM_DENSE_PER_MAC = 5.04
TFLM_CNN_PER_MAC = 10.27


@pytest.fixture
def qemu() -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")


def _weights(writer: TfliteWriter, rng: np.random.Generator, name: str,
             shape: tuple[int, ...], fan_in: int) -> int:
    data = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
    return writer.tensor(name, shape, "float32", data)


def dense_model(path: Path) -> tuple[Path, int]:
    """FULLY_CONNECTED 392 → 64 (RELU) → 10, float32; returns the model and its MACs."""
    rng = np.random.default_rng(5)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 392), "float32")
    hidden = writer.tensor("hidden", (1, 64), "float32")
    writer.operator("FULLY_CONNECTED", [x, _weights(writer, rng, "w1", (64, 392), 392),
                                        _weights(writer, rng, "b1", (64,), 392)], [hidden],
                    writer.options("FullyConnectedOptions", fusedActivationFunction=1))
    y = writer.tensor("output", (1, 10), "float32")
    writer.operator("FULLY_CONNECTED", [hidden, _weights(writer, rng, "w2", (10, 64), 64),
                                        _weights(writer, rng, "b2", (10,), 64)], [y],
                    writer.options("FullyConnectedOptions"))
    return writer.write(path, [x], [y]), 392 * 64 + 64 * 10


def conv_model(path: Path) -> tuple[Path, int]:
    """CONV_2D 3x3 SAME 12x12x3 → 8 (RELU) → CONV_2D 3x3 SAME → 16, float32 NHWC; returns the
    model and its MACs."""
    rng = np.random.default_rng(6)
    writer = TfliteWriter()
    x = writer.tensor("input", (1, 12, 12, 3), "float32")
    current, channels, macs = x, 3, 0
    for index, out_channels in enumerate((8, 16)):
        w = _weights(writer, rng, f"w{index}", (out_channels, 3, 3, channels), 9 * channels)
        b = _weights(writer, rng, f"b{index}", (out_channels,), 9 * channels)
        out = writer.tensor(f"conv{index}", (1, 12, 12, out_channels), "float32")
        writer.operator("CONV_2D", [current, w, b], [out], writer.options(
            "Conv2DOptions", padding=0, strideW=1, strideH=1, fusedActivationFunction=1))
        macs += 12 * 12 * out_channels * 9 * channels
        current, channels = out, out_channels
    return writer.write(path, [x], [current]), macs


def run_on_board(path: Path, work: Path) -> tuple[dict, dict, object]:
    """Compile with the defaults, build and run on BOARD; returns inputs, outputs and the
    run's stats."""
    inputs = sample_inputs(import_model(path).inputs, seed=0)
    archive = microexport.compile(path, work / "m.tar", name=path.stem).archive
    board = load_board(BOARD)
    platform = get_platform(board)
    project = platform.prepare(archive, work / BOARD)
    built = platform.build(project)
    result = platform.execute(built, inputs, RunOptions())
    return inputs, result.outputs, result.stats


@pytest.mark.parametrize(("builder", "tflm_per_mac"), [(dense_model, TFLM_DENSE_PER_MAC),
                                                       (conv_model, TFLM_CNN_PER_MAC)],
                         ids=["dense", "conv"])
def test_float_kernels_need_at_most_tflm_instructions_per_mac(
        builder: object, tflm_per_mac: float, qemu: None, tmp_path: Path) -> None:
    path, macs = builder(tmp_path / "model.tflite")  # type: ignore[operator]
    inputs, outputs, stats = run_on_board(path, tmp_path)
    runtime, expected = run_reference(path, inputs)
    assert runtime == "tflite-micro"
    for (name, got), want in zip(outputs.items(), expected, strict=True):
        comparison = compare(name, got, want)
        assert comparison.passed, f"{name}: max abs error {comparison.max_abs_error}"
    per_mac = stats.instructions / macs
    assert per_mac <= tflm_per_mac, f"{per_mac:.2f} instructions per MAC"


def _nm_sizes(elf: Path) -> dict[str, int]:
    """Function symbol → size from binutils' nm (independent of pyelftools)."""
    listing = subprocess.run(["arm-none-eabi-nm", "--print-size", str(elf)], check=True,
                             capture_output=True, text=True).stdout
    sizes = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tT":
            sizes[fields[3]] = int(fields[1], 16)
    return sizes


def test_size_reports_code_bytes_per_kernel(qemu: None, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = conv_model(tmp_path / "model.tflite")
    compiled = microexport.compile(path, tmp_path / "m.tar", name="conv")
    symbols = sorted(k["symbol"] for k in compiled.metadata["functions"]["kernels"])
    project = tmp_path / "proj"
    assert main(["project", "create", str(compiled.archive), "--board", BOARD,
                 "-o", str(project)]) == 0
    assert main(["build", str(project)]) == 0
    capsys.readouterr()
    assert main(["size", str(project), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["kernels"]) == symbols and len(symbols) >= 2
    nm = _nm_sizes(Path(report["elf"]))
    for symbol, size in report["kernels"].items():
        assert size == nm[symbol] > 0, symbol
        assert report["functions"][symbol] == size
    total = sum(report["kernels"].values())
    assert total < report["flash"]["by_kind"]["code"]

    assert main(["size", str(project)]) == 0
    out = capsys.readouterr().out
    assert f"kernels (code bytes): {total} B in {len(symbols)} kernels" in out
    for symbol, size in report["kernels"].items():
        assert any(line.split()[0] == str(size) and line.split()[-1] == symbol
                   for line in out.splitlines() if line.strip()), symbol
