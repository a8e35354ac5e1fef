"""Random ONNX graphs of the operators microexport supports, for differential testing (fuzzing).

`random_graph(seed)` builds a small graph from a fixed seed: convolutions (grouped, depthwise,
strided, dilated, padded), pools (max, average, global), pads (constant, reflect, edge), concats,
splits, reshapes, flattens, slices, transposes, residual and broadcasting element-wise
arithmetic, activations, Gemm/MatMul/Softmax heads, weights stored as float32, float16 (Cast) or
int8 (DequantizeLinear), several outputs, some of them intermediates or views of intermediates.
The same seed gives the same graph on every machine.

A `Graph` is a small record of its own (not an ONNX proto) so that it can be merged with others
into one model (`merge`: one compile for many graphs), written as JSON (`to_json` / `from_json`:
the reproducers under tests/fuzz_reproducers/ are text, not binaries) and shrunk (`shrink`).
`check_batch` compiles a batch through the public API, runs it on the host and compares every
output with onnxruntime; a failing graph is isolated, attributed (against TVM's own LLVM build
of the same import: our pipeline or the import) and shrunk to a small reproducer.

Used by tests/test_fuzz.py (a few hundred graphs) and bench/fuzz.py (thousands).
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ONNX_OPSET = 13
ONNX_IR_VERSION = 8

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------
# the graph record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One ONNX node: operator, input and output value names, attributes (plain values)."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Graph:
    """A float32 ONNX graph: inputs (name → shape), initializers, nodes in topological order,
    outputs, and the shape of every float32 value (tracked while generating)."""

    name: str
    inputs: dict[str, Shape]
    initializers: dict[str, np.ndarray]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    shapes: dict[str, Shape]
    layout: str = "default"  # how it is compiled: a key of LAYOUTS

    def to_model(self) -> Any:
        """The graph as an ONNX ModelProto (opset 13), checked with full shape inference."""
        return merge([self])

    def to_json(self) -> str:
        """The graph as JSON text (arrays as base64 of their little-endian bytes)."""
        return json.dumps({
            "name": self.name,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "initializers": {k: _array_json(v) for k, v in self.initializers.items()},
            "nodes": [{"op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                       "attrs": {k: v for k, v in n.attrs}} for n in self.nodes],
            "outputs": list(self.outputs),
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "layout": self.layout,
        }, indent=1, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> Graph:
        """The graph `to_json` wrote."""
        doc = json.loads(text)
        return Graph(
            name=doc["name"],
            inputs={k: tuple(v) for k, v in doc["inputs"].items()},
            initializers={k: _array_from_json(v) for k, v in doc["initializers"].items()},
            nodes=tuple(Node(n["op"], tuple(n["inputs"]), tuple(n["outputs"]),
                             tuple((k, _attr_from_json(v)) for k, v in sorted(n["attrs"].items())))
                        for n in doc["nodes"]),
            outputs=tuple(doc["outputs"]),
            shapes={k: tuple(v) for k, v in doc["shapes"].items()},
            layout=doc.get("layout", "default"),
        )

    def summary(self) -> str:
        """`name: N nodes (Op, Op, …), M outputs` in one line."""
        ops = ", ".join(n.op for n in self.nodes)
        return (f"{self.name}: {len(self.nodes)} nodes ({ops}), {len(self.outputs)} outputs, "
                f"layout {self.layout}")


def _array_json(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "data": base64.b64encode(data.tobytes()).decode()}


def _array_from_json(doc: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(doc["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(doc["data"]), dtype=dtype)
    return flat.reshape(doc["shape"]).astype(np.dtype(doc["dtype"]))


def _attr_from_json(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def merge(graphs: list[Graph]) -> Any:
    """One ONNX model computing every graph side by side (their names never collide: each
    graph's values carry its name as prefix)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, inits = [], [], [], []
    for graph in graphs:
        inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                   for name, shape in graph.inputs.items()]
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                  list(graph.shapes[name]))
                    for name in graph.outputs]
        inits += [numpy_helper.from_array(array, name)
                  for name, array in graph.initializers.items()]
        nodes += [helper.make_node(n.op, list(n.inputs), list(n.outputs), **dict(n.attrs))
                  for n in graph.nodes]
    name = graphs[0].name if len(graphs) == 1 else f"batch_{graphs[0].name}_{len(graphs)}"
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="microexport-fuzz")
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------


@dataclass
class _Builder:
    """Graph under construction: values with shapes, and a name counter."""

    name: str
    rng: np.random.Generator
    inputs: dict[str, Shape] = field(default_factory=dict)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    counter: int = 0

    def fresh(self, kind: str) -> str:
        self.counter += 1
        return f"{self.name}_{kind}{self.counter}"

    def const(self, array: np.ndarray, kind: str = "c") -> str:
        name = self.fresh(kind)
        self.initializers[name] = np.asarray(array)
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(np.array(values, dtype=np.int64), "i")

    def node(self, op: str, inputs: list[str], shapes: list[Shape], **attrs: Any) -> list[str]:
        outs = [self.fresh("t") for _ in shapes]
        self.nodes.append(Node(op, tuple(inputs), tuple(outs), tuple(sorted(attrs.items()))))
        for out, shape in zip(outs, shapes, strict=True):
            self.shapes[out] = tuple(int(d) for d in shape)
        return outs

    def weight(self, shape: Shape, fan_in: int) -> str:
        """A float32 weight tensor, stored as float32, float16 (Cast) or int8
        (DequantizeLinear with a per-tensor scale)."""
        values = self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        kind = self.rng.choice(["float32", "float32", "float16", "int8"])
        if kind == "float32":
            return self.const(values.astype(np.float32), "w")
        if kind == "float16":
            stored = self.const(values.astype(np.float16), "w16_")
            return self.node("Cast", [stored], [shape], to=1)[0]  # 1 = FLOAT
        scale = float(np.abs(values).max() / 127) or 1.0
        q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
        zero = self.const(np.array(0, dtype=np.int8), "zp")
        return self.node("DequantizeLinear",
                         [self.const(q, "w8_"), self.const(np.float32(scale), "s"), zero],
                         [shape])[0]

    def values_of_rank(self, rank: int) -> list[str]:
        return [v for v, s in self.shapes.items() if len(s) == rank]

    def pick(self, values: list[str]) -> str:
        return values[int(self.rng.integers(len(values)))]


