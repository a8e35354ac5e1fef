"""ONNX `ConvTranspose` with the `output_shape` attribute, rewritten to explicit pads.

TVM 0.27's frontend ignores `output_shape` and computes the output size from `pads` alone, so a
model that sets it imports with another shape than it declares. The ONNX specification derives
the pads from it: per spatial axis

    total = stride * (in - 1) + output_padding + ((kernel - 1) * dilation + 1) - output_shape

split as `begin = total - total // 2, end = total // 2` (NOTSET and SAME_LOWER; SAME_UPPER puts
the larger half at the end: `begin = total // 2`), with `//` the floor division of the
reference. A negative end pad asks for more output than the full transposed convolution gives:
those rows are the zeros (plus bias) `output_padding` adds, so it moves there (less than a
stride of them, as onnxruntime requires; more is a one-line error). A negative
leading pad (SAME_UPPER with an odd negative total) would put zero rows before the output;
TVM's operator cannot express that, and onnxruntime and the ONNX reference disagree on it
(onnxruntime puts the row at the end): a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microexport.errors import ModelError


def has_output_shape(graph: Any) -> bool:
    """Whether a ConvTranspose node of `graph` sets `output_shape`."""
    return any(node.op_type == "ConvTranspose"
               and any(a.name == "output_shape" for a in node.attribute)
               for node in graph.node)


def resolve_output_shapes(graph: Any, shapes: Callable[[], dict[str, tuple[int, ...]]]) -> None:
    """Replace, in place, the `output_shape` of every ConvTranspose node of `graph` by the
    pads (and output_padding) the ONNX specification derives from it. `shapes` gives the
    static shapes of the graph's values (called only when such a node exists)."""
    from onnx import helper

    if not has_output_shape(graph):
        return
    known = {**shapes(), **{init.name: tuple(init.dims) for init in graph.initializer}}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "ConvTranspose" or "output_shape" not in attrs:
            continue
        data = known.get(node.input[0])
        weight = known.get(node.input[1])
        if data is None or (weight is None and "kernel_shape" not in attrs):
            raise ModelError(f"ConvTranspose '{node.name or node.output[0]}' sets output_shape "
                             "but its input shapes are not static: fix them with "
                             "--input-shape NAME:DIMS")
        rank = len(data) - 2
        target = [int(v) for v in attrs["output_shape"]]
        target = target[2:] if len(target) == rank + 2 else target
        kernel = [int(k) for k in attrs.get("kernel_shape", weight[2:] if weight else [])]
        strides = [int(s) for s in attrs.get("strides", [1] * rank)]
        dilations = [int(d) for d in attrs.get("dilations", [1] * rank)]
        output_padding = [int(p) for p in attrs.get("output_padding", [0] * rank)]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if len(target) != rank:
            raise ModelError(f"ConvTranspose '{node.name or node.output[0]}' has output_shape "
                             f"{target} for {rank} spatial dimensions: give one size per "
                             "spatial dimension")
        begin, end = [], []
        for i in range(rank):
            total = (strides[i] * (data[i + 2] - 1) + output_padding[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - target[i])
            first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(first)
            end.append(total - first)
        if min(begin) < 0:
            raise ModelError(f"ConvTranspose '{node.name or node.output[0]}': output_shape "
                             f"{target} needs zero rows before the output (leading pads "
                             f"{begin}), which is not supported: use a Pad after the node")
        for i in range(rank):
            if end[i] < 0:  # more output than the convolution covers: output_padding's zeros
                output_padding[i] -= end[i]
                end[i] = 0
        if any(p >= s for p, s in zip(output_padding, strides, strict=True)):
            raise ModelError(f"ConvTranspose '{node.name or node.output[0]}': output_shape "
                             f"{target} is a stride or more beyond the transposed convolution's "
                             f"output (output_padding {output_padding}, strides {strides}): give "
                             "an output_shape the input size can produce")
        kept = [a for a in node.attribute
                if a.name not in ("output_shape", "pads", "auto_pad", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([helper.make_attribute("pads", begin + end),
                               helper.make_attribute("output_padding", output_padding)])
