"""Non-linear protocols: exp, reciprocal, rsqrt, softmax, LayerNorm and
attention, composed from the arithmetic and comparison ones; GeLU, tanh and
SiLU come from ``fourier.py`` (re-exported here) and are registered here.
Each docstring states the domain and the error against the exact function;
outside its domain a protocol returns garbage without an error, so
``mpcc.ranges`` keeps the domains as a table and checks models against it.
"""
from __future__ import annotations

import math

import torch

from .arith import add_public, beaver, encode, mul, square, trunc
from .base import define
from .wire import dealt, mask, product, share_of, truncate
from .compare import WIDE_CMP_BITS, b2a_wire, lt_public, ltz_bits, max_last, not_bit
from .fourier import (FOURIER_HALF_RANGE, GELU_FIT_ERROR, SEGMENT_FUZZ, SILU_MAX_ERROR, TANH_FIT_ERROR,  # noqa: F401
                      _public, fourier_segments, gelu, silu, tanh)

__all__ = ["exp", "reciprocal", "rsqrt", "softmax_masked", "softmax_parts", "fourier_segments", "gelu", "tanh",
           "silu", "mul_scalar", "encode_scaled", "MASK_FILL"]

EXP_SPAN_LOG2 = 4           # exp masks the exponent modulo 16
EXP_SHARE_FRAC = 40         # dealt e^(-t) values carry 40 fractional bits
EXP_PUBLIC_FRAC = 20        # the public e^delta carries 20
SUB_BRACKETS = 4           # brackets per octave for the initial guesses of 1/x and 1/sqrt(x)
# Newton steps for 1/x after a line on each bracket: a quarter octave's relative error 2.5e-3 -> 6.4e-6;
# a whole octave's 1/17 -> 3.5e-3 -> 1.2e-5
RECIPROCAL_ITERATIONS = {SUB_BRACKETS: 1, 1: 2}
QUARTER_OCTAVES_UP_TO = 8  # ``divide`` brackets by quarter octaves over at most this many octaves
RSQRT_ITERATIONS = 3       # relative error 0.18 -> 0.049 -> 3.6e-3 -> 1.9e-5
# LayerNorm's variance is known to about one ulp (2^-f), so its output's relative error is about
# 2^-f / (2 var): 1% near var = 1e-3 (at f = 16), garbage from a few ulps down. The overflow check flags
# variance below 4^-7 = 6.1e-5 (4 ulps), not only below rsqrt's own floor 4^-8 (1 ulp)
LAYER_NORM_FLOOR_LOG4 = -7
SCALAR_FRAC = 24            # public scalars are encoded with more bits than f
MASK_FILL = -(2.0 ** 14)    # what masked attention scores become before the max (LTZ range 2^15)


async def mul_scalar(ctx, x, value: float):
    """x * c for a public real c, encoded with SCALAR_FRAC bits (precise for 1/768 etc.).

    Domain: |x| 2^f |round(c 2^24)| < 2^62 (the truncation's), about
    |x c| < 2^(38 - f) = 4.2e6 at f = 16.
    """
    scaled = round(value * 2 ** SCALAR_FRAC)
    return await trunc(ctx, x * scaled, SCALAR_FRAC)


