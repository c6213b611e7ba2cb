"""Softmax and attention: the table of softmax variants (the exact one and
the substitutes of the approximation presets), each a plaintext reference
and a protocol over the last axis, and ``mpc.sdpa``, which runs whichever
variant its ``softmax`` attribute names, so every substitute reaches
Hugging Face attention (traced to one ``sdpa``)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .arith import add_public, encode, trunc
from .compare import ltz_bits, max_last, not_bit, select_bits
from .base import define
from .wire import Wire, bilinear, mask, product, share_of, truncate
from .nonlinear import (MASK_FILL, _bracket_scale, _public, divide, encode_scaled, mul_scalar, reciprocal_parts,
                        softmax_masked, softmax_parts)

__all__ = ["SoftmaxVariant", "SOFTMAX_VARIANTS", "EXCLUDED", "attention_mask", "finite_part", "attention_reference",
           "sdpa", "QUAD_SHIFT", "QUAD_SUM_LOG2"]

QUAD_SHIFT = 5.0          # MPCFormer's 2Quad: (x + c)^2 with c = 5
QUAD_SUM_LOG2 = (-8, 16)  # the divide's domain for sums of (x + c)^2: [1/256, 65536)
GOLDSCHMIDT_DIV_STEPS = 7 # SecFormer's count in the model (13 in its op benchmark)
PUMA_EXP_CUT = -14.0      # PUMA: e^x is 0 below -14
PUMA_EXP_SQUARINGS = 8    # e^x as (1 + x / 2^8)^(2^8)


@dataclass(frozen=True)
class SoftmaxVariant:
    """One softmax over the last axis, with an optional public keep mask
    (bool; False: excluded, probability exactly 0)."""
    name: str
    reference: Callable      # (x, keep) -> probabilities, float64 torch
    protocol: Callable       # async (ctx, x, keep as 0/1 int64 or None) -> shares
    doc: str
    # async (ctx, x, keep, frac) -> (numerators wire, row sums, low, high): the softmax before its
    # division by the sums in [2^low, 2^high); attention then multiplies v first (``sdpa``)
    parts: Callable | None = None
    scores_bits: Callable | None = None   # f -> the fractional bits attention's scores need (None: f)


def _exact_reference(x, keep):
    if keep is None:
        return torch.softmax(x, -1)
    return torch.softmax(x.masked_fill(~keep, float("-inf")), -1)


def _quad_reference(x, keep):
    q = (x + QUAD_SHIFT) ** 2
    if keep is not None:
        q = q * keep
    return q / q.sum(-1, keepdim=True)


async def softmax_2quad(ctx, x, keep):
    """MPCFormer's 2Quad, (x + c)^2 / sum (x + c)^2 with c = 5: one square, a row
    sum and a division (``divide``): no comparison but the division's bracket.
    Domain: |x + 5| < 2^(31-f) (the square's truncation); each row's sum of
    squares in [2^-8, 2^16) (1/sum is formed with 2f bits: s = 2^-m exact for m <= f).
    Error: the squares carry f bits, so about 2^-f / (row sum) absolute: ~1e-4
    for sums above 1/8, 1.3e-3 at a sum of 0.006. Rounds: 2 + the division's."""
    return await divide(ctx, *await _quad_parts(ctx, x, keep))


async def _quad_parts(ctx, x, keep, frac: int | None = None):
    q = await _quad(ctx, x, frac)
    if keep is not None:
        q = q.masked(keep)
    return q, q.share(ctx).sum(-1, keepdim=True), *QUAD_SUM_LOG2


def _quad_scores_bits(f: int) -> int:
    """2Quad's scores in attention carry f // 2 fractional bits (2^-8 at f = 16): their
    square then has f bits with no truncation. Error: a score off by 2^-8 moves
    (x + 5)^2 by 2^-7 |x + 5|, 2^-7 / |x + 5| relative, against the sum's average."""
    return f // 2


async def _quad(ctx, x, frac: int | None = None) -> Wire:
    """(x + c)^2 with f fractional bits as a wire, for x with ``frac`` bits (default f):
    x masked (free when it is a wire already), squared locally, truncated by
    2 frac - f bits; none for attention's coarse scores (``_quad_scores_bits``)."""
    f = ctx.frac_bits
    frac = f if frac is None else frac
    shifted = (await mask(ctx, x)).plus(encode_scaled(ctx, torch.full(tuple(x.shape), QUAD_SHIFT,
                                                                      dtype=torch.float64), frac))
    square = product(ctx, shifted, shifted)
    if 2 * frac > f:
        return await truncate(ctx, square, 2 * frac - f)
    return square.scaled(1 << (f - 2 * frac))


async def softmax_2quad_goldschmidt(ctx, x, keep):
    """SecFormer's softmax: 2Quad, divided by Goldschmidt's iteration. The row sum d
    is scaled into [1/2, 1) (here by the division's bracketing comparisons, a
    power of two s/2), then m = 2 - y; x <- x m; y <- y m, GOLDSCHMIDT_DIV_STEPS
    times (the products of x and of y share each step: 2 rounds a step, and
    one product per element per step). Domain: 2Quad's."""
    f = ctx.frac_bits
    q = await _quad(ctx, x)
    if keep is not None:
        q = q.masked(keep)
    total = q.share(ctx).sum(-1, keepdim=True)
    ctx.check_range(total, QUAD_SUM_LOG2[1] + f)
    s, total = await ctx.gather(
        _bracket_scale(ctx, total, list(range(QUAD_SUM_LOG2[0] + 1, QUAD_SUM_LOG2[1])), 1, QUAD_SUM_LOG2[0]),
        mask(ctx, total))
    s = await mask(ctx, s)
    numerators, denominator = await ctx.gather(truncate(ctx, product(ctx, q, s), f + 1),
                                               truncate(ctx, product(ctx, total, s), f + 1))
    two = _public(ctx, 2.0, denominator.public)
    for _ in range(GOLDSCHMIDT_DIV_STEPS):   # products of wires: one truncation's round a step
        factor = (-denominator).plus(two)
        numerators, denominator = await ctx.gather(truncate(ctx, product(ctx, numerators, factor), f),
                                                   truncate(ctx, product(ctx, denominator, factor), f))
    return numerators


def _puma_exp(d):
    return torch.where(d < PUMA_EXP_CUT, torch.zeros_like(d), (1 + d / 2 ** PUMA_EXP_SQUARINGS) ** (2 ** PUMA_EXP_SQUARINGS))


def _puma_reference(x, keep):
    if keep is not None:
        x = x.masked_fill(~keep, MASK_FILL)
    e = _puma_exp(x - x.amax(-1, keepdim=True))
    if keep is not None:
        e = e * keep
    return e / e.sum(-1, keepdim=True)


async def softmax_puma(ctx, x, keep):
    """PUMA's softmax: the max shift (the exact softmax's tournament), then
    e^d = (1 + d / 2^8)^(2^8) by 8 squarings carried with f + 8 fractional bits
    (each squaring doubles a relative error: with f bits 8 of them would make
    one ulp 256), 0 below -14 (a fuzzy comparison beside the squarings, one
    select), the sum and a division. Relative error of its exp against e^d:
    d^2 / 512 (1.6% at d = -2). Domain: the exact softmax's (the tournament's
    score spread); below d = -256 the squarings wrap, under a 0 bit."""
    return await divide(ctx, *await _puma_parts(ctx, x, keep))


async def _puma_parts(ctx, x, keep, frac: int | None = None):
    f = ctx.frac_bits
    x = share_of(ctx, x)
    if keep is not None:
        fill = encode(ctx, (1 - keep.to(torch.float64)) * MASK_FILL, "real")
        x = add_public(ctx, x * keep, fill)
    d = x - (await max_last(ctx, x)).unsqueeze(-1)

    async def power():   # y = 1 + d / 2^8 with f + 8 bits is d itself plus one: no truncation
        frac = f + PUMA_EXP_SQUARINGS
        y = await mask(ctx, add_public(ctx, d, encode_scaled(ctx, torch.ones(tuple(d.shape), dtype=torch.float64),
                                                             frac)))
        # f + 8 bits throughout: 8 doublings of a relative error stay small; squares of wires are local,
        # so a squaring is its truncation's round; the last drops to f bits
        for step in range(PUMA_EXP_SQUARINGS):
            last = step == PUMA_EXP_SQUARINGS - 1
            y = await truncate(ctx, product(ctx, y, y), frac + (PUMA_EXP_SQUARINGS if last else 0))
        return y.share(ctx)
    below, y = await ctx.gather(ltz_bits(ctx, add_public(ctx, d, _public(ctx, -PUMA_EXP_CUT, d)), fuzz_bits=f - 4),
                                power())
    (e,) = await select_bits(ctx, not_bit(ctx, below), [y])
    if keep is not None:
        e = e * keep
    n = x.shape[-1]
    return e, e.sum(-1, keepdim=True), 0, max(2, math.ceil(math.log2(n)) + 1)


SOFTMAX_VARIANTS = {variant.name: variant for variant in (
    SoftmaxVariant("exact", _exact_reference, softmax_masked, "max-shifted exp, divided by the sum",
                   softmax_parts),
    SoftmaxVariant("2quad", _quad_reference, softmax_2quad, "MPCFormer's (x + 5)^2 / sum (x + 5)^2",
                   _quad_parts, _quad_scores_bits),
    SoftmaxVariant("2quad_goldschmidt", _quad_reference, softmax_2quad_goldschmidt,
                   "SecFormer's 2Quad with Goldschmidt division"),
    SoftmaxVariant("puma", _puma_reference, softmax_puma, "PUMA's max-shifted (1 + x/256)^256, 0 below -14",
                   _puma_parts),
)}


EXCLUDED = -1e4   # an additive mask entry at or below this excludes its score (-inf, finfo.min, old -10000 masks)


def attention_mask(mask, is_causal, shape, device):
    """The keep mask (bool, broadcast to ``shape``) of an sdpa mask: a bool mask as
    it is, an additive float mask's very negative entries (-inf, finfo.min) as
    False; ``is_causal`` adds the lower triangle. None: nothing is masked."""
    keep = None
    if mask is not None:
        keep = mask if mask.dtype == torch.bool else mask > EXCLUDED
    if is_causal:
        causal = torch.ones(shape[-2], shape[-1], dtype=torch.bool, device=device).tril()
        keep = causal if keep is None else keep & causal
    return None if keep is None else keep.expand(shape)


def finite_part(mask):
    """An additive float mask without its excluding entries (those become 0)."""
    return torch.where(mask > EXCLUDED, mask, torch.zeros_like(mask))


def _plus_finite_part(ctx, scores, mask, frac: int):
    """scores (f fractional bits less ``f - frac``) plus a public additive mask's finite part:
    local; the mask's excluded entries are left to its keep mask."""
    finite = finite_part(mask)
    if not (ctx.meta or bool(finite.abs().max() > 0)):
        return scores
    added = encode(ctx, finite.expand(tuple(scores.shape)).to(torch.float64), "real") >> (ctx.frac_bits - frac)
    return scores.plus(added) if isinstance(scores, Wire) else add_public(ctx, scores, added)


def attention_reference(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                        softmax="exact", bias=None):
    """softmax(q k^T * scale + mask + bias) v in plaintext, with the named softmax variant.
    ``bias``: an additive term that is not public (T5's learned position bias, the server's)."""
    if dropout_p:
        raise ValueError("attention dropout must be 0 at inference")
    if bias is not None:   # one additive float mask: the bias where the mask keeps, -inf where it excludes
        keep = attention_mask(attn_mask, False, tuple(bias.shape), bias.device)
        finite = bias if attn_mask is None or attn_mask.dtype == torch.bool else bias + finite_part(attn_mask)
        attn_mask = finite if keep is None else finite.masked_fill(~keep, -torch.inf)
    if softmax == "exact":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, scale=scale,
                                                                enable_gqa=enable_gqa)
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + finite_part(attn_mask).to(scores.dtype)
    keep = attention_mask(attn_mask, is_causal, tuple(scores.shape), scores.device)
    return SOFTMAX_VARIANTS[softmax].reference(scores, keep) @ v


