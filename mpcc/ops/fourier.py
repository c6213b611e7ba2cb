"""GeLU, tanh and SiLU by a segmented Fourier series (SecFormer's private sine):
the series on [-H, H] (H = 4; 12 for SiLU, whose asymptotes are reached later)
from one masked opening, the function's asymptotes outside, joined by fuzzy
segment comparisons. ``nonlinear.py`` registers the ops."""
from __future__ import annotations

import math

import numpy as np
import torch

from .arith import add_public, encode
from .compare import b2a_wire, ltz_bits
from .wire import mask, product, public_wire, share_of, truncate

__all__ = ["fourier_segments", "gelu", "tanh", "silu", "GELU_FIT_ERROR", "TANH_FIT_ERROR", "SILU_FIT_ERROR",
           "SILU_MAX_ERROR", "FOURIER_HALF_RANGE", "SILU_HALF_RANGE", "SEGMENT_FUZZ"]

FOURIER_PERIOD_LOG2 = 4     # period 16: t is uniform mod 2^(f+4), so x - t hides x exactly
FOURIER_HALF_RANGE = 4.0    # segments: the series on [-4, 4], the function's asymptote outside
FOURIER_FIT_RANGE = 4.5     # the series is fit on [-4.5, 4.5]: the segment tests are fuzzy by 0.5
SEGMENT_FUZZ = 1            # segment tests may err within 2^-SEGMENT_FUZZ (0.5) of the threshold
GELU_TERMS = 8             # fit error 3.5e-5 on [-4.5, 4.5]
TANH_TERMS = 9             # fit error 1e-3 (ridge keeps coefficients small, so rounding stays small)
SERIES_CHUNK = 1 << 16      # elements per slice of the local series evaluation
# SiLU nears its asymptotes (0, x) only as |x| e^-|x|: 0.07 at 4, 4e-3 at 7.5, 1.2e-4 at 11.5. So its series
# covers [-12, 12] (fit on [-12.5, 12.5]), which needs period 32, one more bit in the opening
SILU_HALF_RANGE = 12.0
SILU_PERIOD_LOG2 = 5
SILU_TERMS = 14             # fit error 1.8e-4 on [-12.5, 12.5]; coefficients small unregularised (sum |a_k| < 4)
SILU_MAX_ERROR = 5e-4       # documented: the fit's 1.8e-4 (the asymptotes' 1.2e-4 near +-12 is less) plus the
                            # series' rounding (28 public terms rounded to an ulp, float32 angles); 2.3e-4 seen


def _public(ctx, value, like):
    """A public constant, encoded (not a share: add it with ``add_public``)."""
    return encode(ctx, torch.full(tuple(like.shape), float(value), dtype=torch.float64), "real")


def _fit(function, odd: bool, terms: int, ridge: float, fit_range: float = FOURIER_FIT_RANGE,
         period_log2: int = FOURIER_PERIOD_LOG2):
    grid = np.linspace(-fit_range, fit_range, 4001)
    half_period = 2.0 ** period_log2 / 2
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
# SiLU(x) = x/2 + (x/2) tanh(x/2), the second even
SILU_EVEN_COEFFS, SILU_FIT_ERROR = _fit(lambda x: 0.5 * x * np.tanh(0.5 * x), False, SILU_TERMS, 1e-12,
                                        SILU_HALF_RANGE + 2.0 ** -SEGMENT_FUZZ, SILU_PERIOD_LOG2)


