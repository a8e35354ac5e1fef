"""TFLite Micro's run-time fixed-point operations as TE expressions.

The same semantics as `fixedpoint` (which tests check these against), written so that the C
they become is plain 32/64-bit integer code: no libm, no 64-bit division other than by a power of
two. Shift amounts may be Python ints (folded at compile time) or int32 expressions (per-channel
parameters read from a constant array).
"""

from __future__ import annotations

from typing import Any

from tvm import tirx

from microexport.compiler.integer.fixedpoint import INT32_MAX, INT32_MIN

Expr = Any  # a tirx.PrimExpr


def dtype_of(value: Expr) -> str:
    """The scalar type of a TIR expression (or of a TE tensor element)."""
    if hasattr(value, "asobject"):  # te.TensorSlice
        return str(value.dtype)
    return str(value.ty.dtype)


def i32(value: int | Expr) -> Expr:
    """An int32 expression (a constant for a Python int, a cast otherwise)."""
    if isinstance(value, int):
        return tirx.const(value, "int32")
    return value if dtype_of(value) == "int32" else value.astype("int32")


def i64(value: int | Expr) -> Expr:
    """An int64 expression."""
    if isinstance(value, int):
        return tirx.const(value, "int64")
    return value if dtype_of(value) == "int64" else value.astype("int64")


def select(condition: Expr, then: Expr, otherwise: Expr) -> Expr:
    """Both arms evaluated, no branch: cheap arithmetic only."""
    return tirx.Select(condition, then, otherwise)


def clamp(x: Expr, low: int, high: int) -> Expr:
    """`x` limited to [low, high]."""
    return tirx.max(tirx.min(x, i32(high)), i32(low))


def saturating_rounding_doubling_high_mul(a: Expr, b: Expr, b_is_min_possible: bool = True
                                          ) -> Expr:
    """gemmlowp's SaturatingRoundingDoublingHighMul: (a * b + 2**30) >> 31 on int64 (gemmlowp's
    sign-dependent nudge followed by a division truncating toward zero is exactly this floor:
    for a negative product, trunc((p + 1 - 2**30) / 2**31) = floor((p + 2**30) / 2**31)).
    `b_is_min_possible=False` when `b` is known not to be INT32_MIN, which drops the one
    saturating case (INT32_MIN * INT32_MIN, the only product whose high half exceeds INT32_MAX:
    clamped in int64 before the narrowing; a select on the operands is what TVM's simplifier
    drops, folding the int32 cast of 2**31 as if it saturated). `a` appears once, so the
    expression stays small when inlined."""
    wide = (i64(a) * i64(b) + i64(1 << 30)) >> i64(31)
    if b_is_min_possible:
        wide = tirx.min(wide, i64(INT32_MAX))
    return i32(wide)


def rounding_divide_by_pot(x: Expr, exponent: int | Expr) -> Expr:
    """Arithmetic right shift by `exponent`, rounding half away from zero: adding half (less
    one for a negative `x`) before the shift, in int64 so that no sum overflows."""
    if isinstance(exponent, int):
        if exponent == 0:
            return x
        nudge = select(x < i32(0), i64((1 << (exponent - 1)) - 1), i64(1 << (exponent - 1)))
        return i32((i64(x) + nudge) >> i64(exponent))
    # A run-time exponent (per-channel shifts): gemmlowp's own form, all in 32 bits (an int64
    # shift by a variable amount costs a Cortex-M several instructions or a library call).
    # The mask is unsigned so that an exponent of 31 does not overflow.
    # The two 0/1 terms are comparisons cast to integers, not selects (same values): `x`, an
    # inlined requantization that holds selects itself, would otherwise sit in select
    # conditions, and TVM's analyzer-based passes (LowerIntrin) simplify every select condition
    # under the conditions of the selects around it, exponentially in the nesting: a conv +
    # batch norm kernel spent minutes in LowerIntrin (tests/test_onnx_integer.py's exported CNN).
    mask = (tirx.const(1, "uint32") << exponent.astype("uint32")) - tirx.const(1, "uint32")
    remainder = tirx.bitwise_and(x.astype("uint32"), mask)
    threshold = (mask >> tirx.const(1, "uint32")) + (x < i32(0)).astype("uint32")
    return (x >> exponent) + (remainder > threshold).astype("int32")