async def exp(ctx, x):
    """e^x for x <= 0 (softmax after the max shift), absolute error < 1.7 * 2^-f
    (2.6e-5 at f = 16: the final truncation's 1.5 ulp and a little; 1.45 ulp seen).

    Domain: -2^(CMP_BITS-1-f) <= x < 1 (-32768 <= x < 1 at f = 16): the clip
    compares x + 14.5 by a fuzzy LTZ (exact down to -2^15 - 14.5), and
    y = relu(x + 15) must stay below 16, the span of the masked opening (y
    wraps mod 16: at x = 1 the result is e^-15, not e). Inputs below -15
    count as -15 (e^-15 < 2^-16, below fixed-point resolution).

    Steps: the dealer deals t (seeded, uniform mod 16), an XOR sharing of t,
    and V0 = e^(-t-15), V1 = e^(1-t) with 40 fractional bits (stored). Open
    delta = x + 15 + t mod 16 (20 bits each way; perfectly hiding); the wrap
    bit w = [delta < t] comes from ``lt_public`` (its leaf dealt from t).
    Beside them, keep = [x + 15 >= 1/2] by a fuzzy 16-bit comparison (it may
    also drop x + 15 in (0, 1), where e^x < 1e-6). Both bits become wires by
    B2A, so keep V0 + w keep (V1 - V0) = keep V is a local product of wires
    with the dealt V0, V1 (cross terms dealt), and e^x = e^delta keep V, a
    public factor times a share, with one truncation. Where keep is 0 the
    unclipped opening's garbage is zeroed. Rounds 5; about 17 bytes per
    element each way (the (1 + x/2^8)^(2^8) limit form costs ~119).
    Randomness: t (seeded), t's XOR sharing, V0, V1 and the cross terms
    (stored). (mpcc's construction: SecFormer's masked-opening idea applied
    to the exponent, with the wrap bit recovered by a public-vs-shared compare.)
    """
    f = ctx.frac_bits
    span_bits = f + EXP_SPAN_LOG2
    span = 1 << span_bits
    clip = float(2 ** EXP_SPAN_LOG2 - 1)
    # keep = [x + 15 >= 1/2], fuzzy (exact for x + 15 <= 0; either value on (0, 1), where e^x < 1e-6): a
    # 16-bit comparison tree. It runs beside the opening of x + 15 + t, which needs no clipping first:
    # where keep is 0 the (garbage) result is zeroed
    shifted = add_public(ctx, x, _public(ctx, clip, x))
    t = ctx.rand(x.shape)
    t_xor = ctx.derive(lambda t: t & (span - 1), t, shape=x.shape, kind="xor")

    def table(offset):
        def make(t):
            t_real = (t & (span - 1)).to(torch.float64) / 2 ** f
            return torch.round(torch.exp(offset - t_real) * 2.0 ** EXP_SHARE_FRAC).to(torch.int64)
        return make
    v0 = ctx.derive(table(-clip), t, shape=x.shape)
    v1 = ctx.derive(table(2 ** EXP_SPAN_LOG2 - clip), t, shape=x.shape)

    async def kept():   # keep * V0 and keep * (V1 - V0), local once keep is a wire
        keep = await b2a_wire(ctx, not_bit(ctx, await ltz_bits(ctx, add_public(ctx, shifted, _public(ctx, -0.5, x)),
                                                             fuzz_bits=f - 1)))
        low = product(ctx, keep, dealt(v0))
        return low, product(ctx, keep, dealt(v1)) - low   # keep (V1 - V0): two cross terms in all, not three

    async def wrapped():
        delta = await ctx.open((shifted + t) & (span - 1), bits=span_bits) & (span - 1)
        return delta, await b2a_wire(ctx, await lt_public(ctx, delta, t_xor, span_bits, dealt=t))
    (low, step), (delta, wrap) = await ctx.gather(kept(), wrapped())
    factor = encode_scaled(ctx, torch.exp(delta.to(torch.float64) / 2 ** f), EXP_PUBLIC_FRAC)
    return await truncate(ctx, (low + product(ctx, wrap, step)).share(ctx) * factor,
                          EXP_SHARE_FRAC + EXP_PUBLIC_FRAC - f)


def encode_scaled(ctx, value, frac: int):
    """A public real known to be in range, as an integer with ``frac`` fractional bits
    (no range check: for values the protocol itself bounds), on the backend's device."""
    if ctx.meta:
        return torch.empty(tuple(value.shape), dtype=torch.int64, device="meta")
    return (value.to(ctx.device) * 2.0 ** frac).round_().to(torch.int64)


FLOOR_SLACK_LOG2 = 2.0 ** -6   # the reciprocal's checked floor: 2^(low - 1/64), 1.1% under its domain's


