"""Reference runtimes: run a model file on the host with the framework's own runtime.

- `.onnx`: onnxruntime (CPU execution provider);
- `.tflite`: TensorFlow Lite Micro's interpreter (the runtime the C code replaces), falling back
  to LiteRT with reference kernels where TFLite Micro cannot run the model (float16 weights, an
  operator TFLite Micro lacks); the fallback is reported in the returned runtime name;
- `.pt2`: PyTorch (`torch.export.load(path).module()`);
- any format: `tvm`, TVM's own LLVM build of the imported Relax module (`run_tvm`), the module
  our pipeline starts from: a difference from it is in our pipeline (lowering, planning, AOT,
  C), a difference from the format's runtime but not from `tvm` is in the import.

`run_reference` returns `(runtime name, outputs in model order)`.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from microexport.compiler.frontend import first_line, require
from microexport.errors import Error, InputError, ModelError

if TYPE_CHECKING:
    from microexport.compiler.frontend import ImportedModel

ONNXRUNTIME = "onnxruntime"
TFLITE_MICRO = "tflite-micro"
LITERT = "litert"
TORCH = "torch"
TVM = "tvm"

RUNTIMES = {".onnx": (ONNXRUNTIME,), ".tflite": (TFLITE_MICRO, LITERT), ".pt2": (TORCH,)}
# What `test --reference` accepts: TVM's LLVM build of the import, or a format's runtime.
REFERENCES = (TVM, ONNXRUNTIME, TFLITE_MICRO, LITERT, TORCH)

Inputs = dict[str, np.ndarray]

_TFLM_FAILURES = (
    re.compile(r"Node \S+ \(number \d+\) failed to \w+"),
    re.compile(r"Didn't find op for builtin opcode '[^']*'"),
    re.compile(r"\S[^\n]*"),  # otherwise the first line TFLite Micro printed
)
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def run_reference(
    path: str | Path, inputs: Inputs, runtime: str | None = None
) -> tuple[str, list[np.ndarray]]:
    """Run the model at `path` on `inputs` (by input name) with its reference runtime.

    `runtime` picks one explicitly (`onnxruntime`; `tflite-micro` or `litert`; `torch`);
    by default the first of the format's list is used, and for TFLite a model TFLite Micro
    cannot run falls back to LiteRT, reported as `"litert (fallback: …)"`.
    Returns the runtime name and the outputs in model order.
    """
    path = Path(path)
    choices = RUNTIMES.get(path.suffix.lower())
    if choices is None:
        supported = ", ".join(sorted(RUNTIMES))
        raise ModelError(f"no reference runtime for {path}: supported extensions are {supported}")
    if runtime is not None and runtime not in choices:
        raise Error(f"runtime '{runtime}' cannot run {path}: choose one of {', '.join(choices)}")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return ONNXRUNTIME, run_onnxruntime(path, inputs)
    if path.suffix.lower() == ".pt2":
        return TORCH, run_torch(path, inputs)
    return _run_tflite(path, inputs, runtime)


def _run_tflite(path: Path, inputs: Inputs, runtime: str | None) -> tuple[str, list[np.ndarray]]:
    if runtime == LITERT:
        return LITERT, run_litert(path, inputs)
    try:
        return TFLITE_MICRO, run_tflite_micro(path, inputs)
    except _TflmFailed as failure:
        if runtime == TFLITE_MICRO:
            raise ModelError(f"tflite-micro cannot run {path}: {failure.reason}") from failure
        return f"{LITERT} (fallback: tflite-micro: {failure.reason})", run_litert(path, inputs)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _ordered(inputs: Inputs, expected: list[tuple[str, tuple[Any, ...], str]]) -> list[np.ndarray]:
    """`inputs` as arrays in model order, checked against `(name, shape, dtype)` (a shape entry
    that is not an int — a symbolic dimension — matches anything)."""
    names = [name for name, _, _ in expected]
    missing = [n for n in names if n not in inputs]
    extra = sorted(set(inputs) - set(names))
    if missing or extra:
        raise InputError(
            f"inputs {sorted(inputs)} do not match the model inputs {names}"
            + (f": missing {missing}" if missing else "")
            + (f": unknown {extra}" if extra else "")
        )
    arrays = []
    for name, shape, dtype in expected:
        array = np.asarray(inputs[name])
        if str(array.dtype) != dtype:
            raise InputError(f"input '{name}' is {array.dtype}, the model expects {dtype}")
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if len(fixed) != array.ndim or any(
            d is not None and d != s for d, s in zip(fixed, array.shape, strict=True)
        ):
            raise InputError(f"input '{name}' has shape {array.shape}, the model expects {shape}")
        # ascontiguousarray makes a 0-d array 1-d (the Relax VM then refuses a scalar input)
        arrays.append(np.ascontiguousarray(array).reshape(array.shape))
    return arrays


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def run_onnxruntime(path: Path, inputs: Inputs) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime on the CPU; outputs in graph order."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if _weight_only_quantized(path):
        # onnxruntime's extended optimizations turn DequantizeLinear(int8 weights) → MatMul
        # into an integer matmul on dynamically quantized activations: errors of 1e-3 that
        # are not the model's float arithmetic (found by tests/test_fuzz.py).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load {path}: {first_line(err)}") from err
    expected = [
        (i.name, tuple(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in session.get_inputs()
    ]
    arrays = _ordered(inputs, expected)
    feed = {name: array for (name, _, _), array in zip(expected, arrays, strict=True)}
    return [np.asarray(out) for out in session.run(None, feed)]


def _weight_only_quantized(path: Path) -> bool:
    """True if the ONNX model dequantizes (weights) but quantizes nothing: float arithmetic
    on quantized weights, not a quantized (QDQ) model meant to compute in integers."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - onnxruntime reports an unreadable model itself
        return False
    ops = {node.op_type for node in graph.node}
    return "DequantizeLinear" in ops and not ops & {"QuantizeLinear", "DynamicQuantizeLinear"}


