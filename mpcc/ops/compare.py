"""Comparison protocols: LTZ, bit conversion, select, ReLU, max, argmax.

Boolean values are bit-sliced: one int64 word per element holds that
element's bits, XOR-shared (``kind="xor"``). Messages carry only the bits
that matter (the ``bits=`` width the transport packs to). LTZ works on
values with -2^(bits-1) <= x < 2^(bits-1) in ring units: 2^31 (|real| < 32768
at f = 16) by default, 2^47 for ``WIDE_CMP_BITS``, the whole ring at 64
bits. Outside, the answer is the sign of x mod 2^bits: garbage, no error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import torch

from .arith import mul
from .base import define

__all__ = ["CMP_BITS", "WIDE_CMP_BITS", "and_gates", "lt_public", "ltz_bits", "b2a", "select_bits", "relu",
           "max_last", "argmax_last", "not_bit"]

CMP_BITS = 32
WIDE_CMP_BITS = 48
LANE_TYPES = {1: torch.int64, 2: torch.int32, 4: torch.int16, 8: torch.int8}   # lanes -> the type of one lane


def _signed(value: int) -> int:
    """A Python int as the int64 with the same low 64 bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _low(bits: int) -> int:
    return (1 << bits) - 1 if bits < 64 else -1


async def and_gates(ctx, x, ys, bits: int, mask: int | None = None):
    """x AND y (bitwise, low ``bits`` bits) for each y, one round; x's mask is shared by all gates.

    Dealer: words a, b_i (seeded) and c_i = a & b_i (stored). Open x^a and
    each y_i^b_i; z_i = c_i ^ (e & b_i) ^ (d_i & a) ^ [p0](e & d_i).
    Rounds 1. Bytes: (1 + len(ys)) * bits / 8 per element, both. Material:
    1 + len(ys) seeded words and len(ys) stored words (8 bytes each) per
    element. (Beaver for GF(2); ``lt_public`` has its own one-round
    4-input gates.)
    """
    low = _low(bits) if mask is None else mask
    a = ctx.rand(x.shape, kind="xor")
    bs = [ctx.rand(y.shape, kind="xor") for y in ys]
    cs = [ctx.derive(lambda a, b: a & b, a, b, shape=y.shape, kind="xor") for y, b in zip(ys, bs)]
    if ctx.meta:  # shapes only (dealer, cost model): same requests and messages, no bit arithmetic
        await ctx.exchange(x, *ys, bits=bits)
        return list(ys)
    masked = [x ^ a] + [y ^ b for y, b in zip(ys, bs)]
    opened = await ctx.exchange(*masked, bits=bits, combine="xor")  # bits above ``bits`` are masks: never used, not counted
    e = masked[0] ^ opened[0]
    outs = []
    for m, b, c, other in zip(masked[1:], bs, cs, opened[1:]):
        d = m ^ other
        z = c ^ (e & b) ^ (d & a)
        if ctx.party == 0:
            z = z ^ (e & d)
        outs.append(z & low)
    return outs


# ---------------------------------------------------------------- [c < r]: a tree of 4-input AND gates
#
# Layout: several elements per int64 word (lanes), bit j of an element at bit
# j of its lane. A level joins groups of ``arity`` adjacent segments whose
# (G, E) bits lie ``stride`` positions apart and leaves (G', E') at each
# group's base, its lowest position; then ``arity`` words are interleaved into
# one (the i-th shifted up by i * stride), so that every level works on full
# words; ``_unpack`` undoes it. No bit permutation is needed.