async def _bracket_bits(ctx, x, thresholds_log2: list[int], step: int, floor_log2: int | None = None):
    """The bits [x >= 2^(step*m)] for m in thresholds_log2 (a last axis), as a wire: one
    batch of LTZs and one B2A (rounds 4). With the overflow check on, ``floor_log2``
    adds the domain's floor as one more column and flags the elements below it."""
    floor = ctx.overflow_flags is not None and floor_log2 is not None   # the check: one more column, no round
    tested = list(thresholds_log2) + ([floor_log2] if floor else [])
    diffs = torch.stack([add_public(ctx, x, _public(ctx, -(2.0 ** (step * m)), x)) for m in tested], -1)
    return await threshold_bits(ctx, diffs, WIDE_CMP_BITS, floor)


async def threshold_bits(ctx, diffs, cmp_bits: int, floor_column: bool):
    """[diff >= 0] per column as a wire, by one batch of LTZs and one B2A. With
    ``floor_column`` the last column tests the domain's floor: the elements
    below it are flagged (the overflow check) and the column dropped."""
    bits = not_bit(ctx, await ltz_bits(ctx, diffs, cmp_bits))
    if floor_column:
        ctx.flag(not_bit(ctx, bits[..., -1].contiguous()))
        bits = bits[..., :-1]
    return await b2a_wire(ctx, bits)


def bracket_lines(low: int, high: int, power: float, parts: int = SUB_BRACKETS) -> list[tuple[int, float, float]]:
    """Per bracket of [2^low, 2^high), ``parts`` to an octave, in order: its octave m
    (x in [2^m, 2^(m+1))) and a line alpha + beta x' approximating x'^power on its
    part [a, b) of the normalised x' = x 2^-m in [1, 2). For 1/x the line is
    minimax in Newton's error 1 - x' y (beta = -8 / (4ab + (a + b)^2), alpha =
    -beta (a + b): 1/17 on [1, 2), 2.5e-3 on a quarter octave); otherwise the
    Chebyshev line of a convex power (the secant lowered by half its largest gap)."""
    rows = []
    for k in range(parts * (high - low)):
        octave, part = divmod(k, parts)
        a, b = 2.0 ** (part / parts), 2.0 ** ((part + 1) / parts)
        if power == -1.0:
            slope = -8.0 / (4 * a * b + (a + b) ** 2)
            rows.append((low + octave, -slope * (a + b), slope))
            continue
        slope = (b ** power - a ** power) / (b - a)
        touch = (slope / power) ** (1 / (power - 1))
        gap = touch ** power - (a ** power + slope * (touch - a))
        rows.append((low + octave, a ** power - slope * a + gap / 2, slope))
    return rows


def bracket_thresholds(low: int, high: int, parts: int = SUB_BRACKETS) -> list[float]:
    """The log2 thresholds between the brackets of ``bracket_lines``."""
    return [low + k / parts for k in range(1, parts * (high - low))]


def bracket_weights(ctx, values: list[float], frac: int, device):
    """A function of the bracket (one value per bracket) as start + sum_i bit_i step_i,
    the bits [x >= threshold_i]: (steps encoded with ``frac`` bits, start as an integer)."""
    steps = [after - before for before, after in zip(values, values[1:])]
    return (encode_scaled(ctx, torch.tensor(steps, dtype=torch.float64, device=device), frac),
            round(values[0] * 2.0 ** frac))


def weighted(ctx, bits_share, values: list[float], frac: int):
    """A share of the bracket's value (``bracket_weights``), from the bits' shares: local."""
    steps, start = bracket_weights(ctx, values, frac, bits_share.device)
    total = (bits_share * steps).sum(-1)
    return total + start if ctx.party == 0 else total


def times_bracket(ctx, value, bits):
    """``times(values, frac)``: a share of value times the bracket's value (with
    ``frac`` more bits), for a wire ``value`` and the bracket's bits (a wire with
    one more axis, last): the product of value with the bits is one wire
    product (local), made once and weighted for each function of the bracket."""
    times_bits = product(ctx, value.unsqueeze(-1), bits).share(ctx)
    value_share = value.share(ctx)

    def times(values: list[float], frac: int):
        steps, start = bracket_weights(ctx, values, frac, times_bits.device)
        return (times_bits * steps).sum(-1) + value_share * start
    return times


