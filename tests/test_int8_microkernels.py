"""The int8 micro-kernel path (compiler/integer/im2col.py, templates/codegen/int8_dot.h.j2):
conv, depthwise and fully connected layers as packed weights, im2col columns and dot-product
micro-kernels, bit-exact with TFLite Micro on the host (plain C) and in QEMU on every core (the
SMLAD path on the Cortex-M4F, M7 and M55, plain C on the M3).

The edge model reaches every remainder of the kernels: an odd number of output pixels (one
column), odd numbers of output channels (a one-row block), input channels not a multiple of four
(the element-wise column fill), padding with whole groups (the zero-filled tap), strides,
depthwise windows unrolled (3x3) or not (5x5), dilated and clipped at the border, a depth
multiplier of 2 (left to the TE kernel), fully connected layers with 4 + 2 + 1 row blocks, on
the int8 input directly (depth a multiple of four, zero point folded into the bias) and through
an int16 column (depth 7 and 5). Its float model is quantized by ai-edge-quantizer like the others.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from int8_models import _SAME, _VALID, FloatNet, _features, _finish, tflm_reference
from support import require_module, require_program

import microexport
from microexport.archive.analyze import analyze
from microexport.compiler.integer.im2col import pack_rows


def edge_model(directory: Path) -> tuple[Path, dict]:
    net = FloatNet(97)
    inp = net.input("x", (1, 7, 9, 6))
    x = net.conv(inp, 8, (3, 3))  # 6 input channels: element fill, 63 pixels: a lone column
    x = net.conv(x, 7, (3, 3))  # 8 channels: whole groups, zero-filled padded taps; 7 rows
    x = net.conv(x, 12, (1, 1), act="NONE")
    x = net.depthwise(x, stride=2)  # 12 channels, stride 2, SAME padding
    x = net.depthwise(x, (5, 5), act="NONE")  # 25 taps: the clipped window everywhere
    x = net.depthwise(x, dilation=2)  # dilated: unrolled inside, clipped at the border
    x = net.depthwise(x, (3, 3), padding=_VALID, multiplier=2, act="NONE")  # TE kernel
    x = net.conv(x, 8, (2, 2), stride=2, padding=_SAME)
    shape = x.shape
    x = net.reshape(x, (1, int(np.prod(shape[1:]))))
    x = net.fc(x, 7, act="RELU")  # 4 + 2 + 1 rows, depth 8
    out = net.fc(net.fc(x, 5, name="fc_odd"), 3, name="y")  # depth 7 and 5

    def data(seed: int, count: int) -> list[np.ndarray]:
        return _features(seed, (1, 7, 9, 6), count)

    return _finish(net, directory, "microkernel_edges_int8", ([inp], [out]), data)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    require_module("ai_edge_quantizer", "tflite")
    require_module("tflite_micro", "tflite")
    return edge_model(tmp_path_factory.mktemp("edges"))


def test_pack_rows_interleaves_blocks_of_rows_per_group_of_four() -> None:
    weights = np.arange(7 * 6, dtype=np.int8).reshape(7, 6)
    packed = pack_rows(weights, 4)
    assert (packed.depth, packed.padded_depth) == (6, 8)
    assert [(b.first, b.rows, b.offset) for b in packed.blocks] == [(0, 4, 0), (4, 2, 32),
                                                                    (6, 1, 48)]
    padded = np.zeros((7, 8), np.int8)
    padded[:, :6] = weights
    # block of rows 0-3: group 0 of rows 0, 1, 2, 3, then group 1 of rows 0, 1, 2, 3
    expected = np.concatenate([padded[0:4, 0:4].reshape(-1), padded[0:4, 4:8].reshape(-1),
                               padded[4:6, 0:4].reshape(-1), padded[4:6, 4:8].reshape(-1),
                               padded[6, :]])
    assert np.array_equal(packed.data, expected)


def test_tir_and_c_show_every_micro_kernel_call(model: tuple[Path, dict], tmp_path: Path
                                                ) -> None:
    path, _ = model
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="edges").archive
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        (tir_json,) = [n for n in names if n.endswith("tir-codegen.json")]
        tir = tar.extractfile(tir_json).read().decode()
        (lib,) = [n for n in names if n.endswith("tvmgen_edges_lib.c")]
        source = tar.extractfile(lib).read().decode()
    json.loads(tir)
    for call in ("me_dot_s8s16_2x2", "me_dot_s8s16_2x1", "me_dot_s8s16_1x2",
                 "me_dot_s8s16_1x1", "me_dot_s8s16_4x1", "me_dot_s8s8_4x1", "me_dot_s8s8_2x1",
                 "me_dot_s8s8_1x1", "me_s8_to_s16_col", "me_dw_s8_4ch_window",
                 "me_dw_s8_4ch_3x3"):
        assert call in tir, call
        assert f"{call}(" in source, call
    assert "__smlad" in source and "#include <arm_acle.h>" in source


def test_bit_exact_on_host(model: tuple[Path, dict]) -> None:
    path, _ = model
    report = microexport.test(str(path), board="host")
    assert report.reference == "tflite-micro"
    assert all(o.max_abs_error == 0 for o in report.outputs), report.summary()


@pytest.mark.parametrize("board", ["mps2_an385", "mps2_an386", "mps2_an500", "mps3_an547"])
def test_bit_exact_in_qemu_on_every_core(board: str, model: tuple[Path, dict], tmp_path: Path
                                         ) -> None:
    """Cortex-M3 (plain C), M4F, M7 and M55 (SMLAD), built with -Werror: TFLM's bits."""
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, inputs = model
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="edges").archive
    got = microexport.run(archive, inputs, board=board, build_dir=tmp_path / "build")
    want = tflm_reference(path, inputs)
    for name, expected in want.items():
        assert np.array_equal(got[name], expected), (board, name, got[name], expected)