def _power_of_two_exponent(value: float) -> int | None:
    mantissa, exponent = math.frexp(value)
    return 1 - exponent if mantissa == 0.5 and exponent <= 1 else None


async def sdpa(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
               softmax="exact", bias=None):
    """softmax(q k^T * scale + mask) v for shared q, k, v and a public mask:
    Beaver matmuls for q k^T and p v (``bilinear``: 16-bit openings of wires),
    the scaling, the named softmax variant with masked entries excluded. An
    additive float mask is split into its excluding part (-inf, finfo.min: a
    keep mask) and the rest (added). A scale 2^-j (head size 4^j, e.g. 64)
    joins the matmul's truncation (a shift by f + j, no round of its own);
    other scales are one more truncation with a 24-bit encoded scalar.

    A variant with ``parts`` is not divided before v: its numerators multiply v
    (beside the division's bracket and Newton steps) and the rows of the result
    are scaled by 1/sum, so the division's truncation and the probabilities'
    opening leave the critical path (2 rounds) and n/d of the bytes (deferred
    normalisation, as in FlashAttention). 2Quad's scores carry f // 2 bits
    (``_quad_scores_bits``): its square needs no truncation.

    A shared ``bias`` (T5's position bias) is added to the scores' shares (with f
    fractional bits: 2Quad then keeps f bits and truncates its square).

    Domain: |q k^T| < 2^(62-2f) and, for a scale that is not a power of two,
    < 2^(62-f) / round(scale 2^24); the scores as for the softmax variant;
    |numerators @ v| < 2^(62-2f) and |p v| < 2^(62-3f).
    """
    f = ctx.frac_bits
    variant = SOFTMAX_VARIANTS[softmax]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    shift = _power_of_two_exponent(scale)
    frac = f if shift is None or variant.scores_bits is None or bias is not None else variant.scores_bits(f)
    product_2f = await bilinear(ctx, query, _moved(key, -1, -2), ctx.backend.matmul)
    if shift is not None:   # a wire: the 2Quad square needs no opening
        scores = await truncate(ctx, product_2f, 2 * f - frac + shift)
    else:
        scores = await mul_scalar(ctx, await trunc(ctx, product_2f), scale)
    shape = tuple(scores.shape)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = _plus_finite_part(ctx, scores, attn_mask, frac)
    if bias is not None:
        scores = share_of(ctx, scores) + share_of(ctx, bias).expand(shape)
    keep = attention_mask(attn_mask, is_causal, shape, scores.device)
    keep = None if keep is None else keep.to(torch.int64)
    if variant.parts is None:
        probs = await variant.protocol(ctx, scores, keep)
        return await truncate(ctx, await bilinear(ctx, probs, value, ctx.backend.matmul), f)
    numerators, total, low, high = await variant.parts(ctx, scores, keep, frac)
    (y, s), weighted = await ctx.gather(reciprocal_parts(ctx, total, low, high), _times(ctx, numerators, value))
    return await truncate(ctx, product(ctx, weighted, product(ctx, y, s)), 2 * f)   # y s: 1/sum with 2f bits