async def _bracket_scale(ctx, x, thresholds_log2: list[int], step: int, floor_log2: int | None = None):
    """s = 2^(-m) where 2^(step*m) <= x < 2^(step*(m+1)), from one batch of LTZs.

    thresholds_log2 are the exponents m tested (x >= 2^(step*m)); below the
    first, s takes the first bracket's value. All comparisons run in one call
    (rounds 4 with the b2a); the weighted sum of bits is local (exact powers of two).
    """
    bits = await _bracket_bits(ctx, x, thresholds_log2, step, floor_log2)
    scales = [2.0 ** (1 - thresholds_log2[0])] + [2.0 ** -m for m in thresholds_log2]
    return weighted(ctx, bits.share(ctx), scales, ctx.frac_bits)


async def reciprocal(ctx, x, low_log2: int = 0, high_log2: int = 12):
    """1/x for x in [2^low, 2^high) = [1, 4096) by default.

    Domain: [2^low, 2^high). Just above, up to about 1.45 * 2^high, the result
    stays within 2^-13 absolute; beyond 1.5 * 2^high the initial guess is
    negative and the result garbage. Below 2^low the error grows (3% at
    2^(low-1)). The bracketing LTZs are 48-bit: |x - 2^m| < 2^(47-f).

    Bracket x between octaves 2^m (quarter octaves 2^(m + q/4) over at most
    QUARTER_OCTAVES_UP_TO octaves) with one batch of LTZs; normalise
    x' = x 2^-m into [1, 2) and start from the bracket's line
    (``bracket_lines``: relative error 1/17 on an octave, 2.5e-3 on a quarter),
    then Newton y <- y (2 - x' y), twice (once on quarters): 1.2e-5 (6.4e-6)
    before rounding; 1/x = y 2^-m. Absolute error a few 2^-16. Rounds 4
    (bracket; x's mask beside it) + 1 (x' and the guess) + 1 per Newton step
    + 1 = 8 on [1, 4096).
    (Newton-Raphson as in CrypTen, with an initial guess from bracketing
    comparisons instead of an exp; cf. SecFormer's Goldschmidt scaling.)
    """
    y, s = await reciprocal_parts(ctx, x, low_log2, high_log2)
    return (await truncate(ctx, product(ctx, y, s), ctx.frac_bits)).share(ctx)


async def reciprocal_parts(ctx, x, low_log2: int = 0, high_log2: int = 12, parts: int | None = None):
    """(y, s) as wires with 1/x = y s, s = 2^-m a power of two and y = 1/(x s) in
    (1/2, 1], both with f fractional bits: a caller that multiplies by 1/x
    multiplies by s (y s with 2f bits keeps the precision a small 1/x would lose).
    x s and the line's slope term are local products of x's mask with the
    bracket's bits (wires). ``parts`` brackets to an octave: 4 saves a Newton
    step (a round) for 4 times the comparisons; by default 4 where the range
    spans at most QUARTER_OCTAVES_UP_TO octaves (see ``divide``), else 1."""
    if parts is None:
        parts = SUB_BRACKETS if high_log2 - low_log2 <= QUARTER_OCTAVES_UP_TO else 1
    f = ctx.frac_bits
    ctx.check_range(x, high_log2 + f)
    lines = bracket_lines(low_log2, high_log2, -1.0, parts)
    # the overflow check flags x below 2^low a little lowered: a softmax row of one entry sums to
    # e^0 = 1 within a truncation's 1.5 ulp, and 1/x from the first bracket's line is right there
    x_wire, bits = await ctx.gather(mask(ctx, x), _bracket_bits(ctx, x, bracket_thresholds(low_log2, high_log2,
                                                                                             parts), 1,
                                                                low_log2 - FLOOR_SLACK_LOG2))
    times = times_bracket(ctx, x_wire, bits)
    scales = [2.0 ** -octave for octave, _, _ in lines]
    z = times(scales, f)                                                       # x' with 2f bits
    slope = times([beta * scale for (_, _, beta), scale in zip(lines, scales)], 2 * f)   # 3f bits
    intercept = weighted(ctx, bits.share(ctx), [alpha for _, alpha, _ in lines], 3 * f)
    s = weighted(ctx, bits.share(ctx), scales, f)
    x_norm, guess, s_wire = await ctx.gather(truncate(ctx, z, f), truncate(ctx, slope + intercept, 2 * f),
                                             mask(ctx, s))
    two = encode_scaled(ctx, torch.full(tuple(x_norm.shape), 2.0, dtype=torch.float64), 2 * f)
    y = guess
    for _ in range(RECIPROCAL_ITERATIONS[parts]):   # y (2 - x' y): a local product of wires with 3f bits
        y = await truncate(ctx, product(ctx, y, (-product(ctx, x_norm, y)).plus(two)), 2 * f)
    return y, s_wire


