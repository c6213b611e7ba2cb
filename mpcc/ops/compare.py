"""Comparison protocols: LTZ, bit conversion, select, ReLU, max, argmax.

Boolean values are bit-sliced: one int64 word per element holds that
element's bits, XOR-shared (``kind="xor"``). Messages carry only the bits
that matter (the ``bits=`` width the transport packs to). LTZ works on
values with -2^(bits-1) <= x < 2^(bits-1) in ring units: 2^31 (|real| < 32768
at f = 16) by default, 2^47 for ``WIDE_CMP_BITS``, the whole ring at 64
bits. Outside, the answer is the sign of x mod 2^bits: garbage, no error.
"""
from __future__ import annotations

import torch

from .arith import mul
from .base import define

__all__ = ["CMP_BITS", "WIDE_CMP_BITS", "and_gates", "lt_public", "ltz_bits", "b2a", "select_bits", "relu",
           "max_last", "argmax_last", "bit_reverse", "not_bit"]

CMP_BITS = 32
WIDE_CMP_BITS = 48
def _signed(value: int) -> int:
    """A Python int as the int64 with the same low 64 bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _index_swaps(width: int) -> list[tuple[int, int]]:
    """(delta, mask) delta-swaps that move bit i to bit rev(i), rev reversing log2(width) index digits."""
    levels = width.bit_length() - 1
    swaps = []
    for k in range(levels // 2):
        j = levels - 1 - k
        mask = sum(1 << p for p in range(width) if (p >> k) & 1 and not (p >> j) & 1)
        swaps.append(((1 << j) - (1 << k), _signed(mask)))
    return swaps


def _lanes_mask(mask: int, lanes: int) -> int:
    """A per-lane mask repeated in each 64/lanes-bit lane of a word."""
    mask &= (1 << (64 // lanes)) - 1 if lanes > 1 else (1 << 64) - 1
    return _signed(sum(mask << (lane * 64 // lanes) for lane in range(lanes)))


def bit_reverse(word, width: int, lanes: int = 1):
    """Permute the low ``width`` bits (a power of two <= 64) of each lane so that
    bit i moves to bit rev(i), the index with its log2(width) binary digits reversed.

    In that order the adjacent pairs (2j, 2j+1) of the comparison tree sit
    at (i, i + width/2), and so on at every level: each level is a plain half
    split. Works on tensors (each element's word) and on Python ints.
    """
    for delta, mask in _index_swaps(width):
        mask = _lanes_mask(mask, lanes)
        t = ((word >> delta) ^ word) & mask
        word = word ^ t ^ (t << delta)
    if isinstance(word, int):
        return _signed(word & ((1 << width) - 1))
    return word & _lanes_mask(_low(width), lanes)


def _low(bits: int) -> int:
    return (1 << bits) - 1 if bits < 64 else -1


async def and_gates(ctx, x, ys, bits: int, mask: int | None = None):
    """x AND y (bitwise, low ``bits`` bits) for each y, one round; x's mask is shared by all gates.

    Dealer: words a, b_i (seeded) and c_i = a & b_i (stored). Open x^a and
    each y_i^b_i; z_i = c_i ^ (e & b_i) ^ (d_i & a) ^ [p0](e & d_i).
    Bytes: (1 + len(ys)) * bits / 8 per element, both. (Beaver for GF(2).)
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


async def lt_public(ctx, c, r, bits: int):
    """[c < r] on the low ``bits`` bits, for public words c and XOR-shared words r.

    A log-depth tree over (greater, equal) pairs of adjacent bit segments:
    G = G_hi ^ (E_hi & G_lo), E = E_hi & E_lo (G_hi and E_hi & G_lo never
    both hold, so OR is XOR). Bits are first put in bit-reversed order (a
    local, linear map on XOR shares) so that each level splits words in
    halves; widths are padded to a power of two with neutral (0, 1) pairs.
    Rounds log2(width); about 1.5 bits sent per input bit, both.
    Returns an XOR-shared bit (a 0/1 word).
    """
    width = 1 << max(0, (bits - 1).bit_length())
    lanes = 4 if width <= 16 else 2 if width <= 32 else 1   # several elements per word: fewer passes
    shape = tuple(c.shape)
    if ctx.meta:  # shapes only: the same gates on words of the packed count, no bit arithmetic
        count = -(-c.numel() // lanes)
        word = torch.empty(count, dtype=torch.int64, device="meta") if lanes > 1 else c
        while width > 1:
            width //= 2
            await and_gates(ctx, word, [word] if width == 1 else [word, word], width * lanes)
        return torch.empty(shape, dtype=torch.int64, device="meta")
    if lanes > 1:
        c, r = _pack(c, lanes), _pack(r, lanes)
    valid = _lanes_mask(bit_reverse(_low(bits), width), lanes)   # positions of real bits, reversed
    pad = _lanes_mask(_low(width), lanes) & ~valid
    c_rev, r_rev = bit_reverse(c, width, lanes), bit_reverse(r, width, lanes)
    not_c = ~c_rev & valid
    g = not_c & r_rev
    e = ((not_c ^ r_rev) | pad) if ctx.party == 0 else r_rev & valid
    while width > 1:
        width //= 2
        half = _lanes_mask(_low(width), lanes)
        g_lo, g_hi, e_lo, e_hi = g & half, (g >> width) & half, e & half, (e >> width) & half
        if width == 1:
            (t,) = await and_gates(ctx, e_hi, [g_lo], width * lanes, half)
        else:
            t, e = await and_gates(ctx, e_hi, [g_lo, e_lo], width * lanes, half)
        g = g_hi ^ t
    if lanes > 1:
        return _unpack(g, lanes, shape)
    return g & 1


def _pack(words, lanes: int):
    """Elements lanes*i ... lanes*i + lanes-1 (low 64/lanes bits each) side by side in one int64 word."""
    flat = words.reshape(-1)
    if flat.numel() % lanes:
        pad = lanes - flat.numel() % lanes
        flat = torch.cat([flat, torch.zeros(pad, dtype=flat.dtype, device=flat.device)])
    lane_bits = 64 // lanes
    packed = flat[0::lanes] & _low(lane_bits)
    for lane in range(1, lanes):
        packed = packed | ((flat[lane::lanes] & _low(lane_bits)) << (lane * lane_bits))
    return packed


def _unpack(words, lanes: int, shape):
    """Bit 0 of each lane back to one element each (the inverse of ``_pack`` for 0/1 results)."""
    count = 1
    for side in shape:
        count *= side
    lane_bits = 64 // lanes
    every = torch.stack([(words >> (lane * lane_bits)) & 1 for lane in range(lanes)], -1).reshape(-1)
    return every[:count].reshape(shape)


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
    by ``lt_public``; [x < 0] = not msb(y). Rounds 1 + ceil(log2(bits-1)).
    Bytes per element, both: bits/8 + ~1.5 (bits-1)/8 (10 at 32 bits).
    (Masked comparison with a dealer, after Catrina and de Hoogh.)
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