async def fourier_segments(ctx, x, cos_coeffs, sin_coeffs, constant, linear, low, high,
                           half_range: float = FOURIER_HALF_RANGE, period_log2: int = FOURIER_PERIOD_LOG2):
    """f(x) = constant + linear x + sum_k (a_k cos(2 pi k x/P) + b_k sin(2 pi k x/P))
    on [-H, H]; below -H ``low``, above H ``high``: each a public constant or
    "x" (the identity) (SecFormer's private sine). H = ``half_range`` (4 by
    default), P = 2^``period_log2`` (16): the series must fit on
    [-H - 1/2, H + 1/2] (the fuzzy segment tests), so P > 2H + 1.

    Steps: the dealer deals t (seeded, uniform mod 2^(f+p)) and shares of
    cos(2 pi k t/P), sin(2 pi k t/P) (stored, 2K per element). Open
    delta = x - t mod 2^(f+p) (f + p bits each way, 20 for P = 16): perfectly
    hiding, as t is uniform mod the period. The angle sums make every term a
    public coefficient times a dealt share: local, one truncation (the series
    a wire). In parallel, LTZ on (x + H, H - x) gives the segment bits, turned
    into wires by one B2A (1 bit per element per segment): the segment sum
    mid + b_low (low - mid) + b_high (high - mid) is local; an "x" segment
    masks x beside the first opening (8 bytes per element each way).

    Domain: |x| <= 2^(CMP_BITS-1-f) - H - 2^-SEGMENT_FUZZ (32763.5 at f = 16
    and H = 4). The segment LTZ skips the low f - SEGMENT_FUZZ bits, which
    makes it exact only up to 2^15 - 1/2 on the positive side (``ltz_bits``),
    and x + H and H - x must both stay there. Outside, the segment bits are
    wrong and so is the result (gelu(32765) comes out as 16381).
    """
    x, x_given = share_of(ctx, x), x   # x's share; a wire x needs no mask for an "x" segment
    f, terms = ctx.frac_bits, len(cos_coeffs)
    modulus = 1 << (f + period_log2)
    step = math.pi / (2.0 ** period_log2 / 2)
    # float32 suffices for the trig values (|.| <= 3, wanted to 2^-17) and halves the work
    ks = torch.arange(1, terms + 1, dtype=torch.float32) * step

    def angles(value):
        return ((value & (modulus - 1)).to(torch.float32) * 2.0 ** -f).unsqueeze(-1) * ks.to(value.device)

    def dealt(trig):  # cos(2 pi k t / P) or sin(...), k = 1..K, with f fractional bits
        return lambda t: trig(angles(t)).mul_(2.0 ** f).round_().to(torch.int64)

    t = ctx.rand(x.shape)
    # two items of |x| K words each rather than one of 2K: halves the largest allocation
    cos_t = ctx.derive(dealt(torch.cos), t, shape=tuple(x.shape) + (terms,))
    sin_t = ctx.derive(dealt(torch.sin), t, shape=tuple(x.shape) + (terms,))
    bound = _public(ctx, half_range, x)

    async def segment_bits():
        return await b2a_wire(ctx, await ltz_bits(ctx, torch.stack([add_public(ctx, x, bound),
                                                                      add_public(ctx, -x, bound)], -1),
                                                  fuzz_bits=ctx.frac_bits - SEGMENT_FUZZ))

    async def identity():
        return await mask(ctx, x_given) if "x" in (low, high) else None
    # the segment bits do not depend on the series: both openings go in the same steps
    opened, outside, x_wire = await ctx.gather(
        ctx.open((x - t) & (modulus - 1), bits=f + period_log2), segment_bits(), identity())
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
            on_cos_t = _weighted_sum(a, cos_d, b, sin_d)    # multiplies cos(2 pi k t / P); |.| < 8 * 2^f
            on_sin_t = _weighted_sum(b, cos_d, [-c for c in a], sin_d)   # multiplies sin(2 pi k t / P)
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


async def silu(ctx, x):
    """SiLU x sigmoid(x) within 5e-4 (SILU_MAX_ERROR) on all reals in range: 0
    below -12, x above 12, x/2 + a 14-term cosine series of the even
    (x/2) tanh(x/2) between (period 32, fit on [-12.5, 12.5]: error 1.8e-4;
    the segment tests may err within 0.5 of +-12, where SiLU and its
    asymptotes differ by |x| sigmoid(-|x|) < 1.2e-4; 2.3e-4 measured with
    rounding). GeLU's H = 4 would not do: there SiLU is 0.07 from its
    asymptotes. Rounds 4; ~28.4 bytes per element each way (~20.4 for a
    wire): one bit more than GeLU's (the period-32 opening); 2 x 14 dealt
    words per element (16 terms would fit to 5e-5 for 32 bytes more).
    Domain: ``fourier_segments``' with H = 12, |x| <= 2^15 - 12.5 = 32755.5
    at f = 16."""
    coeffs = SILU_EVEN_COEFFS
    return await fourier_segments(ctx, x, list(coeffs[1:]), [0.0] * (len(coeffs) - 1), float(coeffs[0]), 0.5,
                                  low=0.0, high="x", half_range=SILU_HALF_RANGE, period_log2=SILU_PERIOD_LOG2)
