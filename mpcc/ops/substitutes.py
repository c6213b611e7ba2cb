"""Substitutes for GeLU that the approximation presets put in place of the
exact function: each an op at the ``nn`` level (its reference is its own
plaintext formula, so ``mpcc.interpret`` runs the substituted model) and its
``mpc.`` op with the protocol. Softmax substitutes live in ``attention.py``
(``SOFTMAX_VARIANTS``), which attention shares."""
from __future__ import annotations

import math

import torch

from .arith import DEFERRED_ACTIVATIONS, DeferredActivation, add_public
from .base import define
from .compare import b2a_wire, ltz_bits, not_bit
from .fourier import SEGMENT_FUZZ
from .nonlinear import _public
from .wire import mask, product, share_of, truncate

__all__ = ["gelu_quad", "QUAD_GELU", "gelu_secformer", "SECFORMER_ERF", "gelu_puma", "PUMA_GELU"]

# SecFormer's erf: sum_j beta_j sin(j pi u / 10), j = 1..7 (period 20), on [-2.5, 2.5]; +-1 outside
SECFORMER_ERF = (1.25772, -0.0299154, 0.382155, -0.0519123, 0.196033, -0.0624557, 0.118029)
ERF_PERIOD, ERF_EDGE = 20.0, 2.5
PERIOD_BITS = 20   # x scaled so that one period is 2^(f + 20) ring units: the opening is uniform mod that
COEFF_EXTRA_BITS = 8   # polynomial coefficients carry f + 8 fractional bits

QUAD_GELU = (0.125, 0.25, 0.5)   # MPCFormer's Quad: 0.125 x^2 + 0.25 x + 0.5


def _gelu_quad_reference(x):
    a, b, c = QUAD_GELU
    return a * x * x + b * x + c


async def gelu_quad(ctx, x):
    """0.125 x^2 + 0.25 x + 0.5 = (x^2 + 2x) / 8 + 1/2: one square kept at 2f
    fractional bits, 2x added at the same scale, one truncation by f + 3.
    Rounds 2, bytes 16 per element both; 1 and 8 when x is a wire (a linear's
    output). Domain: x^2 < 2^(62-2f) (|x| < 32768 at f = 16)."""
    x, quad = await _quad_numerator(ctx, x)
    return (await truncate(ctx, quad, ctx.frac_bits + 3)).plus(_public(ctx, 0.5, x))


async def gelu_quad_deferred(ctx, x):
    """8 gelu_quad(x) = x^2 + 2x + 4 with 2f fractional bits (f + 3 more than gelu_quad),
    untruncated: the linear that absorbs it truncates once for both. No round
    of its own (0 bytes when x is a wire)."""
    x, quad = await _quad_numerator(ctx, x)
    return quad.plus(_public(ctx, 4.0, x) << ctx.frac_bits).share(ctx), ctx.frac_bits + 3


async def _quad_numerator(ctx, x):
    """(x as a wire, x^2 + 2x with 2f fractional bits): the square local, 2x at its scale."""
    x = await mask(ctx, x)
    return x, product(ctx, x, x) + x.scaled(2 << ctx.frac_bits)


DEFERRED_ACTIVATIONS["gelu_quad"] = DeferredActivation(_gelu_quad_reference, gelu_quad_deferred, lambda f: f + 3)


def _erf_secformer(u):
    k = torch.arange(1, len(SECFORMER_ERF) + 1, dtype=u.dtype, device=u.device)
    series = (torch.sin(u.unsqueeze(-1) * k * (2 * math.pi / ERF_PERIOD)) *
              torch.tensor(SECFORMER_ERF, dtype=u.dtype, device=u.device)).sum(-1)
    return torch.where(u.abs() <= ERF_EDGE, series, torch.sign(u))


def _gelu_secformer_reference(x):
    return 0.5 * x * (1 + _erf_secformer(x / math.sqrt(2)))


