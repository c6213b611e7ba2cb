"""LayerNorm, scheduled for few rounds.

(x - mean) / sqrt(var + eps) * gamma + beta over the last axis, n entries:
the row's sum of squares S = sum (x - mean)^2 + n eps (= n (var + eps)),
kept with 2f fractional bits, is bracketed between powers of two,
2^j <= S < 2^(j+1), by one batch of 64-bit comparisons (while S is also
truncated, in the same steps); with s = 2^(-j/2), y = 1/sqrt(S s^2) comes
from a minimax line on [1, 2) and two Newton steps, and the result is
(x - mean) (s sqrt(n)) y gamma: s sqrt(n) is encoded with 2f bits (precise
however small), (x - mean) s sqrt(n) is computed beside Newton, and the last
product stays untruncated into gamma's product.
"""
from __future__ import annotations

import math

import torch

from .arith import add_public, beaver, linear_server, mul, server_ring, square, trunc
from .base import define
from .compare import b2a, ltz_bits, not_bit
from .nonlinear import LAYER_NORM_FLOOR_LOG4, _public, encode_scaled, mul_scalar

__all__ = ["layer_norm", "LN_BRACKETS_LOG2", "LN_NEWTON_STEPS", "RSQRT_LINE", "GOLDSCHMIDT_RSQRT_STEPS"]

LN_BRACKETS_LOG2 = (-16, 30)   # S in [2^-16, 2^30): above, S's truncation wraps (f = 16)
RSQRT_LINE = (1.26411422, -0.2863736)   # minimax line for 1/sqrt on [1, 2]: relative error 2.2%
LN_NEWTON_STEPS = 2            # relative error 2.2e-2 -> 7.5e-4 -> 8.4e-7
GOLDSCHMIDT_RSQRT_STEPS = 7    # SecFormer's count in the model (8 in its op benchmark)


async def _bracket(ctx, x, floor: float | None, n: int):
    """s sqrt(n), s^2 and the line's slope times s^2, s = 2^(-j/2) where 2^j <= x < 2^(j+1), for x
    with 2f fractional bits: one batch of 64-bit LTZs (no domain of their own) and
    one b2a; the weighted sums of bits are local. With the overflow check,
    ``floor`` is one more column: x below it is flagged."""
    f = ctx.frac_bits
    low, high = LN_BRACKETS_LOG2
    exponents = list(range(low + 1, high))
    check = ctx.overflow_flags is not None and floor is not None
    thresholds = [2.0 ** j for j in exponents] + ([floor] if check else [])
    ring = encode_scaled(ctx, torch.tensor(thresholds, dtype=torch.float64), 2 * f)
    diffs = x.unsqueeze(-1) - ctx.public_share(ring.to(x.device) if not ctx.meta else ring)   # [..., 1, k]
    bits = not_bit(ctx, await ltz_bits(ctx, diffs, 64))
    if check:
        ctx.flag(not_bit(ctx, bits[..., -1].contiguous()))
        bits = bits[..., :-1]
    arithmetic = await b2a(ctx, bits)

    def weighted(scale, frac):   # scale(j) for the bracket 2^j <= x < 2^(j+1), as a sum of steps
        steps = [scale(j) - scale(j - 1) for j in exponents]
        ring = encode_scaled(ctx, torch.tensor(steps, dtype=torch.float64, device=arithmetic.device), frac)
        total = (arithmetic * ring).sum(-1)
        start = encode_scaled(ctx, torch.full(tuple(total.shape), scale(low), dtype=torch.float64,
                                              device=arithmetic.device), frac)
        return add_public(ctx, total, start)
    slope = RSQRT_LINE[1]
    return (weighted(lambda j: math.sqrt(n) * 2.0 ** (-j / 2), scale_bits(f, n)),
            weighted(lambda j: 2.0 ** -j, 2 * f), weighted(lambda j: slope * 2.0 ** -j, 2 * f))


def scale_bits(f: int, n: int) -> int:
    """Fractional bits of s sqrt(n): 2f, or fewer where (x - mean) s sqrt(n), below
    2 sqrt(n), would pass 2^61 with f + 2f bits (large f and n)."""
    return min(2 * f, 61 - f - math.ceil(math.log2(2 * math.sqrt(n))))


async def _newton_rsqrt(ctx, z, z_slope):
    """1/sqrt(x') for x' = z / 2^(3f) in [1, 2): the minimax line, its slope term
    ``z_slope`` (S times the bracket's slope s^2, from the same step as z), then
    y <- y (3 - x' y^2) / 2 = (3y - x'y y^2) / 2: x'y and y^2 in one step, both
    truncated in the next, their product, one truncation by f + 1 (4 rounds a step)."""
    f = ctx.frac_bits
    x_norm, guess = await ctx.gather(trunc(ctx, z, 2 * f), trunc(ctx, z_slope, 2 * f))
    y = add_public(ctx, guess, _public(ctx, RSQRT_LINE[0], guess))
    for _ in range(LN_NEWTON_STEPS):
        y2, xy = await ctx.gather(square(ctx, y, truncate=False), beaver(ctx, x_norm, y, torch.mul))
        y2, xy = await ctx.gather(trunc(ctx, y2), trunc(ctx, xy))
        xy3 = await beaver(ctx, xy, y2, torch.mul)
        y = await trunc(ctx, y * (3 << f) - xy3, f + 1)
    return y


