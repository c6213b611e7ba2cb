"""[c < r] for public c and XOR-shared r by a tree of one-round 4-input AND gates (``lt_public``).

The borrow of a masked comparison: ``compare.ltz_bits`` opens c = y + r and
asks for [c < r]; exp asks for the wrap bit of y + t. Where the dealer dealt
r itself (``dealt=``), r is the leaf's mask and the tree starts a level up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import torch

__all__ = ["low_mask", "lt_public"]

LANE_TYPES = {1: torch.int64, 2: torch.int32, 4: torch.int16, 8: torch.int8}   # lanes -> the type of one lane


def _signed(value: int) -> int:
    """A Python int as the int64 with the same low 64 bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def low_mask(bits: int) -> int:
    """The int64 with the low ``bits`` bits set (-1 for 64)."""
    return (1 << bits) - 1 if bits < 64 else -1


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
    leaf: bool            # the first level: inputs are the bits of c and r, one mask per bit (r itself if dealt)
    top: bool             # the last level: no E out
    base: int             # group bases and the positions of the words interleaved into them, every lane
    products: tuple       # the ANDs of masks the dealer gives, sets of (kind, member); ``arity`` per word
    bits: tuple           # bits per word each opening carries: r at the leaf, (G, E) above
    layout: tuple         # where those bits sit in a word (int64 masks), for a transport that packs

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
        if leaf:   # r ^ a: every bit of a lane up to the width
            layout = (_lanes(low_mask(width), lanes),)
        else:      # G of every member but the top one (it enters from this party's own share), E from ``low``
            members = (range(arity - 1), range(1 if top else 0, arity))
            layout = tuple(_signed(sum((base & ((1 << 64) - 1)) << (t * stride) for t in ts)) for ts in members)
        levels.append(_Level(arity, stride, leaf, top, base, _products(arity, leaf, top), opened, layout))
        stride = span
    return _Tree(width, lanes, tuple(levels), _lanes(low_mask(bits), lanes))


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


