"""The integer LSTM and the int16 sigmoid/tanh it is made of, bit-exact with TFLite Micro.

TFLite's int16 LOGISTIC and TANH interpolate a 256-entry uint16 sigmoid table, which the integer
UNIDIRECTIONAL_SEQUENCE_LSTM uses for all its gates. microexport builds that table from its
definition (`fixedpoint.sigmoid_table_uint16`), so the first tests run both functions on every
int16 input, through TFLite Micro and through the compiled C, at the input scales that take each
scaling path. The LSTM tests then compare whole sequences (every hidden state, not only a
classifier's argmax) on single-operator int8 LSTMs with random weights, over the layouts and
quantizations TFLite Micro runs: batch- and time-major, several batches, cell-state scales from
2**-8 to 2**-15 (each tanh scaling path), with and without cell clipping, asymmetric input and
hidden state, saturating inputs, and 16x8 (int16 activations, int64 biases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from int8_models import SignedTfliteWriter, tflm_reference
from support import require_board, require_module
from zoo import TfliteWriter

import microexport
from microexport.compiler.integer import fixedpoint
from microexport.errors import UnsupportedOperator

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16).reshape(256, 256)


def _activation_model(directory: Path, op: str, input_scale: float) -> Path:
    writer = TfliteWriter()
    x = writer.tensor("x", (256, 256), "int16", None, [input_scale], [0])
    y = writer.tensor("y", (256, 256), "int16", None, [2.0 ** -15], [0])
    writer.operator(op, [x], [y])
    return writer.write(directory / f"{op.lower()}16.tflite", [x], [y])


# 2**-12: the power-of-two path of both (multiplier 3); 2**-11: tanh's second one (3 << 1);
# the others a general multiplier with a rounding right shift.
@pytest.mark.parametrize("input_scale", [2.0 ** -12, 2.0 ** -11, 0.001, 3.0e-5, 0.0123])
@pytest.mark.parametrize("op", ["LOGISTIC", "TANH"])
def test_int16_sigmoid_and_tanh_match_tflm_on_every_input(op: str, input_scale: float,
                                                          tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    path = _activation_model(tmp_path, op, input_scale)
    want = tflm_reference(path, {"x": ALL_INT16})["y"]
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="act16").archive
    got = microexport.run(archive, {"x": ALL_INT16}, board="host",
                          build_dir=tmp_path / "build")["y"]
    differs = np.flatnonzero(got != want)
    assert differs.size == 0, (differs.size, ALL_INT16.ravel()[differs[:5]],
                               got.ravel()[differs[:5]], want.ravel()[differs[:5]])


def test_sigmoid_table_is_monotone_and_ends_at_one() -> None:
    """What the interpolation relies on: non-decreasing knots from 0.5 to 1 in 0.16."""
    table = fixedpoint.sigmoid_table_uint16()
    assert table.dtype == np.uint16 and table.shape == (256,)
    assert table[0] == 32768 and table[-1] == 0xFFFF
    assert np.all(np.diff(table.astype(int)) >= 0)


def test_int16_logistic_with_another_output_scale_is_one_line(tmp_path: Path) -> None:
    writer = TfliteWriter()
    x = writer.tensor("x", (1, 8), "int16", None, [2.0 ** -12], [0])
    y = writer.tensor("y", (1, 8), "int16", None, [2.0 ** -14], [0])
    writer.operator("LOGISTIC", [x], [y])
    path = writer.write(tmp_path / "bad.tflite", [x], [y])
    with pytest.raises(UnsupportedOperator) as err:
        microexport.compile(str(path))
    assert "LOGISTIC" in str(err.value) and "2**-15" in str(err.value)
    assert "\n" not in str(err.value)


# --- single-operator int8 LSTMs --------------------------------------------------------------

def lstm_model(directory: Path, *, batch: int, steps: int, features: int, units: int,
               time_major: bool, cell_power: int, cell_clip: float, input_q: tuple[float, int],
               hidden_q: tuple[float, int], seed: int, per_channel: bool = False,
               cifg: bool = False, activations: str = "int8") -> Path:
    """An int8 (or 16x8: `activations="int16"`) UNIDIRECTIONAL_SEQUENCE_LSTM with random int8
    weights as TFLite's converter lays one out (per-tensor symmetric weights, int32 (int64)
    biases at input × weight scale, an int8 (int16) hidden state, an int16 cell state of scale
    2**cell_power); its output sequence is the model's."""
    rng = np.random.default_rng(seed)
    writer = SignedTfliteWriter()
    bias_type = "int64" if activations == "int16" else "int32"
    bias_range = 4000 * (256 if activations == "int16" else 1)
    shape = (steps, batch, features) if time_major else (batch, steps, features)
    x = writer.tensor("x", shape, activations, None, [input_q[0]], [input_q[1]])

    def weights(name: str, columns: int, input_scale: float) -> tuple[int, float]:
        scale = float(rng.uniform(0.004, 0.02)) * 16 / columns
        values = rng.integers(-127, 128, size=(units, columns)).astype(np.int8)
        scales = [scale * float(rng.uniform(0.5, 1.5)) for _ in range(units)] if per_channel \
            else [scale]
        index = writer.tensor(name, (units, columns), "int8", values, scales,
                              [0] * len(scales))
        return index, scale * input_scale

    slots = [-1] * 24
    slots[0] = x
    for gate in range(4):
        if cifg and gate == 0:
            continue
        slots[1 + gate], bias_scale = weights(f"w_in{gate}", features, input_q[0])
        slots[5 + gate], _ = weights(f"w_rec{gate}", units, hidden_q[0])
        bias = rng.integers(-bias_range, bias_range, size=units).astype(bias_type)
        slots[12 + gate] = writer.tensor(f"b{gate}", (units,), bias_type, bias, [bias_scale],
                                         [0])
    slots[18] = writer.tensor("h", (batch, units), activations, None, [hidden_q[0]],
                              [hidden_q[1]], variable=True)
    slots[19] = writer.tensor("c", (batch, units), "int16", None, [2.0 ** cell_power], [0],
                              variable=True)
    out_shape = (steps, batch, units) if time_major else (batch, steps, units)
    y = writer.tensor("y", out_shape, activations, None, [hidden_q[0]], [hidden_q[1]])
    options = writer.options("UnidirectionalSequenceLSTMOptions", fusedActivationFunction=4,
                             cellClip=cell_clip, projClip=0.0, timeMajor=time_major)
    writer.operator("UNIDIRECTIONAL_SEQUENCE_LSTM", slots, [y], options)
    return writer.write(directory / "lstm.tflite", [x], [y])


