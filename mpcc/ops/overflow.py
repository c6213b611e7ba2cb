"""Building blocks of a secure run-time overflow flag (opt-in).

A protocol fed a value outside its domain returns garbage without noticing.
These two steps let a plan test, under MPC, whether any value left its
domain: ``out_of_range_bits`` marks each element whose magnitude is too
large, ``any_bits`` ORs whole tensors of such marks down to one XOR-shared
bit each, which the parties can open (to the client, or both) and turn into
an error instead of an output. Both work on the whole ring: an overflowed
value is an arbitrary ring element, so no step may assume a bound on it.
"""
from __future__ import annotations

import torch

from .compare import and_gates, ltz_bits, not_bit

__all__ = ["out_of_range_bits", "any_bits", "WORD_BITS"]

WORD_BITS = 64   # XOR-shared bits packed per word by ``any_bits``


async def out_of_range_bits(ctx, x, bound_log2: int, fuzz_log2: int | None = None):
    """XOR-shared 0/1 words: 1 where |x| >= 2^bound_log2 ring units, 0 where
    |x| < 2^(bound_log2 - 1), either value in between; exact on the whole ring.

    To catch every value outside |x| < 2^k, pass ``bound_log2 = k``: values
    in [2^(k-1), 2^k) may raise a false alarm, none outside is missed.
    (For the comparison domain at f = 16, k = 31.) ``fuzz_log2`` = j (default
    k - 2) moves the threshold to T = 2^k - 2^j and narrows the band where
    either answer may come to [2^k - 2^(j+1), 2^k): j = k - 3 keeps every
    |x| < 3/4 2^k unflagged, at the same cost while the tree width rounds up
    to the same power of two. (The default gives T = 3 * 2^(k-2), as below.)

    Steps: with T = 3 * 2^(bound_log2 - 2), one 64-bit LTZ on the pair
    (T - x, x + T) gives [x > T] and [x < -T]; its ``fuzz_bits`` = bound_log2 - 2
    skip the low bits, so each is exact wherever |x -+ T| >= 2^(bound_log2 - 2)
    (which holds outside the in-between band) and the borrow tree is
    65 - bound_log2 bits wide. A 64-bit LTZ is the sign bit of the ring
    element, so it needs no bound on x; near +-2^63, where the fuzzy tree may
    err, the other half of the pair is exact and 1. The two halves are joined
    by OR = NOT(AND(NOT a, NOT b)), one AND gate (both halves can be 1 only
    near +-2^63, so XOR would not do).
    Rounds: 1 (the opening) + the levels of the 4-ary borrow tree over its
    65 - bound_log2 bits above its leaf (``lt_public``; the dealer, who knows
    r, deals the leaf), + 1 (the AND). Bytes sent per element by each party,
    and dealer material stored per element (for party 1; party 0's comes
    from its seed), as the transport and the cost model count them for 64
    elements (the trees pad to whole words):

        bound_log2   rounds   online bytes   stored bytes
        2 .. 16        4         24.75          100
        17 .. 28       4         22.97           91.4
        29 .. 32       4         21.16           88.6
        33 .. 40       4         20.75           54
        41 .. 46       4         19.5            52
        47, 48         4         19.61           46
        49 .. 52       3         17.75           40
        53 .. 55       3         17.25           38
        56             3         17.28           35
        57, 58         3         16.75           30.5
        59, 60         3         16.81           29.25
        61             2         16.25           30
        62             2         16.25           28

    (With the leaf opened: a round more and 0.75 to 16 bytes more, 5 rounds
    and 30.44 bytes at 29 .. 32.)

    Randomness: that of two 64-bit LTZs (r, its XOR sharing, the tree's AND
    triples) and one 1-bit AND gate per element. (Masked comparison with a
    dealer, after Catrina and de Hoogh; Beaver AND over GF(2).)
    """
    fuzz_log2 = bound_log2 - 2 if fuzz_log2 is None else fuzz_log2
    if not 2 <= bound_log2 <= 62 or not 0 <= fuzz_log2 <= bound_log2 - 2:
        raise ValueError(f"bound_log2 must be in [2, 62] and fuzz_log2 in [0, bound_log2 - 2], "
                         f"not {bound_log2}, {fuzz_log2}")
    threshold = (1 << bound_log2) - (1 << fuzz_log2)
    public = threshold if ctx.party == 0 else 0
    sides = await ltz_bits(ctx, torch.stack([public - x, x + public], -1), 64, fuzz_bits=fuzz_log2)
    above_not, below_not = (not_bit(ctx, sides[..., i].contiguous()) for i in (0, 1))
    (inside,) = await and_gates(ctx, above_not, [below_not], 1)
    return not_bit(ctx, inside)


def _pack_complements(ctx, bits):
    """NOT of 64 element bits per word (a linear map on XOR shares), padded with
    bit 0 (complement 1, neutral for AND); at least one word."""
    flat = bits.reshape(-1) & 1
    words = max(1, -(-flat.numel() // WORD_BITS))
    pad = words * WORD_BITS - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    positions = torch.arange(WORD_BITS, device=flat.device)
    packed = (flat.reshape(words, WORD_BITS) << positions).sum(-1)   # disjoint bits: the sum is the OR
    return ~packed if ctx.party == 0 else packed


async def any_bits(ctx, bit_tensors: list) -> torch.Tensor:
    """One XOR-shared bit per tensor of XOR-shared 0/1 words: 1 where any of its bits is 1.

    All tensors are reduced in parallel by one log-depth AND tree on the
    complements (OR = NOT AND NOT). Steps: each party packs 64 element bits
    into one word, complemented (local: XOR shares are linear); then levels
    of 64-bit AND gates pair the first half of each tensor's words with the
    second (an odd word waits a level), one ``and_gates`` call per level for
    every tensor at once, until each tensor has one word; then six levels
    AND the word's halves (32, 16, ..., 1 bits); the result is NOT of bit 0.
    An empty tensor gives 0.
    Rounds: ceil(log2(max words)) + 6, words = ceil(n / 64) for n elements:
    about log2(n) for the largest tensor (16 for 65536 elements). Bytes,
    both: 16 per pair of words ANDed, 16 (words - 1) per tensor (about n / 4:
    2 bits per element), plus 2 ceil(k w / 8) for k tensors at each in-word
    level of width w = 32, 16, ..., 1 (20 for one tensor). Randomness:
    that of the AND gates (Beaver triples over GF(2), one word per pair).
    (Beaver AND; the tree as in a bitwise OR-reduction of GMW.)
    """
    words = [_pack_complements(ctx, bits) for bits in bit_tensors]
    if not words:
        raise ValueError("any_bits needs at least one tensor")
    while any(w.numel() > 1 for w in words):
        halves = [w.numel() // 2 for w in words]
        left = torch.cat([w[:h] for w, h in zip(words, halves)])
        right = torch.cat([w[h:2 * h] for w, h in zip(words, halves)])
        (both,) = await and_gates(ctx, left, [right], WORD_BITS)
        words = [torch.cat([part, w[2 * h:]]) for part, w, h in zip(both.split(halves), words, halves)]
    word = torch.cat(words)
    width = WORD_BITS
    while width > 1:
        width //= 2
        low = (1 << width) - 1
        (word,) = await and_gates(ctx, word & low, [(word >> width) & low], width)
    return not_bit(ctx, word & 1)
