"""LayerNorm, scheduled for few rounds.

(x - mean) / sqrt(var + eps) * gamma + beta over the last axis, n entries.
Values are kept as wires (``wire.py``) so that products need no opening:

1. the mean's truncation and x's mask open together: x - mean is a wire;
2. the row's sum of squares S = sum (x - mean)^2 + n eps (= n (var + eps)),
   with 2f fractional bits, is local; beside it the server's gamma
   multiplies x - mean (the client's one message) and is truncated;
3. S is bracketed between quarter octaves, 2^(j + q/4) <= S < 2^(j + (q+1)/4),
   by one batch of 64-bit comparisons (S is truncated in the same steps); the
   bracket's bits come out of the B2A as wires, so S s^2 (s = 2^(-j/2)) and
   the bracket's line (``bracket_lines``) are local;
4. y = 1/sqrt(S s^2) from the line and one Newton step of two rounds;
5. the row's factor y s sqrt(n) = sqrt(n / S) (s sqrt(n) encoded with 2f
   bits: precise however small), one truncation of a value a row;
6. one truncated product of (x - mean) gamma by the factor, plus beta: two
   truncations of the whole tensor in all (gamma's and this one).
"""
from __future__ import annotations

import math

import torch

from .arith import add_public, server_product, server_ring
from .base import define
from .nonlinear import (LAYER_NORM_FLOOR_LOG4, SCALAR_FRAC, _public, bracket_lines, bracket_thresholds, encode_scaled,
                        threshold_bits, times_bracket, weighted)
from .wire import MAX_CROSS_TERMS, Wire, cross_terms, mask, product, share_of, truncate

__all__ = ["layer_norm", "LN_BRACKETS_LOG2", "LN_NEWTON_STEPS", "GOLDSCHMIDT_RSQRT_STEPS"]

LN_BRACKETS_LOG2 = (-16, 30)   # S in [2^-16, 2^30): above, S's truncation wraps (f = 16)
LN_NEWTON_STEPS = 1            # from a line on each quarter octave: relative error 2.9e-3 -> 1.3e-5
GOLDSCHMIDT_RSQRT_STEPS = 7    # SecFormer's count in the model (8 in its op benchmark)
FACTOR_EXTRA_BITS = 8          # the row's factor sqrt(n / S) carries f + 8 fractional bits


async def _bracket(ctx, x, floor: float | None):
    """The bits [x >= 2^t] for the thresholds t of ``bracket_thresholds`` (quarter octaves)
    as a wire (last axis), for x with 2f fractional bits: one batch of 64-bit LTZs (no
    domain of their own) and one B2A. With the overflow check, ``floor`` is one more
    column: x below it is flagged."""
    f = ctx.frac_bits
    check = ctx.overflow_flags is not None and floor is not None
    thresholds = [2.0 ** t for t in bracket_thresholds(*LN_BRACKETS_LOG2)] + ([floor] if check else [])
    ring = encode_scaled(ctx, torch.tensor(thresholds, dtype=torch.float64), 2 * f)
    diffs = x.unsqueeze(-1) - ctx.public_share(ring.to(x.device) if not ctx.meta else ring)   # [..., 1, k]
    return await threshold_bits(ctx, diffs, 64, check)


def scale_bits(f: int, n: int) -> int:
    """Fractional bits of s sqrt(n) and of the row's factor y s sqrt(n): f + 8 (the
    factor is at least sqrt(n) 2^-15 on LN_BRACKETS_LOG2: 14 significant bits at
    n = 768, relative error 6e-5 at the largest variances, 2^-24 at var <= 1),
    or fewer where y s sqrt(n) (y < 1.01 after Newton, s <= 2^8) would pass
    2^62 with f more bits (large f and n). The output's truncation by as many
    bits leaves a wire whose readers send 64 - (f + 8) = 40 bits... of which a
    linear sends 24 (f + 8) an element."""
    largest = 1.01 * 2.0 ** (-LN_BRACKETS_LOG2[0] / 2) * math.sqrt(n)
    return min(f + FACTOR_EXTRA_BITS, 62 - f - math.ceil(math.log2(largest)))


