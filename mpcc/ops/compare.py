"""Comparison protocols: LTZ, bit conversion, select, ReLU, max, argmax.

Bits are uint8 0/1 tensors, XOR-shared. LTZ works on values with
|x| < 2^(CMP_BITS-1) in ring units (|real| < 2^23 at f = 16).
"""
from __future__ import annotations

import torch

from .arith import mul
from .base import OpDef, register

__all__ = ["CMP_BITS", "and_gates", "lt_public", "ltz_bits", "b2a", "select_bits", "relu", "max_last", "argmax_last"]

CMP_BITS = 40


def _bits_of(value: torch.Tensor, count: int) -> torch.Tensor:
    """Bits of an int64 tensor, least significant first, as uint8 [..., count]."""
    shifts = torch.arange(count, device=value.device)
    return ((value.unsqueeze(-1) >> shifts) & 1).to(torch.uint8)


def and_gates(ctx, x, ys):
    """x AND y for each y in ys, one round, one mask for x shared by all gates.

    Dealer: bits a, b_i (seeded) and c_i = a & b_i (stored). Open x^a and each
    y_i^b_i; z_i = c_i ^ (e & b_i) ^ (d_i & a) ^ [p0](e & d_i). Bytes: (1 + len(ys)) bits per element, both.
    """
    a = ctx.rand(x.shape, kind="bits")
    bs = [ctx.rand(y.shape, kind="bits") for y in ys]
    cs = [ctx.derive(lambda a, b: a & b, a, b, shape=y.shape, kind="bits") for y, b in zip(ys, bs)]
    opened = ctx.exchange(x ^ a, *[y ^ b for y, b in zip(ys, bs)])
    e = x ^ a ^ opened[0]
    outs = []
    for y, b, c, other in zip(ys, bs, cs, opened[1:]):
        d = y ^ b ^ other
        z = c ^ (e & b) ^ (d & a)
        outs.append(z ^ (e & d) if ctx.party == 0 else z)
    return outs


def lt_public(ctx, c_bits, r_bits):
    """[c < r] for public bits c and XOR-shared bits r ([..., m], LSB first).

    A log-depth tree over (greater, equal) pairs: G = G_hi ^ (E_hi & G_lo),
    E = E_hi & E_lo. Rounds ceil(log2 m); about 1.5 m bits per element, both.
    """
    not_c = c_bits ^ 1
    g = not_c & r_bits
    e = (not_c ^ r_bits) if ctx.party == 0 else r_bits
    while g.shape[-1] > 1:
        if g.shape[-1] % 2:
            pad = torch.zeros(g.shape[:-1] + (1,), dtype=torch.uint8, device=g.device)
            g = torch.cat([g, pad], -1)
            e = torch.cat([e, pad + 1 if ctx.party == 0 else pad], -1)
        g_lo, g_hi, e_lo, e_hi = g[..., 0::2], g[..., 1::2], e[..., 0::2], e[..., 1::2]
        if g_hi.shape[-1] == 1:
            (t,) = and_gates(ctx, e_hi, [g_lo])
            g = g_hi ^ t
        else:
            t, e = and_gates(ctx, e_hi, [g_lo, e_lo])
            g = g_hi ^ t
    return g[..., 0]


def ltz_bits(ctx, x):
    """XOR-shared bit [x < 0] for |x| < 2^(k-1), k = CMP_BITS.

    Steps: y = x + 2^(k-1) lies in [0, 2^k). The dealer deals r (seeded) and
    the XOR-shared bits of r mod 2^k (stored). Open c = y + r mod 2^k (k bits
    each way); then msb(y) = c_{k-1} ^ r_{k-1} ^ [c mod 2^(k-1) < r mod 2^(k-1)],
    the last by ``lt_public``. Rounds 1 + ceil(log2(k-1)) = 7; bytes about
    k/8 + 1.5(k-1)/8 ~ 12 per element, both. (Catrina-de Hoogh style
    masked comparison with a dealer.)
    """
    k = CMP_BITS
    mask = (1 << k) - 1
    r = ctx.rand(x.shape)
    r_bits = ctx.derive(lambda r: _bits_of(r & mask, k), r, shape=tuple(x.shape) + (k,), kind="bits")
    y = x + (1 << (k - 1)) if ctx.party == 0 else x
    c = ctx.open((y + r) & mask, bits=k) & mask
    c_bits = _bits_of(c, k)
    borrow = lt_public(ctx, c_bits[..., : k - 1], r_bits[..., : k - 1])
    msb = borrow ^ r_bits[..., k - 1]
    if ctx.party == 0:
        msb = msb ^ c_bits[..., k - 1] ^ 1  # [x < 0] = NOT msb(y)
    return msb