@dataclass(frozen=True)
class _Level:
    """One level of ``lt_public``'s tree (for the words of a level: masks, products, openings)."""
    arity: int
    stride: int
    leaf: bool            # the first level: inputs are the bits of c and r, one mask per bit
    top: bool             # the last level: no E out
    base: int             # group bases and the positions of the words interleaved into them, every lane
    products: tuple       # the ANDs of masks the dealer gives, sets of (kind, member); ``arity`` per word
    bits: tuple           # bits per word each opening carries: r at the leaf, (G, E) above

    @property
    def mask_words(self) -> int:
        return 1 if self.leaf else 2

    @property
    def product_words(self) -> int:
        return -(-len(self.products) // self.arity)


@dataclass(frozen=True)
class _Tree:
    width: int            # the product of the arities: bits at and above ``bits`` are neutral (c = r = 0)
    lanes: int
    levels: tuple
    valid: int            # the low ``bits`` bits of every lane

    @property
    def lane_bits(self) -> int:
        return 64 // self.lanes

    @property
    def block(self) -> int:
        """Elements are padded to a multiple of this (lanes times the words interleaved into one)."""
        return self.lanes * self.levels[-1].stride


def _lanes(mask: int, lanes: int) -> int:
    """A per-lane mask repeated in each 64/lanes-bit lane of a word."""
    return _signed(sum(mask << (lane * 64 // lanes) for lane in range(lanes)))


def _arities(bits: int) -> list[int]:
    """ceil(log4 bits) levels of arity 4, lowered (the middle first, then the top, then the leaf) while
    their product stays >= bits: 31 bits -> 4, 2, 4; 47 -> 4, 3, 4; 16 -> 4, 4; 20 -> 4, 2, 3."""
    depth = 0
    while 4 ** depth < bits:
        depth += 1
    arities = [4] * depth
    for i in dict.fromkeys([*range(depth - 2, 0, -1), depth - 1, 0]):
        while math.prod(arities) // arities[i] * (arities[i] - 1) >= bits:
            arities[i] -= 1
    return arities


def _products(arity: int, leaf: bool, top: bool) -> tuple:
    """The ANDs of two or more masks that ``_suffix_products`` and ``_combine`` ask for: a_x A_U for each
    input x at member t and each non-empty set U of E members above t."""
    members = []
    lowest = 1 if top and not leaf else 0
    kinds = [("e", lowest)] if leaf else [("e", lowest), ("g", 0)]
    for kind, low in kinds:
        for t in range(arity - 2, low - 1, -1):
            above = range(t + 1, arity)
            for size in range(1, len(above) + 1):
                for chosen in combinations(above, size):
                    members.append(frozenset({(kind, t)} | {("e", u) for u in chosen}))
    return tuple(members)


@lru_cache(maxsize=None)
def _tree(bits: int) -> _Tree:
    arities = _arities(bits)
    width = math.prod(arities)
    lanes = next(n for n in (8, 4, 2, 1) if width <= 64 // n)
    levels, stride = [], 1
    for i, arity in enumerate(arities):
        leaf, top = i == 0, i == len(arities) - 1
        span = stride * arity
        base = _lanes(sum(1 << p for p in range(width) if p % span < stride), lanes)
        per_word = lanes * width // arity
        opened = (lanes * width,) if leaf else (per_word * (arity - 1), per_word * (arity - top))
        levels.append(_Level(arity, stride, leaf, top, base, _products(arity, leaf, top), opened))
        stride = span
    return _Tree(width, lanes, tuple(levels), _lanes(_low(bits), lanes))


def _terms(coefs, x, single, product):
    """The share of a_x T, for a suffix product T = XOR_U c_U A_U (public c_U; A_U the AND of the masks
    in U, A_{} = 1): XOR_U c_U A_{U + x}, where A_{x} is x's own mask share ``single``."""
    total = None
    for members, coef in coefs:
        word = single if not members else product(members | {x})
        term = word if coef is None else coef & word
        total = term if total is None else total ^ term
    return total


def _suffix_products(ctx, d, a, product, low: int):
    """Shares of T_t = E_t E_(t+1) ... E_(k-1) for t = k-1 down to ``low`` (T_k = 1), where
    E_t = d[t] ^ a_t (d public, a[t] the share of its mask), and the expansion of each T_t (t >= 1)
    as XOR_U c_U A_U with c_U the AND of d[j] for j not in U (None: the constant 1).
    By T_t = d[t] T_(t+1) ^ a_t T_(t+1)."""
    k = len(d)
    shares = {k: None}
    coefs = {k: [(frozenset(), None)]}
    for t in range(k - 1, low - 1, -1):
        ref = ("e", t)
        shares[t] = _terms(coefs[t + 1], ref, a[t], product)
        if shares[t + 1] is not None:
            shares[t] = shares[t] ^ (d[t] & shares[t + 1])
        elif ctx.party == 0:   # T_k = 1: party 0 holds the constant
            shares[t] = shares[t] ^ d[t]
        if t > 0:
            coefs[t] = ([(members, d[t] if coef is None else d[t] & coef) for members, coef in coefs[t + 1]]
                        + [(members | {ref}, coef) for members, coef in coefs[t + 1]])
    return shares, coefs


def _leaf(ctx, level, c, opened, a, product):
    """First level, after opening r ^ a (one mask per bit): bit j of [c == r] is E_j = d_j ^ a_j with
    d = ~c ^ r ^ a, and G_j = ~c_j & ~E_j, so that G = XOR_t G_t T_(t+1) is linear in the suffix products:
    G = ~c_(k-1) ^ XOR_(1 <= t < k) (~c_(t-1) ^ ~c_t) T_t ^ ~c_0 T_0, E = T_0."""
    not_c = ~c
    d = not_c ^ opened[0]
    k = level.arity
    shares, _ = _suffix_products(ctx, [d >> j for j in range(k)], [a >> j for j in range(k)], product, 0)
    change = not_c ^ (not_c >> 1)
    g = not_c & shares[0]
    for t in range(1, k):
        g = g ^ ((change >> (t - 1)) & shares[t])
    if ctx.party == 0:
        g = g ^ (not_c >> (k - 1))
    return g, shares[0]


def _combine(ctx, level, g, opened, masks, product):
    """A level above the first, after opening G ^ a_G and E ^ a_E: G' = G_(k-1) ^ XOR_(t < k-1) G_t T_(t+1)
    and E' = T_0, with G_t T = d_t T ^ a_t T."""
    d_g, d_e = opened
    k, stride = level.arity, level.stride
    low = 1 if level.top else 0
    d = [d_e >> (j * stride) if j >= low else None for j in range(k)]
    a = [masks[1] >> (j * stride) if j >= low else None for j in range(k)]
    shares, coefs = _suffix_products(ctx, d, a, product, low)
    out = g >> ((k - 1) * stride)
    for t in range(k - 1):
        out = out ^ ((d_g >> (t * stride)) & shares[t + 1])
        out = out ^ _terms(coefs[t + 1], ("g", t), masks[0] >> (t * stride), product)
    return out, shares.get(0)


def _reader(level, words):
    """The share of the dealer's AND of the masks in ``members``, at the group bases."""
    def product(members):
        index = level.products.index(members)
        shift = index % level.arity * level.stride
        word = words[index // level.arity]
        return word >> shift if shift else word
    return product


def _deal_products(tree, counts, masks):
    """The dealer: every level's ANDs of masks (``masks`` is the XOR of the parties' mask words), each at its
    group bases, ``arity`` to a word at offsets of one stride."""
    pieces, at = [], 0
    for level, count in zip(tree.levels, counts):
        words = masks[at: at + level.mask_words * count].view(level.mask_words, count)
        at += level.mask_words * count
        kinds = {"g": words[0], "e": words[-1]}
        out = torch.zeros(level.product_words, count, dtype=torch.int64, device=masks.device)
        for index, members in enumerate(level.products):
            value = None
            for kind, member in members:
                word = kinds[kind] >> (member * level.stride)
                value = word if value is None else value & word
            out[index // level.arity] |= (value & level.base) << (index % level.arity * level.stride)
        pieces.append(out.reshape(-1))
    return torch.cat(pieces)


def _pack(x, tree, padded: int):
    """Elements lanes*i ... lanes*i + lanes-1 side by side in word i (little-endian casts), low ``bits`` bits each."""
    flat = x.reshape(-1)
    if padded > flat.numel():
        flat = torch.cat([flat, flat.new_zeros(padded - flat.numel())])
    return flat.to(LANE_TYPES[tree.lanes]).view(torch.int64) & tree.valid


def _interleave(x, level):
    """``arity`` words into one: the i-th's group results (at the bases) shifted up by i * stride."""
    chunks = (x & level.base).view(level.arity, -1)
    shifts = torch.arange(0, level.arity * level.stride, level.stride, device=x.device).view(-1, 1)
    return (chunks << shifts).sum(0)   # disjoint bits: the sum is the OR


def _unpack(g, tree, count: int, shape):
    """The top level's results, one 0/1 word per element, in the order of ``_pack`` (undoing the interleaving)."""
    lanes, slots = tree.lanes, tree.levels[-1].stride
    at = (torch.arange(lanes, device=g.device) * tree.lane_bits).view(-1, 1) + torch.arange(slots, device=g.device)
    bits = (g.view(-1, 1) >> at.view(1, -1)) & 1
    digits = [level.arity for level in tree.levels[:-1]]
    bits = bits.view(-1, lanes, *reversed(digits))
    return bits.permute(*range(len(digits) + 1, 1, -1), 0, 1).reshape(-1)[:count].reshape(shape)


async def lt_public(ctx, c, r, bits: int):
    """[c < r] on the low ``bits`` bits, for public words c and XOR-shared words r.

    A tree over segments of bits, each with G = [c < r] and E = [c == r] on
    it. A level joins groups of up to four adjacent segments (3 the highest)
    in one round: G = G3 ^ E3 G2 ^ E3 E2 G1 ^ E3 E2 E1 G0, E = E3 E2 E1 E0
    (the terms exclude each other, so XOR is OR). Its ANDs of up to four
    inputs x_i = d_i ^ a_i (d_i opened, a_i the dealer's mask) are each the
    XOR over sets S of (AND of d_i outside S) & A_S, A_S the AND of the masks
    in S, of which the dealer gives XOR shares for |S| >= 2; every input is
    opened once, its mask shared by all the terms it enters.

    Steps:
    1. Pack ``64 / lanes``-bit lanes (8, 4, 2 or 1 elements per word for
       widths up to 8, 16, 32, 64); c and r are 0 from bit ``bits`` up:
       neutral segments (G = 0, E = 1) to the width W, the product of the
       arities (ceil(log4 bits) levels of 4, the middle, then the top, then
       the leaf lowered while W >= bits: 4.4 at 16 bits, 4.2.4 at 31,
       4.3.4 at 47, 4.4.4 at 63).
    2. Leaf (groups of k bits): open r ^ a, one mask bit per bit of r. Then
       E_j = ~c_j ^ r_j = d_j ^ a_j with d public, and G_j = ~c_j & ~E_j, so
       G is linear in the suffix products T_t = E_t ... E_(k-1):
       G = ~c_(k-1) ^ XOR_t (~c_(t-1) ^ ~c_t) T_t ^ ~c_0 T_0, E = T_0, with
       T_t = d_t T_(t+1) ^ a_t T_(t+1). The dealer gives the 2^k - k - 1
       ANDs of the group's masks (11 for k = 4).
    3. Each level above: open G ^ a_G and E ^ a_E (not the top member's G,
       which enters linearly); G' = G_(k-1) ^ XOR_(t < k-1) G_t T_(t+1),
       E' = T_0. The dealer gives a_x A_U for each input x at member t and
       each non-empty set U of E members above t: 22 for k = 4 (15 at the
       top, which needs no E'), 8 (5) for k = 3, 2 (1) for k = 2.
    4. Between levels, interleave k words into one; at the end, unpack.

    Rounds: ceil(log4 bits) (0 for one bit). Bytes per element, both: W/8 at
    the leaf, then (2 - 1/k) n / 8 for a level of arity k over n segments
    ((2 - 2/k) n / 8 at the top): 2.75 at 16 bits, 6.25 at 31, 9.25 at 47,
    12.25 at 63. Randomness: one seeded mask word per word at the leaf, two
    per word above; the ANDs of masks, stored, k to a word: 8 bytes per
    element at 16 bits, 15 at 31, 32.7 at 47, 38 at 63 (party 0's share
    comes from its seed). Returns an XOR-shared bit (a 0/1 word).
    (Masked bitwise comparison, after Catrina and de Hoogh 2010; one-round
    multi-input AND gates from dealt mask products, as in ABY2.0, Patra et
    al. 2021.)
    """
    shape = tuple(c.shape)
    if bits <= 1:   # one bit: ~c & r, no message
        return ~c & r & _low(max(bits, 0))
    tree = _tree(bits)
    count = math.prod(shape)
    padded = -(-count // tree.block) * tree.block
    counts = [padded // tree.lanes // level.stride for level in tree.levels]
    masks = ctx.rand((sum(level.mask_words * n for level, n in zip(tree.levels, counts)),), kind="xor")
    products = ctx.derive(lambda m: _deal_products(tree, counts, m), masks,
                          shape=(sum(level.product_words * n for level, n in zip(tree.levels, counts)),), kind="xor")
    if not ctx.meta:   # shapes only (dealer, cost model): the same requests and messages, no arithmetic
        c, r = _pack(c, tree, padded), _pack(r, tree, padded)
    g = e = None
    mask_at = product_at = 0
    for level, n in zip(tree.levels, counts):
        mask = masks[mask_at: mask_at + level.mask_words * n].view(level.mask_words, n)
        product = _reader(level, products[product_at: product_at + level.product_words * n].view(-1, n))
        mask_at, product_at = mask_at + level.mask_words * n, product_at + level.product_words * n
        sent = mask if ctx.meta else [r ^ mask[0]] if level.leaf else [g ^ mask[0], e ^ mask[1]]
        other = await ctx.exchange(*sent, bits=list(level.bits), combine="xor")
        if ctx.meta:
            continue
        opened = [mine ^ theirs for mine, theirs in zip(sent, other)]
        if level.leaf:
            g, e = _leaf(ctx, level, c, opened, mask[0], product)
        else:
            g, e = _combine(ctx, level, g, opened, mask, product)
        if not level.top:
            g, e = _interleave(g, level), _interleave(e, level)
    if ctx.meta:
        return torch.empty(shape, dtype=torch.int64, device="meta")
    return _unpack(g, tree, count, shape)


async def ltz_bits(ctx, x, bits: int = CMP_BITS, fuzz_bits: int = 0):
    """XOR-shared bit [x < 0] for -2^(bits-1) <= x < 2^(bits-1) ring units.

    Domain: exact on [-2^(bits-1), 2^(bits-1)) with ``fuzz_bits`` = 0. At
    ``bits`` = 64 that is the whole ring (y = x + 2^63 wraps; the result is
    x's sign bit). Outside, y wraps mod 2^bits and the result is garbage.

    With ``fuzz_bits`` > 0 the borrow tree skips the low ``fuzz_bits`` bits
    and is that much narrower (a 16-bit tree packs four elements per word);
    the result is then exact on [-2^(bits-1), -2^fuzz_bits] and on
    [0, 2^(bits-1) - 2^fuzz_bits], and may be either value (about half the
    time) on (-2^fuzz_bits, 0) and near the top, (2^(bits-1) - 2^fuzz_bits,
    2^(bits-1)): the skipped borrow matters only where y mod 2^(bits-1)
    exceeds 2^(bits-1) - 2^fuzz_bits. Callers whose result
    does not care near 0 use it (GeLU segments, exp's clip), and must keep
    their inputs 2^fuzz_bits inside the top of the domain.

    Steps: y = x + 2^(bits-1) lies in [0, 2^bits). The dealer deals r
    (seeded) and an XOR sharing of r mod 2^bits (stored). Open
    c = y + r mod 2^bits (``bits`` bits each way); then
    msb(y) = c_top ^ r_top ^ [c mod 2^(bits-1) < r mod 2^(bits-1)], the last
    by ``lt_public`` on bits - 1 - fuzz_bits bits; [x < 0] = not msb(y).
    Rounds 1 + ceil(log4(bits - 1 - fuzz_bits)): 4 at 32 and 48 bits (and
    64), 3 for the 16-bit fuzzy trees. Bytes per element, both: bits/8 plus
    the tree's: 10.25 at 32 bits, 15.25 at 48, 20.25 at 64, 6.75 at 32 bits
    with fuzz_bits = 15. Material stored per element: 8 (r's XOR sharing)
    plus the tree's: 23 bytes at 32 bits, 40.7 at 48, 46 at 64, 16 for the
    16-bit fuzzy tree. (Masked comparison with a dealer, after Catrina and
    de Hoogh.)
    """
    if bits < 64:   # a 64-bit LTZ has no domain: it reads the sign of the ring element
        ctx.check_range(x, bits - 1)
    low = _low(bits)
    r = ctx.rand(x.shape)
    r_xor = ctx.derive(lambda r: r & low, r, shape=x.shape, kind="xor")
    y = x + (1 << (bits - 1)) if ctx.party == 0 else x
    c = await ctx.open((y + r) & low, bits=bits) & low
    top = bits - 1
    middle = top - fuzz_bits
    borrow = await lt_public(ctx, (c >> fuzz_bits) & _low(middle), (r_xor >> fuzz_bits) & _low(middle), middle)
    msb = borrow ^ ((r_xor >> top) & 1)
    if ctx.party == 0:
        msb = msb ^ ((c >> top) & 1) ^ 1
    return msb


async def b2a(ctx, bit):
    """XOR-shared bit -> additive share of 0/1. Dealer: a random bit rho
    (seeded word, low bit) and its additive shares (stored). Open
    beta = bit ^ rho (1 bit each way); bit = beta + rho - 2 beta rho. Rounds 1.
    (The dealer-assisted B2A of CrypTen's TTP mode and ABY3.)"""
    rho = ctx.rand(bit.shape, kind="xor")
    rho_a = ctx.derive(lambda r: r & 1, rho, shape=bit.shape)
    beta = await ctx.open_xor((bit ^ rho) & 1, bits=1) & 1
    out = rho_a * (1 - 2 * beta)
    return out + beta if ctx.party == 0 else out


async def select_bits(ctx, bit, values):
    """bit * v for each v (an XOR-shared bit times additive shares), one round.

    Dealer: bit rho, its additive shares, masks a_i (seeded) and rho*a_i
    (stored). Open beta = bit ^ rho and e_i = v_i - a_i together; then
    rho*v_i = rho*e_i + rho*a_i and bit*v_i = beta v_i + (1 - 2 beta) rho v_i.
    No truncation (the bit is an integer). Bytes: 1 bit + 8 bytes per element, both.
    (B2A and the bit-times-value product fused into one round with one
    Beaver-style mask per value.)
    """
    rho = ctx.rand(bit.shape, kind="xor")
    rho_a = ctx.derive(lambda r: r & 1, rho, shape=bit.shape)
    masks = [ctx.rand(v.shape) for v in values]
    products = [ctx.derive(lambda r, a: (r & 1) * a, rho, a, shape=v.shape) for v, a in zip(values, masks)]
    if ctx.meta:  # shapes only: the same requests and message
        await ctx.exchange(bit, *values, bits=[1] + [None] * len(values))
        return [torch.empty(torch.broadcast_shapes(bit.shape, v.shape), dtype=torch.int64, device="meta")
                for v in values]
    opened = await ctx.exchange((bit ^ rho) & 1, *[v - a for v, a in zip(values, masks)], bits=[1] + [None] * len(values),
                          combine=["xor"] + ["add"] * len(values))
    beta = (bit ^ rho ^ opened[0]) & 1
    outs = []
    for v, a, c, other in zip(values, masks, products, opened[1:]):
        rho_v = rho_a * (v - a + other) + c
        outs.append(beta * v + (1 - 2 * beta) * rho_v)
    return outs


def not_bit(ctx, bit):
    return bit ^ 1 if ctx.party == 0 else bit


async def relu(ctx, x):
    """max(x, 0) = [x >= 0] * x: one LTZ and one select. Domain: LTZ's,
    -2^(CMP_BITS-1) <= x < 2^(CMP_BITS-1) ring units (|x| < 32768 at f = 16)."""
    (out,) = await select_bits(ctx, not_bit(ctx, await ltz_bits(ctx, x)), [x])
    return out


def _split_pairs(x):
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half: 2 * half], x[..., 2 * half:]


async def max_last(ctx, x, fuzz_bits: int = 0):
    """Max over the last axis by a tournament: ceil(log2 n) levels of
    LTZ + select, all pairs of a level in one call. With ``fuzz_bits`` the
    result may be below the max by up to 2^fuzz_bits ring units per level.
    Domain: each LTZ sees a difference of two entries, so the spread
    max - min of each row must be < 2^(CMP_BITS-1) ring units (32768 at
    f = 16; 2^fuzz_bits less with ``fuzz_bits``); the entries themselves may
    be larger."""
    while x.shape[-1] > 1:
        a, b, rest = _split_pairs(x)
        diff = a - b
        (chosen,) = await select_bits(ctx, not_bit(ctx, await ltz_bits(ctx, diff, fuzz_bits=fuzz_bits)), [diff])
        x = torch.cat([b + chosen, rest], -1)
    return x[..., 0]


async def argmax_last(ctx, x):
    """Index of a max over the last axis, as an additive share of an integer;
    tournament as ``max_last`` carrying the index through the same selects
    (and with its domain: the spread of each row < 2^(CMP_BITS-1) ring units)."""
    index = torch.arange(x.shape[-1], device=x.device).expand(x.shape).contiguous()
    index = index if ctx.party == 0 else torch.zeros_like(index)
    while x.shape[-1] > 1:
        a, b, rest = _split_pairs(x)
        ia, ib, irest = _split_pairs(index)
        diff = a - b
        chosen, chosen_index = await select_bits(ctx, not_bit(ctx, await ltz_bits(ctx, diff)), [diff, ia - ib])
        x = torch.cat([b + chosen, rest], -1)
        index = torch.cat([ib + chosen_index, irest], -1)
    return index[..., 0]


def _along(fn, dim, keepdim):
    async def protocol(ctx, x):
        out = await fn(ctx, x.movedim(dim, -1))
        return out.unsqueeze(dim) if keepdim else out
    return protocol


async def _ltz_arith(ctx, x):
    return await b2a(ctx, await ltz_bits(ctx, x))


async def _where(ctx, condition, x, y):
    return y + await mul(ctx, condition, x - y, truncate=False)


def _mpc(name, params, reference, doc, protocol):
    return define(name, params, reference, doc, "mpc", protocol=protocol)


_mpc("mpc.ltz", ("self",), lambda x: (x < 0).to(torch.int64), "[x < 0] as a shared 0/1 integer",
     lambda ctx, x: _ltz_arith(ctx, x))
_mpc("mpc.relu", ("self",), torch.relu, "max(x, 0)", relu)
_mpc("mpc.where", ("condition", "self", "other"), torch.where, "select by a shared 0/1 condition (Beaver, no truncation)",
     lambda ctx, condition, x, y: _where(ctx, condition, x, y))
_mpc("mpc.amax", ("self", "dim", "keepdim"), lambda x, dim, keepdim=False: torch.amax(x, dim, keepdim),
     "max over one axis (tournament)",
     lambda ctx, x, dim, keepdim=False: _along(max_last, dim, keepdim)(ctx, x))
_mpc("mpc.argmax", ("self", "dim", "keepdim"), lambda x, dim, keepdim=False: torch.argmax(x, dim, keepdim),
     "index of the max over one axis (tournament)",
     lambda ctx, x, dim, keepdim=False: _along(argmax_last, dim, keepdim)(ctx, x))