async def _newton_rsqrt(ctx, z, guess):
    """1/sqrt(x') for x' = z / 2^(3f) in [1, 2), as a wire, from the bracket's line
    ``guess`` (3f bits): y <- (3y - (x'y) y^2) / 2: x'y and y^2 are local products of
    wires, truncated together; their product is local too, and one truncation by
    f + 1 halves it (2 rounds a step)."""
    f = ctx.frac_bits
    x_norm, y = await ctx.gather(truncate(ctx, z, 2 * f), truncate(ctx, guess, 2 * f))
    for _ in range(LN_NEWTON_STEPS):
        y2, xy = await ctx.gather(truncate(ctx, product(ctx, y, y), f), truncate(ctx, product(ctx, x_norm, y), f))
        y = await truncate(ctx, y.scaled(3 << f) - product(ctx, xy, y2), f + 1)
    return y


async def _goldschmidt_rsqrt(ctx, z, guess=None):
    """SecFormer's Goldschmidt rsqrt of x' = z / 2^(3f): from x = x', y = 1, repeat
    m = (3 - x) / 2, x <- x m^2, y <- y m (GOLDSCHMIDT_RSQRT_STEPS times, as
    published; ``guess`` unused); with 2m = 3 - x, the halvings ride in the
    truncations. On wires: y m and m^2 are local and truncated together, x m^2
    likewise: 2 rounds a step."""
    f = ctx.frac_bits
    x = await truncate(ctx, z, 2 * f)
    three = _public(ctx, 3.0, x.public)
    y = None
    for _ in range(GOLDSCHMIDT_RSQRT_STEPS):
        twice_m = (-x).plus(three)
        m_squared, y = await ctx.gather(truncate(ctx, product(ctx, twice_m, twice_m), f),
                                        truncate(ctx, twice_m, 1) if y is None else
                                        truncate(ctx, product(ctx, y, twice_m), f + 1))
        x = await truncate(ctx, product(ctx, x, m_squared), f + 2)
    return y


async def _scaled_by_gamma(ctx, centered, weight):
    """(x - mean) gamma as a wire (f bits): the server's gamma by ``server_product`` (x's
    mask and the mean's integer parts need no message; the mean's wrap term is one
    16-bit word a row), truncated; without gamma, x - mean itself."""
    if weight is None and "weight" not in ctx.operand_types:
        return centered
    out = await server_product(ctx, centered, server_ring(ctx, "weight", weight),
                               ctx.operand_types["weight"].shape, ctx.operand_names["weight"], torch.mul)
    return await truncate(ctx, out, ctx.frac_bits)


def _centered_cross_terms(x) -> int:
    """The cross terms of (x - mean)^2 for a wire x: x's own, x's parts times the mean's
    two (a truncation by SCALAR_FRAC: twos 0 and 64 - SCALAR_FRAC), the mean's two."""
    mean_twos = (0, 64 - SCALAR_FRAC)
    return cross_terms(x, x) + sum(1 for part in x.parts for twos in mean_twos if part.twos + twos < 64) + 2


