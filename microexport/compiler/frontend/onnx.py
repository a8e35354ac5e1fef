"""ONNX → Relax with TVM's Relax ONNX frontend (weights bound as constants).

Graph inputs that are also initializers (as `keep_initializers_as_inputs=True` exporters write
them) are weights, not model inputs. Dynamic input dimensions must be fixed with
`input_shapes`. With the input shapes fixed, shape computations (`Shape → Gather → Concat`
reshape targets, scale factors from `x.shape`) are folded into initializers on the ONNX graph
before import: TVM's frontend folds the simple chains itself but not all arithmetic on them.

`constants` freezes model inputs to values before anything else: each becomes an initializer,
so shape, axes, starts/ends and sizes inputs fold like weights, and an `If` whose condition
folds is replaced by the nodes of the branch it takes.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microexport.compiler.frontend import (
    blocked_quantization,
    convtranspose,
    cumsum,
    maxpool_indices,
    resize,
)
from microexport.compiler.frontend.common import (
    Constants,
    ImportedModel,
    Shapes,
    check_shape_names,
    close_block_builders,
    constant_array,
    dynamic_dim_error,
    finish_import,
    first_line,
    require,
    resolve_shape,
    unknown_constant_error,
)
from microexport.compiler.frontend.float16 import HALF_DOMAIN, ROUND_OP
from microexport.compiler.frontend.recurrent import ONNX_RECURRENT_OPS, onnx_converters
from microexport.compiler.frontend.reduce_axes import (
    resolve_runtime_reduce_axes,
    resolve_runtime_target_shapes,
    widen_bool_min_max,
)
from microexport.errors import Error, InputError, ModelError, UnsupportedOperator
from microexport.model import TensorSpec

if TYPE_CHECKING:
    import onnx

    from microexport.compiler.quantization import TensorQuantization

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Nodes our own rewrites put into the graph (converted by our converters).
_OUR_DOMAINS = ("ai.microexport.integer", "ai.microexport.float16")
# Converted without TVM's converter map, or by converters of ours added to it (`_our_converters`).
_HANDLED_WITHOUT_CONVERTER = {"Constant", "If", *ONNX_RECURRENT_OPS}
_FAILED_OP = re.compile(r"Error converting operator (\S+?),")


def load_onnx(path: Path, input_shapes: Shapes, constants: Constants | None = None
              ) -> ImportedModel:
    """Import the ONNX model at `path`; `input_shapes` fixes dynamic input dimensions,
    `constants` freezes inputs (by name) to values."""
    require("onnx", "onnx")
    model = _read(path)
    if constants:
        model = freeze_inputs(model, constants, input_shapes, path)
    from microexport.compiler.frontend.float16 import (
        half_converters,
        label_half_edges,
        widen_float16,
    )

    model, halves = widen_float16(model)  # float16 computes in float32; edges stay float16
    inputs = _model_inputs(model, input_shapes, path)
    model, inputs = _freeze_empty_inputs(model, inputs)
    # Quantized (QDQ / QLinear) patterns become integer kernels; before any folding, which
    # would turn the DequantizeLinear of small weights into float constants.
    from microexport.compiler.frontend.onnx_integer import integer_converters, rewrite_integer

    model, integer = rewrite_integer(model, {i.name: i.shape for i in inputs})
    if any(node.op_type == "If" for node in model.graph.node):  # inline those that fold first
        model = fold_shape_computations(model, inputs)
    from microexport.compiler.frontend.control_flow import check_onnx_branches

    check_onnx_branches(model.graph, str(path))  # the `If`s left run at run time
    expanded: set[str] = set()
    model = expand_functions(model, _unconverted_ops(model) | _placeholder_ops(model), expanded)
    model = fold_shape_computations(model, inputs)
    resolved = widen_bool_min_max(resolve_runtime_target_shapes(
        resolve_runtime_reduce_axes(model, _inferred_shapes), _inferred_shapes))
    if resolved is not model:  # a Reduce of constants (zero-size inputs) now folds too
        model = fold_shape_computations(resolved, inputs)
    _check_operators(model)
    _check_frontend_gaps(model)
    _rewrite_one_sided_isinf(model.graph)
    # TVM's converter ignores ConvTranspose's output_shape: explicit pads instead
    convtranspose.resolve_output_shapes(model.graph, lambda: _inferred_shapes(model))
    _guard_bit_shifts(model)
    _rewrite_float_floor_mod(model)
    try:
        with integer_converters(integer) as quantization, half_converters(halves):
            mod = _convert(model, inputs, path)
    except UnsupportedOperator as err:  # TVM's converter fails: its ONNX function may not
        if err.op in expanded or not _has_function(model, err.op):
            raise
        model = fold_shape_computations(expand_functions(model, {err.op}, expanded), inputs)
        _check_operators(model)
        with integer_converters(integer) as quantization, half_converters(halves):
            mod = _convert(model, inputs, path)
    output_names = [o.name for o in model.graph.output]
    # `quantization`: the integer kernels' tensors and the quantized initializers they read
    _quantize_aliases(mod, quantization)
    imported = label_half_edges(
        finish_import(mod, [i.name for i in inputs], output_names, "onnx", path,
                      quantization), halves)
    _check_output_shapes(model, imported, path)
    return imported


def _quantize_aliases(mod: Any, quantization: dict[Any, TensorQuantization]) -> None:
    """Give a Var bound to a quantized Var (`gv = lv`: the frontend binds the model output so)
    that Var's quantization: later passes may keep the alias and drop the Var it names."""
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if binding.value in quantization:
                quantization.setdefault(binding.var, quantization[binding.value])


