"""Model inputs and outputs as the raw little-endian bytes every platform and the serial
protocol move: checked against the compiled-model record on the way in and out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from microexport.errors import Error, InputError
from microexport.model import CompiledModel, TensorSpec


def encode_inputs(model: CompiledModel, inputs: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Check `inputs` against the model's inputs; raw little-endian bytes by input name.

    Raises `InputError` naming the input for a missing or unknown name or a wrong shape or dtype.
    """
    specs = model.inputs
    names = [spec.name for spec in specs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InputError(
            f"unknown input '{unknown[0]}': the model's inputs are {', '.join(names) or 'none'}"
        )
    encoded = {}
    for spec in specs:
        if spec.name not in inputs:
            raise InputError(f"missing input '{spec.name}': expected shape "
                             f"{tuple(spec.shape)} {spec.dtype}")
        encoded[spec.name] = encode_array(spec, np.asarray(inputs[spec.name]))
    return encoded


def encode_array(spec: TensorSpec, array: np.ndarray) -> bytes:
    """One input as raw little-endian bytes after checking its shape and dtype."""
    want_shape = tuple(int(d) for d in spec.shape)
    want_dtype = np.dtype(spec.dtype)
    if array.shape != want_shape or array.dtype.name != want_dtype.name:
        raise InputError(
            f"input '{spec.name}': expected shape {want_shape} {want_dtype.name}, "
            f"got shape {array.shape} {array.dtype.name}"
        )
    return np.ascontiguousarray(array, dtype=want_dtype.newbyteorder("<")).tobytes()


def decode_outputs(model: CompiledModel, raw: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """Raw little-endian output bytes by output name → arrays of the model's shapes and dtypes."""
    outputs = {}
    for spec in model.outputs:
        data = raw[spec.name]
        dtype = np.dtype(spec.dtype)
        if len(data) != spec.nbytes:
            raise Error(f"output '{spec.name}': got {len(data)} bytes, expected {spec.nbytes}")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(spec.shape)
        outputs[spec.name] = array.astype(dtype)
    return outputs
