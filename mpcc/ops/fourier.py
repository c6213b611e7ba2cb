"""GeLU and tanh by a segmented Fourier series (SecFormer's private sine): the
series on [-4, 4] from one masked opening, the function's asymptotes outside,
joined by fuzzy segment comparisons. ``nonlinear.py`` registers the ops."""
from __future__ import annotations

import math

import numpy as np
import torch

from .arith import add_public, encode
from .compare import b2a_wire, ltz_bits
from .wire import mask, product, public_wire, share_of, truncate

__all__ = ["fourier_segments", "gelu", "tanh", "GELU_FIT_ERROR", "TANH_FIT_ERROR", "FOURIER_HALF_RANGE",
           "SEGMENT_FUZZ"]

FOURIER_PERIOD_LOG2 = 4     # period 16: t is uniform mod 2^(f+4), so x - t hides x exactly
FOURIER_HALF_RANGE = 4.0    # segments: the series on [-4, 4], the function's asymptote outside
FOURIER_FIT_RANGE = 4.5     # the series is fit on [-4.5, 4.5]: the segment tests are fuzzy by 0.5
SEGMENT_FUZZ = 1            # segment tests may err within 2^-SEGMENT_FUZZ (0.5) of the threshold
GELU_TERMS = 8             # fit error 3.5e-5 on [-4.5, 4.5]
TANH_TERMS = 9             # fit error 1e-3 (ridge keeps coefficients small, so rounding stays small)
SERIES_CHUNK = 1 << 16      # elements per slice of the local series evaluation


def _public(ctx, value, like):
    """A public constant, encoded (not a share: add it with ``add_public``)."""
    return encode(ctx, torch.full(tuple(like.shape), float(value), dtype=torch.float64), "real")


def _fit(function, odd: bool, terms: int, ridge: float):
    grid = np.linspace(-FOURIER_FIT_RANGE, FOURIER_FIT_RANGE, 4001)
    half_period = 2.0 ** FOURIER_PERIOD_LOG2 / 2
    basis = [np.sin(k * np.pi * grid / half_period) if odd else np.cos(k * np.pi * grid / half_period)
             for k in range(1, terms + 1)]
    if not odd:
        basis = [np.ones_like(grid)] + basis
    design = np.stack(basis, 1)
    coeffs = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ function(grid))
    return coeffs, float(np.abs(design @ coeffs - function(grid)).max())


_erf = np.vectorize(math.erf)
# GeLU(x) = x/2 + g(x) with g even; tanh odd. Fits are least squares on [-4, 4].
GELU_EVEN_COEFFS, GELU_FIT_ERROR = _fit(lambda x: 0.5 * x * _erf(x / math.sqrt(2)), False, GELU_TERMS, 1e-12)
TANH_ODD_COEFFS, TANH_FIT_ERROR = _fit(np.tanh, True, TANH_TERMS, 1e-5)


