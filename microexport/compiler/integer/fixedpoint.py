"""TFLite Micro's fixed-point arithmetic in Python integers.

Everything a quantized operator needs at compile time: the integer multiplier and shift of a real
scale, the activation clamp, and lookup tables for the int8 activation functions (logistic, tanh,
hard swish, leaky ReLU, the exponentials of softmax). The functions reproduce the reference
kernels' integer semantics exactly — 32-bit wrap-around, C's truncating division, arithmetic right
shifts, rounding half away from zero — so that tables computed here equal what TFLite Micro
computes element by element. Scales are float32 (as stored in the model) and are combined in the
precision TFLite Micro uses (float32 or double), which matters for bit-exactness.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1

# (exponent, Q0.31 multiplier of exp(-2**exponent)) for the barrel shifter of exp().
EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
              (2, 39332535), (3, 720401), (4, 242))
EXP_MINUS_ONE_EIGHTH = 1895147668  # exp(-1/8) in Q0.31
ONE_THIRD = 715827883  # 1/3 in Q0.31
_FORTY_EIGHT_SEVENTEENTHS = 1515870810  # 48/17 in Q2.29
_MINUS_THIRTY_TWO_SEVENTEENTHS = -1010580540  # -32/17 in Q2.29


def wrap32(value: int) -> int:
    """`value` wrapped to int32 (two's complement)."""
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def wrap16(value: int) -> int:
    """`value` wrapped to int16 (two's complement)."""
    return ((value + (1 << 15)) & 0xFFFF) - (1 << 15)


def trunc_div(a: int, b: int) -> int:
    """C's integer division (rounds toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def round_half_away(x: float) -> int:
    """`std::round`: to nearest, ties away from zero (exact for any double)."""
    magnitude = abs(x)
    floor = math.floor(magnitude)
    rounded = floor + 1 if magnitude - floor >= 0.5 else floor
    return int(rounded) if x >= 0 else -int(rounded)


def f32(x: float) -> np.float32:
    """`x` as a float32 scalar (arithmetic on these stays in float32)."""
    return np.float32(x)


# --- compile-time parameters -------------------------------------------------------------------

def quantize_multiplier(real: float) -> tuple[int, int]:
    """A real multiplier as (Q0.31 multiplier, power-of-two exponent), as TFLite does it
    (`frexp`, rounding half away from zero, flushing exponents below -31 to zero)."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    fixed = round_half_away(fraction * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def per_channel_or_scalar(pairs: list[tuple[int, int]]) -> tuple[int | None, int | None,
                                                                  list[np.ndarray]]:
    """(multiplier, shift) per output channel as compile-time ints when every channel agrees
    (no arrays), else None, None and the int32 multiplier and shift arrays (extra kernel
    inputs)."""
    if len(set(pairs)) == 1:
        return pairs[0][0], pairs[0][1], []
    return None, None, [np.array([m for m, _ in pairs], np.int32),
                        np.array([s for _, s in pairs], np.int32)]


def quantize_value(value: float, scale: float, zero_point: int) -> int:
    """`zero_point + round(value / scale)` with the division in float32 (TFLite's `Quantize`)."""
    return zero_point + round_half_away(float(f32(value) / f32(scale)))


@dataclass(frozen=True)
class Clamp:
    """The integer range of an output after its fused activation."""

    low: int
    high: int


def activation_clamp(activation: str, scale: float, zero_point: int, dtype: str) -> Clamp:
    """The output range of a fused activation (NONE, RELU, RELU6, RELU_N1_TO_1) in the integer
    domain of an output with `scale` and `zero_point`."""
    info = np.iinfo(dtype)
    low, high = int(info.min), int(info.max)
    if activation == "RELU":
        return Clamp(max(low, quantize_value(0.0, scale, zero_point)), high)
    if activation == "RELU6":
        return Clamp(max(low, quantize_value(0.0, scale, zero_point)),
                     min(high, quantize_value(6.0, scale, zero_point)))
    if activation == "RELU_N1_TO_1":
        return Clamp(max(low, quantize_value(-1.0, scale, zero_point)),
                     min(high, quantize_value(1.0, scale, zero_point)))
    if activation == "NONE":
        return Clamp(low, high)
    raise ValueError(f"fused activation {activation} is not supported on quantized operators")