async def _times(ctx, numerators, value) -> Wire:
    """numerators @ v, truncated to f bits (a wire)."""
    return await truncate(ctx, await bilinear(ctx, numerators, value, ctx.backend.matmul), ctx.frac_bits)


def _moved(x, source: int, destination: int):
    """x with axis ``source`` moved to ``destination`` (a wire stays one)."""
    if isinstance(x, Wire):
        return x.relaid(functools.partial(torch.movedim, source=source, destination=destination))
    return x.movedim(source, destination)


async def _softmax_op(ctx, x, dim, variant="exact"):
    out = await SOFTMAX_VARIANTS[variant].protocol(ctx, _moved(x, dim, -1), None)
    return _moved(out, -1, dim)


def _mpc(name, params, reference, doc, protocol, **extra):   # softmax ops take and return wires
    return define(name, params, reference, doc, "mpc", protocol=protocol, wires=True, **extra)


def masked_softmax_reference(x, mask, dim=-1, softmax="exact"):
    """The ``softmax`` variant of x + mask's finite part over its last axis, excluded entries
    (mask <= -1e4: -inf, finfo.min) left out."""
    scores = x + finite_part(mask).to(x.dtype)
    keep = attention_mask(mask, False, tuple(scores.shape), scores.device)
    if softmax == "exact":
        return torch.softmax(scores.masked_fill(~keep, -torch.inf), -1)
    return SOFTMAX_VARIANTS[softmax].reference(scores, keep)


