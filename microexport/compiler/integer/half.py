"""IEEE 754 binary16 (float16) storage as TE kernels.

float16 model inputs and outputs are stored as their 16 bits in `uint16_t` (C has no portable
half type, and the Cortex-M compilers' `__fp16`/`_Float16` differ): `decode` widens the bits to
float32 exactly, `encode` rounds a float32 to the nearest float16 (ties to even, overflow to
infinity, subnormals kept, NaN stays NaN) as numpy's `astype(np.float16)` does, except that a
negative zero becomes +0.

Neither reinterprets float bits in C (TVM writes that as a pointer cast, which breaks strict
aliasing): they scale by exact powers of two read from `POWERS`, a small float32 constant
table (the C code generator prints float literals with 7 digits, not exactly), and round with
integer comparisons. No libm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import te, tirx

from microexport.compiler.integer import te_math as tm

Tensor = Any  # te.Tensor

_LOWEST = -24  # POWERS[i] = 2**(i + _LOWEST) for i < _INFINITY
_INFINITY = 49  # POWERS[_INFINITY] = POWERS[_INFINITY + 1] = +inf
POWERS = np.array([2.0 ** (i + _LOWEST) for i in range(_INFINITY)] + [np.inf, np.inf],
                  np.float32)
"""The constant table both kernels take: 2**-24 … 2**24, then +infinity twice (a NaN is the
difference of the two: TVM's simplifier would fold `x - x` or `x != x`)."""


def _i(value: int) -> Any:
    return tirx.const(value, "int32")


def _power(powers: Tensor, exponent: Any) -> Any:
    """2**exponent (an int32 expression in [-24, 24]) from the table."""
    return powers[exponent - _i(_LOWEST)]


def decode(bits: Tensor, powers: Tensor) -> Tensor:
    """uint16 float16 bits → float32 (exact)."""
    def value(*i: Any) -> Any:
        h = tm.i32(bits[i])
        exponent = tirx.bitwise_and(h >> _i(10), _i(0x1F))
        mantissa = tirx.bitwise_and(h, _i(0x3FF))
        # subnormal: mantissa * 2**-24; normal: (1024 + mantissa) * 2**(exponent - 25)
        subnormal = mantissa.astype("float32") * _power(powers, _i(-24))
        normal = (mantissa + _i(1024)).astype("float32") \
            * _power(powers, tirx.max(exponent, _i(1)) - _i(25))
        infinity = powers[_INFINITY]
        special = tm.select(mantissa == _i(0), infinity,
                            infinity - powers[_INFINITY + 1])  # inf or NaN
        magnitude = tm.select(exponent == _i(0), subnormal,
                              tm.select(exponent == _i(31), special, normal))
        negative = tirx.bitwise_and(h, _i(0x8000)) != _i(0)
        return tm.select(negative, tirx.const(-1.0, "float32") * magnitude, magnitude)

    return te.compute(bits.shape, value, name="float16_decode")


def encode(data: Tensor, powers: Tensor) -> Tensor:
    """float32 → uint16 float16 bits, rounded to nearest even."""
    def value(*i: Any) -> Any:
        f = data[i]
        zero = tirx.const(0.0, "float32")
        infinity = powers[_INFINITY]
        # NaN fails both comparisons (written as selects: the simplifier would turn a negated
        # comparison into the opposite one, which a NaN fails too)
        ordered = tm.select(f >= zero - infinity, tm.select(f <= infinity, _i(1), _i(0)), _i(0))
        nan = ordered == _i(0)
        negative = f < zero
        # |f|, with NaN as 0 and clamped to 2**16 so that every arm's float → int conversion
        # is in range (the arms are selected below; C may evaluate any of them)
        a = tirx.min(tm.select(nan, zero, tm.select(negative, zero - f, f)),
                     _power(powers, _i(16)))
        # floor(log2(a)) for a in the normal float16 range, by comparisons with 2**k
        exponent = _i(-14)
        for k in range(-13, 16):
            exponent = exponent + tm.select(a >= _power(powers, _i(k)), _i(1), _i(0))
        significand = a * _power(powers, _i(0) - exponent)  # in [1, 2): exact
        fraction = tm.round_to_int((significand - tirx.const(1.0, "float32"))
                                   * _power(powers, _i(10)), ties_to_even=True)
        normal = tirx.min(((exponent + _i(15)) << _i(10)) + fraction, _i(0x7C00))
        subnormal = tm.round_to_int(  # may round up to 1024: the smallest normal
            tirx.min(a, _power(powers, _i(-14))) * _power(powers, _i(24)), ties_to_even=True)
        magnitude = tm.select(nan, _i(0x7E00),
                              tm.select(a >= _power(powers, _i(16)), _i(0x7C00),
                                        tm.select(a < _power(powers, _i(-14)), subnormal,
                                                  normal)))
        return (magnitude + tm.select(negative, _i(0x8000), _i(0))).astype("uint16")

    return te.compute(data.shape, value, name="float16_encode")
