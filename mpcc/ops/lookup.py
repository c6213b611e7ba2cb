"""The client's private lookup in the server's table (a word embedding), in a narrow ring.

``client_one_hot_embedding`` turns the client's token ids into its own one-hot;
its product with the server's table T (V x H) is ``linear_server``'s, but the
one-hot is an integer and a row of the product is a row of T, which is small:
|T| < 2^(LOOKUP_INT_BITS - 2). So the product is formed mod 2^k, k = f +
LOOKUP_INT_BITS, and the client's masked one-hot travels on k bits an element
instead of 64: at BERT's vocabulary (30522 an element of the sequence) it is
the largest message of a run. One more opening, k bits an element of the
result each way, lifts the k-bit shares into the ring (the truncation's msb
trick, on k bits); it takes the place of linear_server's truncation, which an
integer one-hot does not need.
"""
from __future__ import annotations

import torch

from .arith import _weight_minus_mask, encode, server_ring
from .base import define
from .wire import Part, Wire

__all__ = ["lookup_server", "lift", "LOOKUP_INT_BITS", "table_limit"]

LOOKUP_INT_BITS = 16   # k = f + 16: a table with |T| < 2^14 (16384), at any f


def table_limit(frac_bits: int) -> float:
    """The largest |T| the lookup's ring holds (real units): a row of T with f bits must
    lie within 2^(k - 2) for ``lift``."""
    return 2.0 ** (LOOKUP_INT_BITS - 2)


async def lookup_server(ctx, one_hot, weight):
    """one_hot @ T for the client's one-hot rows and the server's table T, as a wire.

    Steps: as ``linear_server`` mod 2^k: the dealer deals the client a fresh A
    (k bits used), the server its per-deployment B, shares of C = A B; D = T - B
    goes to the client once per deployment. The client sends e = x - A mod 2^k;
    client y0 = A D + C0, server y1 = e T + C1: y0 + y1 = x T mod 2^k. Then ``lift``.
    Security: e is masked by A (fresh, the client's only) on the k bits sent; D by B.
    Rounds 2; online bytes k/8 |x| from the client, and k/8 an element of the result
    each way (the lift); offline 8 an element of the result (C) and the lift's 16;
    setup 8|T| once per deployment.
    """
    bits = ctx.frac_bits + LOOKUP_INT_BITS
    low = (1 << bits) - 1
    x_shape = ctx.operand_types["one_hot"].shape
    w_shape = ctx.operand_types["weight"].shape
    key = ctx.operand_names["weight"]
    matmul = ctx.backend.matmul
    like_w = torch.empty(w_shape, dtype=torch.int64, device="meta")
    w_ring = server_ring(ctx, "weight", weight)
    mask_a = ctx.rand(x_shape, holder="client")
    mask_b = ctx.rand(w_shape, holder="server", scope=key)
    c = ctx.derive(lambda a, b: matmul(a & low, b), mask_a, mask_b, shape=x_shape[:-1] + w_shape[-1:])
    if ctx.meta:
        message = torch.empty(x_shape, dtype=torch.int64, device="meta")
    elif ctx.party == 0:
        message = (encode(ctx, one_hot, "int") - mask_a) & low
    else:   # the server joins nothing to it: what it receives is the whole opening
        message = torch.zeros((), dtype=torch.int64, device=ctx.device).expand(x_shape)
    d, received = await ctx.gather(_weight_minus_mask(ctx, key, w_ring, mask_b, like_w),
                                   ctx.transfer(message, sender=0, bits=bits))
    if ctx.meta:
        y = torch.empty(x_shape[:-1] + w_shape[-1:], dtype=torch.int64, device="meta")
    elif ctx.party == 0:
        y = matmul(mask_a & low, d) + c
    else:
        y = matmul(received[0] & low, w_ring) + c
    return await lift(ctx, y, bits)


async def lift(ctx, y, bits: int) -> Wire:
    """Shares of v mod 2^k (``bits`` = k) as a wire of the ring, for |v| < 2^(k-2).

    Steps: the dealer deals r, [r mod 2^k] and [msb_k(r)]. Parties open c = v + 2^(k-2)
    + r mod 2^k (k bits each way); v + 2^(k-2) lies in [0, 2^(k-1)), so it wrapped past
    2^k exactly when msb_k(r) is set and msb_k(c) is not:
    v = c - 2^(k-2) - [r mod 2^k] + (1 - msb_k(c)) 2^k [msb_k(r)]. c is uniform mod 2^k.
    Rounds 1; k/8 bytes an element each way; offline 16 bytes an element."""
    low = (1 << bits) - 1
    rshift = ctx.backend.rshift_logical
    r = ctx.rand(y.shape)
    r_low = ctx.derive(lambda r: r & low, r, shape=y.shape)
    r_msb = ctx.derive(lambda r: rshift(r & low, bits - 1), r, shape=y.shape)
    offset = 1 << (bits - 2)
    opened = await ctx.open((y + r + (offset if ctx.party == 0 else 0)) & low, bits=bits)
    opened = opened & low
    wrap = (1 - rshift(opened, bits - 1)) << bits
    return Wire(opened - offset, (Part(-1, r_low, 0), Part(wrap, r_msb, bits)))


define("mpc.lookup_server", ("one_hot", "weight"), lambda x, w: x @ w,
       "the client's one-hot rows times the server's table (an embedding), in an (f + 16)-bit ring", "mpc",
       protocol=lookup_server, wires=True, extra={"weight_limits": {"weight": table_limit}})