async def _goldschmidt_rsqrt(ctx, z, z_slope=None):
    """SecFormer's Goldschmidt rsqrt of x' = z / 2^(3f): from x = x', y = 1, repeat
    m = (3 - x) / 2, x <- x m^2, y <- y m (GOLDSCHMIDT_RSQRT_STEPS times, as
    published); with 2m = 3 - x, the halvings ride in the truncations. y m and
    m^2 share steps; 4 rounds a step."""
    f = ctx.frac_bits
    x = await trunc(ctx, z, 2 * f)
    y = ctx.public_share(_public(ctx, 1.0, x))
    for _ in range(GOLDSCHMIDT_RSQRT_STEPS):
        twice_m = add_public(ctx, -x, _public(ctx, 3.0, x))
        m_squared, y = await ctx.gather(square(ctx, twice_m, truncate=False),
                                        mul(ctx, y, twice_m, shift=f + 1))
        m_squared = await trunc(ctx, m_squared)
        x = await mul(ctx, x, m_squared, shift=f + 2)
    return y


async def layer_norm(ctx, x, weight, bias, normalized_shape, eps, solve=_newton_rsqrt):
    """LayerNorm over the last axis (see the module's docstring for the steps);
    ``solve`` finds 1/sqrt(x') on [1, 2) (Newton here, Goldschmidt for SecFormer).

    Domain (n = normalised size, f = 16): |mean| < 2^(62-f) / round(2^24 / n)
    (the sum times the 24-bit 1/n, truncated); S = n (var + eps) < 2^(62-2f)
    (the sum of untruncated squares is truncated: var < 2^30 / n); S in
    [2^-16, 2^30), and the overflow check flags var + eps below 4^-7;
    |normalised * gamma| < 2^(62-3f) (gamma's product carries 3f bits); without
    gamma, |normalised| < 2^(62-2f).
    Rounds: 1 (mean) + 1 (S) + 5 (the bracket, S's truncation beside it) + 2
    (x' and the guess) + 8 (Newton) + 1 + 2 (gamma) = 20.
    """
    if len(normalized_shape) != 1:
        raise NotImplementedError("layer_norm over more than one axis")
    f = ctx.frac_bits
    n = normalized_shape[0]
    mu = await mul_scalar(ctx, x.sum(-1, keepdim=True), 1.0 / n)
    centered = x - mu
    squares = await square(ctx, centered, truncate=False)
    total_2f = squares.sum(-1, keepdim=True)   # S with 2f fractional bits
    total_2f = add_public(ctx, total_2f, encode_scaled(ctx, torch.full(tuple(total_2f.shape), n * eps,
                                                                          dtype=torch.float64), 2 * f))
    ctx.check_range(total_2f, min(LN_BRACKETS_LOG2[1] + 2 * f, 62))   # S's bracket and its truncation
    total, (s_n, s2, slope_s2) = await ctx.gather(trunc(ctx, total_2f),
                                                  _bracket(ctx, total_2f, n * 4.0 ** LAYER_NORM_FLOOR_LOG4, n))
    # S s^2 in [1, 2) and the line's slope term, 3f fractional bits each (f <= 20: below 2^61)
    z, z_slope = await ctx.gather(beaver(ctx, total, s2, torch.mul), beaver(ctx, total, slope_s2, torch.mul))
    # (x - mean) s sqrt(n), about the normalised value, beside the solve
    (scaled, y) = await ctx.gather(mul(ctx, centered, s_n, shift=scale_bits(f, n)), solve(ctx, z, z_slope))
    out = await beaver(ctx, scaled, y, torch.mul)   # 2f fractional bits: gamma's product truncates once
    if weight is not None or "weight" in ctx.operand_types:   # the server's gamma (the client holds None)
        out = await linear_server(ctx, out, server_ring(ctx, "weight", weight), ctx.operand_types["weight"].shape,
                                  ctx.operand_names["weight"], torch.mul)
        out = await trunc(ctx, out, 2 * f)
    else:
        out = await trunc(ctx, out)
    if bias is not None and ctx.party == 1:
        out = out + server_ring(ctx, "bias", bias)
    return out


def _reference(x, w, b, shape, eps):
    return torch.nn.functional.layer_norm(x, shape, w, b, eps)


define("mpc.layer_norm", ("input", "weight", "bias", "normalized_shape", "eps"), _reference,
       "LayerNorm (bracketed Newton rsqrt, gamma's product untruncated)", "mpc", protocol=layer_norm)
define("layer_norm_goldschmidt", ("input", "normalized_shape", "weight", "bias", "eps"),
       lambda x, shape, w=None, b=None, eps=1e-5: _reference(x, w, b, shape, eps),
       "LayerNorm computed with SecFormer's Goldschmidt rsqrt (a substitute: the same function)", "nn")
define("mpc.layer_norm_goldschmidt", ("input", "weight", "bias", "normalized_shape", "eps"), _reference,
       "LayerNorm by SecFormer's Goldschmidt rsqrt (bracketed into [1, 2), then the published steps)", "mpc",
       protocol=lambda ctx, *args: layer_norm(ctx, *args, solve=_goldschmidt_rsqrt))