def _read(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError, external-data errors, …
        raise ModelError(f"cannot parse {path} as an ONNX model: {first_line(err)}") from err
    if not model.graph.output:
        raise ModelError(f"cannot parse {path} as an ONNX model: the graph has no outputs")
    graph = model.graph
    names = [v.name for v in [*graph.input, *graph.output, *graph.initializer, *graph.node]]
    names += [name for node in graph.node
              for name in [*node.input, *node.output, node.op_type, node.domain]]
    for name in names:
        if not isinstance(name, str):  # protobuf hands out a string that is not UTF-8 as bytes
            raise ModelError(f"cannot parse {path} as an ONNX model: the name {name!r} is not "
                             "UTF-8 text (is the file damaged?)")
    return model


def _model_inputs(model: onnx.ModelProto, input_shapes: Shapes, path: Path) -> list[TensorSpec]:
    """Graph inputs that are not initializers, with static shapes (from `input_shapes` for
    dynamic dimensions)."""
    from onnx import helper

    weights = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in weights]
    check_shape_names(input_shapes, [i.name for i in graph_inputs], path)
    specs = []
    for value in graph_inputs:
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"input '{value.name}' of {path} is not a tensor")
        elem_type = value.type.tensor_type.elem_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(elem_type))
        except KeyError:
            raise ModelError(f"input '{value.name}' of {path} has the unknown ONNX element type "
                             f"{elem_type}: is the file damaged?") from None
        shape = _static_shape(value, input_shapes.get(value.name))
        specs.append(TensorSpec(name=value.name, shape=shape, dtype=dtype))
    return specs


def freeze_inputs(model: onnx.ModelProto, constants: Constants, input_shapes: Shapes,
                  path: Path) -> onnx.ModelProto:
    """A copy of `model` in which each input named in `constants` is an initializer holding
    that value instead of a graph input. InputError for a name that is not an input, a value
    whose dtype or shape differs from the declared input, or an input also in `input_shapes`."""
    import onnx
    from onnx import helper, numpy_helper

    weights = {init.name for init in model.graph.initializer}
    declared = {v.name: v for v in model.graph.input if v.name not in weights}
    unknown = sorted(set(constants) - set(declared))
    if unknown:
        raise unknown_constant_error(unknown, list(declared), str(path))
    both = sorted(set(constants) & set(input_shapes))
    if both:
        raise InputError(f"input '{both[0]}' is given both a --constant and an --input-shape: "
                         "drop the --input-shape (the value fixes the shape)")
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    for name, value in constants.items():
        tensor_type = declared[name].type.tensor_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except KeyError:
            raise ModelError(f"input '{name}' of {path} has the unknown ONNX element type "
                             f"{tensor_type.elem_type}: is the file damaged?") from None
        dims: list[Any] | None = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        array = constant_array(name, value, dtype, dims, str(path))
        frozen.graph.initializer.append(numpy_helper.from_array(array, name))
    kept = [v for v in frozen.graph.input if v.name not in constants]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    return frozen