def multiply_by_quantized_multiplier(x: Expr, multiplier: int | Expr, shift: int | Expr
                                     ) -> Expr:
    """TFLite's MultiplyByQuantizedMultiplier; `multiplier` is non-negative."""
    if isinstance(shift, int):
        shifted = x * i32(1 << shift) if shift > 0 else x
        high = saturating_rounding_doubling_high_mul(shifted, i32(multiplier), False)
        return rounding_divide_by_pot(high, -shift) if shift < 0 else high
    left = tirx.max(shift, i32(0))
    right = tirx.max(i32(0) - shift, i32(0))
    high = saturating_rounding_doubling_high_mul(x * (i32(1) << left), i32(multiplier), False)
    return rounding_divide_by_pot(high, right)


def saturating_rounding_multiply_by_pot(x: Expr, exponent: int) -> Expr:
    """gemmlowp's SaturatingRoundingMultiplyByPOT with a compile-time exponent."""
    if exponent > 0:
        threshold = (1 << (31 - exponent)) - 1
        shifted = x * i32(1 << exponent)  # not `x << exponent`: undefined for a negative x in C
        return select(x > i32(threshold), i32(INT32_MAX),
                      select(x < i32(-threshold), i32(INT32_MIN), shifted))
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    return x


def count_leading_zeros(x: Expr) -> Expr:
    """Leading zero bits of a positive int32 (as 32 comparisons: no intrinsic needed)."""
    bits = i32(0)
    for k in range(31):
        bits = bits + select(x >= i32(1 << k), i32(1), i32(0))
    return i32(32) - bits


def reciprocal_first_guess(half_denominator: Expr) -> Expr:
    """48/17 - 32/17 * d in Q2.29: Newton-Raphson's starting point."""
    return i32(1515870810) + saturating_rounding_doubling_high_mul(
        half_denominator, i32(-1010580540), False)


def reciprocal_step(half_denominator: Expr, x: Expr) -> Expr:
    """One Newton-Raphson step of 1/d in Q2.29 (gemmlowp does three)."""
    srdhm = saturating_rounding_doubling_high_mul
    one_minus = i32(1 << 29) - srdhm(half_denominator, x)
    return x + saturating_rounding_multiply_by_pot(srdhm(x, one_minus), 2)


def reciprocal_result(x: Expr) -> Expr:
    """The Q2.29 estimate of 1/d as 1/(1 + a) in Q0.31."""
    return saturating_rounding_multiply_by_pot(x, 1)


def multiply_by_quantized_multiplier_wide(x: Expr, reduced_multiplier: int | Expr,
                                          right_shift: int | Expr) -> Expr:
    """TFLite's MultiplyByQuantizedMultiplier of an int64 accumulator, with the multiplier
    already reduced to Q0.15 and the shift turned into a right shift
    (`fixedpoint.reduced_multiplier`): one rounding, result truncated to int32."""
    rounding = i64(1) << (i64(right_shift) - i64(1))
    return i32((i64(x) * i64(reduced_multiplier) + rounding) >> i64(right_shift))


def int16_lookup(table: Any, value: Expr) -> Expr:
    """TFLite's interpolating lookup of an int16 `value` (an int32 expression in the int16
    range) in a 513-entry int16 table: the top 9 bits index, the low 7 interpolate."""
    index = i32(256) + (value >> i32(7))
    offset = tirx.bitwise_and(value, i32(0x7F))
    base = i32(table[index])
    slope = i32(table[index + i32(1)]) - base
    return i32((base + ((slope * offset + i32(64)) >> i32(7))).astype("int16"))