async def divide(ctx, numerators, x, low_log2: int = 0, high_log2: int = 12):
    """numerators / x for x in [2^low, 2^high) (broadcast, e.g. a row sum; high <= f + 1).

    1/x = y s (``reciprocal_parts``) is formed with 2f fractional bits as a wire
    (y s is exact there: s = 2^-m, m <= f); the numerators (a wire, or masked
    beside the bracket) multiply it locally, and one truncation by 2f ends it
    (the result is its wire): precise however small 1/x is. Rounds: the
    reciprocal's, then 1.
    Quarter-octave brackets (one Newton step fewer) when the range spans at
    most QUARTER_OCTAVES_UP_TO octaves: on a BERT-base layer the softmax's
    [1, 2^8) adds 0.7 MB for a round, 2Quad's [2^-8, 2^16) would add 2 MB (a
    round costs what 0.5 MB costs on ``wan``, 0.06 MB on ``lan``).
    Domain: the reciprocal's; |numerators / x| < 2^(62-3f).
    """
    if high_log2 - 1 > ctx.frac_bits:
        raise ValueError(f"divide: 2^{high_log2} is past 2^(f+1); s = 2^-m would not be exact")
    numerators, (y, s) = await ctx.gather(mask(ctx, numerators), reciprocal_parts(ctx, x, low_log2, high_log2))
    inverse = product(ctx, y, s)   # 2f fractional bits
    return await truncate(ctx, product(ctx, numerators, inverse), 2 * ctx.frac_bits)


async def rsqrt(ctx, x, low_log4: int = -8, high_log4: int = 11, floor_log4: int | None = None):
    """1/sqrt(x) for x in [4^low, 4^high) = [1.5e-5, 4.2e6).

    Domain: [4^low, 4^high). Above it the normalised x' exceeds 4 and Newton
    diverges (garbage); below, x' < 1 and the error grows (20% at 1e-5).

    Normalise x' = x 4^-m into [1, 4) (m from bracketing bits, s = 2^-m),
    start from y0 = 7/6 - x'/6 (error < 18%), Newton y <- y (3 - x' y^2) / 2
    three times (1.9e-5); 1/sqrt(x) = y s. Relative error ~1e-4 (fixed-point rounding).
    Randomness: that of one batch of wide LTZ, one b2a and the products.
    (Newton for rsqrt as in CrypTen; normalisation by powers of four as in
    SecFormer's Goldschmidt rsqrt.)
    """
    ctx.check_range(x, 2 * high_log4 + ctx.frac_bits)
    floor = low_log4 if floor_log4 is None else floor_log4   # the overflow check flags x below 4^floor
    s = await _bracket_scale(ctx, x, list(range(low_log4 + 1, high_log4)), 2, floor)
    # x s^2 with 3f bits, one truncation: truncating x s on its own would cost up to 1.5 ulp of a
    # value as small as 2^-8 (x = 4^-8, s = 2^8), 2e-3 relative, which the second s would keep
    x_norm = await trunc(ctx, await beaver(ctx, await beaver(ctx, x, s, torch.mul), s, torch.mul),
                         2 * ctx.frac_bits)
    y = add_public(ctx, await mul_scalar(ctx, x_norm, -1.0 / 6.0), _public(ctx, 7.0 / 6.0, x_norm))
    for _ in range(RSQRT_ITERATIONS):
        t = await mul(ctx, x_norm, await square(ctx, y))
        y = await trunc(ctx, await beaver(ctx, y, add_public(ctx, -t, _public(ctx, 3.0, t)), torch.mul),
                        ctx.frac_bits + 1)
    return y, s