def _freeze_empty_inputs(
    model: onnx.ModelProto, inputs: list[TensorSpec]
) -> tuple[onnx.ModelProto, list[TensorSpec]]:
    """Make every input without elements (a zero-size dimension) an empty initializer.

    Its value is fully known (its static shape and type), so shape-only uses such as CastLike's
    `target_type` or an empty `axes` input become constants the frontend accepts; the compiled
    model does not take it.
    """
    import numpy as np
    from onnx import numpy_helper

    empty = [spec for spec in inputs if 0 in spec.shape]
    if not empty:
        return model, inputs
    import onnx

    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    for spec in empty:
        frozen.graph.initializer.append(
            numpy_helper.from_array(np.zeros(spec.shape, dtype=spec.dtype), spec.name))
    return frozen, [spec for spec in inputs if 0 not in spec.shape]


def _static_shape(value: onnx.ValueInfoProto, given: tuple[int, ...] | None) -> tuple[int, ...]:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        if given is None:
            raise dynamic_dim_error(value.name, 0, "unknown rank", [])
        return tuple(int(d) for d in given)
    dims: list[Any] = [
        d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor_type.shape.dim
    ]
    return resolve_shape(value.name, dims, given)


# --------------------------------------------------------------------------------------------
# expanding operators into their ONNX function bodies
# --------------------------------------------------------------------------------------------

MAX_EXPANSION_ROUNDS = 4  # a function body may use operators defined by functions themselves


def _unconverted_ops(model: onnx.ModelProto) -> set[str]:
    """Default-domain operators of `model` TVM's ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | _HANDLED_WITHOUT_CONVERTER
    return {node.op_type for node in model.graph.node
            if node.domain in _DEFAULT_DOMAINS and node.op_type not in known}


def _placeholder_ops(model: onnx.ModelProto) -> set[str]:
    """Operators of `model` whose extra outputs (`_PLACEHOLDER_OUTPUTS`) TVM's frontend does
    not compute but the model uses (their function body computes them)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {value.name for value in model.graph.output}
    return {node.op_type for node in model.graph.node
            if node.domain in _DEFAULT_DOMAINS and node.op_type in _PLACEHOLDER_OUTPUTS
            and any(name and name in used for name in node.output[1:])}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def _schema(op: str, opset: int) -> Any:
    import onnx

    try:
        return onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None


def _has_function(model: onnx.ModelProto, op: str) -> bool:
    schema = _schema(op, _opset(model))
    return schema is not None and bool(schema.function_opset_versions
                                       or schema.context_dependent_function_opset_versions)


def expand_functions(model: onnx.ModelProto, ops: set[str], expanded: set[str]
                     ) -> onnx.ModelProto:
    """A copy of `model` in which every node of `ops` (and, in later rounds, of the operators
    TVM lacks that the bodies use) defined by an ONNX function is replaced by the function's
    body, as the suite's `*_expanded` tests are built. `expanded` collects the ops expanded."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for _ in range(MAX_EXPANSION_ROUNDS):
        todo = {op for op in ops if _has_function(out, op)}
        if not todo:
            break
        types = _value_types(out)
        nodes = []
        changed = False
        for index, node in enumerate(out.graph.node):
            body = None
            if node.domain in _DEFAULT_DOMAINS and node.op_type in todo:
                body = _function_body(node, types, _opset(out), f"{node.op_type}_{index}_fn_")
            if body is None:
                nodes.append(node)
            else:
                nodes.extend(body)
                expanded.add(node.op_type)
                changed = True
        if not changed:
            break
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        ops = _unconverted_ops(out)
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, Any]:
    """The TypeProto of every value onnx's type inference knows."""
    import onnx
    from onnx import helper

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is best effort here
        graph = model.graph
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, init.dims))
    return types