# --------------------------------------------------------------------------------------------
# TFLite Micro and LiteRT
# --------------------------------------------------------------------------------------------


class _TflmFailed(Exception):
    """TFLite Micro could not load or run the model; `reason` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tflite_io(path: Path) -> tuple[list[tuple[str, tuple[Any, ...], str]], int]:
    """`(name, shape, dtype)` of each subgraph-0 input, and the number of outputs."""
    require("tflite_micro", "tflite")
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
        subgraph = model.Subgraphs(0)
        types = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
        expected = []
        for i in range(subgraph.InputsLength()):
            tensor = subgraph.Tensors(subgraph.Inputs(i))
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            expected.append((tensor.Name().decode(), shape, types[tensor.Type()]))
        return expected, subgraph.OutputsLength()
    except Exception as err:
        raise ModelError(f"cannot parse {path} as a TFLite model: {first_line(err)}") from err


def run_tflite_micro(path: Path, inputs: Inputs) -> list[np.ndarray]:
    """Run a TFLite model with TFLite Micro's interpreter; raises _TflmFailed (with TFLite
    Micro's own diagnostic) when it cannot."""
    expected, n_outputs = _tflite_io(path)
    arrays = _ordered(inputs, expected)
    from tflite_micro.python.tflite_micro import runtime

    data = path.read_bytes()
    with _captured_stderr() as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=_arena_size(data))
            for index, array in enumerate(arrays):
                interpreter.set_input(array, index)
            interpreter.invoke()
            return [np.array(interpreter.get_output(i)) for i in range(n_outputs)]
        except RuntimeError as err:
            failure = err
    raise _TflmFailed(_tflm_reason("".join(log), failure)) from failure


def _arena_size(model: bytes) -> int:
    """A generous host-side arena: 10× the model (TFLite Micro's default), at least 1 MiB."""
    return max(10 * len(model), 1 << 20)


