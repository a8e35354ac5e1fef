"""TFLite → Relax with TVM's Relax TFLite frontend.

Adjustments, made through the frontend's `op_converter` hook:

- quantized operators (int8/int16 activations) are imported as integer kernels by
  `tflite_integer` (bit-exact with TFLite Micro), not as dequantize → float op → quantize;
- every operator converter is wrapped so that a failure names the TFLite operator;
- FULLY_CONNECTED flattens an input of rank > 2 (as TFLite does); the stock converter
  passes it to matmul as is and fails.

The flatbuffer is read lazily by the `tflite` package, so a corrupt or truncated file would fail
anywhere it is first touched; `_verify` walks every table the import reads (with index range
checks) right after the file is read, so such a file is one ModelError.
"""

from __future__ import annotations

import contextlib
import functools
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from microexport.compiler.frontend.common import (
    ImportedModel,
    Shapes,
    check_shape_names,
    close_block_builders,
    finish_import,
    first_line,
    require,
    resolve_shape,
)
from microexport.compiler.frontend.lstm_integer import unidirectional_sequence_lstm
from microexport.compiler.frontend.recurrent import tflite_unidirectional_sequence_lstm
from microexport.compiler.frontend.tflite_integer import (
    DATA_MOVEMENT_OPERATORS,
    INTEGER_OPERATORS,
    is_integer_operator,
)
from microexport.compiler.quantization import TensorQuantization, same_data, tflite_quantization
from microexport.errors import Error, ModelError, UnsupportedOperator
from microexport.model import TensorSpec

# Every quantized operator with an integer converter: the integer operators of tflite_integer
# and the integer LSTM (its own module).
_INTEGER_CONVERTERS = {**INTEGER_OPERATORS,
                       "UNIDIRECTIONAL_SEQUENCE_LSTM": unidirectional_sequence_lstm}
_QUOTED = re.compile(r"'([A-Za-z0-9_:]+)'")
_NOT_QUANTIZED_OPS = {"DEQUANTIZE", "QUANTIZE"}
# What the flatbuffers reader raises on a corrupt or truncated buffer (offsets past the end,
# numbers out of range, names that are not UTF-8, missing tables read as None).
_FLATBUFFER_ERRORS = (struct.error, IndexError, KeyError, ValueError, TypeError, OverflowError,
                      UnicodeDecodeError, AttributeError)
# Bytes per element of the tensor types whose constant data is stored unpacked.
_ITEM_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
               "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1}


def load_tflite(path: Path, input_shapes: Shapes) -> ImportedModel:
    """Import the TFLite model at `path`; `input_shapes` overrides input shapes by name."""
    require("tflite", "tflite")
    model = _read(path)
    subgraph = model.Subgraphs(0)
    inputs = _model_inputs(subgraph, input_shapes, path)
    converter = _frontend(path, _converter_class(), model, subgraph, _expr_table(),
                          _block_builder())
    _check_operators(converter, subgraph, path)
    mod, quantization = _convert(model, inputs, path)
    outputs = _vector(subgraph.OutputsLength(), subgraph.OutputsAsNumpy)
    output_names = [_tensor_name(subgraph, i) for i in outputs]
    result = mod["main"].body.body  # one output: the Var bound to it (a tuple: its fields')
    output_q = tflite_quantization(subgraph.Tensors(outputs[0])) if len(outputs) == 1 else None
    if output_q is not None:
        quantization.setdefault(result, output_q)
    return finish_import(mod, [i.name for i in inputs], output_names, "tflite", path,
                         quantization)


def _read(path: Path) -> Any:
    import tflite

    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"cannot parse {path} as a TFLite model: no 'TFL3' flatbuffer identifier")
    with _corrupt(path):
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ModelError(f"cannot parse {path} as a TFLite model: it has no subgraph")
        _verify(model)
    return model


@contextlib.contextmanager
def _corrupt(path: Path) -> Iterator[None]:
    """Turn what the flatbuffers reader raises on a damaged file into one ModelError."""
    try:
        yield
    except _FLATBUFFER_ERRORS as err:
        raise ModelError(
            f"cannot parse {path} as a TFLite model (corrupt or truncated file?): "
            f"{first_line(err)}"
        ) from err