def test_analyze_counts_the_macs_inside_micro_kernels(tmp_path: Path) -> None:
    """`microexport analyze` sees the MACs of a fully connected layer done by me_dot_s8s8_4x1
    calls (depth 64, a multiple of four: the input read directly, no padding), not zero."""
    require_module("ai_edge_quantizer", "tflite")
    net = FloatNet(5)
    inp = net.input("x", (1, 64))
    out = net.fc(inp, 8, name="y")

    def data(seed: int, count: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(count)]

    path, _ = _finish(net, tmp_path, "fc_only", ([inp], [out]), data)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="fc").archive
    with tarfile.open(archive) as tar:
        (member,) = [n for n in tar.getnames() if n.endswith("tir-codegen.json")]
        report = analyze(tar.extractfile(member).read())
    assert report["totals"]["macs"] == 64 * 8


def test_size_counts_micro_kernels_as_model_code(model: tuple[Path, dict], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`microexport size` lists the static micro-kernels (GCC may rename them `.constprop.N`)
    among the model's functions, so the model's code bytes include them."""
    from microexport.cli import main

    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    path, _ = model
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="edges").archive
    project = tmp_path / "proj"
    assert main(["project", "create", str(archive), "--board", "mps2_an386",
                 "-o", str(project)]) == 0
    assert main(["build", str(project)]) == 0
    capsys.readouterr()
    assert main(["size", str(project), "--json"]) == 0
    functions = json.loads(capsys.readouterr().out)["functions"]
    micro = {name: size for name, size in functions.items() if name.startswith("me_")}
    assert any(name.startswith("me_dot_s8s16_2x2") for name in micro), sorted(functions)
    assert all(size > 0 for size in micro.values())


def test_words_stay_aligned_whatever_the_requested_alignment(model: tuple[Path, dict],
                                                            tmp_path: Path) -> None:
    """The micro-kernels read weights and columns with LDRD, which faults on the Cortex-M4 at
    an address that is not a multiple of 4: with `--workspace-alignment 1` the plan still
    aligns to words, the int16 columns live in the (aligned) scratch and not as int16_t C
    locals, and the model still runs bit-exact in QEMU."""
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, inputs = model
    result = microexport.compile(str(path), output=tmp_path / "m.tar", name="edges", alignment=1)
    assert result.model.memory.alignment == 4
    assert all(c.offset % 4 == 0 for c in result.model.constants)
    with tarfile.open(result.archive) as tar:
        (lib,) = [n for n in tar.getnames() if n.endswith("tvmgen_edges_lib.c")]
        source = tar.extractfile(lib).read().decode()
    assert "int16_t columns_ptr[" not in source and "int16_t column_ptr[" not in source
    got = microexport.run(result.archive, inputs, board="mps2_an386", build_dir=tmp_path / "b")
    want = tflm_reference(path, inputs)
    for name, expected in want.items():
        assert np.array_equal(got[name], expected), (name, got[name], expected)