async def fourier_segments(ctx, x, cos_coeffs, sin_coeffs, constant, linear, low, high):
    """f(x) = constant + linear x + sum_k (a_k cos(k pi x/8) + b_k sin(k pi x/8)) on
    [-4, 4]; below -4 ``low``, above 4 ``high``: each a public constant or "x"
    (the identity) (SecFormer's private sine).

    Steps: the dealer deals t (seeded, uniform mod 2^(f+4)) and shares of
    cos(k pi t/8), sin(k pi t/8) (stored, 2K per element). Open
    delta = x - t mod 2^(f+4) (20 bits each way): perfectly hiding. The
    angle sums make every term a public coefficient times a dealt share:
    local, one truncation (the series a wire). In parallel, LTZ on (x + 4,
    4 - x) gives the segment bits, turned into wires by one B2A (1 bit per
    element per segment): the segment sum mid + b_low (low - mid) + b_high
    (high - mid) is local; an "x" segment masks x beside the first opening
    (8 bytes per element each way).

    Domain: |x| <= 2^(CMP_BITS-1-f) - 4 - 2^-SEGMENT_FUZZ (32763.5 at f = 16).
    The segment LTZ skips the low f - SEGMENT_FUZZ bits, which makes it exact
    only up to 2^15 - 1/2 on the positive side (``ltz_bits``), and x + 4 and
    4 - x must both stay there. Outside, the segment bits are wrong and so is
    the result (gelu(32765) comes out as 16381).
    """
    x, x_given = share_of(ctx, x), x   # x's share; a wire x needs no mask for an "x" segment
    f, terms = ctx.frac_bits, len(cos_coeffs)
    modulus = 1 << (f + FOURIER_PERIOD_LOG2)
    step = math.pi / (2.0 ** FOURIER_PERIOD_LOG2 / 2)
    # float32 suffices for the trig values (|.| <= 3, wanted to 2^-17) and halves the work
    ks = torch.arange(1, terms + 1, dtype=torch.float32) * step

    def angles(value):
        return ((value & (modulus - 1)).to(torch.float32) * 2.0 ** -f).unsqueeze(-1) * ks.to(value.device)

    def dealt(trig):  # cos(k pi t / 8) or sin(...), k = 1..K, with f fractional bits
        return lambda t: trig(angles(t)).mul_(2.0 ** f).round_().to(torch.int64)

    t = ctx.rand(x.shape)
    # two items of |x| K words each rather than one of 2K: halves the largest allocation
    cos_t = ctx.derive(dealt(torch.cos), t, shape=tuple(x.shape) + (terms,))
    sin_t = ctx.derive(dealt(torch.sin), t, shape=tuple(x.shape) + (terms,))
    bound = _public(ctx, FOURIER_HALF_RANGE, x)

    async def segment_bits():
        return await b2a_wire(ctx, await ltz_bits(ctx, torch.stack([add_public(ctx, x, bound),
                                                                      add_public(ctx, -x, bound)], -1),
                                                  fuzz_bits=ctx.frac_bits - SEGMENT_FUZZ))

    async def identity():
        return await mask(ctx, x_given) if "x" in (low, high) else None
    # the segment bits do not depend on the series: both openings go in the same steps
    opened, outside, x_wire = await ctx.gather(
        ctx.open((x - t) & (modulus - 1), bits=f + FOURIER_PERIOD_LOG2), segment_bits(), identity())
    delta = opened & (modulus - 1)
    a = [c * 2.0 ** f for c in cos_coeffs]
    b = [c * 2.0 ** f for c in sin_coeffs]
    if ctx.meta:
        acc = torch.empty(tuple(x.shape), dtype=torch.int64, device="meta")
    else:
        acc = torch.empty(delta.numel(), dtype=torch.int64, device=delta.device)
        flat_delta, flat_cos_t, flat_sin_t = delta.reshape(-1), cos_t.reshape(-1, terms), sin_t.reshape(-1, terms)
        for start in range(0, delta.numel(), SERIES_CHUNK):  # in slices: small temporaries, warm caches
            part = slice(start, start + SERIES_CHUNK)
            angle = angles(flat_delta[part])
            cos_d, sin_d = torch.cos(angle), torch.sin(angle)
            # cos(k(d + t)) = cos kd cos kt - sin kd sin kt; sin(k(d + t)) = sin kd cos kt + cos kd sin kt
            on_cos_t = _weighted_sum(a, cos_d, b, sin_d)    # multiplies cos(k pi t / 8); |.| < 8 * 2^f
            on_sin_t = _weighted_sum(b, cos_d, [-c for c in a], sin_d)   # multiplies sin(k pi t / 8)
            acc[part] = _dot_last(on_cos_t, flat_cos_t[part]) + _dot_last(on_sin_t, flat_sin_t[part])
        acc = acc.reshape(x.shape)
    if linear:
        acc = acc + x * round(linear * 2 ** f)
    mid = (await truncate(ctx, acc, f)).plus(_public(ctx, constant, x))

    def segment(value):
        return x_wire if value == "x" else public_wire(_public(ctx, value, x))
    below, above = outside.split(-1)
    return (mid + product(ctx, below, segment(low) - mid) + product(ctx, above, segment(high) - mid)).share(ctx)


def _weighted_sum(a, u, b, v):
    """a u + b v for coefficient lists a, b, rounded to integers; a zero list
    skips its term (GeLU's series has no sines, tanh's no cosines)."""
    def scaled(coeffs, values):
        return values * torch.tensor(coeffs, dtype=values.dtype, device=values.device)
    if not any(b):
        return scaled(a, u).round_()
    if not any(a):
        return scaled(b, v).round_()
    return scaled(a, u).add_(scaled(b, v)).round_()


def _dot_last(public, share):
    """sum over the last axis of public integers (float) times ring shares.
    CUDA has no int64 batched GEMM (``einsum`` lowers to one), so there the
    products are summed elementwise; on CPU einsum is the faster of the two."""
    public = public.to(torch.int64)
    if share.is_cuda:
        return (public * share).sum(-1)
    return torch.einsum("...k,...k->...", public, share)


async def gelu(ctx, x):
    """GeLU within 1e-3 of the exact (erf) form on all reals in range: 0 below -4,
    x above 4, x/2 + an 8-term cosine series between (fit on [-4.5, 4.5]; the
    segment tests may err within 0.5 of +-4, where GeLU and its asymptotes
    differ by < 8e-4). Rounds 4. Domain: ``fourier_segments``', |x| <= 32763.5
    at f = 16."""
    coeffs = GELU_EVEN_COEFFS
    return await fourier_segments(ctx, x, list(coeffs[1:]), [0.0] * (len(coeffs) - 1), float(coeffs[0]), 0.5,
                                  low=0.0, high="x")


async def tanh(ctx, x):
    """tanh within 3e-3 on all reals in range: -1 below -4, 1 above 4, a
    9-term sine series (ridge-regularised fit on [-4.5, 4.5]) between; near
    +-4 the fuzzy segment test costs at most |1 - tanh(3.5)| = 1.8e-3.
    Domain: ``fourier_segments``', |x| <= 32763.5 at f = 16."""
    return await fourier_segments(ctx, x, [0.0] * len(TANH_ODD_COEFFS), list(TANH_ODD_COEFFS), 0.0, 0.0,
                                  low=-1.0, high=1.0)