def round_to_int(x: Expr, ties_to_even: bool) -> Expr:
    """A float32 expression with |x| < 2**31 rounded to int32 without libm: truncation, then
    the exact fractional part decides; ties away from zero (C's `round`, TFLite) or to even
    (ONNX, IEEE)."""
    whole = i32(x)  # truncates toward zero
    fraction = x - whole.astype("float32")  # exact
    half = tirx.const(0.5, "float32")
    if ties_to_even:
        odd = tirx.bitwise_and(whole, i32(1)) != i32(0)
        up = tirx.any(fraction > half, tirx.all(fraction == half, odd))
        down = tirx.any(fraction < 0 - half, tirx.all(fraction == 0 - half, odd))
    else:
        up, down = fraction >= half, fraction <= 0 - half
    return whole + select(up, i32(1), select(down, i32(-1), i32(0)))


def _scaled_int16(x: Expr, multiplier: int, left_shift: int) -> Expr:
    """An int16 activation input scaled for the sigmoid table: `(x * multiplier + rounding)
    >> left_shift` (`fixedpoint.Int16ActivationScaling`)."""
    rounding = 1 << (left_shift - 1) if left_shift > 0 else 0
    return (i32(x) * i32(multiplier) + i32(rounding)) >> i32(left_shift)


def _interpolated_sigmoid(table: Any, magnitude: Expr, fraction_bits: int
                          ) -> tuple[Expr, Expr]:
    """Linear interpolation in the uint16 sigmoid table at `magnitude` (≥ 0, with
    `fraction_bits` bits below the table step), scaled by 2**fraction_bits, and whether
    `magnitude` lies past the table (where the caller saturates). All terms stay below 2**26:
    int32 arithmetic is exact."""
    last = i32(254)
    step = tirx.min(magnitude >> i32(fraction_bits), last)  # an index that is always valid
    fraction = tirx.bitwise_and(magnitude, i32((1 << fraction_bits) - 1))
    below = i32(table[step])
    above = i32(table[step + i32(1)])
    return (below << i32(fraction_bits)) + fraction * (above - below), \
        (magnitude >> i32(fraction_bits)) > last


def sigmoid_int16(table: Any, x: Expr, multiplier: int, left_shift: int) -> Expr:
    """TFLite's int16 LOGISTIC (Q0.15 output) of an int16 `x`, from the uint16 sigmoid table
    (`fixedpoint.sigmoid_table_uint16`): 9 bits of interpolation, σ(−x) = 1 − σ(x)."""
    value = _scaled_int16(x, multiplier, left_shift)
    magnitude = select(value < i32(0), i32(0) - value, value)
    interpolated, saturated = _interpolated_sigmoid(table, magnitude, 9)
    result = select(saturated, i32(0x7FFF << 10), interpolated)
    positive = (result + i32(1 << 9)) >> i32(10)
    negative = (i32(1 << 25) - result + i32((1 << 9) - 1)) >> i32(10)
    return select(value >= i32(0), positive, negative).astype("int16")


def tanh_int16(table: Any, x: Expr, multiplier: int, left_shift: int) -> Expr:
    """TFLite's int16 TANH (Q0.15 output) of an int16 `x` from the same table,
    tanh(x) = 2σ(2x) − 1: 8 bits of interpolation, odd symmetry."""
    value = _scaled_int16(x, multiplier, left_shift)
    magnitude = select(value < i32(0), i32(0) - value, value)
    interpolated, saturated = _interpolated_sigmoid(table, magnitude, 8)
    result = select(saturated, i32(0xFFFF << 8), interpolated)
    positive = (result - i32(1 << 23) + i32(1 << 7)) >> i32(8)
    negative = (i32(1 << 23) - result + i32((1 << 7) - 1)) >> i32(8)
    return select(value >= i32(0), positive, negative).astype("int16")