def b2a(ctx, bit):
    """XOR-shared bit -> additive share of 0/1. Dealer: bit rho (seeded) and
    its additive shares (stored); open beta = bit ^ rho (1 bit each way);
    bit = beta + rho - 2 beta rho. Rounds 1."""
    rho = ctx.rand(bit.shape, kind="bits")
    rho_a = ctx.derive(lambda r: r.to(torch.int64), rho, shape=bit.shape)
    beta = ctx.open(bit ^ rho).to(torch.int64)
    out = rho_a * (1 - 2 * beta)
    return out + beta if ctx.party == 0 else out


def select_bits(ctx, bit, values):
    """bit * v for each v (an XOR-shared bit times additive shares), one round.

    Dealer: bit rho, its additive shares, masks a_i (seeded) and rho*a_i
    (stored). Open beta = bit ^ rho and e_i = v_i - a_i together; then
    rho*v_i = rho*e_i + rho*a_i and bit*v_i = beta v_i + (1 - 2 beta) rho v_i.
    No truncation (the bit is an integer). Bytes: 1 bit + 8 bytes per element, both.
    """
    rho = ctx.rand(bit.shape, kind="bits")
    rho_a = ctx.derive(lambda r: r.to(torch.int64), rho, shape=bit.shape)
    masks = [ctx.rand(v.shape) for v in values]
    products = [ctx.derive(lambda r, a: r.to(torch.int64) * a, rho, a, shape=v.shape) for v, a in zip(values, masks)]
    opened = ctx.exchange(bit ^ rho, *[v - a for v, a in zip(values, masks)])
    beta = (bit ^ rho ^ opened[0]).to(torch.int64)
    outs = []
    for v, a, c, other in zip(values, masks, products, opened[1:]):
        rho_v = rho_a * (v - a + other) + c
        outs.append(beta * v + (1 - 2 * beta) * rho_v)
    return outs


def _not(ctx, bit):
    return bit ^ 1 if ctx.party == 0 else bit


def relu(ctx, x):
    """max(x, 0) = [x >= 0] * x: one LTZ and one select. Rounds 8."""
    (out,) = select_bits(ctx, _not(ctx, ltz_bits(ctx, x)), [x])
    return out


def _split_pairs(x):
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half: 2 * half], x[..., 2 * half:]


def max_last(ctx, x):
    """Max over the last axis by a tournament: ceil(log2 n) levels of
    LTZ + select (8 rounds each), all pairs of a level in one call."""
    while x.shape[-1] > 1:
        a, b, rest = _split_pairs(x)
        diff = a - b
        (chosen,) = select_bits(ctx, _not(ctx, ltz_bits(ctx, diff)), [diff])
        x = torch.cat([b + chosen, rest], -1)
    return x[..., 0]


def argmax_last(ctx, x):
    """Index of the max over the last axis (first index on ties is not
    guaranteed), as an additive share of an integer; tournament as max_last."""
    index = torch.arange(x.shape[-1], device=x.device).expand(x.shape).contiguous()
    index = index if ctx.party == 0 else torch.zeros_like(index)
    while x.shape[-1] > 1:
        a, b, rest = _split_pairs(x)
        ia, ib, irest = _split_pairs(index)
        diff = a - b
        chosen, chosen_index = select_bits(ctx, _not(ctx, ltz_bits(ctx, diff)), [diff, ia - ib])
        x = torch.cat([b + chosen, rest], -1)
        index = torch.cat([ib + chosen_index, irest], -1)
    return index[..., 0]


def _move_last(fn, dim, keepdim):
    def protocol(ctx, x, *args):
        moved = x.movedim(dim, -1)
        out = fn(ctx, moved)
        return out.unsqueeze(dim) if keepdim else out
    return protocol


def _mpc(name, params, reference, doc, protocol):
    return register(OpDef(name, tuple(params), reference, doc, "mpc", protocol=protocol))


_mpc("mpc.ltz", ("self",), lambda x: (x < 0).to(torch.int64), "[x < 0] as a shared 0/1 integer",
     lambda ctx, x: b2a(ctx, ltz_bits(ctx, x)))
_mpc("mpc.relu", ("self",), torch.relu, "max(x, 0)", relu)
_mpc("mpc.where", ("condition", "self", "other"), torch.where, "select by a shared 0/1 condition (Beaver, no truncation)",
     lambda ctx, condition, x, y: y + mul(ctx, condition, x - y, truncate=False))
_mpc("mpc.amax", ("self", "dim", "keepdim"), lambda x, dim, keepdim=False: torch.amax(x, dim, keepdim),
     "max over one axis (tournament)",
     lambda ctx, x, dim, keepdim=False: _move_last(max_last, dim, keepdim)(ctx, x))
_mpc("mpc.argmax", ("self", "dim", "keepdim"), lambda x, dim, keepdim=False: torch.argmax(x, dim, keepdim),
     "index of the max over one axis (tournament)",
     lambda ctx, x, dim, keepdim=False: _move_last(argmax_last, dim, keepdim)(ctx, x))