LSTMS = {
    # the converter's usual layout: batch-major, one sequence, cell 2**-11, clip 10
    "keras": dict(batch=1, steps=12, features=10, units=20, time_major=False, cell_power=-11,
                  cell_clip=10.0, input_q=(0.05, -3), hidden_q=(1 / 128, 0)),
    # a clip that changes outputs here (0.9 / 2**-11 = 1843.2 → 1843)
    "time_major_batches": dict(batch=3, steps=7, features=6, units=9, time_major=True,
                               cell_power=-11, cell_clip=0.9, input_q=(0.1, 17),
                               hidden_q=(0.0071, -9)),
    "batch_major_batches": dict(batch=2, steps=9, features=5, units=16, time_major=False,
                                cell_power=-12, cell_clip=0.0, input_q=(0.02, 0),
                                hidden_q=(1 / 128, 3)),
    # a fine cell scale: tanh(cell) multiplies by 3 and shifts right by 3 with rounding
    "fine_cell_no_clip": dict(batch=1, steps=10, features=8, units=12, time_major=False,
                              cell_power=-15, cell_clip=0.0, input_q=(0.08, 5),
                              hidden_q=(0.0079, -1)),
    # a coarse cell scale (tanh multiplies by 3 << 4), a clip that changes outputs here and
    # truncates (1.3 / 2**-8 = 332.8 → 332)
    "coarse_cell_clipped": dict(batch=2, steps=6, features=4, units=8, time_major=True,
                                cell_power=-8, cell_clip=1.3, input_q=(0.03, -100),
                                hidden_q=(0.01, 20)),
    # 16x8: int16 input, hidden state and output, int64 biases and accumulators
    "int16x8": dict(batch=2, steps=8, features=6, units=10, time_major=False, cell_power=-11,
                    cell_clip=0.0, input_q=(2.0 ** -11, 0), hidden_q=(2.0 ** -15, 0),
                    activations="int16"),
    "int16x8_time_major_clipped": dict(batch=1, steps=9, features=12, units=8, time_major=True,
                                       cell_power=-10, cell_clip=1.1, input_q=(0.0003, 0),
                                       hidden_q=(0.00004, 0), activations="int16"),
}


@pytest.mark.parametrize("name", LSTMS)
def test_int8_lstm_sequence_bit_exact_on_host(name: str, tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    config = LSTMS[name]
    path = lstm_model(tmp_path, seed=len(name), **config)
    rng = np.random.default_rng(7)
    shape = ((config["steps"], config["batch"], config["features"]) if config["time_major"]
             else (config["batch"], config["steps"], config["features"]))
    dtype = np.dtype(config.get("activations", "int8"))
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    x.reshape(-1)[:5] = [info.min, info.max, info.max, info.min, info.max]  # saturating too
    want = tflm_reference(path, {"x": x})["y"]
    assert len(np.unique(want)) > 20, "a degenerate sequence would test little"
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="lstm").archive
    got = microexport.run(archive, {"x": x}, board="host", build_dir=tmp_path / "build")["y"]
    assert got.dtype == dtype and got.shape == want.shape
    assert np.array_equal(got, want), (np.flatnonzero(got != want)[:10],
                                       np.abs(got.astype(int) - want).max())