def _frontend(path: Path, call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, a method of TVM's TFLite frontend that reads the model; ModelError
    naming `path` if it fails on what it reads (quantization parameters, options, ...)."""
    try:
        return call(*args)
    except Error:
        raise
    except Exception as err:  # noqa: BLE001 - the frontend raises all kinds of errors
        raise ModelError(f"cannot import {path}: {first_line(err)}") from err


def _vector(length: int, as_numpy: Callable[[], Any]) -> list[int]:
    """A flatbuffer int vector as a list (`as_numpy` returns 0, not an array, when empty)."""
    return [int(v) for v in as_numpy()] if length else []


def _verify(model: Any) -> None:
    """Read every table and vector of `model` the import touches, checking that indices are in
    range; raises one of `_FLATBUFFER_ERRORS` if the flatbuffer is damaged."""
    buffers = model.BuffersLength()
    codes = model.OperatorCodesLength()
    for index in range(codes):
        code = model.OperatorCodes(index)
        code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode(), code.Version()
    for index in range(buffers):
        buffer = model.Buffers(index)
        if buffer.DataLength():
            buffer.DataAsNumpy()
    for graph_index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(graph_index)
        tensors = graph.TensorsLength()
        for index in range(tensors):
            _verify_tensor(model, graph.Tensors(index))
        for index in _vector(graph.InputsLength(), graph.InputsAsNumpy) + _vector(
                graph.OutputsLength(), graph.OutputsAsNumpy):
            _check_index(index, tensors, "subgraph input/output tensor")
        for op_index in range(graph.OperatorsLength()):
            op = graph.Operators(op_index)
            _check_index(op.OpcodeIndex(), codes, "operator code")
            for index in _vector(op.InputsLength(), op.InputsAsNumpy):
                if index != -1:  # -1: an optional input left out
                    _check_index(index, tensors, "operator input tensor")
            for index in _vector(op.OutputsLength(), op.OutputsAsNumpy):
                _check_index(index, tensors, "operator output tensor")
            _verify_options(op)
            if op.CustomOptionsLength():
                op.CustomOptionsAsNumpy()


def _verify_options(op: Any) -> None:
    """Read every field of the operator's builtin options table."""
    import tflite

    kind = op.BuiltinOptionsType()
    table = op.BuiltinOptions()
    if kind == 0:  # BuiltinOptions.NONE
        return
    names = {v: k for k, v in vars(tflite.BuiltinOptions).items() if not k.startswith("_")}
    if kind not in names:
        raise ValueError(f"unknown builtin options type {kind}")
    options_class = getattr(tflite, names[kind], None)
    if table is None or options_class is None:
        return
    options = options_class()
    options.Init(table.Bytes, table.Pos)
    for field in _option_fields(options_class):
        getattr(options, field)()


@functools.cache
def _option_fields(options_class: type) -> tuple[str, ...]:
    """The getters of a flatbuffers options class that take no argument."""
    import inspect

    fields = []
    for name, member in vars(options_class).items():
        if not name[:1].isupper() or name == "Init" or name.startswith("GetRootAs"):
            continue
        if not callable(member) or name.endswith("BufferHasIdentifier"):
            continue
        if len(inspect.signature(member).parameters) == 1:  # self only
            fields.append(name)
    return tuple(fields)


def _verify_tensor(model: Any, tensor: Any) -> None:
    name = tensor.Name().decode("utf-8")
    shape = _vector(tensor.ShapeLength(), tensor.ShapeAsNumpy)
    _vector(tensor.ShapeSignatureLength(), tensor.ShapeSignatureAsNumpy)
    dtype = _type_name(tensor.Type())
    _check_index(tensor.Buffer(), model.BuffersLength(), "buffer")
    data = model.Buffers(tensor.Buffer()).DataLength()
    itemsize = _ITEM_BYTES.get(dtype)
    if data and itemsize and all(d >= 0 for d in shape):
        count = 1
        for dim in shape:
            count *= dim
        if count * itemsize != data:
            raise ValueError(f"tensor '{name}' of shape {shape} ({dtype}) has {data} bytes of data")
    quantization = tensor.Quantization()
    if quantization is not None:
        if quantization.ScaleLength():
            quantization.ScaleAsNumpy()
        _vector(quantization.ZeroPointLength(), quantization.ZeroPointAsNumpy)
        quantization.QuantizedDimension()


def _check_index(index: int, count: int, what: str) -> None:
    if not 0 <= index < count:
        raise IndexError(f"{what} index {index} out of range (the model has {count})")


def _tensor_name(subgraph: Any, index: int) -> str:
    return subgraph.Tensors(int(index)).Name().decode("utf-8")


def _type_name(type_code: int) -> str:
    import tflite

    names = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    if type_code not in names:
        raise ValueError(f"unknown tensor type code {type_code}")
    return names[type_code].lower()


def _model_inputs(subgraph: Any, input_shapes: Shapes, path: Path) -> list[TensorSpec]:
    indices = _vector(subgraph.InputsLength(), subgraph.InputsAsNumpy)
    names = [_tensor_name(subgraph, i) for i in indices]
    check_shape_names(input_shapes, names, path)
    specs = []
    for index, name in zip(indices, names, strict=True):
        tensor = subgraph.Tensors(index)
        shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        # TFLite's `shape` field is concrete even where `shape_signature` has -1.
        shape = resolve_shape(name, list(shape), input_shapes.get(name))
        specs.append(TensorSpec(name=name, shape=shape, dtype=_type_name(tensor.Type())))
    return specs


def _check_operators(converter: Any, subgraph: Any, path: Path) -> None:
    """UnsupportedOperator for an operator without converter; ModelError for dynamic-range
    quantization (float activations with quantized weights)."""
    for op_index in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(op_index)
        try:
            name = converter.get_op_code_str(op)
        except NotImplementedError as err:  # custom operators, unknown builtin codes
            raise UnsupportedOperator(_custom_name(converter, op), first_line(err)) from err
        except Exception as err:  # noqa: BLE001 - as in _frontend
            raise ModelError(f"cannot import {path}: {first_line(err)}") from err
        if name not in converter.convert_map:
            raise UnsupportedOperator(name, "TFLite, not in TVM's Relax TFLite frontend")
        if name not in _NOT_QUANTIZED_OPS and _is_dynamic_range(converter, op, path):
            raise ModelError(
                f"{path} is dynamic-range quantized ({name} has float activations and "
                "quantized weights): convert it with full integer quantization (int8 "
                "activations, a representative dataset) or keep it float"
            )


def _custom_name(converter: Any, op: Any) -> str:
    code = converter.model.OperatorCodes(op.OpcodeIndex())
    custom = code.CustomCode()
    name = custom.decode("utf-8", "replace") if custom else ""
    return f"CUSTOM:{name}" if custom else f"builtin code {code.BuiltinCode()}"


def _is_dynamic_range(converter: Any, op: Any, path: Path) -> bool:
    inputs = _frontend(path, converter.get_input_tensors, op)
    outputs = _frontend(path, converter.get_output_tensors, op)
    if not inputs or inputs[0].qnn_params is not None:
        return False
    if any(t.qnn_params is not None for t in outputs):
        return False
    return any(t.qnn_params is not None for t in inputs[1:])


def _convert(model: Any, inputs: list[TensorSpec], path: Path
             ) -> tuple[Any, dict[Any, TensorQuantization]]:
    """The Relax module of `model`, and the quantization of the Relax values that stand for
    its quantized tensors (model inputs, operator outputs, weights)."""
    from tvm.relax.frontend.tflite import from_tflite

    converters: list[Any] = []

    def converter(*args: Any) -> Any:  # keeps the instance from_tflite makes
        converters.append(_converter_class()(*args))
        return converters[-1]

    try:
        mod = from_tflite(
            model,
            shape_dict={i.name: i.shape for i in inputs},
            dtype_dict={i.name: i.dtype for i in inputs},
            op_converter=converter,
        )
        return mod, converters[-1].model_quantization()
    except _OperatorFailed as err:
        close_block_builders(err)
        cause = err.__cause__ or err
        if isinstance(cause, Error):  # our converter refused the operator: its message says why
            raise cause from err
        if isinstance(cause, struct.error):  # the operator's options point past the end
            raise ModelError(f"cannot parse {path} as a TFLite model (corrupt or truncated "
                             f"file?): operator {err.op}: {first_line(cause)}") from err
        raise UnsupportedOperator(err.op, first_line(cause)) from err
    except Exception as err:  # the frontend raises all kinds of errors
        close_block_builders(err)
        quoted = _QUOTED.search(str(err))
        if quoted and "operator" in str(err).lower():
            raise UnsupportedOperator(quoted.group(1), first_line(err)) from err
        raise ModelError(f"cannot import {path}: {first_line(err)}") from err


class _OperatorFailed(Exception):
    """Raised by a wrapped converter: `op` is the TFLite operator whose conversion failed."""

    def __init__(self, op: str) -> None:
        super().__init__(op)
        self.op = op


def _expr_table() -> Any:
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable

    return ExprTable()


def _block_builder() -> Any:
    from tvm import relax

    return relax.BlockBuilder()


@functools.cache
def _converter_class() -> type:
    """The frontend's OperatorConverter with named failures and rounding average pooling
    (built on first use, so that importing this module does not import TVM)."""
    from tvm import ir, relax
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    class Converter(OperatorConverter):
        # Quantized operators we import (integer kernels, or operators that only move the
        # integers), plus those TVM's converter lowers through float (QDQ).
        _SUPPORTED_QUANTIZED_OPS = frozenset(OperatorConverter._SUPPORTED_QUANTIZED_OPS) | {
            *_INTEGER_CONVERTERS, *DATA_MOVEMENT_OPERATORS}

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Relax Var/Constant → quantization of the TFLite tensor it stands for.
            self.quantization: dict[Any, TensorQuantization] = {}
            self._results: set[Any] = set()  # Vars that are results of converted operators
            self.convert_map["FULLY_CONNECTED"] = self._fully_connected
            self.convert_map["EXPAND_DIMS"] = self._expand_dims
            self.convert_map["UNIDIRECTIONAL_SEQUENCE_LSTM"] = self._sequence_lstm(
                self.convert_map.get("UNIDIRECTIONAL_SEQUENCE_LSTM"))
            for name, integer in _INTEGER_CONVERTERS.items():
                self.convert_map[name] = self._integer_or_stock(
                    name, integer, self.convert_map.get(name))
            self.convert_map = {
                name: self._named(name, convert) for name, convert in self.convert_map.items()
            }

        def _expand_dims(self, op: Any) -> Any:
            """EXPAND_DIMS as a reshape to the output's shape (TVM 0.27's converter calls
            relax.op.expand_dims with one argument too many and fails on every model)."""
            shape = [int(d) for d in self.get_tensor_shape(self.get_output_tensors(op)[0])]
            return relax.op.reshape(self.get_tensor_expr(self.get_input_tensors(op)[0]), shape)

        def _named(self, name: str, convert: Any) -> Any:
            """`convert`, raising _OperatorFailed(name) if it (or normalizing its result)
            fails."""

            def call(op: Any) -> Any:
                try:
                    ret = convert(op=op)
                    return None if ret is None else self._record(op, self.bb.normalize(ret))
                except _OperatorFailed:
                    raise
                except Exception as err:
                    raise _OperatorFailed(name) from err

            return call

        def _record(self, op: Any, ret: Any) -> Any:
            """`ret` with each output of a quantized operator bound to a Var (a bare Call
            would be bound later under another name), recording those Vars' and the weights'
            quantization (compiler/quantization.py). Float operators are left alone."""
            outputs = self.get_output_tensors(op)
            quants = [tflite_quantization(t.tensor) for t in outputs]
            if not any(q is not None for q in quants):
                if isinstance(ret, relax.Var):
                    self._results.add(ret)
                return ret
            if len(outputs) == 1:
                ret = self._bound(ret)
                values = [ret]
            else:
                if isinstance(ret, relax.Tuple):
                    values = [self._bound(f) for f in ret.fields]
                else:
                    whole = self._bound(ret)
                    values = [self.bb.emit(relax.TupleGetItem(whole, i))
                              for i in range(len(outputs))]
                ret = relax.Tuple(values)
            for value, q in zip(values, quants, strict=False):
                if q is not None and isinstance(value, ir.Var | ir.Constant):
                    self.quantization.setdefault(value, q)
            self._record_weights(op, [v for v in values if isinstance(v, relax.Var)])
            self._results.update(v for v in values if isinstance(v, relax.Var))
            return ret

        def _bound(self, expr: Any) -> Any:
            if isinstance(expr, ir.Var | ir.Constant | ir.Tuple):
                return expr
            return self.bb.emit(expr)

        def _record_weights(self, op: Any, results: list[Any]) -> None:
            """The quantization of the constants the operator's bindings use that hold
            exactly a quantized constant input of the operator (weights, biases); constants we
            compute (multipliers, shifts, tables) match none and get none."""
            weights = []
            for tensor in self.get_input_tensors(op):
                q = tflite_quantization(tensor.tensor) if tensor.tensor_idx != -1 else None
                if q is None or self.has_expr(tensor.tensor_idx):
                    continue
                with contextlib.suppress(Exception):  # no data: not a constant
                    weights.append((self.get_tensor_value(tensor), q))
            if not weights:
                return
            seen: set[Any] = set()
            stack = list(results)
            while stack:  # the bindings this operator emitted, back to earlier results
                var = stack.pop()
                if var in seen:
                    continue
                seen.add(var)
                value = self.bb.lookup_binding(var)
                if value is None:
                    continue

                def visit(expr: Any) -> None:
                    if isinstance(expr, ir.Constant):
                        for array, q in weights:
                            if same_data(array, expr):
                                self.quantization.setdefault(expr, q)
                                break
                    elif isinstance(expr, relax.Var) and expr not in self._results:
                        stack.append(expr)

                relax.analysis.post_order_visit(value, visit)

        def model_quantization(self) -> dict[Any, TensorQuantization]:
            """What `_record` found, plus the model inputs' quantization."""
            found = dict(self.quantization)
            for index in _vector(self.subgraph.InputsLength(), self.subgraph.InputsAsNumpy):
                q = tflite_quantization(self.subgraph.Tensors(index))
                name = _tensor_name(self.subgraph, index)
                if q is not None and self.exp_tab.has_expr(name):
                    found.setdefault(self.exp_tab.get_expr(name), q)
            return found

        def get_op_code_str(self, op: Any) -> str:
            """The operator's name from max(builtin_code, deprecated_builtin_code), as the
            schema says and TFLite Micro reads it (the `tflite` package's BuiltinCode() returns
            the deprecated byte for codes below 127, so a writer that leaves that byte 0 would
            turn e.g. QUANTIZE into ADD)."""
            code = _builtin_code(self.model.OperatorCodes(op.OpcodeIndex()))
            if code in self.builtin_op_code and code != 32:  # 32: CUSTOM, named by the stock
                return self.builtin_op_code[code]
            return super().get_op_code_str(op)

        def _integer_or_stock(self, name: str, integer: Any, stock: Any) -> Any:
            """The integer converter for quantized instances of `name`, TVM's otherwise."""

            def convert(op: Any) -> Any:
                if is_integer_operator(self, op):
                    return integer(self, op)
                if stock is None:
                    raise NotImplementedError(f"{name} is supported only quantized (int8)")
                return stock(op=op)

            return convert

        def _sequence_lstm(self, stock: Any) -> Any:
            """Float UNIDIRECTIONAL_SEQUENCE_LSTM by `recurrent` (TVM's handles only coupled
            input-forget gates), quantized ones by `stock`."""

            def convert(op: Any) -> Any:
                if self.is_quantized(op) and stock is not None:
                    return stock(op=op)
                return tflite_unidirectional_sequence_lstm(self, op)

            return convert

        def _fully_connected(self, op: Any) -> Any:
            """FULLY_CONNECTED, flattening an input of rank > 2 to (-1, inputs) as TFLite does
            without keep_num_dims (the stock converter feeds it to matmul unflattened)."""
            data = self.get_input_tensors(op)[0]
            shape = self.get_tensor_shape(data)
            if len(shape) <= 2 or _keep_num_dims(op) or not self.has_expr(data.tensor_idx):
                return self.convert_fully_connected(op)
            name = data.tensor.Name().decode("utf-8")
            original = self.get_expr(data.tensor_idx)
            depth = int(self.get_tensor_shape(self.get_input_tensors(op)[1])[1])
            flat = self.bb.normalize(relax.op.reshape(original, (-1, depth)))
            self.exp_tab.set_expr(name, flat, force_override=True)
            try:
                return self.convert_fully_connected(op)
            finally:
                self.exp_tab.set_expr(name, original, force_override=True)

    return Converter


def _builtin_code(op_code: Any) -> int:
    """max(builtin_code, deprecated_builtin_code) of an OperatorCode table, read raw."""
    import flatbuffers

    offset = op_code._tab.Offset(10)  # builtin_code: int32
    builtin = op_code._tab.Get(flatbuffers.number_types.Int32Flags,
                               offset + op_code._tab.Pos) if offset else 0
    return max(int(builtin), int(op_code.DeprecatedBuiltinCode()))


def _keep_num_dims(op: Any) -> bool:
    from tflite.FullyConnectedOptions import FullyConnectedOptions

    table = op.BuiltinOptions()
    if table is None:
        return False
    options = FullyConnectedOptions()
    options.Init(table.Bytes, table.Pos)
    return bool(options.KeepNumDims())
