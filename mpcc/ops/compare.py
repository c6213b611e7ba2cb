"""Comparison protocols: LTZ, bit conversion, select, ReLU, max, argmax.

Boolean values are bit-sliced: one int64 word per element holds that
element's bits, XOR-shared (``kind="xor"``). Messages carry only the bits
that matter (the ``bits=`` width the transport packs to). LTZ works on
values with -2^(bits-1) <= x < 2^(bits-1) in ring units: 2^31 (|real| < 32768
at f = 16) by default, 2^47 for ``WIDE_CMP_BITS``, the whole ring at 64
bits. Outside, the answer is the sign of x mod 2^bits: garbage, no error.
The borrow tree, ``lt_public``, lives in ``borrow_tree.py`` (re-exported).
"""
from __future__ import annotations

import torch

from .arith import mul
from .base import define
from .borrow_tree import low_mask, lt_public
from .wire import Part, Wire

__all__ = ["CMP_BITS", "WIDE_CMP_BITS", "and_gates", "lt_public", "ltz_bits", "b2a", "select_bits", "relu",
           "max_last", "argmax_last", "not_bit"]

CMP_BITS = 32
WIDE_CMP_BITS = 48


async def and_gates(ctx, x, ys, bits: int, mask: int | None = None):
    """x AND y (bitwise, low ``bits`` bits) for each y, one round; x's mask is shared by all gates.

    Dealer: words a, b_i (seeded) and c_i = a & b_i (stored). Open x^a and
    each y_i^b_i; z_i = c_i ^ (e & b_i) ^ (d_i & a) ^ [p0](e & d_i).
    Rounds 1. Bytes: (1 + len(ys)) * bits / 8 per element, both. Material:
    1 + len(ys) seeded words and len(ys) stored words (8 bytes each) per
    element. (Beaver for GF(2); ``lt_public`` has its own one-round
    4-input gates.)
    """
    low = low_mask(bits) if mask is None else mask
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
    by ``lt_public`` on bits - 1 - fuzz_bits bits, with r ``dealt``: the
    dealer derives the tree's leaf (ANDs of bits of r) from r, so the leaf
    needs no opening; [x < 0] = not msb(y).
    Rounds: the opening, then the tree's levels above its leaf,
    max(1, ceil(log4(bits - 1 - fuzz_bits))): 3 at 32 and 48 bits (and 64),
    2 for the 16-bit fuzzy trees (4 and 3 when the leaf was opened).
    Bytes per element, both: bits/8 plus the tree's: 6.25 at 32 bits, 9.25
    at 48, 12.25 at 64, 4.75 at 32 bits with fuzz_bits = 15. Material stored
    per element: 8 (r's XOR sharing) plus the tree's: 23 bytes at 32 bits,
    40.7 at 48, 46 at 64, 16 for the 16-bit fuzzy tree. (Masked comparison
    with a dealer, after Catrina and de Hoogh.)
    """
    if bits < 64:   # a 64-bit LTZ has no domain: it reads the sign of the ring element
        ctx.check_range(x, bits - 1)
    low = low_mask(bits)
    r = ctx.rand(x.shape)
    r_xor = ctx.derive(lambda r: r & low, r, shape=x.shape, kind="xor")
    y = x + (1 << (bits - 1)) if ctx.party == 0 else x
    c = await ctx.open((y + r) & low, bits=bits) & low
    top = bits - 1
    middle = top - fuzz_bits
    borrow = await lt_public(ctx, (c >> fuzz_bits) & low_mask(middle), (r_xor >> fuzz_bits) & low_mask(middle), middle,
                             dealt=r, shift=fuzz_bits)
    msb = borrow ^ ((r_xor >> top) & 1)
    if ctx.party == 0:
        msb = msb ^ ((c >> top) & 1) ^ 1
    return msb


async def b2a(ctx, bit):
    """XOR-shared bit -> additive share of 0/1 (see ``b2a_wire``)."""
    return (await b2a_wire(ctx, bit)).share(ctx)


async def b2a_wire(ctx, bit) -> Wire:
    """XOR-shared bit -> 0/1 as a wire. Dealer: a random bit rho (seeded word,
    low bit) and its additive shares (stored). Open beta = bit ^ rho (1 bit
    each way); bit = beta + (1 - 2 beta) rho: public beta, dealt rho. Rounds 1.
    (The dealer-assisted B2A of CrypTen's TTP mode and ABY3.)"""
    rho = ctx.rand(bit.shape, kind="xor")
    rho_a = ctx.derive(lambda r: r & 1, rho, shape=bit.shape)
    beta = await ctx.open_xor((bit ^ rho) & 1, bits=1) & 1
    return Wire(beta, (Part(1 - 2 * beta, rho_a, 0),))


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