def _function_body(node: Any, types: dict[str, Any], opset: int, prefix: str) -> list | None:
    """The nodes of the ONNX function defining `node` at `opset` (None if there is none or it
    needs input types inference does not know)."""
    from onnx import FunctionProto, NodeProto, TypeProto
    from onnx.backend.test.case.node import function_expand_helper

    schema = _schema(node.op_type, opset)
    if schema is None:
        return None
    node_copy = NodeProto()
    node_copy.CopyFrom(node)
    for name, attr in schema.attributes.items():  # the defaults the body refers to
        if name not in [a.name for a in node_copy.attribute] and attr.default_value.name:
            node_copy.attribute.extend([attr.default_value])
    function = FunctionProto()
    versions = [v for v in schema.function_opset_versions if v <= opset]
    if versions:
        function.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    else:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        inputs = [types.get(name) for name in node.input if name]
        if not versions or any(t is None for t in inputs):
            return None
        try:
            function.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                max(versions), node_copy.SerializeToString(),
                [TypeProto.SerializeToString(t) for t in inputs]))
        except Exception:  # noqa: BLE001 - onnx cannot build the body for these types
            return None
    if not function.node:
        return None
    try:
        return list(function_expand_helper(node_copy, function, prefix))
    except Exception:  # noqa: BLE001 - leave the node to the frontend (and its error)
        return None


def _check_operators(model: onnx.ModelProto) -> None:
    """UnsupportedOperator for the first (by name) node type the frontend cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | _HANDLED_WITHOUT_CONVERTER
    missing = set()
    for node in model.graph.node:
        if node.domain in _OUR_DOMAINS:  # kernels of onnx_integer and float16
            continue
        if node.domain not in _DEFAULT_DOMAINS:
            missing.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in known:
            missing.add(node.op_type)
    if missing:
        first, *others = sorted(missing)
        detail = "ONNX, not in TVM's Relax ONNX frontend"
        if others:
            detail += f"; also {', '.join(others)}"
        raise UnsupportedOperator(first, detail)


def _check_output_shapes(model: onnx.ModelProto, imported: ImportedModel, path: Path) -> None:
    """ModelError if an output's static shape declared in the model differs from the shape
    TVM's frontend computed for it (a frontend shortcut, never a right answer)."""
    for value, spec in zip(model.graph.output, imported.outputs, strict=True):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                     for d in tensor_type.shape.dim)
        if all(d >= 0 for d in dims) and dims != spec.shape:
            raise ModelError(
                f"output '{value.name}' of {path}: TVM's ONNX frontend computes shape "
                f"{spec.shape} where the model declares {dims}: the operator producing it is "
                "not supported this way; open an issue")


# Operators whose extra outputs TVM's frontend does not compute (it returns placeholders).
_PLACEHOLDER_OUTPUTS = {"LayerNormalization": ("Mean", "InvStdDev")}


# Attribute values TVM's frontend ignores (it computes the default instead): op → (attribute,
# the only value it computes right).
_IGNORED_ATTRIBUTES = {"SpaceToDepth": ("mode", b"DCR"), "RoiAlign": ("mode", b"avg")}


def _check_frontend_gaps(model: onnx.ModelProto) -> None:
    """UnsupportedOperator for what TVM's frontend would silently compute wrong: a Dropout
    whose `training_mode` input is not a constant false (it ignores it and `ratio`), a
    BatchNormalization with `training_mode=1` (our inference lowering uses the running
    statistics), a LayerNormalization whose Mean / InvStdDev outputs are used, an attribute
    value of `_IGNORED_ATTRIBUTES`. (Resize: `resize.onnx_converters`.)"""
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    used |= {value.name for value in model.graph.output}
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        if node.op_type == "BatchNormalization" and any(
                a.name == "training_mode" and a.i for a in node.attribute):
            raise UnsupportedOperator("BatchNormalization", "training_mode=1 (batch "
                                      "statistics): export the model for inference")
        if node.op_type in _IGNORED_ATTRIBUTES:
            name, default = _IGNORED_ATTRIBUTES[node.op_type]
            for attr in node.attribute:
                if attr.name == name and attr.s != default:
                    value = attr.s.decode(errors="replace")
                    raise UnsupportedOperator(node.op_type, f"{name}={value} (TVM's frontend "
                                              f"computes only {default.decode()})")
        extra = _PLACEHOLDER_OUTPUTS.get(node.op_type, ())
        for name, what in zip(node.output[1:], extra, strict=False):
            if name and name in used:
                raise UnsupportedOperator(node.op_type, f"its {what} output '{name}' is not "
                                          "computed by TVM's frontend: use only its first "
                                          "output")
        if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
            continue
        flag = constants.get(node.input[2])
        if flag is None or bool(numpy_helper.to_array(flag).any()):
            raise UnsupportedOperator(
                "Dropout", "in training mode (random masks; its training_mode input "
                f"'{node.input[2]}' is not a constant false): export the model for inference")