async def layer_norm(ctx, x, weight, bias, normalized_shape, eps, solve=_newton_rsqrt, center=True):
    """LayerNorm over the last axis (see the module's docstring for the steps);
    ``solve`` finds 1/sqrt(x') on [1, 2) (Newton here, Goldschmidt for SecFormer).
    ``center=False`` is RMSNorm, x / sqrt(mean(x^2) + eps): no mean, S = sum x^2 + n eps;
    its x (a mask's wire) reaches gamma as a share (8 bytes an element, in the same step):
    as a wire it would need no message, and the first run's once-per-deployment step
    would then reorder the node's dealt material against the dealer's tape.

    Domain (n = normalised size, f = 16): |mean| < 2^(62-f) / round(2^24 / n)
    (the sum times the 24-bit 1/n, truncated); S = n (var + eps) < 2^(62-2f)
    (the sum of untruncated squares is truncated: var < 2^30 / n); S in
    [2^-16, 2^30), and the overflow check flags var + eps below 4^-7;
    |(x - mean) gamma| < 2^(62-2f); |normalised * gamma| < 2^(62-3f)
    ((x - mean) gamma times the row's factor carries 3f bits); without gamma,
    |normalised| < 2^(62-3f) likewise.
    Rounds: 1 (mean, x's mask) + 4 (the bracket; S's truncation, gamma's
    message and truncation beside it) + 1 (x' and the guess) + 2 (Newton;
    s sqrt(n)'s mask beside it) + 1 (the row's factor) + 1 = 10; bytes: two
    64-bit truncations an element (and x's mask where x is not a wire).
    """
    if len(normalized_shape) != 1:
        raise NotImplementedError("layer_norm over more than one axis")
    f = ctx.frac_bits
    n = normalized_shape[0]
    if isinstance(x, Wire) and (not center or _centered_cross_terms(x) > MAX_CROSS_TERMS):
        x = share_of(ctx, x)   # a sum of many wires: masked whole
    if center:
        mean, x_wire = await ctx.gather(truncate(ctx, share_of(ctx, x).sum(-1, keepdim=True) *
                                                 round(2 ** SCALAR_FRAC / n), SCALAR_FRAC), mask(ctx, x))
        centered = x_wire - mean
    else:
        centered = await mask(ctx, x)
    total_2f = product(ctx, centered, centered).share(ctx).sum(-1, keepdim=True)   # S with 2f fractional bits
    total_2f = add_public(ctx, total_2f, encode_scaled(ctx, torch.full(tuple(total_2f.shape), n * eps,
                                                                          dtype=torch.float64), 2 * f))
    ctx.check_range(total_2f, min(LN_BRACKETS_LOG2[1] + 2 * f, 62))   # S's bracket and its truncation
    gamma = weight is not None or "weight" in ctx.operand_types
    total, bits, times_gamma = await ctx.gather(truncate(ctx, total_2f, f),
                                                _bracket(ctx, total_2f, n * 4.0 ** LAYER_NORM_FLOOR_LOG4),
                                                _scaled_by_gamma(ctx, centered if center or not gamma else
                                                                 share_of(ctx, centered), weight))
    # S s^2 in [1, 2) and the bracket's line, 3f fractional bits each (f <= 20: below 2^61)
    lines = bracket_lines(*LN_BRACKETS_LOG2, -0.5)
    times = times_bracket(ctx, total, bits)   # S times the bracket's value, 2f more bits
    z = times([2.0 ** -octave for octave, _, _ in lines], 2 * f)
    guess = times([beta * 2.0 ** -octave for octave, _, beta in lines], 2 * f) + \
        weighted(ctx, bits.share(ctx), [alpha for _, alpha, _ in lines], 3 * f)
    s_n_bits = scale_bits(f, n)

    s_n = weighted(ctx, bits.share(ctx), [math.sqrt(n) * 2.0 ** (-octave / 2) for octave, _, _ in lines],
                   s_n_bits)   # s sqrt(n), one a row: masked beside the solve
    s_n, y = await ctx.gather(mask(ctx, s_n), solve(ctx, z, guess))
    y = await mask(ctx, y)   # a wire already from Newton; Goldschmidt's share is masked
    factor = await truncate(ctx, product(ctx, y, s_n), f)   # y s sqrt(n) = sqrt(n / S), s_n_bits bits, a row
    out = product(ctx, times_gamma, factor).share(ctx)   # the server's beta joins before the truncation
    if bias is not None and ctx.party == 1:
        out = out + (server_ring(ctx, "bias", bias) << s_n_bits)
    return await truncate(ctx, out, s_n_bits)


def _reference(x, w, b, shape, eps):
    return torch.nn.functional.layer_norm(x, shape, w, b, eps)


define("mpc.layer_norm", ("input", "weight", "bias", "normalized_shape", "eps"), _reference,
       "LayerNorm (bracketed Newton rsqrt on wires: 10 rounds)", "mpc", protocol=layer_norm, wires=True)
def _rms_reference(x, w, shape, eps):
    out = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return out if w is None else out * w


define("rms_norm", ("input", "normalized_shape", "weight", "eps"),
       lambda x, shape, w=None, eps=1e-6: _rms_reference(x, w, shape, eps),
       "RMSNorm: x / sqrt(mean(x^2) + eps) * weight (Llama, T5; found by fuse_rms_norm)", "nn")
define("mpc.rms_norm", ("input", "weight", "normalized_shape", "eps"), _rms_reference,
       "RMSNorm: LayerNorm's protocol without the mean (bracketed Newton rsqrt on wires)", "mpc",
       protocol=lambda ctx, x, weight, shape, eps: layer_norm(ctx, x, weight, None, shape, eps, center=False),
       wires=True)
define("layer_norm_goldschmidt", ("input", "normalized_shape", "weight", "bias", "eps"),
       lambda x, shape, w=None, b=None, eps=1e-5: _reference(x, w, b, shape, eps),
       "LayerNorm computed with SecFormer's Goldschmidt rsqrt (a substitute: the same function)", "nn")
define("mpc.layer_norm_goldschmidt", ("input", "weight", "bias", "normalized_shape", "eps"), _reference,
       "LayerNorm by SecFormer's Goldschmidt rsqrt (bracketed into [1, 2), then the published steps)", "mpc",
       protocol=lambda ctx, *args: layer_norm(ctx, *args, solve=_goldschmidt_rsqrt), wires=True)