@pytest.mark.parametrize("board,name", [("mps2_an385", "time_major_batches"),
                                        ("mps2_an386", "time_major_batches"),
                                        ("mps2_an386", "int16x8")])
def test_int8_lstm_sequence_bit_exact_in_qemu(board: str, name: str, tmp_path: Path) -> None:
    """Cortex-M3 and M4F (micro-kernels: plain C and SMLAD), C built with -Werror: the same
    bits as TFLite Micro."""
    require_module("tflite_micro", "tflite")
    require_board(board)
    config = LSTMS[name]
    path = lstm_model(tmp_path, seed=11, **config)
    shape = ((config["steps"], config["batch"], config["features"]) if config["time_major"]
             else (config["batch"], config["steps"], config["features"]))
    info = np.iinfo(config.get("activations", "int8"))
    x = np.random.default_rng(9).integers(info.min, info.max + 1, size=shape).astype(info.dtype)
    want = tflm_reference(path, {"x": x})["y"]
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="lstm").archive
    got = microexport.run(archive, {"x": x}, board=board, build_dir=tmp_path / "build")["y"]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("change,words", [
    (dict(per_channel=True), "per-channel weights"),
    (dict(cifg=True), "coupled input-forget"),
])
def test_int8_lstm_layouts_tflm_does_not_run_are_one_line(change: dict, words: str,
                                                          tmp_path: Path) -> None:
    path = lstm_model(tmp_path, seed=1, **{**LSTMS["keras"], **change})
    with pytest.raises(UnsupportedOperator) as err:
        microexport.compile(str(path))
    message = str(err.value)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in message and words in message, message
    assert "\n" not in message


def test_int8_lstm_cell_scale_not_a_power_of_two_is_one_line(tmp_path: Path) -> None:
    path = lstm_model(tmp_path, seed=1, **{**LSTMS["keras"], "cell_power": -11.5})
    with pytest.raises(UnsupportedOperator) as err:
        microexport.compile(str(path))
    assert "not a power of two" in str(err.value) and "\n" not in str(err.value)


def test_int8_lstm_graph_describes_every_tensor(tmp_path: Path) -> None:
    """graph.json (derived from the TIR JSON, which reloads losslessly) gives every tensor
    between the LSTM's kernels its quantization: input steps as the input, gate inputs Q3.12,
    the cell state at its power-of-two scale, hidden states as the hidden state."""
    import json
    import tarfile

    from microexport.archive import graph as graph_module
    from microexport.archive import tir_json

    config = LSTMS["time_major_batches"]
    path = lstm_model(tmp_path, seed=3, **config)
    archive = microexport.compile(str(path), output=tmp_path / "m.tar", name="lstm").archive
    with tarfile.open(archive) as tar:
        graph = json.load(tar.extractfile("./src/graph.json"))
        text = tar.extractfile("./src/tir-codegen.json").read().decode()
    assert tir_json.dump(tir_json.load(text), "codegen") == text
    assert graph_module.graph_from_tir(text) == graph
    tensors = {t["name"]: t for t in graph["tensors"]}
    expected = {  # kernel name part → its outputs' (scales, zero points)
        "_split": ([config["input_q"][0]], [config["input_q"][1]]),
        "_fc": ([2.0 ** -12], [0]),  # the gates' fully connected layers
        "_lstm_cell": ([2.0 ** config["cell_power"]], [0]),
        "_lstm_hidden_int8": ([config["hidden_q"][0]], [config["hidden_q"][1]])}
    seen = set()
    for node in graph["nodes"]:
        # a fused kernel (the last step's cell and hidden state) is named after its parts in
        # order: its output is the last part's
        kinds = [k for k in expected if k in node["kernel"]]
        kind = max(kinds, key=node["kernel"].rfind) if kinds else None
        for output in node["outputs"]:
            quant = tensors[output].get("quantization")
            assert quant is not None, (node["kernel"], output)
            if kind is not None:
                want_scale, want_zero = expected[kind]
                assert quant["scale"] == pytest.approx(want_scale, rel=1e-7), node["kernel"]
                assert quant["zero_point"] == want_zero, node["kernel"]
                seen.add(kind)
    assert seen == set(expected)
