"""Random int8 TFLite models (tests/random_int8_models.py), quantized by ai-edge-quantizer,
bit-exact with TFLite Micro on the host; the reproducers of the bugs the int8 fuzzer found; the
shrinker. `python bench/fuzz.py --format tflite-int8` runs thousands."""

from __future__ import annotations

from pathlib import Path

import pytest
import random_int8_models as fuzz
from support import require_module

REPRODUCERS = sorted((Path(__file__).parent / "fuzz_reproducers" / "int8").glob("*.json"))
SEEDS = range(40)


@pytest.fixture(autouse=True)
def _quantizer() -> None:
    require_module("ai_edge_quantizer", "tflite")
    require_module("tflite_micro", "tflite")


@pytest.mark.parametrize("path", REPRODUCERS, ids=[p.stem for p in REPRODUCERS])
def test_reproducer(path: Path) -> None:
    """fc_depth_6: a fully connected layer of depth 6 (int16 column, padded to 8) zeroed the
    padding at the wrong places of the column, overwriting depth 5. conv_1x1_one_channel: a 1x1
    conv of one input channel indexed its column with an unfolded constant expression,
    which buffer compaction took for a dynamic size (refused)."""
    shape, layers, seed = fuzz.layers_from_json(path.read_text())
    assert fuzz.check_layers(shape, layers, seed) == ("pass", "")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_int8_model_is_bit_exact(seed: int) -> None:
    assert fuzz.check_seed(seed) == ("pass", "")


def test_random_layers_fit_and_cover_the_micro_kernel_paths() -> None:
    kinds, unrolled, odd_depth = set(), False, False
    for seed in SEEDS:
        shape, layers = fuzz.random_layers(seed)
        kinds |= {layer.kind for layer in layers}
        unrolled |= any(layer.kind == "depthwise" and layer.kernel == (3, 3) for layer in layers)
        odd_depth |= shape[3] % 4 != 0
    assert kinds == {"conv", "depthwise", "avgpool", "maxpool", "pad", "residual", "fc"}
    assert unrolled and odd_depth


def test_shrink_keeps_only_the_layers_the_failure_needs() -> None:
    layers = [fuzz.Layer(kind=k) for k in ("pad", "conv", "maxpool", "fc")]
    checks: list[int] = []

    def fails(candidate: list[fuzz.Layer]) -> bool:
        checks.append(len(candidate))
        return any(layer.kind == "conv" for layer in candidate)

    assert fuzz.shrink((1, 4, 4, 1), layers, fails) == [fuzz.Layer(kind="conv")]
    assert len(checks) <= 20