def _tflm_reason(log: str, err: Exception) -> str:
    for pattern in _TFLM_FAILURES:
        match = pattern.search(log)
        if match:
            return match.group(0).strip()
    return first_line(err)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2: the yielded list receives the
    captured text when the block exits."""
    sys.stderr.flush()
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read())


def run_litert(path: Path, inputs: Inputs) -> list[np.ndarray]:
    """Run a TFLite model with LiteRT's reference kernels (no XNNPACK delegate)."""
    litert = require("ai_edge_litert.interpreter", "tflite")
    try:
        interpreter = litert.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
        )
        interpreter.allocate_tensors()
    except Exception as err:
        raise ModelError(f"litert cannot load {path}: {first_line(err)}") from err
    details = interpreter.get_input_details()
    expected = [
        (d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name) for d in details
    ]
    for detail, array in zip(details, _ordered(inputs, expected), strict=True):
        interpreter.set_tensor(detail["index"], array)
    interpreter.invoke()
    return [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]


def tflm_arena_bytes(path: str | Path) -> int | None:
    """Bytes of tensor arena TFLite Micro allocates for the model (its RecordingMicroAllocator
    total), or None if TFLite Micro cannot load the model. Runs in a subprocess because the
    figure is only printed to stderr by native code."""
    require("tflite_micro", "tflite")
    script = (
        "import sys\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        "interpreter = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))\n"
        "interpreter.print_allocations()\n"
    )
    size = _arena_size(Path(path).read_bytes())
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(size)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = _ARENA_TOTAL.search(result.stderr)
    return int(match.group(1)) if match and result.returncode == 0 else None


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def run_torch(path: Path, inputs: Inputs) -> list[np.ndarray]:
    """Run a `torch.export` program (.pt2) with PyTorch; outputs flattened in order."""
    torch = require("torch", "torch")
    from microexport.compiler.frontend.torch import read_program

    program = read_program(path)
    arrays = _ordered(inputs, _torch_signature(program))
    with torch.no_grad():
        outputs = program.module()(*[torch.from_numpy(a) for a in arrays])
    return [leaf.detach().numpy() for leaf in _flatten(outputs)]


def _torch_signature(program: Any) -> list[tuple[str, tuple[Any, ...], str]]:
    """`(name, shape, dtype)` of each user input (None for a symbolic dimension)."""
    from microexport.compiler.frontend.torch import user_input_values

    signature = []
    names = program.graph_signature.user_inputs
    for name, value in zip(names, user_input_values(program), strict=True):
        shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        signature.append((name, shape, str(value.dtype).removeprefix("torch.")))
    return signature


def _flatten(outputs: Any) -> list[Any]:
    """The tensors of a (possibly nested) tuple / list / dict of outputs, in order."""
    if isinstance(outputs, tuple | list):
        return [leaf for item in outputs for leaf in _flatten(item)]
    if isinstance(outputs, dict):
        return [leaf for item in outputs.values() for leaf in _flatten(item)]
    return [outputs] if hasattr(outputs, "detach") else []


# --------------------------------------------------------------------------------------------
# TVM's own LLVM build of the imported module
# --------------------------------------------------------------------------------------------


def run_tvm(imported: ImportedModel, inputs: Inputs) -> list[np.ndarray]:
    """Build the imported Relax module with TVM's own pipeline for `llvm` and run it in the
    Relax VM on the host; outputs in model order.

    This is the exact module our pipeline starts from (weights bound, frozen inputs folded),
    so it separates a bug of the import from a bug of ours.
    """
    import tvm
    from tvm import relax

    if tvm.get_global_func("target.build.llvm", allow_missing=True) is None:
        raise Error("this TVM build has no LLVM backend, which --reference tvm needs: install "
                    "the apache-tvm wheel (built with LLVM) or choose another --reference")
    expected = [(spec.name, spec.shape, spec.dtype) for spec in imported.inputs]
    arrays = _ordered(inputs, expected)
    try:
        executable = tvm.compile(imported.mod, target="llvm")
    except Exception as err:  # noqa: BLE001 - TVM raises many kinds of errors while building
        raise ModelError(f"tvm cannot build the imported module for llvm: "
                         f"{first_line(err)}") from err
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(array) for array in arrays])
    return [np.array(leaf.numpy()) for leaf in _vm_leaves(result, tvm.runtime.Tensor)]


def _vm_leaves(result: Any, tensor_type: type) -> list[Any]:
    """The tensors of what the Relax VM returned (a tensor or a nested tuple), in order."""
    if isinstance(result, tensor_type):
        return [result]
    return [leaf for item in result for leaf in _vm_leaves(item, tensor_type)]
