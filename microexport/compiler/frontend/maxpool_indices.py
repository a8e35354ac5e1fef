"""ONNX `MaxPool` with its second output, `Indices`, as two plain reduction kernels.

TVM 0.27's frontend converts MaxPool to `relax.nn.max_pool*d`, which has no argmax output, so a
node that asks for `Indices` fails to import. When the node has two outputs, this converter
computes both itself: `Y` as the maximum over the valid (not padded) positions of each window,
and `Indices` as the smallest row-major input position among the window's positions that hold
that maximum. ONNX's reference walks each window row-major and keeps the first strictly larger
value, so on ties it picks exactly that smallest position. The index is flat over the whole
input (batch and channel included, NCHW row-major); `storage_order` 1 gives the column-major
position within the spatial dimensions instead (`h + w * H`, and `+ d * H * W` in 3-D), as the
reference computes it. A MaxPool with one output goes to TVM's converter unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from microexport.errors import ModelError


def pool_geometry(spatial: list[int], attr: dict[str, Any]
                  ) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Kernel, strides, dilations, leading pads and output sizes of a MaxPool over the
    `spatial` input sizes, from the node's attributes as the ONNX specification defines them
    (auto_pad NOTSET / VALID / SAME_UPPER / SAME_LOWER, ceil_mode)."""
    rank = len(spatial)
    kernel = [int(k) for k in attr["kernel_shape"]]
    strides = [int(s) for s in attr.get("strides", [1] * rank)]
    dilations = [int(d) for d in attr.get("dilations", [1] * rank)]
    pads = [int(p) for p in attr.get("pads", [0] * (2 * rank))]
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    ceil_mode = bool(attr.get("ceil_mode", 0))
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    begin: list[int] = []
    out: list[int] = []
    for i, size in enumerate(spatial):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            length = -(-size // strides[i])
            total = max((length - 1) * strides[i] + extent[i] - size, 0)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        elif auto_pad == "VALID":
            length = (size - extent[i]) // strides[i] + 1
            begin.append(0)
        elif auto_pad in ("NOTSET", ""):
            padded = size + pads[i] + pads[i + rank] - extent[i]
            length = (-(-padded // strides[i]) if ceil_mode else padded // strides[i]) + 1
            # ceil_mode: the last window must start inside the input or its leading pad
            if ceil_mode and (length - 1) * strides[i] >= size + pads[i]:
                length -= 1
            begin.append(pads[i])
        else:
            raise ModelError(f"MaxPool's auto_pad '{auto_pad}' is not one of NOTSET, VALID, "
                             "SAME_UPPER, SAME_LOWER: fix the model's attribute")
        if length < 1:
            raise ModelError(f"MaxPool's window ({extent[i]} wide) does not fit spatial "
                             f"dimension {i} of size {size}: fix kernel_shape or pads")
        out.append(length)
    return kernel, strides, dilations, begin, out


def maxpool_with_indices_te(data: Any, kernel: list[int], strides: list[int],
                            dilations: list[int], begin: list[int], out: list[int],
                            storage_order: int) -> list[Any]:
    """Two TE tensors: the max pool of the N, C, spatial... TE tensor `data` and its int64
    indices (see the module docstring)."""
    from tvm import te, tirx

    shape = [int(d) for d in data.shape]
    batch_channels, spatial = shape[:2], shape[2:]
    rank = len(spatial)
    plane = math.prod(spatial)
    row_major = [math.prod(spatial[i + 1:]) for i in range(rank)]

    def window(outs: tuple[Any, ...], taps: list[Any]) -> tuple[list[Any], Any]:
        """The input positions of window taps `taps` of output `outs`, and whether all lie
        inside the input (padding is never a candidate)."""
        positions = [outs[i] * strides[i] - begin[i] + taps[i] * dilations[i]
                     for i in range(rank)]
        inside = tirx.all(*[tirx.all(p >= 0, p < size)
                            for p, size in zip(positions, spatial, strict=True)])
        return positions, inside

    def lowest() -> Any:
        return tirx.min_value(data.dtype)

    def maximum(n: Any, c: Any, *outs: Any) -> Any:
        taps = [te.reduce_axis((0, k), f"k{i}") for i, k in enumerate(kernel)]
        positions, inside = window(outs, taps)
        # if_then_else is lazy in C: a padded position is never read
        return te.max(tirx.if_then_else(inside, data[(n, c, *positions)], lowest()), axis=taps)

    values = te.compute([*batch_channels, *out], maximum, name="max_pool_values")
    never = tirx.max_value("int64")

    def first(n: Any, c: Any, *outs: Any) -> Any:
        taps = [te.reduce_axis((0, k), f"k{i}") for i, k in enumerate(kernel)]
        positions, inside = window(outs, taps)
        flat = sum((p.astype("int64") * row_major[i] for i, p in enumerate(positions)),
                   tirx.const(0, "int64"))
        hit = tirx.if_then_else(inside, data[(n, c, *positions)] == values[(n, c, *outs)],
                                tirx.const(False, "bool"))
        return te.min(tirx.if_then_else(hit, flat, never), axis=taps)

    found = te.compute([*batch_channels, *out], first, name="max_pool_first")
    channels = batch_channels[1]

    def index(n: Any, c: Any, *outs: Any) -> Any:
        flat = found[(n, c, *outs)]
        base = (n.astype("int64") * channels + c.astype("int64")) * plane
        if not storage_order:
            return base + flat
        column = tirx.const(0, "int64")
        below = 1  # product of the spatial sizes before dimension i
        for i in range(rank):
            column = column + tirx.floormod(tirx.floordiv(flat, row_major[i]), spatial[i]) * below
            below *= spatial[i]
        return base + column

    indices = te.compute([*batch_channels, *out], index, name="max_pool_indices")
    return [values, indices]


def onnx_converters(stock: dict[str, Any]) -> dict[str, type]:
    """A `MaxPool` converter: a node with the `Indices` output by `maxpool_with_indices_te`,
    every other one by TVM's converter (`stock["MaxPool"]`)."""
    base = stock["MaxPool"]

    def impl(cls: type, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        if attr.get("tvm_custom", {}).get("num_outputs", 1) < 2:
            return base._impl_v1(bb, inputs, attr, params)
        from tvm import relax

        data = inputs[0]
        shape = [int(d) for d in data.ty.shape.values]
        if len(shape) < 3:
            raise ModelError(f"MaxPool's input has rank {len(shape)}: it needs N, C and at "
                             "least one spatial dimension")
        kernel, strides, dilations, begin, out = pool_geometry(shape[2:], attr)
        pooled = bb.emit_te(maxpool_with_indices_te, data, kernel, strides, dilations, begin,
                            out, int(attr.get("storage_order", 0)),
                            primfunc_name_hint="max_pool_indices")
        return relax.Tuple([bb.emit(relax.TupleGetItem(pooled, i)) for i in range(2)])

    converter = type("MaxPool", (base,), {
        "_impl_v1": classmethod(impl),
        "__doc__": "ONNX MaxPool; with Indices by our kernel, otherwise TVM's converter."})
    return {"MaxPool": converter}