async def softmax_masked(ctx, x, mask):
    """softmax over the last axis, masked positions (mask == 0) get exactly 0:
    ``softmax_parts`` divided (``divide``)."""
    return await divide(ctx, *await softmax_parts(ctx, x, mask))


async def softmax_parts(ctx, x, mask, frac: int | None = None):
    """The softmax's numerators e^(x - max) (a wire), their row sums and the sums'
    range [2^low, 2^high), for a caller that divides: ``softmax_masked``, or
    attention, which multiplies v first (``attention.sdpa``). x carries f bits.

    Max-shift (tournament), exp, sum, reciprocal on [1, n], one product. The
    mask is public (0/1 integers); ``None`` means no mask. Absolute error ~1e-4.

    Domain: the spread of each row, max - min with masked entries counted
    at MASK_FILL = -16384, below 2^(CMP_BITS-1-f) = 32768 (the max
    tournament's comparisons); scores within +-16384 suffice. Then exp sees
    x - max in (-32768, 0] and the sum of exps lies in [1, n], inside the
    reciprocal's [1, 2^(ceil(log2 n) + 1)).
    """
    x = share_of(ctx, x)
    if mask is not None:
        fill = encode(ctx, (1 - mask.to(torch.float64)) * MASK_FILL, "real")
        x = add_public(ctx, x * mask.to(torch.int64), fill)
    peak = await max_last(ctx, x)  # exact: a fuzzy tournament could undershoot by 0.5 per level, past exp's domain
    e = await exp(ctx, x - peak.unsqueeze(-1))
    if mask is not None:
        e = e.masked(mask.to(torch.int64))
    total = e.share(ctx).sum(-1, keepdim=True)
    n = x.shape[-1]
    return e, total, 0, max(2, math.ceil(math.log2(n)) + 1)


async def _rsqrt_op(ctx, x):
    return await mul(ctx, *(await rsqrt(ctx, x)))


def _mpc(name, params, reference, doc, protocol):
    return define(name, params, reference, doc, "mpc", protocol=protocol)


async def _exp_op(ctx, x):
    return (await exp(ctx, x)).share(ctx)


_mpc("mpc.exp", ("self",), torch.exp, "e^x for x <= 0 (0 below -15)", _exp_op)
_mpc("mpc.reciprocal", ("self",), torch.reciprocal, "1/x on [1, 4096)", lambda ctx, x: reciprocal(ctx, x))
_mpc("mpc.rsqrt", ("self",), torch.rsqrt, "1/sqrt(x) on [1.5e-5, 4e6)",
     lambda ctx, x: _rsqrt_op(ctx, x))
define("mpc.gelu", ("self", "approximate"),
       lambda x, approximate="none": torch.nn.functional.gelu(x, approximate=approximate),
       "GeLU (erf or tanh form), segmented Fourier of the erf form: within 1e-3 of either "
       "(the two forms differ by < 5e-4)", "mpc", protocol=lambda ctx, x, approximate="none": gelu(ctx, x),
       wires=True)
_mpc("mpc.tanh", ("self",), torch.tanh, "tanh, segmented Fourier (max error 3e-3)", tanh)
define("mpc.silu", ("self",), torch.nn.functional.silu,
       f"SiLU x sigmoid(x), segmented Fourier on [-12, 12] (max error {SILU_MAX_ERROR:g})", "mpc", protocol=silu,
       wires=True)
_mpc("mpc.mul_scalar", ("self", "value"), lambda x, value: x * value, "times a public real (24-bit encoded)",
     mul_scalar)