async def gelu_secformer(ctx, x):
    """SecFormer's GeLU, 0.5 x (1 + erf(x / sqrt 2)), erf by its 7-term sine series
    (period 20 in u = x / sqrt 2) between +-2.5 and +-1 outside (published error
    up to 0.058 against GeLU near |x| = 3.5).

    Steps (private sine, SecFormer's): x times an integer C = round(2^20 / (20 sqrt 2))
    makes one period 2^(f+20) ring units; the dealer deals t and shares of sin and
    cos of j 2 pi t / 2^(f+20); the parties open (x C - t) mod 2^(f+20) (uniform:
    perfectly hiding) and the angle sums make each term a public factor times a
    dealt share. Beside it, fuzzy LTZs on x +- 2.5 sqrt 2 give the segments (they
    may err within 0.5 of the edges, where the series is within 0.03 of +-1),
    as wires from one B2A; x is masked beside the first opening, so joining
    the segments and the product x erf are local, with the halving in the one
    truncation. Rounds: the segment LTZ, 1 (B2A), 1. Domain: |x| C 2^f < 2^63 and the segment
    comparison's |x| < 2^(CMP_BITS-1-f) - 4."""
    f = ctx.frac_bits
    x, x_given = share_of(ctx, x), x   # x's share; a wire x needs no mask
    terms = len(SECFORMER_ERF)
    scale = round(2 ** PERIOD_BITS / (ERF_PERIOD * math.sqrt(2)))
    modulus = 1 << (f + PERIOD_BITS)
    ks = torch.arange(1, terms + 1, dtype=torch.float64) * (2 * math.pi / modulus)

    def angles(value):
        return (value & (modulus - 1)).to(torch.float64).unsqueeze(-1) * ks.to(value.device)

    def dealt(trig):
        return lambda t: trig(angles(t)).mul_(2.0 ** f).round_().to(torch.int64)
    t = ctx.rand(x.shape)
    sin_t = ctx.derive(dealt(torch.sin), t, shape=tuple(x.shape) + (terms,))
    cos_t = ctx.derive(dealt(torch.cos), t, shape=tuple(x.shape) + (terms,))
    edge = _public(ctx, ERF_EDGE * math.sqrt(2), x)

    async def segment_bits():
        return await b2a_wire(ctx, await ltz_bits(ctx, torch.stack([add_public(ctx, x, edge),
                                                                      add_public(ctx, -x, edge)], -1),
                                                  fuzz_bits=f - SEGMENT_FUZZ))
    opened, outside, x_wire = await ctx.gather(ctx.open((x * scale - t) & (modulus - 1), bits=f + PERIOD_BITS),
                                               segment_bits(), mask(ctx, x_given))
    if ctx.meta:
        acc = torch.empty(tuple(x.shape), dtype=torch.int64, device="meta")
    else:   # sin(j(d + t)) = sin(jd) cos(jt) + cos(jd) sin(jt)
        delta = angles(opened)
        beta = torch.tensor(SECFORMER_ERF, dtype=torch.float64, device=x.device) * 2.0 ** f
        on_cos = (torch.sin(delta) * beta).round().to(torch.int64)
        on_sin = (torch.cos(delta) * beta).round().to(torch.int64)
        acc = (on_cos * cos_t).sum(-1) + (on_sin * sin_t).sum(-1)
    mid = await truncate(ctx, acc, f)
    one = _public(ctx, 1.0, x)
    below, above = outside.split(-1)
    erf = mid + product(ctx, below, (-mid).plus(-one)) + product(ctx, above, (-mid).plus(one))
    return (await truncate(ctx, x_wire.scaled(1 << f) + product(ctx, x_wire, erf), f + 1)).share(ctx)


# PUMA's GeLU: 0 below -4; a cubic on [-4, -1.95); a degree-6 polynomial on [-1.95, 3]; x above 3
PUMA_GELU = {"edges": (-4.0, -1.95, 3.0),
             "cubic": (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728),
             "sextic": (0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0,
                        0.0018067462606141187)}


def _polynomial(coeffs, x):
    return sum(c * x ** k for k, c in enumerate(coeffs))


def _gelu_puma_reference(x):
    low, middle, high = PUMA_GELU["edges"]
    return torch.where(x < low, torch.zeros_like(x),
                       torch.where(x < middle, _polynomial(PUMA_GELU["cubic"], x),
                                   torch.where(x <= high, _polynomial(PUMA_GELU["sextic"], x), x)))