async def masked_softmax(ctx, x, mask, dim=-1, softmax="exact"):
    """A softmax whose input went through exclusion masks that no attention fusion took
    (Gemma-2's capped scores): the mask's finite part added, its excluded entries a keep
    mask for the variant's protocol. Rounds and bytes: the variant's."""
    x = _plus_finite_part(ctx, x, mask, ctx.frac_bits)
    keep = attention_mask(mask, False, tuple(x.shape), x.device).to(torch.int64)
    return await SOFTMAX_VARIANTS[softmax].protocol(ctx, x, keep)


_mpc("mpc.softmax_masked", ("self", "mask", "dim", "softmax"), masked_softmax_reference,
     "softmax over the last axis with a public additive mask whose -inf/finfo.min entries are excluded",
     masked_softmax)
_mpc("mpc.softmax", ("self", "dim"), lambda x, dim: torch.softmax(x, dim), "exact softmax (max, exp, division)",
     _softmax_op)
_mpc("mpc.softmax_2quad", ("self", "dim"), lambda x, dim: _quad_reference(x.movedim(dim, -1), None).movedim(-1, dim),
     "MPCFormer's 2Quad softmax (x + 5)^2 / sum (x + 5)^2",
     lambda ctx, x, dim: _softmax_op(ctx, x, dim, "2quad"))
