"""IEEE 754 binary16 (float16) and bfloat16 storage as TE kernels.

float16 model inputs and outputs are stored as their 16 bits in `uint16_t` (C has no portable
half type, and the Cortex-M compilers' `__fp16`/`_Float16` differ): `decode` widens the bits to
float32 exactly, `encode` rounds a float32 to the nearest float16 (ties to even, overflow to
infinity, subnormals kept, NaN stays NaN) as numpy's `astype(np.float16)` does, except that a
negative zero becomes +0.

Neither reinterprets float bits in C (TVM writes that as a pointer cast, which breaks strict
aliasing): they scale by exact powers of two read from `POWERS`, a small float32 constant
table (the C code generator prints float literals with 7 digits, not exactly), and round with
integer comparisons. No libm.

bfloat16 (`bfloat16_decode`, `bfloat16_encode`) is the upper half of a float32: sign, 8 exponent
bits, 7 mantissa bits, stored in `uint16_t`. Decoding is exact (every bfloat16 is a float32;
bfloat16 subnormals are float32 subnormals, flushed to zero by an FPU that flushes them);
encoding rounds to nearest even with overflow to infinity, as `ml_dtypes`/onnxruntime do, NaN
stays NaN (0x7FC0), and a negative zero becomes +0 as for float16. The exponent range needs more
powers of two than one small table holds, so the kernels multiply two entries of
`BFLOAT16_POWERS` (2**k for 0 <= k < 16 times 2**(16 j - 126)), exact as long as every product is a
float32 normal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import te, tirx

from microexport.compiler.integer import te_math as tm

Tensor = Any  # te.Tensor

_LOWEST = -24  # POWERS[i] = 2**(i + _LOWEST) for i < _INFINITY
_INFINITY = 49  # POWERS[_INFINITY] = POWERS[_INFINITY + 1] = +inf
_MAGIC = 51  # POWERS[_MAGIC] = 2**23 = POWERS[23 - _LOWEST]
POWERS = np.array([2.0 ** (i + _LOWEST) for i in range(_INFINITY)] + [np.inf, np.inf, 2.0 ** 23],
                  np.float32)
"""The constant table the float16 kernels take: 2**-24 … 2**24, then +infinity twice (a NaN is
the difference of the two: TVM's simplifier would fold `x - x` or `x != x`), then 2**23 again
(`(y + 2**23) - 2**23` with two different loads, which the simplifier cannot fold to `y`)."""


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


def round_to_float16(data: Tensor, powers: Tensor) -> Tensor:
    """float32 → float32 rounded to the nearest float16 value: ties to even, overflow to
    ±infinity, float16 subnormals kept, ±infinity and NaN stay (a NaN may lose its payload);
    a zero result is +0 for a non-negative input, -0 for a negative one (so a negative zero
    input becomes +0, as in `encode`). The value `encode` then `decode` give, without the bits.
    A float16 model's operators compute in float32; this rounds each result as a float16
    operator would (numpy, onnxruntime: compute, then round the result to float16).

    |x| = y * 2**(e - 10) with e = max(floor(log2 |x|), -14) (a comparison with each power of
    two, as in `encode`), so that y < 2048; scaling by a power of two is exact, and y is rounded
    to an integer, ties to even, by the float32 addition and subtraction of 2**23 (the sum's
    unit in the last place is 1; this needs float32 arithmetic in float32, not in a wider
    format: x87 without SSE would not do). No conversion to integers, no bit access; the input
    is read as few times as possible: the kernel is as small as it can be without a let (TE's
    inlining would duplicate one)."""
    def value(*i: Any) -> Any:
        f = data[i]
        zero = tirx.const(0.0, "float32")
        a = tirx.max(f, zero - f)  # |f|; NaN stays NaN: every comparison below is false
        exponent = _i(-14)
        for k in range(-13, 16):
            exponent = exponent + tm.select(a >= _power(powers, _i(k)), _i(1), _i(0))
        # (y + 2**23) - 2**23, the two from different table entries (TVM's simplifier folds
        # `(y + c) - c` to `y`; C compilers keep float arithmetic as written); a fused
        # multiply-add of the exact scaling into the addition rounds the same
        steps = (a * _power(powers, _i(10) - exponent) + _power(powers, _i(23))) \
            - powers[_MAGIC]
        # 65520 and above round to 65536: infinity (|f| = infinity: y is infinite already)
        overflow = tm.select(a >= tirx.const(65520.0, "float32"), powers[_INFINITY],
                             tirx.const(1.0, "float32"))
        sign = tm.select(f < zero, tirx.const(-1.0, "float32"), tirx.const(1.0, "float32"))
        return sign * (steps * _power(powers, exponent - _i(10)) * overflow)

    return te.compute(data.shape, value, name="round_to_float16")


# BFLOAT16_POWERS layout: [_LOW + k] = 2**k, [_HIGH + j] = 2**(16 j - 126),
# [_INV_HIGH + j] = 2**(126 - 16 j), [_INV_LOW + k] = 2**-k (k, j in 0..15), then +inf twice.
_LOW, _HIGH, _INV_HIGH, _INV_LOW, _BF_INFINITY = 0, 16, 32, 48, 64
BFLOAT16_POWERS = np.array(
    [2.0 ** k for k in range(16)] + [2.0 ** (16 * j - 126) for j in range(16)]
    + [2.0 ** (126 - 16 * j) for j in range(16)] + [2.0 ** -k for k in range(16)]
    + [np.inf, np.inf], np.float32)
"""The constant table both bfloat16 kernels take (66 float32, all normal or infinite)."""


def _table(powers: Tensor, base: int, index: Any) -> Any:
    return powers[_i(base) + index]


def bfloat16_decode(bits: Tensor, powers: Tensor) -> Tensor:
    """uint16 bfloat16 bits → float32 (exact)."""
    def value(*i: Any) -> Any:
        h = tm.i32(bits[i])
        exponent = tirx.bitwise_and(h >> _i(7), _i(0xFF))
        mantissa = tirx.bitwise_and(h, _i(0x7F))
        # (mantissa [+ 128 if normal]) * 2**-7 * 2**(e' - 126), e' = max(exponent, 1) - 1
        # split as 2**(e' & 15) * 2**(16 (e' >> 4) - 126): both factors in the table, every
        # partial product exact (subnormals: mantissa * 2**-133)
        shifted = tirx.max(exponent, _i(1)) - _i(1)
        significand = mantissa + tm.select(exponent == _i(0), _i(0), _i(128))
        magnitude_finite = significand.astype("float32") * powers[_INV_LOW + 7] \
            * _table(powers, _LOW, tirx.bitwise_and(shifted, _i(15))) \
            * _table(powers, _HIGH, shifted >> _i(4))
        infinity = powers[_BF_INFINITY]
        special = tm.select(mantissa == _i(0), infinity,
                            infinity - powers[_BF_INFINITY + 1])  # inf or NaN
        magnitude = tm.select(exponent == _i(255), special, magnitude_finite)
        negative = tirx.bitwise_and(h, _i(0x8000)) != _i(0)
        return tm.select(negative, tirx.const(-1.0, "float32") * magnitude, magnitude)

    return te.compute(bits.shape, value, name="bfloat16_decode")


def bfloat16_encode(data: Tensor, powers: Tensor) -> Tensor:
    """float32 → uint16 bfloat16 bits, rounded to nearest even.

    In stages (each a tensor: the exponent search reads the magnitude 16 times per step, and
    one nested expression would be copied into every comparison): the magnitude, the high
    exponent digit, the biased exponent and the 24-bit significand, then the bits."""
    zero = tirx.const(0.0, "float32")
    infinity = powers[_BF_INFINITY]

    def is_nan(f: Any) -> Any:
        # NaN fails both comparisons (selects: see `encode`)
        ordered = tm.select(f >= zero - infinity, tm.select(f <= infinity, _i(1), _i(0)), _i(0))
        return ordered == _i(0)

    def magnitude(*i: Any) -> Any:
        # |f| for finite f; NaN and infinities as 0 (every later float → int conversion stays
        # in range; the last stage tells them apart)
        f = data[i]
        raw = tm.select(f < zero, zero - f, f)
        return tm.select(is_nan(f), zero, tm.select(raw >= infinity, zero, raw))

    a = te.compute(data.shape, magnitude, name="bfloat16_magnitude")

    def count(condition: Any) -> Any:
        return tm.select(condition, _i(1), _i(0))

    def high_digit(*i: Any) -> Any:  # a normal a is in [2**(16 high - 126), 2**(16 high - 110))
        total = _i(0)
        for j in range(1, 16):
            total = total + count(a[i] >= powers[_HIGH + j])
        return total

    high = te.compute(data.shape, high_digit, name="bfloat16_high")

    def biased_exponent(*i: Any) -> Any:  # floor(log2(a)) + 127 = 16 high + low + 1
        scaled = a[i] * _table(powers, _INV_HIGH, high[i])  # in [1, 2**16) for a normal
        low = _i(0)
        for k in range(1, 16):
            low = low + count(scaled >= powers[_LOW + k])
        return high[i] * _i(16) + low + _i(1)

    biased = te.compute(data.shape, biased_exponent, name="bfloat16_exponent")

    def significand(*i: Any) -> Any:  # a * 2**(23 - floor(log2(a))): 24 bits, exact
        low = biased[i] - high[i] * _i(16) - _i(1)
        return tm.i32(a[i] * _table(powers, _INV_HIGH, high[i])
                      * _table(powers, _INV_LOW, low) * powers[_LOW + 15]
                      * powers[_LOW + 8])  # 2**15 * 2**8

    bits24 = te.compute(data.shape, significand, name="bfloat16_significand")

    def value(*i: Any) -> Any:
        f, m = data[i], bits24[i]
        # round the 24-bit significand to 8 bits, ties to even; a carry into the exponent is
        # the next binade (or infinity, 0x7F80)
        kept, dropped = m >> _i(16), tirx.bitwise_and(m, _i(0xFFFF))
        up = count(tirx.any(dropped > _i(0x8000), tirx.all(
            dropped == _i(0x8000), tirx.bitwise_and(kept, _i(1)) == _i(1))))
        normal = (biased[i] << _i(7)) + kept - _i(128) + up
        subnormal = tm.round_to_int(  # a * 2**133; may round up to 128: the smallest normal
            tirx.min(a[i], powers[_HIGH]) * powers[_INV_HIGH] * powers[_LOW + 7],
            ties_to_even=True)
        raw = tm.select(f < zero, zero - f, f)
        bits = tm.select(is_nan(f), _i(0x7FC0),
                         tm.select(raw >= infinity, _i(0x7F80),
                                   tm.select(a[i] < powers[_HIGH], subnormal, normal)))
        return (bits + tm.select(f < zero, _i(0x8000), _i(0))).astype("uint16")

    return te.compute(data.shape, value, name="bfloat16_encode")