def _leaf(ctx, level, c, d, a, product):
    """First level: bit j of [c == r] is E_j = d_j ^ a_j, with d = ~c ^ r ^ a public (r ^ a opened, a a mask)
    or, where the dealer knows r, d = ~c and a = r (the products are then ANDs of bits of r). G_j = ~c_j & ~E_j,
    so that G = XOR_t G_t T_(t+1) is linear in the suffix products:
    G = ~c_(k-1) ^ XOR_(1 <= t < k) (~c_(t-1) ^ ~c_t) T_t ^ ~c_0 T_0, E = T_0."""
    not_c = ~c
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
    """The share of the dealer's AND of the masks in ``members`` (of bits of r at a dealt leaf), at the group bases."""
    def product(members):
        index = level.products.index(members)
        shift = index % level.arity * level.stride
        word = words[index // level.arity]
        return word >> shift if shift else word
    return product


def _deal_products(tree, counts, masks, leaf=None):
    """The dealer: every level's ANDs of masks (``masks`` is the XOR of the parties' mask words), each at its
    group bases, ``arity`` to a word at offsets of one stride. ``leaf``: r packed, when the dealer knows it;
    its bits then stand in for the leaf's masks (and ``masks`` starts at the next level)."""
    pieces, at = [], 0
    for level, count in zip(tree.levels, counts):
        if level.leaf and leaf is not None:
            words = leaf.view(1, count)
        else:
            words = masks[at: at + level.mask_words * count].view(level.mask_words, count)
            at += level.mask_words * count
        kinds = {"g": words[0], "e": words[-1]}
        out = torch.zeros(level.product_words, count, dtype=torch.int64, device=words.device)
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


async def lt_public(ctx, c, r, bits: int, dealt=None, shift: int = 0):
    """[c < r] on the low ``bits`` bits, for public words c and XOR-shared words r.

    A tree over segments of bits, each with G = [c < r] and E = [c == r] on
    it. A level joins groups of up to four adjacent segments (3 the highest)
    in one round: G = G3 ^ E3 G2 ^ E3 E2 G1 ^ E3 E2 E1 G0, E = E3 E2 E1 E0
    (the terms exclude each other, so XOR is OR). Its ANDs of up to four
    inputs x_i = d_i ^ a_i (d_i opened, a_i the dealer's mask) are each the
    XOR over sets S of (AND of d_i outside S) & A_S, A_S the AND of the masks
    in S, of which the dealer gives XOR shares for |S| >= 2; every input is
    opened once, its mask shared by all the terms it enters.

    ``dealt``: a value the dealer dealt (a ``rand`` result) whose bits
    ``shift`` .. ``shift + bits - 1`` are r (``ltz_bits``' r, exp's t). The
    dealer then knows r, so r serves as the leaf's mask: d = ~c is public
    without an opening and the dealer deals the ANDs of bits of r instead of
    ANDs of masks. Same material, the leaf's round and bytes saved.

    Steps:
    1. Pack ``64 / lanes``-bit lanes (8, 4, 2 or 1 elements per word for
       widths up to 8, 16, 32, 64); c and r are 0 from bit ``bits`` up:
       neutral segments (G = 0, E = 1) to the width W, the product of the
       arities (ceil(log4 bits) levels of 4, the middle, then the top, then
       the leaf lowered while W >= bits: 4.4 at 16 bits, 4.2.4 at 31,
       4.3.4 at 47, 4.4.4 at 63).
    2. Leaf (groups of k bits): open r ^ a, one mask bit per bit of r (with
       ``dealt``: nothing, a = r). Then E_j = ~c_j ^ r_j = d_j ^ a_j with d
       public, and G_j = ~c_j & ~E_j, so G is linear in the suffix products
       T_t = E_t ... E_(k-1):
       G = ~c_(k-1) ^ XOR_t (~c_(t-1) ^ ~c_t) T_t ^ ~c_0 T_0, E = T_0, with
       T_t = d_t T_(t+1) ^ a_t T_(t+1). The dealer gives the 2^k - k - 1
       ANDs of the group's masks, or of its bits of r (11 for k = 4).
    3. Each level above: open G ^ a_G and E ^ a_E (not the top member's G,
       which enters linearly); G' = G_(k-1) ^ XOR_(t < k-1) G_t T_(t+1),
       E' = T_0. The dealer gives a_x A_U for each input x at member t and
       each non-empty set U of E members above t: 22 for k = 4 (15 at the
       top, which needs no E'), 8 (5) for k = 3, 2 (1) for k = 2.
    4. Between levels, interleave k words into one; at the end, unpack.

    Rounds: ceil(log4 bits), one fewer with ``dealt`` (0 for one bit). Bytes
    per element, both: W/8 at the leaf (none with ``dealt``), then
    (2 - 1/k) n / 8 for a level of arity k over n segments ((2 - 2/k) n / 8
    at the top): 2.75 at 16 bits, 6.25 at 31, 9.25 at 47, 12.25 at 63;
    with ``dealt`` 0.75, 2.25, 3.25, 4.25. Randomness: one seeded mask word
    per word at the leaf (none with ``dealt``), two per word above; the ANDs,
    stored, k to a word: 8 bytes per element at 16 bits, 15 at 31, 32.7 at
    47, 38 at 63 (party 0's share comes from its seed). Returns an
    XOR-shared bit (a 0/1 word). (Masked bitwise comparison, after Catrina
    and de Hoogh 2010; one-round multi-input AND gates from dealt mask
    products, as in ABY2.0, Patra et al. 2021; with ``dealt``, the dealer's
    r is the leaf's mask: mpcc's.)
    """
    shape = tuple(c.shape)
    if bits <= 1:   # one bit: ~c & r, no message
        return ~c & r & low_mask(max(bits, 0))
    tree = _tree(bits)
    count = math.prod(shape)
    padded = -(-count // tree.block) * tree.block
    counts = [padded // tree.lanes // level.stride for level in tree.levels]
    opens = [not (level.leaf and dealt is not None) for level in tree.levels]   # the dealt leaf opens nothing
    mask_total = sum(level.mask_words * n for level, n, o in zip(tree.levels, counts, opens) if o)
    masks = ctx.rand((mask_total,), kind="xor") if mask_total else None

    def deal(*values):   # the dealer: masks (if any), then the dealt value (if any)
        leaf = None if dealt is None else _pack(values[-1] >> shift if shift else values[-1], tree, padded)
        return _deal_products(tree, counts, values[0] if mask_total else None, leaf)
    products = ctx.derive(deal, *[v for v in (masks, dealt) if v is not None], kind="xor",
                          shape=(sum(level.product_words * n for level, n in zip(tree.levels, counts)),))
    if not ctx.meta:   # shapes only (dealer, cost model): the same requests and messages, no arithmetic
        c, r = _pack(c, tree, padded), _pack(r, tree, padded)
    g = e = None
    mask_at = product_at = 0
    for level, n, opened_here in zip(tree.levels, counts, opens):
        product = _reader(level, products[product_at: product_at + level.product_words * n].view(-1, n))
        product_at += level.product_words * n
        if not opened_here:   # r is its own mask: E_j = ~c_j ^ r_j with ~c public
            if not ctx.meta:
                g, e = _leaf(ctx, level, c, ~c, r, product)
        else:
            mask = masks[mask_at: mask_at + level.mask_words * n].view(level.mask_words, n)
            mask_at += level.mask_words * n
            sent = mask if ctx.meta else [r ^ mask[0]] if level.leaf else [g ^ mask[0], e ^ mask[1]]
            other = await ctx.exchange(*sent, bits=list(level.bits), combine="xor", layout=level.layout)
            if not ctx.meta:
                opened = [mine ^ theirs for mine, theirs in zip(sent, other)]
                if level.leaf:
                    g, e = _leaf(ctx, level, c, ~c ^ opened[0], mask[0], product)
                else:
                    g, e = _combine(ctx, level, g, opened, mask, product)
        if not ctx.meta and not level.top:
            g, e = _interleave(g, level), _interleave(e, level)
    if ctx.meta:
        return torch.empty(shape, dtype=torch.int64, device="meta")
    return _unpack(g, tree, count, shape)
