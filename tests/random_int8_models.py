"""Random int8 TFLite models, quantized by ai-edge-quantizer, checked bit for bit against TFLite
Micro: the differential fuzzer of the integer path (the micro-kernels of
compiler/integer/im2col.py and the TE kernels it leaves to others).

A model is a chain of layers (`Layer`) on one NHWC input: convolutions of random kernel sizes,
strides, paddings, dilations and channel counts (whole groups of four or not), depthwise
convolutions (depth multiplier 1 or 2, 3x3 unrolled or other windows), pooling, explicit PAD,
residual ADDs, and a fully connected head whose depth is a multiple of four or not. Its float
weights come from the seed; `build` writes the float model and quantizes it (int8 activations
and weights, per-channel, a fixed-seed calibration set) as tests/int8_models.py does.
`check_layers` compiles it and compares every output with TFLite Micro's: status "pass",
"mismatch" (any output bit differs), "unsupported" (a one-line error of ours), "crash" (a
traceback or C that does not build) or "reference-error" (TFLite Micro refuses the model).
`shrink` drops layers while the failure stays the same, so a failure becomes a short list of
layers (its JSON, `layers_to_json`, is a reproducer).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from int8_models import _SAME, _VALID, FloatNet, _features, _finish

ACTIVATIONS = ("NONE", "RELU", "RELU6")


@dataclass(frozen=True)
class Layer:
    """One layer of the chain; the fields a kind does not use keep their defaults."""

    kind: str  # conv, depthwise, avgpool, maxpool, pad, residual, fc
    out: int = 0  # conv / fc output channels
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    same: bool = True
    dilation: int = 1
    multiplier: int = 1
    act: str = "NONE"


def random_layers(seed: int) -> tuple[tuple[int, int, int, int], list[Layer]]:
    """The input shape and layers of the model of `seed`; every layer fits its input."""
    rng = np.random.default_rng(seed)
    shape = (1, int(rng.integers(3, 13)), int(rng.integers(3, 13)), int(rng.integers(1, 10)))
    _, h, w, c = shape
    layers = []
    for _ in range(int(rng.integers(1, 5))):
        kind = str(rng.choice(["conv", "conv", "depthwise", "depthwise", "avgpool", "maxpool",
                               "pad", "residual"]))
        kernel = (int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 2, 3, 5])))
        if kind == "depthwise" and rng.random() < 0.5:
            kernel = (3, 3)  # the unrolled micro-kernel
        layer = Layer(
            kind=kind, out=int(rng.integers(1, 21)), kernel=kernel,
            stride=int(rng.choice([1, 1, 2])), same=bool(rng.random() < 0.6),
            dilation=int(rng.choice([1, 1, 1, 2])), multiplier=int(rng.choice([1, 1, 1, 2])),
            act=str(rng.choice(ACTIVATIONS)))
        extent = [(k - 1) * layer.dilation + 1 for k in kernel]
        if not layer.same and (extent[0] > h or extent[1] > w):
            layer = replace(layer, same=True)
        if kind in ("avgpool", "maxpool") and (h < 2 or w < 2):
            layer = replace(layer, kind="pad")
        layers.append(layer)
        h, w, c = _output_shape(layer, h, w, c)
    if rng.random() < 0.6:
        layers.append(Layer(kind="fc", out=int(rng.integers(1, 12)),
                            act=str(rng.choice(ACTIVATIONS))))
    return shape, layers


def _output_shape(layer: Layer, h: int, w: int, c: int) -> tuple[int, int, int]:
    """(height, width, channels) after `layer` (not the fully connected head)."""
    if layer.kind in ("conv", "depthwise"):
        def size(n: int, k: int) -> int:
            extent = (k - 1) * layer.dilation + 1
            return -(-n // layer.stride) if layer.same else (n - extent) // layer.stride + 1

        channels = layer.out if layer.kind == "conv" else c * layer.multiplier
        return size(h, layer.kernel[0]), size(w, layer.kernel[1]), channels
    if layer.kind in ("avgpool", "maxpool"):
        return h // 2, w // 2, c
    if layer.kind == "pad":
        return h + 1, w + 1, c
    return h, w, c


def _apply(net: FloatNet, x: object, layer: Layer) -> object:
    """`layer` on `x`; ValueError when the layer does not fit its input."""
    _, h, w, c = x.shape
    padding = _SAME if layer.same else _VALID
    extent = [(k - 1) * layer.dilation + 1 for k in layer.kernel]
    if layer.kind in ("conv", "depthwise") and not layer.same and (
            extent[0] > h or extent[1] > w):
        raise ValueError("window larger than the input")
    if layer.kind == "conv":
        return net.conv(x, layer.out, layer.kernel, layer.stride, padding, layer.act,
                        layer.dilation)
    if layer.kind == "depthwise":
        return net.depthwise(x, layer.kernel, layer.stride, padding, layer.act,
                             layer.multiplier, layer.dilation)
    if layer.kind in ("avgpool", "maxpool"):
        if h < 2 or w < 2:
            raise ValueError("input smaller than the pooling window")
        return net.pool(x, "AVERAGE_POOL_2D" if layer.kind == "avgpool" else "MAX_POOL_2D", 2, 2)
    if layer.kind == "pad":
        return net.pad(x, [(0, 0), (1, 0), (0, 1), (0, 0)])
    if layer.kind == "residual":
        return net.binary(x, net.conv(x, c, (1, 1), act="NONE"), "ADD")
    if layer.kind == "fc":
        flat = net.reshape(x, (1, h * w * c))
        return net.fc(flat, layer.out, layer.act)
    raise ValueError(f"unknown layer kind {layer.kind}")


def build(shape: tuple[int, int, int, int], layers: list[Layer], directory: Path,
          seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """Write and quantize the model; returns its path and a sample input. ValueError when a
    layer does not fit (e.g. after shrinking removed the layer that made room for it)."""
    net = FloatNet(seed)
    inp = net.input("x", shape)
    x = inp
    for layer in layers:
        x = _apply(net, x, layer)
        if any(d < 1 for d in x.shape):
            raise ValueError("a layer leaves no elements")
    if x is inp:
        raise ValueError("no layer")

    def data(data_seed: int, count: int) -> list[np.ndarray]:
        return _features(data_seed, shape, count)

    return _finish(net, directory, "fuzz_int8", ([inp], [x]), data)


def check_layers(shape: tuple[int, int, int, int], layers: list[Layer],
                 seed: int = 0) -> tuple[str, str]:
    """(status, detail) of the model: see the module docstring. A model that cannot be built
    is "invalid"."""
    import microexport
    from microexport.errors import Error

    with tempfile.TemporaryDirectory(prefix="microexport-fuzz-int8-") as tmp:
        try:
            path, _ = build(shape, layers, Path(tmp), seed)
        except ValueError as err:
            return "invalid", str(err)
        try:
            report = microexport.test(str(path), board="host", seed=seed,
                                      reference="tflite-micro")
        except Error as err:
            line = err.one_line()
            if "tflite-micro cannot run" in line:  # the reference refuses the model, not us
                return "reference-error", line
            crash = "compiling '" in line and "failed" in line
            return ("crash" if crash else "unsupported"), line
        except Exception as err:  # noqa: BLE001 - a traceback is the finding
            return "crash", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    bad = [f"{o.name}: max abs error {o.max_abs_error:.3g}" for o in report.outputs
           if o.max_abs_error != 0]
    return ("mismatch", "; ".join(bad)) if bad else ("pass", "")


def check_seed(seed: int) -> tuple[str, str]:
    """`check_layers` of the model of `seed`."""
    shape, layers = random_layers(seed)
    return check_layers(shape, layers, seed)


def shrink(shape: tuple[int, int, int, int], layers: list[Layer],
           fails: Callable[[list[Layer]], bool], budget: int = 20) -> list[Layer]:
    """Drop layers, one at a time, while `fails` still holds (at most `budget` checks)."""
    changed = True
    while changed and budget > 0:
        changed = False
        for index in range(len(layers)):
            if len(layers) == 1 or budget <= 0:
                break
            candidate = layers[:index] + layers[index + 1:]
            budget -= 1
            if fails(candidate):
                layers, changed = candidate, True
                break
    return layers


def layers_to_json(shape: tuple[int, int, int, int], layers: list[Layer], seed: int) -> str:
    """A reproducer: the input shape, the layers and the weight seed."""
    return json.dumps({"shape": list(shape), "seed": seed,
                       "layers": [asdict(layer) for layer in layers]}, indent=1)


def layers_from_json(text: str) -> tuple[tuple[int, int, int, int], list[Layer], int]:
    """The inverse of `layers_to_json`."""
    data = json.loads(text)
    layers = [Layer(**{**layer, "kernel": tuple(layer["kernel"])}) for layer in data["layers"]]
    return tuple(data["shape"]), layers, data["seed"]