def _out_dim(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


def _spatial_params(b: _Builder, h: int, w: int, max_kernel: int, dilate: bool
                    ) -> dict[str, Any] | None:
    """Kernel, strides, pads (each below the kernel size) and dilations of a window op over an
    (h, w) plane that leave at least one output element; None if nothing fits."""
    rng = b.rng
    for _ in range(8):
        kernel = [int(rng.integers(1, max_kernel + 1)) for _ in range(2)]
        stride = [int(rng.integers(1, 3)) for _ in range(2)]
        dilation = [int(rng.integers(1, 3)) if dilate and k > 1 else 1 for k in kernel]
        pads = [int(rng.integers(0, k)) for k in kernel + kernel]  # top, left, bottom, right
        out = [_out_dim(size, k, s, pads[i] + pads[i + 2], d)
               for i, (size, k, s, d) in enumerate(zip((h, w), kernel, stride, dilation,
                                                       strict=True))]
        if min(out) >= 1:
            return {"kernel_shape": kernel, "strides": stride, "pads": pads,
                    "dilations": dilation, "out": out}
    return None


def _conv(b: _Builder, x: str, depthwise: bool) -> bool:
    n, c, h, w = b.shapes[x]
    params = _spatial_params(b, h, w, 3, dilate=True)
    if params is None:
        return False
    if depthwise:
        group, out_c = c, c * int(b.rng.integers(1, 3))
    else:
        group = 2 if c % 2 == 0 and b.rng.random() < 0.25 else 1
        out_c = group * int(b.rng.integers(1, 4))
    kh, kw = params["kernel_shape"]
    fan_in = c // group * kh * kw
    inputs = [x, b.weight((out_c, c // group, kh, kw), fan_in)]
    if b.rng.random() < 0.8:
        inputs.append(b.weight((out_c,), 1))
    attrs = {k: params[k] for k in ("kernel_shape", "strides", "pads", "dilations")}
    b.node("Conv", inputs, [(n, out_c, *params["out"])], group=group, **attrs)
    return True


def _pool(b: _Builder, x: str) -> bool:
    n, c, h, w = b.shapes[x]
    op = str(b.rng.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
    if op.startswith("Global"):
        b.node(op, [x], [(n, c, 1, 1)])
        return True
    params = _spatial_params(b, h, w, 3, dilate=False)
    if params is None:
        return False
    attrs: dict[str, Any] = {k: params[k] for k in ("kernel_shape", "strides", "pads")}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(b.rng.integers(0, 2))
    out = params["out"]
    if b.rng.random() < 0.25:  # ceil mode: a last, partial window
        ceil = []
        for i, size in enumerate((h, w)):
            k, s, begin = params["kernel_shape"][i], params["strides"][i], params["pads"][i]
            dim = -(-(size + begin + params["pads"][i + 2] - k) // s) + 1
            # A last window starting in the padding is dropped by onnxruntime and PyTorch but
            # counted by ONNX shape inference: generate only shapes both agree on.
            ceil.append(dim if (dim - 1) * s < size + begin else None)
        if None not in ceil:
            attrs["ceil_mode"], out = 1, ceil
    b.node(op, [x], [(n, c, *out)], **attrs)
    return True


def _reduce(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    op = str(b.rng.choice(["ReduceMean", "ReduceMax", "ReduceSum"]))
    candidates = list(range(1, len(shape)))
    count = int(b.rng.integers(1, len(candidates) + 1))
    axes = sorted(int(a) for a in b.rng.choice(candidates, count, replace=False))
    keepdims = int(b.rng.integers(0, 2))
    out = tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)
    if op == "ReduceSum":  # opset 13: axes is an input
        b.node(op, [x, b.ints(axes)], [out], keepdims=keepdims)
    else:
        b.node(op, [x], [out], axes=axes, keepdims=keepdims)
    return True


def _squeeze(b: _Builder, x: str) -> bool:
    """Squeeze a dimension of size 1, or Unsqueeze one (ranks stay within 2 … 5)."""
    shape = b.shapes[x]
    ones = [i for i, d in enumerate(shape) if d == 1 and i > 0]
    if ones and len(shape) > 2 and b.rng.random() < 0.6:
        axis = b.pick(ones)
        b.node("Squeeze", [x, b.ints([axis])], [shape[:axis] + shape[axis + 1:]])
        return True
    if len(shape) >= 5:
        return False
    axis = int(b.rng.integers(1, len(shape) + 1))
    b.node("Unsqueeze", [x, b.ints([axis])], [shape[:axis] + (1,) + shape[axis:]])
    return True


def _expand(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    ones = [i for i, d in enumerate(shape) if d == 1 and i > 0]
    if not ones:
        return False
    target = list(shape)
    target[b.pick(ones)] = int(b.rng.integers(2, 4))
    b.node("Expand", [x, b.ints(target)], [tuple(target)])
    return True


def _pad(b: _Builder, x: str) -> bool:
    n, c, h, w = b.shapes[x]
    mode = str(b.rng.choice(["constant", "constant", "reflect", "edge"]))
    limit = {"constant": 3, "edge": 3, "reflect": None}[mode]
    pads = [0] * 8
    for axis, size in ((2, h), (3, w)):
        top = min(limit or size - 1, 2)
        pads[axis] = int(b.rng.integers(0, top + 1))
        pads[axis + 4] = int(b.rng.integers(0, top + 1))
    if mode == "constant" and b.rng.random() < 0.3:
        pads[1], pads[5] = int(b.rng.integers(0, 2)), int(b.rng.integers(0, 2))
    if not any(pads):
        return False
    inputs = [x, b.ints(pads)]
    if mode == "constant" and b.rng.random() < 0.5:
        inputs.append(b.const(np.float32(b.rng.uniform(-1, 1)), "v"))
    shape = tuple(d + pads[i] + pads[i + 4] for i, d in enumerate((n, c, h, w)))
    b.node("Pad", inputs, [shape], mode=mode)
    return True


def _concat(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    axis = int(b.rng.integers(1, len(shape)))
    partners = [v for v, s in b.shapes.items() if len(s) == len(shape)
                and all(a == d for i, (a, d) in enumerate(zip(s, shape, strict=True))
                        if i != axis)]
    others = [b.pick(partners) for _ in range(int(b.rng.integers(1, 3)))]
    parts = [x, *others]
    out = list(shape)
    out[axis] = sum(b.shapes[p][axis] for p in parts)
    b.node("Concat", parts, [tuple(out)], axis=int(axis - len(shape) * b.rng.integers(0, 2)))
    return True


def _split(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    axes = [a for a in range(1, len(shape)) if shape[a] >= 2]
    if not axes:
        return False
    axis = b.pick(axes)
    first = int(b.rng.integers(1, shape[axis]))
    sizes = [first, shape[axis] - first]
    shapes = [tuple(s if i != axis else size for i, s in enumerate(shape)) for size in sizes]
    b.node("Split", [x, b.ints(sizes)], shapes, axis=axis)
    return True


def _reshape(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    total = int(np.prod(shape))
    choice = int(b.rng.integers(0, 4))
    if choice == 0:
        b.node("Flatten", [x], [(shape[0], total // shape[0])], axis=1)
        return True
    if choice == 1 and len(shape) == 4:
        target = [shape[0], shape[1], shape[2] * shape[3]]
    elif choice == 2 and len(shape) == 4:
        target = [shape[0], shape[2], shape[1], shape[3]]  # same sizes, other order: a view
    else:
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        first = int(b.rng.choice(divisors))
        target = [1, first, total // first, 1]
    written = list(target)
    if b.rng.random() < 0.4:
        written[int(b.rng.integers(0, len(written)))] = -1
    b.node("Reshape", [x, b.ints(written)], [tuple(target)])
    return True


def _transpose(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    perm = [int(p) for p in b.rng.permutation(len(shape))]
    b.node("Transpose", [x], [tuple(shape[p] for p in perm)], perm=perm)
    return True


def _slice(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    axes = [a for a in range(1, len(shape)) if shape[a] >= 2]
    if not axes:
        return False
    axis = b.pick(axes)
    size = shape[axis]
    start = int(b.rng.integers(0, size - 1))
    end = int(b.rng.integers(start + 1, size + 1))
    step = int(b.rng.integers(1, 3))
    out = list(shape)
    out[axis] = len(range(start, end, step))
    written_end = end if b.rng.random() < 0.7 else (2**31 - 1 if end == size else end)
    b.node("Slice", [x, b.ints([start]), b.ints([written_end]), b.ints([axis]),
                     b.ints([step])], [tuple(out)])
    return True


def _broadcast_shape(a: Shape, c: Shape) -> Shape:
    rank = max(len(a), len(c))
    a = (1,) * (rank - len(a)) + a
    c = (1,) * (rank - len(c)) + c
    return tuple(max(x, y) for x, y in zip(a, c, strict=True))


def _binary(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    op = str(b.rng.choice(["Add", "Add", "Sub", "Mul"]))
    same = [v for v, s in b.shapes.items() if s == shape and v != x]
    smaller = [v for v, s in b.shapes.items() if len(s) == len(shape) and s != shape
               and all(d in (1, e) for d, e in zip(s, shape, strict=True))]
    kind = int(b.rng.integers(0, 3))
    if kind == 0 and same:
        other = b.pick(same)  # residual
    elif kind == 1 and smaller:
        other = b.pick(smaller)  # e.g. squeeze-excite: (1, C, 1, 1) against (1, C, H, W)
    else:
        options: list[Shape] = [(1,), (shape[-1],)]
        if len(shape) == 4:
            options += [(shape[1], 1, 1), (1, shape[1], 1, 1)]
        const_shape = options[int(b.rng.integers(len(options)))]
        values = b.rng.uniform(-1, 1, const_shape)
        stored = b.rng.random()
        if stored < 0.2:  # a float16 constant
            (other,) = b.node("Cast", [b.const(values.astype(np.float16), "k16_")],
                              [const_shape], to=1)
        elif stored < 0.35:  # an int8 constant
            q = np.round(values * 127).astype(np.int8)
            (other,) = b.node("DequantizeLinear", [b.const(q, "k8_"),
                                                   b.const(np.float32(1 / 127), "s")],
                              [const_shape])
        else:
            other = b.const(values.astype(np.float32), "k")
    operands = [x, other] if b.rng.random() < 0.7 else [other, x]
    other_shape = b.shapes.get(other, tuple(b.initializers.get(other, np.zeros(0)).shape))
    b.node(op, operands, [_broadcast_shape(shape, other_shape)])
    return True


def _unary(b: _Builder, x: str) -> bool:
    shape = b.shapes[x]
    op = str(b.rng.choice(["Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "Abs", "Neg"]))
    if op == "Clip":
        b.node("Clip", [x, b.const(np.float32(0), "lo"), b.const(np.float32(6), "hi")], [shape])
    elif op == "LeakyRelu":
        b.node(op, [x], [shape], alpha=float(np.float32(b.rng.uniform(0.01, 0.3))))
    else:
        b.node(op, [x], [shape])
    return True


def _head(b: _Builder, x: str) -> bool:
    """A dense head on a rank-2 value: Gemm or MatMul (+ Add), maybe Softmax."""
    n, k = b.shapes[x]
    units = int(b.rng.integers(1, 9))
    if b.rng.random() < 0.5:
        inputs = [x, b.weight((units, k), k)]
        if b.rng.random() < 0.7:
            inputs.append(b.weight((units,), 1))
        (y,) = b.node("Gemm", inputs, [(n, units)], transB=1)
    else:
        (y,) = b.node("MatMul", [x, b.weight((k, units), k)], [(n, units)])
    if b.rng.random() < 0.4:
        b.node("Softmax", [y], [(n, units)], axis=-1)
    return True


_RANK4_OPS: tuple[tuple[Callable[[_Builder, str], bool], float], ...] = (
    (lambda b, x: _conv(b, x, depthwise=False), 3.0),
    (lambda b, x: _conv(b, x, depthwise=True), 1.5),
    (_pool, 1.5),
    (_pad, 1.0),
    (_concat, 1.0),
    (_split, 1.0),
    (_reshape, 1.0),
    (_transpose, 0.7),
    (_slice, 0.8),
    (_binary, 2.0),
    (_unary, 1.5),
    (_reduce, 0.5),
    (_squeeze, 0.4),
    (_expand, 0.3),
)
_RANK2_OPS: tuple[tuple[Callable[[_Builder, str], bool], float], ...] = (
    (_head, 3.0), (_binary, 1.0), (_unary, 1.0), (_concat, 0.5), (_split, 0.5), (_slice, 0.5),
    (_squeeze, 0.3),
)
_OTHER_RANK_OPS: tuple[tuple[Callable[[_Builder, str], bool], float], ...] = (
    (_binary, 1.0), (_unary, 1.0), (_transpose, 0.5), (_concat, 0.5), (_split, 0.5),
    (_slice, 0.5), (_reshape, 0.7), (_reduce, 0.5), (_squeeze, 0.7), (_expand, 0.3),
)
MAX_ELEMENTS = 4096  # per value: keeps graphs small and fast to compile


def random_graph(seed: int, max_nodes: int = 8) -> Graph:
    """A random graph from `seed` (deterministic), with at most about `max_nodes` operators."""
    rng = np.random.default_rng(seed)
    b = _Builder(name=f"g{seed}", rng=rng)
    c, h, w = (int(rng.integers(1, 5)), int(rng.integers(2, 9)), int(rng.integers(2, 9)))
    x = f"g{seed}_x"
    b.inputs[x] = b.shapes[x] = (1, c, h, w)
    if rng.random() < 0.25:  # a second input, of the same or a broadcastable shape
        second = f"g{seed}_x2"
        b.inputs[second] = b.shapes[second] = (1, c, h, w) if rng.random() < 0.6 else (1, c, 1, 1)
    steps = int(rng.integers(1, max_nodes + 1))
    tries = 0
    while sum(n.op not in _HELPER_OPS for n in b.nodes) < steps and tries < 50:
        tries += 1
        operands = [v for v in b.shapes if len(b.shapes[v]) >= 2]
        recent = operands[-3:]
        pool = recent if rng.random() < 0.7 else operands
        x = b.pick(pool)
        rank = len(b.shapes[x])
        ops = {4: _RANK4_OPS, 2: _RANK2_OPS}.get(rank, _OTHER_RANK_OPS)
        weights = np.array([wt for _, wt in ops])
        op = ops[int(rng.choice(len(ops), p=weights / weights.sum()))][0]
        snapshot = (len(b.nodes), dict(b.shapes), dict(b.initializers), b.counter)
        if not op(b, x) or max(int(np.prod(s)) for s in b.shapes.values()) > MAX_ELEMENTS:
            count, shapes, inits, counter = snapshot
            del b.nodes[count:]
            b.shapes, b.initializers, b.counter = shapes, inits, counter
    if rng.random() < 0.3:  # a classifier head: flatten the last 4-d value, dense layer(s)
        last = [v for v in b.shapes if len(b.shapes[v]) == 4][-1]
        n, c, h, w = b.shapes[last]
        if h * w > 1 and rng.random() < 0.5:
            (last,) = b.node("GlobalAveragePool", [last], [(n, c, 1, 1)])
        (flat,) = b.node("Flatten", [last], [(n, int(np.prod(b.shapes[last])) // n)], axis=1)
        _head(b, flat)
    return _with_outputs(b)


_HELPER_OPS = ("Cast", "DequantizeLinear")  # weight decoding, not operators of the model


def _with_outputs(b: _Builder) -> Graph:
    """Outputs: the last value, and maybe intermediates (some through Identity, a view)."""
    produced = [o for n in b.nodes if n.op not in _HELPER_OPS for o in n.outputs]
    if not produced:  # nothing applied: one activation of the input
        _unary(b, next(iter(b.inputs)))
        produced = list(b.nodes[-1].outputs)
    outputs = [produced[-1]]
    if b.rng.random() < 0.1:  # an output that is a view of an input
        x = next(iter(b.inputs))
        outputs += b.node("Reshape", [x, b.ints([1, -1])], [(1, int(np.prod(b.shapes[x])))])
    if b.rng.random() < 0.1:  # the same value as two outputs
        outputs += b.node("Identity", [produced[-1]], [b.shapes[produced[-1]]])
    for _ in range(int(b.rng.integers(0, 3))):
        candidate = b.pick(produced)
        if b.rng.random() < 0.3:
            (candidate,) = b.node("Identity", [candidate], [b.shapes[candidate]])
        if candidate not in outputs:
            outputs.append(candidate)
    used = {i for n in b.nodes for i in n.inputs}
    inputs = {k: v for k, v in b.inputs.items() if k in used}
    if not inputs:  # every path from the second input was dropped; keep the first
        inputs = dict(list(b.inputs.items())[:1])
    return Graph(b.name, inputs, dict(b.initializers), tuple(b.nodes), tuple(outputs),
                 dict(b.shapes))


# --------------------------------------------------------------------------------------------
# pruning and shrinking
# --------------------------------------------------------------------------------------------


def prune(graph: Graph) -> Graph:
    """Drop nodes, initializers and inputs no output depends on."""
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if needed & set(node.outputs):
            kept.append(node)
            needed |= set(node.inputs)
    nodes = tuple(reversed(kept))
    inputs = {k: v for k, v in graph.inputs.items() if k in needed}
    inits = {k: v for k, v in graph.initializers.items() if k in needed}
    values = set(inputs) | {o for n in nodes for o in n.outputs}
    shapes = {k: v for k, v in graph.shapes.items() if k in values}
    return replace(graph, nodes=nodes, inputs=inputs, initializers=inits, shapes=shapes)


def _candidates(graph: Graph) -> Iterator[Graph]:
    """Smaller graphs, the biggest cuts first: one output fewer; a value cut off from what
    computes it (it becomes a graph input), latest values first; a node whose output has its
    first input's shape bypassed; the graph up to one value."""
    if len(graph.outputs) > 1:
        for index in range(len(graph.outputs)):
            yield prune(replace(graph, outputs=graph.outputs[:index] + graph.outputs[index + 1:]))
    for node in reversed(graph.nodes):  # cut: the node's output becomes an input
        value = node.outputs[0]
        if (len(node.outputs) == 1 and node.op not in _HELPER_OPS and value in graph.shapes
                and value not in graph.outputs):
            inputs = {**graph.inputs, value: graph.shapes[value]}
            nodes = tuple(n for n in graph.nodes if n is not node)
            yield prune(replace(graph, inputs=inputs, nodes=nodes))
    for node in graph.nodes:  # bypass a node whose output has its first input's shape
        if (len(node.outputs) == 1 and node.inputs and node.inputs[0] in graph.shapes
                and graph.shapes.get(node.outputs[0]) == graph.shapes[node.inputs[0]]
                and node.outputs[0] not in graph.outputs):
            old, new = node.outputs[0], node.inputs[0]
            nodes = tuple(replace(n, inputs=tuple(new if i == old else i for i in n.inputs))
                          for n in graph.nodes if n is not node)
            yield prune(replace(graph, nodes=nodes))
    produced = [o for n in graph.nodes if n.op not in _HELPER_OPS for o in n.outputs
                if o in graph.shapes]
    for value in produced:  # a prefix of the graph ending in one value
        if (value,) != graph.outputs:
            yield prune(replace(graph, outputs=(value,)))


def _size(graph: Graph) -> tuple[int, int]:
    return (len(graph.nodes), len(graph.outputs))


def shrink(graph: Graph, fails: Callable[[Graph], bool], budget: int = 60) -> Graph:
    """The smallest graph reached by repeatedly taking a smaller candidate that still fails
    (`fails` is called at most `budget` times)."""
    calls = 0
    improved = True
    while improved and calls < budget:
        improved = False
        for candidate in _candidates(graph):
            if _size(candidate) >= _size(graph) or not candidate.nodes:
                continue
            try:
                candidate.to_model()
            except Exception:  # noqa: BLE001 - an invalid cut: not a candidate
                continue
            calls += 1
            if fails(candidate):
                graph, improved = candidate, True
                break
            if calls >= budget:
                break
    return graph


# --------------------------------------------------------------------------------------------
# checking against onnxruntime
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What happened to one graph: `pass`, `unsupported` (a one-line user error: an operator
    or pattern we refuse), `mismatch` (wrong outputs), `crash` (a traceback or a C build
    error) or `reference-error` (onnxruntime refused the graph); `detail` says more,
    `attribution` (for a mismatch) whether TVM's own build of the import agrees with us
    (`import`) or with onnxruntime (`pipeline`)."""

    graph: Graph
    status: str
    detail: str = ""
    attribution: str = ""
    failing: tuple[str, ...] = ()  # the outputs that mismatch

    @property
    def bug(self) -> bool:
        return self.status in ("mismatch", "crash")


def _write(graphs: list[Graph], directory: Path) -> Path:
    import onnx

    path = directory / "model.onnx"
    onnx.save(merge(graphs), str(path))
    return path


def _layouts() -> dict[str, dict[str, Any]]:
    from microexport.model import PoolSpec

    return {
        "default": {},
        "io-in-workspace": {"io_in_workspace": True},
        "external-align4": {"workspace": "external", "alignment": 4},
        "stack64-align8": {"kernel_stack_limit": 64, "alignment": 8},
        "external-io-align32": {"workspace": "external", "io_in_workspace": True,
                                "alignment": 32},
        "two-pools": {"pools": (PoolSpec("fast", 512), PoolSpec("slow"))},
    }


# Compile options the graphs are checked under (`Graph.layout`): the memory planner, the
# workspace modes and the kernel-stack rule see every graph shape too.
LAYOUTS = ("default", "io-in-workspace", "external-align4", "stack64-align8",
           "external-io-align32", "two-pools")


def run_graphs(graphs: list[Graph], seed: int = 0) -> dict[str, tuple[str, str]]:
    """Compile the graphs as one model (with the first graph's layout), run it on the host and
    compare each output with onnxruntime: output name → (status, detail) with status `pass` or
    `mismatch`. Raises what the pipeline raised."""
    import microexport

    options = _layouts()[graphs[0].layout]
    with tempfile.TemporaryDirectory(prefix="microexport-fuzz-") as tmp:
        report = microexport.test(_write(graphs, Path(tmp)), seed=seed, **options)
    return {o.name: ("pass" if o.passed else "mismatch", f"max abs error {o.max_abs_error:.3g}")
            for o in report.outputs}


def _attribute(graph: Graph, seed: int) -> str:
    """For a mismatching graph: does TVM's own LLVM build of the import agree with our C
    (the import is wrong) or not (our pipeline is wrong)?"""
    import microexport

    with tempfile.TemporaryDirectory(prefix="microexport-fuzz-") as tmp:
        path = _write([graph], Path(tmp))
        try:
            report = microexport.test(path, seed=seed, reference="tvm",
                                      **_layouts()[graph.layout])
        except Exception as err:  # noqa: BLE001 - report what happened, one line
            return f"unknown (tvm: {str(err).splitlines()[0][:120]})"
    return "import" if report.passed else "pipeline"


def check_one(graph: Graph, seed: int = 0) -> Outcome:
    """Compile, run and compare one graph."""
    from microexport.errors import Error

    try:
        results = run_graphs([graph], seed)
    except Error as err:
        text = err.one_line()
        if "onnxruntime cannot" in text:
            return Outcome(graph, "reference-error", text)
        if "compiling '" in text and "failed" in text:  # the generated C does not build
            return Outcome(graph, "crash", text)
        return Outcome(graph, "unsupported", text)
    except Exception as err:  # noqa: BLE001 - a bug of ours: keep where it happened
        frames = traceback.extract_tb(err.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return Outcome(graph, "crash", f"{type(err).__name__} at {where}: "
                                       f"{str(err).splitlines()[0][:200] if str(err) else ''}")
    bad = {name: detail for name, (status, detail) in results.items() if status != "pass"}
    if bad:
        detail = "; ".join(f"{name}: {d}" for name, d in sorted(bad.items()))
        return Outcome(graph, "mismatch", detail, failing=tuple(sorted(bad)))
    return Outcome(graph, "pass")


def check_batch(graphs: list[Graph], seed: int = 0, shrink_budget: int = 40,
                layout: str = "default") -> list[Outcome]:
    """Check the graphs in one compilation under `layout` (of `LAYOUTS`); if that fails, each
    half on its own (down to single graphs). Every bug is attributed and shrunk
    (`Outcome.graph` is then the shrunk graph, with its layout)."""
    outcomes = _bisect([replace(g, layout=layout) for g in graphs], seed)
    return [_minimised(o, seed, shrink_budget) if o.bug else o for o in outcomes]


def _bisect(graphs: list[Graph], seed: int) -> list[Outcome]:
    if len(graphs) == 1:
        return [check_one(graphs[0], seed)]
    try:
        results = run_graphs(graphs, seed)
    except Exception:  # noqa: BLE001 - some graph of the batch failed: find which
        half = len(graphs) // 2
        return _bisect(graphs[:half], seed) + _bisect(graphs[half:], seed)
    outcomes = []
    for graph in graphs:
        if all(results[name][0] == "pass" for name in graph.outputs):
            outcomes.append(Outcome(graph, "pass"))
        else:  # confirm on its own (and get its own detail)
            outcomes.append(check_one(graph, seed))
    return outcomes


def _signature(outcome: Outcome) -> tuple[str, str]:
    """What makes two failures the same: the status, and for a crash its message with paths,
    value names and numbers blanked."""
    if outcome.status != "crash":
        return (outcome.status, "")
    text = re.sub(r"/tmp/\S+", "<path>", outcome.detail)
    text = re.sub(r"\bg\d+_\w+", "<value>", text)
    return (outcome.status, re.sub(r"\d+", "N", text))


def _minimised(outcome: Outcome, seed: int, budget: int) -> Outcome:
    """Shrink a failing graph while it fails the same way; attribute a mismatch."""
    def same_failure(candidate: Graph) -> bool:
        return _signature(check_one(candidate, seed)) == _signature(outcome)

    start = outcome.graph
    if outcome.failing and len(outcome.failing) < len(start.outputs):
        start = prune(replace(start, outputs=outcome.failing[:1]))  # a failing output alone
        if not same_failure(start):
            start = outcome.graph
    small = shrink(start, same_failure, budget) if budget else start
    final = check_one(small, seed) if small is not outcome.graph else outcome
    attribution = _attribute(small, seed) if final.status == "mismatch" else ""
    return replace(final, attribution=attribution)


# --------------------------------------------------------------------------------------------
# TFLite: random float32 NHWC graphs, checked against TFLite Micro
# --------------------------------------------------------------------------------------------

_ACTIVATIONS = (0, 0, 1, 3)  # fused activation: none, RELU, RELU6


def _tfl_out(size: int, kernel: int, stride: int, same: bool) -> int:
    return -(-size // stride) if same else (size - kernel) // stride + 1


class _TfliteGraph:
    """One random graph written into a shared `zoo.TfliteWriter` (several graphs share a
    model, as ONNX graphs do in `merge`)."""

    def __init__(self, writer: Any, seed: int) -> None:
        self.w, self.seed = writer, seed
        self.rng = np.random.default_rng(seed)
        self.shapes: dict[int, Shape] = {}
        self.count = 0

    def tensor(self, shape: Shape, data: np.ndarray | None = None, dtype: str = "float32"
               ) -> int:
        self.count += 1
        index = self.w.tensor(f"t{self.seed}_{self.count}", tuple(int(d) for d in shape), dtype,
                              data)
        if data is None:
            self.shapes[index] = tuple(int(d) for d in shape)
        return index

    def weight(self, shape: Shape, fan_in: int) -> int:
        """float32 weights, or float16 ones through DEQUANTIZE (TFLite Micro cannot run
        those: the reference falls back to LiteRT)."""
        values = self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        if self.rng.random() < 0.15:
            stored = self.tensor(shape, values.astype(np.float16), "float16")
            out = self.tensor(shape)
            del self.shapes[out]  # a weight, not an operand for later operators
            self.w.operator("DEQUANTIZE", [stored], [out])
            return out
        return self.tensor(shape, values.astype(np.float32))

    def ints(self, values: list[int]) -> int:
        return self.tensor((len(values),), np.array(values, dtype=np.int32), "int32")

    def op(self, name: str, inputs: list[int], shape: Shape, options: object = None) -> int:
        out = self.tensor(shape)
        self.w.operator(name, inputs, [out], options)
        return out

    def conv(self, x: int, depthwise: bool) -> int | None:
        n, h, w, c = self.shapes[x]
        k, s = int(self.rng.integers(1, 4)), int(self.rng.integers(1, 3))
        same = bool(self.rng.integers(0, 2))
        oh, ow = _tfl_out(h, k, s, same), _tfl_out(w, k, s, same)
        if min(oh, ow) < 1:
            return None
        act = int(self.rng.choice(_ACTIVATIONS))
        common = {"padding": 0 if same else 1, "strideH": s, "strideW": s,
                  "fusedActivationFunction": act, "dilationHFactor": 1, "dilationWFactor": 1}
        if depthwise:
            mult = int(self.rng.integers(1, 3))
            filt = self.weight((1, k, k, c * mult), k * k)
            bias = self.weight((c * mult,), 1)
            options = self.w.options("DepthwiseConv2DOptions", depthMultiplier=mult, **common)
            return self.op("DEPTHWISE_CONV_2D", [x, filt, bias], (n, oh, ow, c * mult), options)
        out_c = int(self.rng.integers(1, 6))
        filt = self.weight((out_c, k, k, c), k * k * c)
        bias = self.weight((out_c,), 1)
        return self.op("CONV_2D", [x, filt, bias], (n, oh, ow, out_c),
                       self.w.options("Conv2DOptions", **common))

    def pool(self, x: int) -> int | None:
        n, h, w, c = self.shapes[x]
        k, s = int(self.rng.integers(1, 4)), int(self.rng.integers(1, 3))
        same = bool(self.rng.integers(0, 2))
        oh, ow = _tfl_out(h, k, s, same), _tfl_out(w, k, s, same)
        if min(oh, ow) < 1:
            return None
        options = self.w.options("Pool2DOptions", padding=0 if same else 1, strideH=s,
                                 strideW=s, filterHeight=k, filterWidth=k,
                                 fusedActivationFunction=int(self.rng.choice(_ACTIVATIONS)))
        name = str(self.rng.choice(["MAX_POOL_2D", "AVERAGE_POOL_2D"]))
        return self.op(name, [x], (n, oh, ow, c), options)

    def pad(self, x: int) -> int:
        shape = self.shapes[x]
        pads = [[0, 0]] + [[int(self.rng.integers(0, 3)), int(self.rng.integers(0, 3))]
                           for _ in shape[1:]]
        paddings = self.tensor((len(shape), 2), np.array(pads, dtype=np.int32), "int32")
        out = tuple(d + a + b for d, (a, b) in zip(shape, pads, strict=True))
        return self.op("PAD", [x, paddings], out)

    def binary(self, x: int) -> int:
        shape = self.shapes[x]
        name = str(self.rng.choice(["ADD", "ADD", "SUB", "MUL"]))
        same = [t for t, s in self.shapes.items() if s == shape and t != x]
        if same and self.rng.random() < 0.5:
            other = same[int(self.rng.integers(len(same)))]
        else:
            const_shape = (shape[-1],) if self.rng.random() < 0.6 else (1,) * len(shape)
            other = self.tensor(const_shape,
                                self.rng.uniform(-1, 1, const_shape).astype(np.float32))
        kind = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}[name]
        options = self.w.options(kind, fusedActivationFunction=int(
            self.rng.choice(_ACTIVATIONS)))
        return self.op(name, [x, other], shape, options)

    def concat(self, x: int) -> int:
        shape = self.shapes[x]
        axis = int(self.rng.integers(1, len(shape)))
        partners = [t for t, s in self.shapes.items() if len(s) == len(shape) and all(
            a == b for i, (a, b) in enumerate(zip(s, shape, strict=True)) if i != axis)]
        other = partners[int(self.rng.integers(len(partners)))]
        out = list(shape)
        out[axis] += self.shapes[other][axis]
        options = self.w.options("ConcatenationOptions", axis=axis, fusedActivationFunction=0)
        return self.op("CONCATENATION", [x, other], tuple(out), options)

    def reshape(self, x: int) -> int:
        shape = self.shapes[x]
        total = int(np.prod(shape))
        target = [1, total] if self.rng.random() < 0.5 else [1, shape[-1], total // shape[-1]]
        options = self.w.options("ReshapeOptions", newShape=target)
        return self.op("RESHAPE", [x, self.ints(target)], tuple(target), options)

    def transpose(self, x: int) -> int:
        shape = self.shapes[x]
        perm = [0] + [int(p) + 1 for p in self.rng.permutation(len(shape) - 1)]
        return self.op("TRANSPOSE", [x, self.ints(perm)], tuple(shape[p] for p in perm))

    def unary(self, x: int) -> int:
        name = str(self.rng.choice(["RELU", "RELU6", "LOGISTIC", "TANH"]))
        return self.op(name, [x], self.shapes[x])

    def split(self, x: int) -> int | None:
        """SPLIT into equal parts along a dimension: several outputs of one operator."""
        shape = self.shapes[x]
        axes = [a for a in range(1, len(shape)) if shape[a] % 2 == 0]
        if not axes:
            return None
        axis = axes[int(self.rng.integers(len(axes)))]
        parts = 2 if shape[axis] % 3 else int(self.rng.choice([2, 3]))
        part = tuple(d // parts if i == axis else d for i, d in enumerate(shape))
        outs = [self.tensor(part) for _ in range(parts)]
        self.w.operator("SPLIT", [self.tensor((), np.array(axis, dtype=np.int32), "int32"), x],
                        outs, self.w.options("SplitOptions", numSplits=parts))
        return outs[int(self.rng.integers(parts))]

    def mean(self, x: int) -> int:
        """MEAN over the spatial dimensions, keeping them (a global average pool)."""
        n, _, _, c = self.shapes[x]
        return self.op("MEAN", [x, self.ints([1, 2])], (n, 1, 1, c),
                       self.w.options("ReducerOptions", keepDims=True))

    def regroup(self, x: int) -> int:
        """RESHAPE to another 4-d shape of the same size (a view)."""
        n, h, w, c = self.shapes[x]
        target = [n, h * w, 1, c] if self.rng.random() < 0.5 else [n, h, w * c, 1]
        options = self.w.options("ReshapeOptions", newShape=target)
        return self.op("RESHAPE", [x, self.ints(target)], tuple(target), options)

    def dense(self, x: int) -> int:
        shape = self.shapes[x]
        if len(shape) != 2:
            x = self.reshape(x) if len(shape) == 2 else self.op(
                "RESHAPE", [x, self.ints([1, int(np.prod(shape))])], (1, int(np.prod(shape))),
                self.w.options("ReshapeOptions", newShape=[1, int(np.prod(shape))]))
        k = self.shapes[x][1]
        units = int(self.rng.integers(1, 9))
        y = self.op("FULLY_CONNECTED", [x, self.weight((units, k), k), self.weight((units,), 1)],
                    (1, units), self.w.options("FullyConnectedOptions",
                                               fusedActivationFunction=int(
                                                   self.rng.choice(_ACTIVATIONS))))
        if self.rng.random() < 0.5:
            y = self.op("SOFTMAX", [y], (1, units), self.w.options("SoftmaxOptions", beta=1.0))
        return y

    def build(self, max_ops: int = 6, output_at: int | None = None
              ) -> tuple[list[int], list[int]]:
        """Inputs and outputs (tensor indices) of a random graph; with `output_at`, the only
        output is the `output_at`-th tensor it produces (the operators after it are dead: a
        shrunk graph, `shrink_tflite_seed`)."""
        rng = self.rng
        shape = (1, int(rng.integers(2, 9)), int(rng.integers(2, 9)), int(rng.integers(1, 5)))
        x = self.tensor(shape)
        inputs, produced = [x], []
        steps: list[tuple[Callable[[int], int | None], float]] = [
            (lambda t: self.conv(t, False), 3), (lambda t: self.conv(t, True), 1.5),
            (self.pool, 1.5), (self.pad, 1), (self.binary, 2), (self.concat, 1),
            (self.transpose, 0.7), (self.unary, 1), (self.split, 0.7), (self.mean, 0.4),
            (self.regroup, 0.5)]
        weights = np.array([wt for _, wt in steps])
        for _ in range(int(rng.integers(1, max_ops + 1))):
            operands = [t for t, s in self.shapes.items() if len(s) == 4]
            x = operands[-1] if rng.random() < 0.7 else operands[int(rng.integers(len(operands)))]
            step = steps[int(rng.choice(len(steps), p=weights / weights.sum()))][0]
            out = step(x)
            if out is not None:
                produced.append(out)
        if not produced:
            produced.append(self.unary(x))
        if rng.random() < 0.3:
            produced.append(self.dense(produced[-1]))
        if output_at is not None:
            return inputs, [produced[min(output_at, len(produced) - 1)]]
        outputs = [produced[-1]]
        for _ in range(int(rng.integers(0, 3))):
            candidate = produced[int(rng.integers(len(produced)))]
            if candidate not in outputs:
                outputs.append(candidate)
        return inputs, outputs


def write_random_tflite(seeds: list[int], path: Path, output_at: int | None = None
                        ) -> dict[int, list[str]]:
    """A .tflite model computing the random graph of every seed side by side (cut after its
    `output_at`-th produced tensor when given); returns each seed's output tensor names."""
    from zoo import TfliteWriter

    writer = TfliteWriter()
    inputs, outputs, names = [], [], {}
    for seed in seeds:
        graph = _TfliteGraph(writer, seed)
        graph_inputs, graph_outputs = graph.build(output_at=output_at)
        inputs += graph_inputs
        outputs += graph_outputs
        names[seed] = [writer.tensors[t].name for t in graph_outputs]
    writer.write(path, inputs, outputs)
    return names


def shrink_tflite_seed(graph_seed: int, status: str, seed: int = 0, budget: int = 8
                       ) -> int | None:
    """The earliest cut (`output_at`) of the graph of `graph_seed` that still fails with
    `status`: its reproducer is (graph_seed, cut); None when no cut does."""
    for cut in range(budget):
        if check_tflite_seeds([graph_seed], seed, output_at=cut)[graph_seed][0] == status:
            return cut
    return None


def check_tflite_seeds(seeds: list[int], seed: int = 0, output_at: int | None = None
                       ) -> dict[int, tuple[str, str]]:
    """Compile the TFLite graphs of `seeds` as one model, run it on the host, compare with
    TFLite Micro (LiteRT where TFLite Micro cannot run it): seed → (status, detail), status as
    in `Outcome`. A failing batch is bisected down to single seeds (each its own reproducer:
    `write_random_tflite([seed], path)`)."""
    import microexport
    from microexport.errors import Error

    with tempfile.TemporaryDirectory(prefix="microexport-fuzz-") as tmp:
        path = Path(tmp) / "model.tflite"
        names = write_random_tflite(seeds, path, output_at)
        try:
            report = microexport.test(path, seed=seed)
        except Exception as err:  # noqa: BLE001 - find which graph, then say what happened
            if len(seeds) > 1:
                half = len(seeds) // 2
                return {**check_tflite_seeds(seeds[:half], seed, output_at),
                        **check_tflite_seeds(seeds[half:], seed, output_at)}
            text = err.one_line() if isinstance(err, Error) else (
                f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
            crash = not isinstance(err, Error) or ("compiling '" in text and "failed" in text)
            return {seeds[0]: ("crash" if crash else "unsupported", text)}
    by_name = {o.name: o for o in report.outputs}
    results = {}
    for graph_seed, outs in names.items():
        bad = [f"{n}: max abs error {by_name[n].max_abs_error:.3g}" for n in outs
               if not by_name[n].passed]
        results[graph_seed] = ("mismatch", "; ".join(bad)) if bad else ("pass", "")
    return results
