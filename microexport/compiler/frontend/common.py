"""What the frontends share: the `ImportedModel` record, `finish_import` (static shapes, C types,
at least one output), shape and error helpers, and `from_relax`.

Apart from the package `__init__` (which dispatches to the frontends) so that the frontends never
import the package that imports them.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microexport.compiler.frontend import cumsum, reduction_identity
from microexport.errors import DynamicShape, Error, InputError, ModelError, UnsupportedOperator
from microexport.model import C_TYPES, TensorSpec

if TYPE_CHECKING:
    import tvm

    from microexport.compiler.quantization import TensorQuantization


@dataclass(frozen=True)
class ImportedModel:
    """A model as Relax: `mod["main"]` takes exactly the model inputs (weights are bound as
    constants) and returns one tensor or a tuple of tensors, all with static shapes."""

    mod: tvm.IRModule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str  # "onnx" | "tflite" | "torch" | "relax"
    source: Path | None = None
    # The source model's quantization of the Relax values (`Var`s of `mod["main"]` and
    # `Constant`s) that stand for quantized tensors: see compiler/quantization.py.
    quantization: dict[Any, TensorQuantization] = field(default_factory=dict)


MAX_TENSOR_ELEMENTS = 2**31 - 1  # the generated C indexes tensors with int32_t

Shapes = dict[str, tuple[int, ...]]
Constants = dict[str, Any]  # input name → the value (array-like) it is frozen to


def from_relax(
    mod: tvm.IRModule,
    input_names: list[str] | tuple[str, ...] | None = None,
    output_names: list[str] | tuple[str, ...] | None = None,
) -> ImportedModel:
    """Wrap a Relax IRModule built with the Python API.

    `mod["main"]` must be a Relax function whose parameters are exactly the model inputs,
    returning a tensor or a tuple of tensors, all with static shapes. Input names default
    to the parameter names, output names to `output_0`, `output_1`, ….
    """
    import tvm
    from tvm import relax

    if not isinstance(mod, tvm.IRModule):
        raise ModelError(f"from_relax needs a tvm.IRModule, not {type(mod).__name__}")
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ModelError("from_relax needs an IRModule with a Relax function 'main'")
    if not isinstance(mod["main"], relax.Function):
        raise ModelError("from_relax: 'main' is not a Relax function")
    names = _names(input_names, [p.name for p in mod["main"].params], "input_names")
    return finish_import(mod, names, output_names, "relax", None)


def _names(given: list[str] | tuple[str, ...] | None, default: list[str], what: str) -> list[str]:
    if given is None:
        return list(default)
    if len(given) != len(default):
        raise ModelError(f"{what} has {len(given)} names but the model has {len(default)}")
    return [str(n) for n in given]


def finish_import(
    mod: tvm.IRModule,
    input_names: list[str],
    output_names: list[str] | tuple[str, ...] | None,
    fmt: str,
    source: Path | None,
    quantization: dict[Any, TensorQuantization] | None = None,
) -> ImportedModel:
    """Fold constants, drop frontend leftovers, check static shapes and build the I/O specs.

    `input_names` are the model's input names in parameter order; `output_names` the output
    names in return order (None: `output_0`, …).
    """
    from tvm import relax

    main = mod["main"]
    if "params" in (main.attrs or {}):  # stale weight list some frontends attach
        mod = _replace_main(mod, main.without_attr("params"))
    where = str(source) if source is not None else "the Relax module"
    mod, input_names = _bind_empty_inputs(mod, list(input_names), where)
    reduction_identity.install()  # a folded max over -inf values is -inf, as in the kernels
    cumsum.install()  # a cumsum of constants folds with our kernel (TVM has no legalization)
    try:
        mod = relax.transform.FoldConstant()(mod)
    except Exception as err:  # noqa: BLE001 - TVM fails in every way on what it cannot fold
        raise relax_failure(err, "compile") from err
    main = mod["main"]
    inputs = tuple(
        _tensor_spec(name, param.ty, f"input '{name}' of {where}")
        for name, param in zip(input_names, main.params, strict=True)
    )
    out_types = _output_types(main.ret_ty)
    if not out_types:
        raise ModelError(f"{where} has no outputs: a model must compute at least one tensor")
    names = _names(output_names, [f"output_{i}" for i in range(len(out_types))], "output_names")
    outputs = tuple(
        _tensor_spec(name, ty, f"output '{name}' of {where}")
        for name, ty in zip(names, out_types, strict=True)
    )
    _check_no_symbolic_vars(main, where)
    _check_c_float_types(main, where)
    return ImportedModel(mod=mod, inputs=inputs, outputs=outputs, format=fmt, source=source,
                         quantization=quantization or {})


def constant_array(name: str, value: Any, dtype: str, dims: list[Any] | None,
                   where: str) -> Any:
    """`value` as the numpy array input `name` of `where` is frozen to, checked against the
    input's declared `dtype` and dimensions (`dims`: ints, or anything else for a dimension
    the value may set; None: any shape). InputError naming the mismatch otherwise."""
    import numpy as np

    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - ragged lists, objects numpy cannot hold
        raise InputError(f"constant '{name}' is not an array ({first_line(err)}): give a numpy "
                         "array") from None
    if str(array.dtype) != dtype:
        raise InputError(f"constant '{name}' is {array.dtype}, input '{name}' of {where} is "
                         f"{dtype}: save the value as {dtype} (numpy.save(path, "
                         f"value.astype('{dtype}')))")
    if dims is not None and (len(dims) != array.ndim or any(
            isinstance(d, int) and d >= 0 and d != s
            for d, s in zip(dims, array.shape, strict=True))):
        declared = tuple(d if isinstance(d, int) and d >= 0 else "?" for d in dims)
        raise InputError(f"constant '{name}' has shape {tuple(array.shape)}, input '{name}' of "
                         f"{where} has shape {declared}: give a value of that shape")
    return np.ascontiguousarray(array)


def unknown_constant_error(unknown: list[str], names: list[str], where: str) -> InputError:
    """The InputError for constants naming something that is not an input of `where`."""
    listed = ", ".join(names) if names else "none"
    return InputError(f"--constant names {', '.join(repr(n) for n in unknown)}, not an input of "
                      f"{where}: its inputs are: {listed}")


def bind_constants(imported: ImportedModel, constants: Constants | None) -> ImportedModel:
    """`imported` with the inputs named in `constants` bound to those values and folded.

    The frontend-independent way (TFLite, torch, Relax): the value replaces the parameter of
    `main` after import, so what depends only on it folds with TVM's constant folding; the
    compiled model no longer takes these inputs.
    """
    import dataclasses

    import tvm
    from tvm import relax

    if not constants:
        return imported
    where = str(imported.source) if imported.source is not None else "the Relax module"
    names = [spec.name for spec in imported.inputs]
    unknown = sorted(set(constants) - set(names))
    if unknown:
        raise unknown_constant_error(unknown, names, where)
    main = imported.mod["main"]
    bound: dict[Any, Any] = {}
    kept = []
    for spec, param in zip(imported.inputs, main.params, strict=True):
        if spec.name not in constants:
            kept.append(spec)
            continue
        array = constant_array(spec.name, constants[spec.name], spec.dtype, list(spec.shape),
                               where)
        bound[param] = tvm.runtime.tensor(array)
    mod = relax.transform.BindParams("main", bound)(imported.mod)
    reduction_identity.install()
    cumsum.install()
    try:
        mod = relax.transform.FoldConstant()(mod)
    except Exception as err:  # noqa: BLE001 - TVM fails in every way on what it cannot fold
        raise relax_failure(err, "compile") from err
    return dataclasses.replace(imported, mod=mod, inputs=tuple(kept))


def _bind_empty_inputs(
    mod: tvm.IRModule, input_names: list[str], where: str
) -> tuple[tvm.IRModule, list[str]]:
    """Bind every input without elements (a zero-size dimension) to an empty constant.

    Such an input carries only its static shape and dtype, which the model keeps; the compiled
    model does not take it (C has no zero-length arrays to pass).
    """
    import numpy as np
    import tvm
    from tvm import relax

    main = mod["main"]
    empty: dict[str, Any] = {}
    kept = []
    for name, param in zip(input_names, main.params, strict=True):
        ty = param.ty
        if (isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr)
                and any(isinstance(d, tvm.tirx.IntImm) and int(d) == 0 for d in ty.shape.values)
                and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values)):
            shape = tuple(int(d) for d in ty.shape.values)
            _tensor_spec(name, ty, f"input '{name}' of {where}")  # a dtype C has a type for
            empty[param.name] = tvm.runtime.tensor(np.zeros(shape, dtype=str(ty.dtype)))
        else:
            kept.append(name)
    if not empty:
        return mod, input_names
    return relax.transform.BindParams("main", empty)(mod), kept


def _replace_main(mod: tvm.IRModule, main: object) -> tvm.IRModule:
    mod = mod.clone()
    mod["main"] = main
    return mod


def _output_types(ret_ty: object) -> list[object]:
    from tvm import relax

    if isinstance(ret_ty, relax.TupleType):
        fields = list(ret_ty.fields)
        if any(isinstance(f, relax.TupleType) for f in fields):
            raise ModelError("nested tuple outputs are not supported: flatten the model outputs")
        return fields
    return [ret_ty]


def _tensor_spec(name: str, ty: object, what: str) -> TensorSpec:
    """TensorSpec of a Relax tensor type; DynamicShape unless every dimension is a constant."""
    from tvm import relax, tirx

    if not isinstance(ty, relax.TensorType):
        raise ModelError(f"{what} is not a tensor ({ty}): only tensor inputs/outputs are supported")
    if ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        if what.startswith("input"):
            raise DynamicShape(f"{what} has an unknown shape: give the inputs static shapes")
        raise DynamicShape(f"{what} has a shape computed at run time (from input values, not "
                           "input shapes): make the inputs it depends on (shapes, sizes, axes, "
                           "indices) constants of the model")
    dims = list(ty.shape.values)
    for axis, dim in enumerate(dims):
        if not isinstance(dim, tirx.IntImm):
            raise DynamicShape(
                f"{what} has dynamic dimension {axis} ('{dim}'): give the inputs static shapes"
            )
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} has shape {shape} ({math.prod(shape)} elements): at most "
                         f"{MAX_TENSOR_ELEMENTS} elements fit the int32 indices of the generated C")
    if str(ty.dtype) not in C_TYPES:
        raise ModelError(f"{what} has dtype {ty.dtype}, which C has no type for: use one of "
                         f"{', '.join(sorted(C_TYPES))} for the model's inputs and outputs")
    return TensorSpec(name=name, shape=shape, dtype=str(ty.dtype))


def _check_c_float_types(main: object, where: str) -> None:
    """ModelError if a tensor inside the model is of a type C has no type for (float16,
    bfloat16, float8, sub-byte int4...): TVM's C code generator writes `half` or gives up."""
    from tvm import relax

    found: set[str] = set()

    def visit(expr: object) -> None:
        ty = None if isinstance(expr, relax.Function) else getattr(expr, "ty", None)
        if isinstance(ty, relax.TensorType):
            dtype = str(ty.dtype)
            if dtype not in C_TYPES:  # float16, bfloat16, float8/float4, int4/uint4, ...
                found.add(dtype)

    relax.analysis.post_order_visit(main, visit)
    if found:
        raise ModelError(f"{where} computes in {', '.join(sorted(found))} (unsupported dtype: "
                         "C has no type for it): convert the model to float32 (or quantize it "
                         "to int8)")