async def gelu_puma(ctx, x):
    """PUMA's piecewise-polynomial GeLU on wires: x's mask, x^2, then x^3 and x^4,
    then x^6 (4 rounds), each polynomial as one sum of powers truncated once (1),
    the segment bits from one batch of exact comparisons and a B2A beside the
    powers; the pieces join locally: 5 rounds. Error against its formula a few 1e-5 (the coefficients
    carry f + 8 bits). Domain: |x| < 2^(CMP_BITS-1-f) - 4 (the comparisons);
    outside [-4, 3] the powers wrap but are multiplied by a 0 bit."""
    f = ctx.frac_bits
    x, x_given = share_of(ctx, x), x   # x's share; a wire x needs no mask
    low, middle, high = PUMA_GELU["edges"]
    tests = torch.stack([add_public(ctx, x, _public(ctx, -low, x)), add_public(ctx, x, _public(ctx, -middle, x)),
                         add_public(ctx, -x, _public(ctx, high, x))], -1)   # x - (-4), x - (-1.95), 3 - x

    async def powers():   # products of wires: each power is its truncation's round
        x1 = await mask(ctx, x_given)
        x2 = await truncate(ctx, product(ctx, x1, x1), f)
        x3, x4 = await ctx.gather(truncate(ctx, product(ctx, x1, x2), f), truncate(ctx, product(ctx, x2, x2), f))
        return x1, x2, x3, x4, await truncate(ctx, product(ctx, x3, x3), f)

    async def segments():   # x in [-4, -1.95), in [-1.95, 3], above 3: disjoint, so XOR is OR
        below = await ltz_bits(ctx, tests)
        b0, b1, b2 = below[..., 0], below[..., 1], below[..., 2]     # x < -4, x < -1.95, x > 3
        return await b2a_wire(ctx, torch.stack([b0 ^ b1, not_bit(ctx, b1 ^ b2), b2], -1))
    # exact comparisons: they take fewer steps than the powers beside them
    bits, (x1, x2, x3, x4, x6) = await ctx.gather(segments(), powers())
    by_power = {1: x1, 2: x2, 3: x3, 4: x4, 6: x6}

    def polynomial(coeffs):   # sum c_k x^k, the coefficients with f + 8 bits (x^6's is 0.0018), one truncation
        return sum(by_power[k].share(ctx) * round(c * 2 ** (f + COEFF_EXTRA_BITS))
                   for k, c in enumerate(coeffs) if k and c)
    cubic, sextic = await ctx.gather(*(truncate(ctx, polynomial(PUMA_GELU[name]), f + COEFF_EXTRA_BITS)
                                       for name in ("cubic", "sextic")))
    cubic = cubic.plus(_public(ctx, PUMA_GELU["cubic"][0], x))
    sextic = sextic.plus(_public(ctx, PUMA_GELU["sextic"][0], x))
    in_cubic, in_sextic, above = bits.split(-1)
    return (product(ctx, in_cubic, cubic) + product(ctx, in_sextic, sextic) + product(ctx, above, x1)).share(ctx)


define("gelu_puma", ("self",), _gelu_puma_reference, "PUMA's piecewise-polynomial GeLU (a substitute)", "nn")
define("mpc.gelu_puma", ("self",), _gelu_puma_reference,
       "PUMA's piecewise-polynomial GeLU (powers to x^6, segment comparisons, one select)", "mpc",
       protocol=gelu_puma, wires=True)
define("gelu_secformer", ("self",), _gelu_secformer_reference,
       "SecFormer's GeLU: erf by a 7-term sine series, +-1 beyond +-2.5 (a substitute)", "nn")
define("mpc.gelu_secformer", ("self",), _gelu_secformer_reference,
       "SecFormer's GeLU (private sine series for erf, segment tests, one product)", "mpc",
       protocol=gelu_secformer, wires=True)
define("gelu_quad", ("self",), _gelu_quad_reference, "MPCFormer's Quad GeLU 0.125x^2 + 0.25x + 0.5 (a substitute)",
       "nn")
define("mpc.gelu_quad", ("self",), _gelu_quad_reference, "MPCFormer's Quad GeLU (one square, one truncation)", "mpc",
       protocol=gelu_quad, wires=True)