def input_radius(integer_bits: int, left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite's `CalculateInputRadius`: the largest input difference that does not saturate."""
    rescaled = (1.0 * ((1 << integer_bits) - 1) * (1 << (total_signed_bits - integer_bits))
                / (1 << left_shift))
    return int(math.floor(rescaled))


# --- run-time arithmetic, in Python (for tables and for checking the TE versions) -------------

def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 (ARM's VQRDMULH)."""
    if a == b == INT32_MIN:
        return INT32_MAX
    product = a * b
    nudge = (1 << 30) if product >= 0 else 1 - (1 << 30)
    return wrap32(trunc_div(product + nudge, 1 << 31))


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """gemmlowp's RoundingDivideByPOT: arithmetic right shift rounding half away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier (int32, double rounding)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(wrap32(x * (1 << left)), multiplier), right)


def saturating_rounding_multiply_by_pot(x: int, exponent: int) -> int:
    """gemmlowp's SaturatingRoundingMultiplyByPOT on int32."""
    if exponent > 0:
        threshold = (1 << (31 - exponent)) - 1
        if x > threshold:
            return INT32_MAX
        if x < -threshold:
            return INT32_MIN
        return wrap32(x << exponent)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    return x


def rescale(x: int, source_integer_bits: int, target_integer_bits: int) -> int:
    """gemmlowp's Rescale between fixed-point formats."""
    return saturating_rounding_multiply_by_pot(x, source_integer_bits - target_integer_bits)


def rounding_half_sum(a: int, b: int) -> int:
    """gemmlowp's RoundingHalfSum on int32."""
    total = a + b
    return wrap32(trunc_div(total + (1 if total >= 0 else -1), 2))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    x = wrap32(a + (1 << 28))
    x2 = saturating_rounding_doubling_high_mul(x, x)
    x3 = saturating_rounding_doubling_high_mul(x2, x)
    x4 = saturating_rounding_doubling_high_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    polynomial = saturating_rounding_multiply_by_pot(
        wrap32(saturating_rounding_doubling_high_mul(wrap32(x4_over_4 + x3), ONE_THIRD) + x2),
        -1)
    return wrap32(EXP_MINUS_ONE_EIGHTH + saturating_rounding_doubling_high_mul(
        EXP_MINUS_ONE_EIGHTH, wrap32(x + polynomial)))


def exp_on_negative_values(a: int, integer_bits: int) -> int:
    """gemmlowp's exp_on_negative_values: exp(a) in Q0.31 for `a` <= 0 in Q`integer_bits`."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = wrap32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0))
    remainder = wrap32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in EXP_BARREL:
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = saturating_rounding_doubling_high_mul(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    return INT32_MAX if a == 0 else result


def _newton_reciprocal(half_denominator: int) -> int:
    """Three Newton-Raphson steps of 1/half_denominator, in Q2.29."""
    x = wrap32(_FORTY_EIGHT_SEVENTEENTHS + saturating_rounding_doubling_high_mul(
        half_denominator, _MINUS_THIRTY_TWO_SEVENTEENTHS))
    for _ in range(3):
        half_denominator_times_x = saturating_rounding_doubling_high_mul(half_denominator, x)
        one_minus = wrap32((1 << 29) - half_denominator_times_x)
        x = wrap32(x + rescale(saturating_rounding_doubling_high_mul(x, one_minus), 4, 2))
    return x


def one_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    """gemmlowp's 1 / (1 + a) for `a` in [0, 1) in Q0.31."""
    return rescale(_newton_reciprocal(rounding_half_sum(a, INT32_MAX)), 1, 0)


def one_minus_x_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    """gemmlowp's (1 - a) / (1 + a) for `a` in [0, 1) in Q0.31."""
    return rescale(wrap32(_newton_reciprocal(rounding_half_sum(a, INT32_MAX)) - (1 << 29)), 2, 0)


def logistic(a: int, integer_bits: int) -> int:
    """gemmlowp's logistic(a) in Q0.31 for `a` in Q`integer_bits`."""
    if a == 0:
        return 1 << 30
    magnitude = a if a > 0 else wrap32(-a)
    positive = one_over_one_plus_x_for_x_in_0_1(
        exp_on_negative_values(wrap32(-magnitude), integer_bits))
    return positive if a > 0 else wrap32(INT32_MAX - positive)


def tanh(a: int, integer_bits: int) -> int:
    """gemmlowp's tanh(a) in Q0.31 for `a` in Q`integer_bits`."""
    if a == 0:
        return 0
    negative = a if a < 0 else wrap32(-a)
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(
        exp_on_negative_values(negative, integer_bits + 1))
    return wrap32(-t) if a < 0 else t


def reciprocal_with_headroom(x: int, integer_digits: int) -> tuple[int, int]:
    """TFLite's GetReciprocal: (1/x as Q0.31 of the normalized value, bits of x above one)."""
    headroom_plus_one = 32 - x.bit_length()  # count of leading zeros of a positive int32
    num_bits_over_unit = integer_digits - headroom_plus_one
    shifted_minus_one = wrap32(((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), num_bits_over_unit


# --- 16-bit helpers of hard swish ---------------------------------------------------------------

def _srdhm16(a: int, b: int) -> int:
    if a == b == INT16_MIN:
        return INT16_MAX
    product = a * b
    nudge = (1 << 14) if product >= 0 else 1 - (1 << 14)
    return wrap16(trunc_div(product + nudge, 1 << 15))


def _doubling_high_mul16(a: int, b: int) -> int:
    if a == b == INT16_MIN:
        return INT16_MAX
    return wrap16(trunc_div(a * b, 1 << 15))


def _saturating_left_shift16(value: int, amount: int) -> int:
    return max(INT16_MIN, min(INT16_MAX, value * (1 << amount)))


def _downscale_multiplier16(multiplier: int) -> int:
    if multiplier >= INT32_MAX - (1 << 15):
        return INT16_MAX
    return (multiplier + (1 << 15)) >> 16


# --- lookup tables of int8 activation functions ------------------------------------------------

INT8_VALUES = range(-128, 128)


def _sigmoid_like_table(input_scale: float, input_zero_point: int,
                        function: Callable[[int, int], int], output_shift: int,
                        output_zero_point: int) -> np.ndarray:
    """TFLite Micro's int8 LOGISTIC/TANH: the input rescaled to Q4.27 (saturating outside the
    input radius), the gemmlowp function in Q0.31, then a rounding shift to int8."""
    integer_bits = 4
    fraction, left_shift = math.frexp(float(input_scale) * (1 << (31 - integer_bits)))
    multiplier = round_half_away(fraction * (1 << 31))
    radius = input_radius(integer_bits, left_shift)
    table = []
    for value in INT8_VALUES:
        x = value - input_zero_point
        if x <= -radius:
            table.append(-128)
        elif x >= radius:
            table.append(127)
        else:
            q4 = multiply_by_quantized_multiplier(x, multiplier, left_shift)
            out = rounding_divide_by_pot(function(q4, integer_bits), output_shift)
            table.append(max(-128, min(127, out + output_zero_point)))
    return np.array(table, dtype=np.int8)


def logistic_table(input_scale: float, input_zero_point: int) -> np.ndarray:
    """LOGISTIC of every int8 input (output scale 1/256, zero point -128), as int8[256]."""
    return _sigmoid_like_table(input_scale, input_zero_point, logistic, 31 - 8, -128)


def tanh_table(input_scale: float, input_zero_point: int) -> np.ndarray:
    """TANH of every int8 input (output scale 1/128, zero point 0), as int8[256]."""
    return _sigmoid_like_table(input_scale, input_zero_point, tanh, 31 - 7, 0)


def hard_swish_table(input_scale: float, input_zero_point: int, output_scale: float,
                     output_zero_point: int) -> np.ndarray:
    """HARD_SWISH of every int8 input, as int8[256]."""
    hires_input_scale = f32(1.0 / 128.0) * f32(input_scale)
    reluish_scale = f32(3.0 / 32768.0)
    output_multiplier, output_exponent = quantize_multiplier(
        float(hires_input_scale / f32(output_scale)))
    output_multiplier16 = _downscale_multiplier16(output_multiplier)
    reluish_multiplier, reluish_exponent = quantize_multiplier(
        float(hires_input_scale / reluish_scale))
    reluish_multiplier16 = _downscale_multiplier16(reluish_multiplier)
    if output_exponent > 0:
        raise ValueError("HARD_SWISH: output scale too small for the input scale")
    table = []
    for value in INT8_VALUES:
        x = wrap16(value - input_zero_point)
        hires = wrap16(x * (1 << 7))
        preshift_output = _srdhm16(hires, output_multiplier16)
        reluish = hires
        if reluish_exponent > 0:
            reluish = _saturating_left_shift16(reluish, reluish_exponent - 1)
        reluish = _srdhm16(reluish, reluish_multiplier16)
        if reluish_exponent > 0:
            reluish = _saturating_left_shift16(reluish, 1)
        if reluish_exponent < 0:
            reluish = wrap16(rounding_divide_by_pot(reluish, -reluish_exponent))
        reluish = wrap16((reluish + (1 << 15)) >> 1)
        preshift = _doubling_high_mul16(reluish, preshift_output)
        out = wrap16(rounding_divide_by_pot(preshift, -output_exponent))
        out = wrap16(out + output_zero_point)
        table.append(max(-128, min(127, out)))
    return np.array(table, dtype=np.int8)


@dataclass(frozen=True)
class LeakyReluParams:
    """TFLite's LEAKY_RELU rescalings: (multiplier, shift) of input/output scale for x >= 0
    and of alpha·input/output scale below, that multiplier made non-negative and the result
    negated afterwards when alpha is negative."""

    identity: tuple[int, int]
    alpha: tuple[int, int]
    negative_alpha: bool


def leaky_relu_params(alpha: float, input_scale: float, output_scale: float
                      ) -> LeakyReluParams:
    """The compile-time parameters of quantized LEAKY_RELU (int8 table or int16 kernel)."""
    alpha_multiplier, alpha_shift = quantize_multiplier(
        float(f32(input_scale) * f32(alpha) / f32(output_scale)))
    identity = quantize_multiplier(float(f32(input_scale) / f32(output_scale)))
    negative_alpha = alpha_multiplier < 0
    return LeakyReluParams(identity, (abs(alpha_multiplier), alpha_shift), negative_alpha)


def leaky_relu_table(alpha: float, input_scale: float, input_zero_point: int,
                     output_scale: float, output_zero_point: int) -> np.ndarray:
    """LEAKY_RELU of every int8 input, as int8[256]."""
    params = leaky_relu_params(alpha, input_scale, output_scale)
    table = []
    for value in INT8_VALUES:
        x = value - input_zero_point
        out = output_zero_point
        if x >= 0:
            out += multiply_by_quantized_multiplier(x, *params.identity)
        else:
            scaled = multiply_by_quantized_multiplier(x, *params.alpha)
            out += -scaled if params.negative_alpha else scaled
        table.append(max(-128, min(127, out)))
    return np.array(table, dtype=np.int8)


@dataclass(frozen=True)
class SoftmaxExp:
    """How int8 SOFTMAX takes exp of an input difference d = x - max(row) <= 0: d rescaled by
    `multiplier` and `left_shift` (beta times the input scale) to Q5.26, then gemmlowp's
    exp_on_negative_values to Q0.31; 0 below TFLite's cut-off `diff_min`."""

    multiplier: int
    left_shift: int
    diff_min: int


SOFTMAX_DIFF_INTEGER_BITS = 5


def softmax_exp_params(input_scale: float, beta: float) -> SoftmaxExp:
    """The compile-time parameters of int8 SOFTMAX's exponentials."""
    real = min(float(beta) * float(input_scale) * (1 << (31 - SOFTMAX_DIFF_INTEGER_BITS)),
               (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier(real)
    return SoftmaxExp(multiplier, left_shift,
                      -input_radius(SOFTMAX_DIFF_INTEGER_BITS, left_shift))


def softmax_exp(diff: int, params: SoftmaxExp) -> int:
    """exp(diff) in Q0.31 as int8 SOFTMAX computes it (`SoftmaxExp`)."""
    if diff < params.diff_min:
        return 0
    rescaled = multiply_by_quantized_multiplier(diff, params.multiplier, params.left_shift)
    return exp_on_negative_values(rescaled, SOFTMAX_DIFF_INTEGER_BITS)


def softmax_exp_table(params: SoftmaxExp) -> np.ndarray:
    """int32[256]: `softmax_exp` of every possible int8 difference d in [-255, 0], at d + 255."""
    return np.array([softmax_exp(diff, params) for diff in range(-255, 1)], dtype=np.int32)


def mean_multiplier(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """The multiplier and shift of an int8 MEAN over `count` elements (TFLite folds 1/count
    into the multiplier)."""
    multiplier, shift = quantize_multiplier(float(input_scale) / float(output_scale))
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    return wrap32(trunc_div(multiplier << extra, count)), shift - extra


# --- int16 activations (TFLite's 16x8 mode) ----------------------------------------------------

def reduced_multiplier(multiplier: int, shift: int) -> tuple[int, int]:
    """The (Q0.15 multiplier, right shift) pair that TFLite's 64-bit-accumulator
    MultiplyByQuantizedMultiplier uses in place of a (Q0.31 multiplier, shift) pair."""
    reduced = (multiplier + (1 << 15)) >> 16 if multiplier < 0x7FFF0000 else 0x7FFF
    return reduced, 15 - shift


def multiply_by_quantized_multiplier_wide(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier of an int64 accumulator (one rounding, with the
    multiplier reduced to 16 bits)."""
    reduced, right_shift = reduced_multiplier(multiplier, shift)
    return wrap32((x * reduced + (1 << (right_shift - 1))) >> right_shift)


def _round_f32(x: np.float32) -> np.float32:
    """`TfLiteRound` of a float: to nearest, ties away from zero, in float32."""
    return np.float32(round_half_away(float(x)))


def int16_lookup_table(transform: Callable[[np.float32], np.float32], input_scale: float,
                       input_zero_point: int, output_scale: float, output_zero_point: int
                       ) -> np.ndarray:
    """TFLite's 513-entry int16 table of `transform` (LUTPopulate<int16_t>): 512 samples over
    the input range, each biased by half the error of linear interpolation at the midpoint, plus
    the end point. All arithmetic in float32 as TFLite Micro does it."""
    f = np.float32
    in_scale, out_scale = f(input_scale), f(output_scale)
    input_min = in_scale * f(INT16_MIN - input_zero_point)
    input_max = in_scale * f(INT16_MAX - input_zero_point)
    output_min = out_scale * f(INT16_MIN - output_zero_point)
    output_max = out_scale * f(INT16_MAX - output_zero_point)
    steps = 512
    step = (input_max - input_min) / f(steps)
    half_step = step / f(2)
    scaling = f(INT16_MAX - INT16_MIN + 1) / (output_max - output_min)
    table = []
    for i in range(steps):
        value = transform(input_min + f(i) * step)
        midpoint = transform(input_min + f(i) * step + half_step)
        following = transform(input_min + f(i + 1) * step)
        sample = _round_f32(value * scaling)
        interpolated = _round_f32((following * scaling + _round_f32(value * scaling)) / f(2))
        error = interpolated - _round_f32(midpoint * scaling)
        bias = _round_f32(error / f(2))
        table.append(int(min(max(sample - bias, f(INT16_MIN)), f(INT16_MAX))))
    table.append(int(min(max(_round_f32(transform(input_max) * scaling), f(INT16_MIN)),
                         f(INT16_MAX))))
    return np.array(table, dtype=np.int16)


def _expf(x: np.float32) -> np.float32:
    # The correctly rounded float32 exponential (what glibc's expf returns).
    return np.float32(math.exp(float(x)))


def _one_over_one_plus(x: np.float32) -> np.float32:
    return np.float32(1) / (np.float32(1) + x)


def int16_lookup(table: np.ndarray, value: int) -> int:
    """TFLite's interpolating lookup of an int16 value in a 513-entry table."""
    index = 256 + (value >> 7)
    offset = value & 0x7F
    base = int(table[index])
    slope = int(table[index + 1]) - base
    return wrap16(base + ((slope * offset + 64) >> 7))


@dataclass(frozen=True)
class Int16SoftmaxParams:
    """int16 SOFTMAX: the rescaling of input differences to [-10, 0], the input range of its
    exp table (`int16_softmax_exp_table`)."""

    multiplier: int
    shift: int


_INT16_SPAN = INT16_MAX - INT16_MIN


def _read_only(table: np.ndarray) -> np.ndarray:
    """`table` made immutable: the fixed tables are cached and shared."""
    table.flags.writeable = False
    return table


def int16_softmax_params(input_scale: float, beta: float) -> Int16SoftmaxParams:
    """The compile-time parameters of TFLite's int16 SOFTMAX (output scale 1/32768)."""
    return Int16SoftmaxParams(*quantize_multiplier(
        float(f32(input_scale)) * float(f32(beta)) / (10.0 / 65535.0)))


@functools.cache
def int16_softmax_exp_table() -> np.ndarray:
    """int16[513]: exp over [-10, 0], the same for every int16 SOFTMAX."""
    return _read_only(int16_lookup_table(_expf, float(f32(10.0) / f32(_INT16_SPAN)), INT16_MAX,
                                         float(f32(2.0) / f32(_INT16_SPAN)), 0))


@functools.cache
def int16_softmax_reciprocal_table() -> np.ndarray:
    """int16[513]: 1 / (1 + x) over [0, 1], the same for every int16 SOFTMAX."""
    return _read_only(int16_lookup_table(_one_over_one_plus, float(f32(1.0) / f32(_INT16_SPAN)),
                                         INT16_MIN, float(f32(2.0) / f32(_INT16_SPAN)), 0))


# --- int16 sigmoid and tanh (16x8 LOGISTIC and TANH, the gates of the integer LSTM) ----------

SIGMOID_TABLE_SIZE = 256
SIGMOID_TABLE_STEP = 1.0 / 24.0  # the table samples sigmoid at i/24, i = 0..255


@functools.cache
def sigmoid_table_uint16() -> np.ndarray:
    """The uint16[256] table of sigmoid(i/24) in 0.16 fixed point that TFLite's int16 LOGISTIC
    and TANH (and so its integer LSTM) interpolate linearly, built here from its definition.

    A chord between two samples of the concave sigmoid (x > 0) lies below the curve, by at
    most h²/8·|σ''| (h = 1/24). Each sample is raised by half that bound, so that the
    interpolation error is centred on zero, and rounded to nearest:
    round(65536·(σ(x) − σ''(x)·h²/16)) (σ'' = σ(1−σ)(1−2σ) is negative there). The last entry,
    read only by interpolation just below saturation, is the largest uint16 (σ → 1). The result
    is checked against TFLite Micro on every int16 input of LOGISTIC and TANH (the tests).
    """
    x = np.arange(SIGMOID_TABLE_SIZE, dtype=np.float64) * SIGMOID_TABLE_STEP
    sigmoid = 1.0 / (1.0 + np.exp(-x))
    second_derivative = sigmoid * (1.0 - sigmoid) * (1.0 - 2.0 * sigmoid)
    raised = sigmoid - second_derivative * SIGMOID_TABLE_STEP ** 2 / 16.0
    table = np.round(65536.0 * raised)
    table[-1] = 0xFFFF
    return _read_only(np.minimum(table, 0xFFFF).astype(np.uint16))


def checked_log2(scale: float) -> tuple[int, bool]:
    """TFLite's CheckedLog2: log2 of a float32 scale rounded to an integer, and whether the
    scale is a power of two (the rounding moved it by less than 0.001)."""
    log2 = math.log2(float(f32(scale)))
    rounded = round_half_away(log2)
    return rounded, abs(log2 - rounded) < 1e-3


@dataclass(frozen=True)
class Int16ActivationScaling:
    """How an int16 LOGISTIC/TANH input becomes the table's argument: `(x * multiplier +
    rounding) >> left_shift` (the names are TFLite's; the shift is a right shift)."""

    multiplier: int
    left_shift: int


def int16_activation_scaling(input_scale: float, tanh: bool) -> Int16ActivationScaling:
    """TFLite Micro's Prepare of int16 LOGISTIC (`tanh=False`) or TANH: a power-of-two input
    scale of 2**-12 (either function) or 2**-11 (tanh) multiplies by 3 << shift; any other
    scale by the integer part of scale·3·4096, doubled until it exceeds 32767/2."""
    rounded, power_of_two = checked_log2(input_scale)
    left_shift = 12 + rounded
    if power_of_two and left_shift in ((0, 1) if tanh else (0,)):
        return Int16ActivationScaling(3 << left_shift, 0)
    multiplier = float(f32(input_scale)) * 4096.0 * 3.0
    left_shift = 0
    while multiplier <= 32767.0 / 2.0 and left_shift <= 30:
        left_shift += 1
        multiplier *= 2.0
    return Int16ActivationScaling(int(multiplier), left_shift)


def lstm_tanh_scaling(cell_state_scale_power: int) -> Int16ActivationScaling:
    """The scaling of TFLite Micro's integer LSTM for tanh of a state with scale
    2**cell_state_scale_power (the cell state; -12 for the cell gate's Q3.12 input)."""
    left_shift = 15 + cell_state_scale_power - 3
    if left_shift < 0:
        return Int16ActivationScaling(3, -left_shift)
    return Int16ActivationScaling(3 << left_shift, 0)