define("softmax_2quad", ("self", "dim"), lambda x, dim: _quad_reference(x.movedim(dim, -1), None).movedim(-1, dim),
       "MPCFormer's 2Quad softmax (x + 5)^2 / sum (x + 5)^2 (a substitute for softmax)", "nn")
define("softmax_2quad_goldschmidt", ("self", "dim"),
       lambda x, dim: _quad_reference(x.movedim(dim, -1), None).movedim(-1, dim),
       "SecFormer's 2Quad softmax with Goldschmidt division (a substitute for softmax)", "nn")
_mpc("mpc.softmax_2quad_goldschmidt", ("self", "dim"),
     lambda x, dim: _quad_reference(x.movedim(dim, -1), None).movedim(-1, dim),
     "SecFormer's 2Quad softmax, Goldschmidt division", lambda ctx, x, dim: _softmax_op(ctx, x, dim, "2quad_goldschmidt"))
define("softmax_puma", ("self", "dim"), lambda x, dim: _puma_reference(x.movedim(dim, -1), None).movedim(-1, dim),
       "PUMA's softmax: max-shifted (1 + x/256)^256, 0 below -14 (a substitute for softmax)", "nn")
_mpc("mpc.softmax_puma", ("self", "dim"), lambda x, dim: _puma_reference(x.movedim(dim, -1), None).movedim(-1, dim),
     "PUMA's softmax (tournament max, squarings, cut-off, division)",
     lambda ctx, x, dim: _softmax_op(ctx, x, dim, "puma"))
_mpc("mpc.sdpa", ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "softmax",
                  "bias"),
     attention_reference, "attention: matmuls, the softmax variant named by softmax, masked entries excluded", sdpa,
     defaults={"bias": None})