def _rewrite_one_sided_isinf(graph: onnx.GraphProto) -> None:
    """IsInf with `detect_negative=0` or `detect_positive=0` as IsInf and a sign test.

    TVM's frontend ignores the two attributes (it detects both infinities). The sign test
    compares `x` with `-x` (`x > -x` means positive), so no constant of x's type is needed.
    """
    from onnx import helper

    nodes = []
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        negative, positive = attrs.get("detect_negative", 1), attrs.get("detect_positive", 1)
        if node.op_type != "IsInf" or node.domain not in _DEFAULT_DOMAINS or (
                negative and positive):
            nodes.append(node)
            continue
        x, (y,) = node.input[0], node.output
        stem = f"{y}__isinf"
        nodes.append(helper.make_node("IsInf", [x], [f"{stem}_any"], name=f"{stem}_any"))
        if negative or positive:
            nodes.append(helper.make_node("Neg", [x], [f"{stem}_neg"], name=f"{stem}_neg"))
            compare = "Greater" if positive else "Less"
            nodes.append(helper.make_node(compare, [x, f"{stem}_neg"], [f"{stem}_sign"],
                                          name=f"{stem}_sign"))
            sign = f"{stem}_sign"
        else:  # neither infinity: always false
            nodes.append(helper.make_node("Not", [f"{stem}_any"], [f"{stem}_not"],
                                          name=f"{stem}_not"))
            sign = f"{stem}_not"
        nodes.append(helper.make_node("And", [f"{stem}_any", sign], [y], name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)


def _guard_bit_shifts(model: onnx.ModelProto) -> None:
    """BitShift with shift amounts outside [0, bits) defined as ONNX defines them (left: 0;
    right: the sign fill) instead of C's undefined behaviour: the shift runs on the amount
    clamped into range and a Where picks the defined result for the others."""
    import numpy as np
    from onnx import helper, numpy_helper

    shifts = [n for n in model.graph.node
              if n.op_type == "BitShift" and n.domain in _DEFAULT_DOMAINS]
    if not shifts:
        return
    types = _element_types(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        x, y = node.input[0], node.input[1]
        dtype = types.get(x)
        if node not in shifts or dtype is None:
            nodes.append(node)
            continue
        bits = np.dtype(dtype).itemsize * 8
        amounts = constants.get(y)
        if amounts is not None and bool(np.all((amounts >= 0) & (amounts < bits))):
            nodes.append(node)
            continue
        (out,) = node.output
        stem = f"{out}__shift"
        zero, width, minus_one = (f"{stem}_zero", f"{stem}_bits", f"{stem}_minus_one")
        signed = np.dtype(dtype).kind == "i"  # unsigned: no `>= 0` (gcc: -Wtype-limits)
        for name, value in ((zero, 0), (width, bits), (minus_one, -1 if signed else 0)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), name))
        direction = next((a.s for a in node.attribute if a.name == "direction"), b"LEFT")
        make = helper.make_node
        nodes.append(make("Less", [y, width], [f"{stem}_lt" if signed else f"{stem}_ok"]))
        if signed:
            nodes += [make("GreaterOrEqual", [y, zero], [f"{stem}_ge"]),
                      make("And", [f"{stem}_ge", f"{stem}_lt"], [f"{stem}_ok"])]
        nodes += [
            make("Where", [f"{stem}_ok", y, zero], [f"{stem}_amount"]),
            make("BitShift", [x, f"{stem}_amount"], [f"{stem}_shifted"],
                 direction=direction.decode()),
        ]
        if direction == b"RIGHT" and signed:
            nodes += [make("Less", [x, zero], [f"{stem}_negative"]),
                      make("Where", [f"{stem}_negative", minus_one, zero], [f"{stem}_fill"])]
            fill = f"{stem}_fill"
        else:
            fill = zero
        nodes.append(make("Where", [f"{stem}_ok", f"{stem}_shifted", fill], [out],
                          name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _rewrite_float_floor_mod(model: onnx.ModelProto) -> None:
    """Float Mod with `fmod=0` (the result takes the divisor's sign) as C's fmod plus the
    divisor where the signs differ. TVM computes `x - floor(x / y) * y`, which is NaN for an
    infinite divisor (`-3 mod inf` is inf)."""
    import numpy as np
    from onnx import helper

    mods = [n for n in model.graph.node if n.op_type == "Mod" and n.domain in _DEFAULT_DOMAINS
            and not any(a.name == "fmod" and a.i for a in n.attribute)]
    if not mods:
        return
    types = _element_types(model)
    nodes = []
    for node in model.graph.node:
        dtype = types.get(node.input[0])
        if node not in mods or dtype is None or np.dtype(dtype).kind != "f":
            nodes.append(node)
            continue
        (x, y), (out,) = node.input, node.output
        stem = f"{out}__mod"
        zero = f"{stem}_zero"
        model.graph.initializer.append(
            helper.make_tensor(zero, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [], [0]))
        nodes += [
            helper.make_node("Mod", [x, y], [f"{stem}_rem"], fmod=1),
            helper.make_node("Mul", [f"{stem}_rem", y], [f"{stem}_prod"]),
            helper.make_node("Less", [f"{stem}_prod", zero], [f"{stem}_differ"]),
            helper.make_node("Add", [f"{stem}_rem", y], [f"{stem}_shifted"]),
            helper.make_node("Where", [f"{stem}_differ", f"{stem}_shifted", f"{stem}_rem"],
                             [out], name=node.name),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _element_types(model: onnx.ModelProto) -> dict[str, Any]:
    """numpy dtypes of the values whose element type onnx's type inference knows."""
    import onnx
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort here
        inferred = model
    graph = inferred.graph
    types = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        elem_type = value.type.tensor_type.elem_type
        with contextlib.suppress(KeyError, ValueError, TypeError):
            types[value.name] = helper.tensor_dtype_to_np_dtype(elem_type)
    for init in graph.initializer:
        with contextlib.suppress(KeyError, ValueError, TypeError):
            types[init.name] = helper.tensor_dtype_to_np_dtype(init.data_type)
    return types


def _convert(model: onnx.ModelProto, inputs: list[TensorSpec], path: Path) -> Any:
    """Run TVM's from_onnx; a failing node's operator becomes UnsupportedOperator."""
    from tvm.relax.frontend.onnx import from_onnx

    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), _our_converters():
            warnings.simplefilter("ignore")
            return from_onnx(
                model,
                shape_dict={i.name: list(i.shape) for i in inputs},
                dtype_dict={i.name: i.dtype for i in inputs},
                keep_params_in_input=False,
            )
    except Error as err:  # one of our converters refused the node: its message says why
        close_block_builders(err)
        raise
    except Exception as err:  # the frontend raises all kinds of errors
        close_block_builders(err)
        failed = _FAILED_OP.search(captured.getvalue())
        invalid = _validation_error(model)
        if invalid:  # a damaged or hand-made graph: say what is wrong with it
            raise ModelError(f"{path} is not a valid ONNX model: {invalid}") from err
        if failed:
            raise UnsupportedOperator(failed.group(1), first_line(err)) from err
        raise ModelError(f"cannot import {path}: {first_line(err)}") from err


@contextlib.contextmanager
def _our_converters() -> Iterator[None]:
    """TVM's ONNX frontend with our converters (`recurrent.onnx_converters`,
    `cumsum`, `blocked_quantization`, `resize.onnx_converters` and `maxpool_indices`) in its
    converter map, which it rebuilds with `_get_convert_map()` on every lookup: the module's
    function is replaced for the duration of one import."""
    from tvm.relax.frontend.onnx import onnx_frontend

    stock = onnx_frontend._get_convert_map

    def extended() -> dict[str, Any]:
        converters = stock()
        return {**converters, **onnx_converters(), **cumsum.onnx_converters(),
                **blocked_quantization.onnx_converters(converters),
                **resize.onnx_converters(converters),
                **maxpool_indices.onnx_converters(converters)}

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = stock


def _validation_error(model: onnx.ModelProto) -> str | None:
    """What onnx's checker finds wrong with `model` (first line), or None."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - ValidationError, or whatever a damaged model raises
        return first_line(err)
    return None


# --------------------------------------------------------------------------------------------
# folding shape computations on the ONNX graph
# --------------------------------------------------------------------------------------------

FOLD_MAX_ELEMENTS = 1024  # only small constant inputs are folded (shapes, scalars), not weights
MAX_INLINE_ROUNDS = 8  # folding after inlining an `If` may fold the condition of a nested one
# Random operators; and MaxPool, which onnx.reference (1.23.2) computes wrongly with asymmetric
# pads (pads [2, 1, 0, 1] read as top, bottom, left, right; found by tests/test_fuzz.py).
_NOT_FOLDABLE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "MaxPool"}  # fmt: skip


def fold_shape_computations(model: onnx.ModelProto, inputs: list[TensorSpec]) -> onnx.ModelProto:
    """A copy of `model` with static input shapes in which `Shape` of statically-shaped tensors,
    `Constant` nodes and nodes computing on small constants only are replaced by initializers,
    and every `If` whose condition is then a constant by the nodes of the branch it takes.

    Exporters compute reshape targets and scale factors from `x.shape`
    (Shape → Gather → Div → Cast → Concat …); once the input shapes are fixed these are
    constants, and folding them here spares TVM's frontend the shape arithmetic it handles
    only partly.
    """
    import onnx
    from onnx import numpy_helper

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    _fix_input_shapes(folded.graph, inputs)
    for _ in range(MAX_INLINE_ROUNDS):  # shapes inside an inlined branch are inferred next round
        shapes = _inferred_shapes(folded)
        consts = _initializer_arrays(folded.graph)
        kept = []
        inlined = False
        pending = deque(folded.graph.node)
        while pending:
            node = pending.popleft()
            branch = _taken_branch(node, consts)
            if branch is not None:
                nodes, initializers = _inline_branch(node, branch)
                for init in initializers:
                    consts[init.name] = numpy_helper.to_array(init)
                pending.extendleft(reversed(nodes))
                inlined = True
                continue
            values = _fold_node(node, consts, shapes, folded.opset_import)
            if values is None:
                kept.append(node)
            else:
                consts.update(zip(node.output, values, strict=True))
        _replace_nodes(folded.graph, kept, consts)
        if not inlined:
            break
    return folded


def _taken_branch(node: onnx.NodeProto, consts: dict[str, Any]) -> onnx.GraphProto | None:
    """The branch an `If` node takes if its condition is a known constant, else None."""
    import numpy as np

    if node.op_type != "If" or node.domain not in _DEFAULT_DOMAINS or not node.input:
        return None
    cond = consts.get(node.input[0])
    if cond is None or np.size(cond) != 1:
        return None
    wanted = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
    return next((attr.g for attr in node.attribute if attr.name == wanted), None)


def _inline_branch(node: onnx.NodeProto, branch: onnx.GraphProto
                   ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers of `branch` to put in place of the `If` `node`: every value
    the branch defines renamed under a prefix unique to the node (also where nested subgraphs
    refer to it), and an Identity from each branch output to the matching output of `node`."""
    from onnx import NodeProto, TensorProto, helper

    prefix = f"{node.output[0]}__{node.name or 'if'}_inlined_"
    defined = [name for n in branch.node for name in n.output if name]
    defined += [init.name for init in branch.initializer]
    rename = {name: prefix + name for name in defined}
    initializers = []
    for init in branch.initializer:
        tensor = TensorProto()
        tensor.CopyFrom(init)
        tensor.name = rename[init.name]
        initializers.append(tensor)
    nodes = []
    for inner in branch.node:
        copy = NodeProto()
        copy.CopyFrom(inner)
        _rename_inputs(copy, rename)
        del copy.output[:]
        copy.output.extend(rename.get(name, name) for name in inner.output)
        if copy.name:
            copy.name = prefix + copy.name
        nodes.append(copy)
    for value, out in zip(branch.output, node.output, strict=False):
        if out:
            nodes.append(helper.make_node("Identity", [rename.get(value.name, value.name)],
                                          [out], name=f"{prefix}{out}_out"))
    return nodes, initializers


def _rename_inputs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Rename the inputs of `node`, and of the nodes of its subgraphs (outer-scope references),
    that `rename` maps."""
    for index, name in enumerate(node.input):
        if name in rename:
            node.input[index] = rename[name]
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                _rename_inputs(inner, rename)
            for value in graph.output:  # a subgraph may return an outer value directly
                if value.name in rename:
                    value.name = rename[value.name]


def _fix_input_shapes(graph: onnx.GraphProto, inputs: list[TensorSpec]) -> None:
    by_name = {spec.name: spec for spec in inputs}
    for value in graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for size in spec.shape:
            shape.dim.add().dim_value = size


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of the values onnx shape inference can determine (none if it fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is an optimisation here; the frontend checks the model
        return {}
    graph = inferred.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[value.name] = tuple(dims)
    return shapes


def _initializer_arrays(graph: onnx.GraphProto) -> dict[str, Any]:
    from onnx import numpy_helper

    arrays = {}
    for init in graph.initializer:
        try:
            arrays[init.name] = numpy_helper.to_array(init)
        except Exception as err:  # noqa: BLE001 - ValueError, TypeError, KeyError on bad data
            raise ModelError(f"initializer '{init.name}' cannot be read (is the file damaged?): "
                             f"{first_line(err)}") from err
    return arrays


def _fold_node(
    node: onnx.NodeProto, consts: dict[str, Any], shapes: dict[str, tuple[int, ...]], opsets: Any
) -> list[Any] | None:
    """The output values of `node` if it can be computed now, else None."""
    import numpy as np

    if node.domain == HALF_DOMAIN and node.op_type == ROUND_OP:  # a float16 result's rounding
        value = consts.get(node.input[0])
        return None if value is None else [np.asarray(value).astype(np.float16).astype(
            np.float32)]
    if node.domain not in _DEFAULT_DOMAINS or node.op_type in _NOT_FOLDABLE:
        return None
    if any(attr.g.node or attr.graphs for attr in node.attribute):
        return None
    if node.op_type == "Shape":
        return _shape_value(node, consts, shapes)
    inputs = [name for name in node.input if name]
    if not all(name in consts for name in inputs):
        return None
    if any(np.size(consts[name]) > FOLD_MAX_ELEMENTS for name in inputs):
        return None
    return _evaluate(node, {name: consts[name] for name in inputs}, opsets)


def _shape_value(
    node: onnx.NodeProto, consts: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> list[Any] | None:
    """The output of a Shape node whose input has a static shape (start/end of opset 15)."""
    import numpy as np

    source = node.input[0]
    shape = tuple(np.shape(consts[source])) if source in consts else shapes.get(source)
    if shape is None:
        return None
    attrs = {attr.name: attr.i for attr in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return [np.array(shape[start:end], dtype=np.int64)]


def _evaluate(node: onnx.NodeProto, values: dict[str, Any], opsets: Any) -> list[Any] | None:
    """Run one node with onnx's reference evaluator (None if it cannot)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [node],
        "fold",
        [],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output],
        initializer=[numpy_helper.from_array(v, n) for n, v in values.items()],
    )
    try:
        model = helper.make_model(graph, opset_imports=list(opsets))
        return list(ReferenceEvaluator(model).run(None, {}))
    except Exception:  # leave the node to the frontend
        return None


def _replace_nodes(graph: onnx.GraphProto, kept: list[Any], consts: dict[str, Any]) -> None:
    """Keep only `kept` nodes; add initializers for folded values they (or outputs) use."""
    from onnx import numpy_helper

    have = {init.name for init in graph.initializer}
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    for name in sorted(used & (set(consts) - have)):
        graph.initializer.append(numpy_helper.from_array(consts[name], name))
    del graph.node[:]
    graph.node.extend(kept)