def _check_no_symbolic_vars(main: object, where: str) -> None:
    from tvm import relax

    symbolic = relax.analysis.defined_symbolic_vars(main)
    if len(symbolic) > 0:
        names = ", ".join(sorted(str(v) for v in symbolic))
        raise DynamicShape(f"{where} has symbolic dimensions ({names}): give it static shapes")


def dynamic_dim_error(name: str, axis: int, dim: object, shape: list[object]) -> Exception:
    """The DynamicShape error for input `name` whose dimension `axis` is `dim`, with a
    suggested `--input-shape` (1 in place of every unknown dimension)."""
    example = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
    label = f" ('{dim}')" if isinstance(dim, str) and dim else ""
    return DynamicShape(
        f"input '{name}' has dynamic dimension {axis}{label}: fix it with "
        f"--input-shape {name}:{'x'.join(map(str, example))} "
        f"(input_shapes={{{name!r}: {example}}} in Python)"
    )


def resolve_shape(name: str, dims: list[Any], given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The static shape of input `name`: `given` (from --input-shape, same rank as `dims`), else
    `dims` if every dimension is an int >= 0, else a DynamicShape error."""
    if given is not None:
        if len(given) != len(dims):
            raise InputError(
                f"--input-shape {name} has {len(given)} dimensions, the model input has "
                f"{len(dims)}"
            )
        return tuple(int(d) for d in given)
    for axis, dim in enumerate(dims):
        if not isinstance(dim, int) or dim < 0:  # a zero-size dimension is static
            raise dynamic_dim_error(name, axis, dim, dims)
    return tuple(dims)


def check_shape_names(input_shapes: Shapes, names: list[str], path: Path) -> None:
    """InputError if `input_shapes` names something that is not a model input."""
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise InputError(
            f"--input-shape names {', '.join(repr(n) for n in unknown)}, not an input of "
            f"{path}; its inputs are: {', '.join(names)}"
        )


def require(module: str, extra: str) -> object:
    """Import `module`, or raise Error naming the pip extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise Error(
            f"python package '{module}' is missing ({err}): pip install microexport[{extra}]"
        ) from err


def close_block_builders(err: BaseException) -> None:
    """End the blocks a failed Relax frontend conversion left open in its BlockBuilders.

    TVM's frontends build Relax inside `with bb.function(): with bb.dataflow():`; when a
    converter raises, the builder keeps a block open and TVM logs "BlockBuilder destroyed with
    remaining blocks!" on stderr whenever it is freed (after our one-line error). The builders
    are found in the frames of the failure's traceback (as a local, or as `.bb` /
    `.block_builder` of a local importer).
    """
    from tvm import relax

    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None:
        for frame, _ in traceback.walk_tb(cause.__traceback__):
            for value in list(frame.f_locals.values()):
                for candidate in (value, getattr(value, "bb", None),
                                  getattr(value, "block_builder", None)):
                    if isinstance(candidate, relax.BlockBuilder) and id(candidate) not in seen:
                        seen.add(id(candidate))
                        _end_blocks(candidate)
        cause = cause.__cause__ or cause.__context__


def _end_blocks(builder: Any) -> None:
    for _ in range(64):  # a frontend nests a few blocks at most
        try:
            builder._end_block()  # noqa: SLF001 - the only way to close a block left open
        except Exception:  # noqa: BLE001 - TVM's InternalError: no block left
            return


def relax_failure(err: BaseException, what: str) -> ModelError:
    """The one-line error for a TVM Relax pass that failed on the model (`what`: the step).

    TVM's legalization and constant folding fail with assertions or internal errors on operator
    variants they do not handle (integer `power`, a reshape to a shape computed at run time, …).
    The message names the failing operator when a frame of the traceback holds the `call` being
    legalized, else the TVM function that failed.
    """
    from tvm import ir, relax

    op = None
    function = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        call = frame.f_locals.get("call")
        if isinstance(call, relax.Call) and isinstance(call.op, ir.Op):
            op = call.op.name
        if "tvm" in Path(frame.f_code.co_filename).parts:
            function = frame.f_code.co_name
    detail = first_line(err) if str(err).strip() else type(err).__name__
    if op is not None:
        return UnsupportedOperator(op.removeprefix("relax."), f"TVM cannot {what} it: {detail}")
    where = f" (in TVM's {function})" if function else ""
    return ModelError(f"TVM cannot {what} the model{where}: {detail}; replace the operator "
                      "or open an issue")


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception message (or its type name)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
