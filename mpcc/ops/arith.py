"""Arithmetic protocols over additive shares of Z_2^64 (fixed point, f bits).

Party 0 is the client, party 1 the server. ``x`` below is always this party's
share (an int64 tensor). Costs are per element, n = number of elements,
"both" = each party sends.

Domains: a real has f fractional bits, so a value must satisfy
|x| < 2^(63 - f) to be represented at all (2^(62 - f) to be encoded from
plaintext). A product of two reals carries 2f bits and is truncated, and
``trunc`` needs |z| < 2^62 ring units: so |x * y| < 2^(62 - 2f) = 2^30 at
f = 16, for a matmul the sum over the inner axis. ``mpcc.ranges`` holds these
domains as a table and checks models against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .base import define
# RING_SHIFT_LIMIT: re-exported (ranges, interpreter)
from .wire import (RING_SHIFT_LIMIT, ClientShare, Wire, bilinear, client_input, dealt_sum, part_shape,  # noqa: F401
                   sent_bits, share_of, truncate)
__all__ = ["shape_of", "encode", "trunc", "beaver", "mul", "square", "matmul_shares", "linear_server", "server_ring",
           "server_product",
           "add_public", "mul_public", "reveal", "DeferredActivation", "DEFERRED_ACTIVATIONS"]




def shape_of(fn, *tensors) -> tuple[int, ...]:
    """Shape of ``fn(*tensors)``, computed on meta tensors (no arithmetic)."""
    metas = [torch.empty(t.shape, dtype=torch.int64, device="meta") for t in tensors]
    return tuple(fn(*metas).shape)


def encode(ctx, value: torch.Tensor, kind: str, name: str = "value") -> torch.Tensor:
    """Plaintext -> ring: reals scaled by 2^f, ints and bools as they are."""
    if ctx.meta:
        return torch.empty(tuple(value.shape), dtype=torch.int64, device="meta")
    if kind == "real":
        return ctx.backend.encode(value, ctx.frac_bits, name)
    return ctx.backend.to_device(value.to(torch.int64))


async def trunc(ctx, z: torch.Tensor, shift: int | None = None) -> torch.Tensor:
    """Faithful truncation by ``shift`` bits (default f), dealer-assisted.

    Steps: the dealer deals r (uniform), [r >> s] and [msb(r)]. Party p sends the
    high 64 - s bits of its share of c = z + o + r, o = 2^62 + 1.5 2^s; their sum h is
    c >> s or one less (the low halves' carry is dropped). Then z >> s = h - [r >> s]
    + (1 - msb(h)) [msb(r)] 2^(64-s) - (o >> s), within 1.5 ulp of z / 2^s (mean 0).
    Domain: -2^62 <= z < 2^62 - 1.5 2^s ring units (z + o in [2^s, 2^63): there the
    dropped carry never changes the wrap bit, see ``wire.truncate``). Outside
    it the wrap bit is misread with probability about (|z| - 2^62) / 2^63
    and the result is off by 2^(64-s): no error is raised. Past 48 bits
    (``wire.HIGH_HALF_MAX_SHIFT``) the whole of c is opened, o = 2^62.
    Randomness: 1 ring (seed) + 2 ring (stored) per element.
    Rounds 1; online bytes (64 - s)/8 an element both (6 at s = 16). (Mohassel-Rindal
    style dealer truncation, opening only the high halves.)
    ``wire.truncate`` is the same protocol, its output kept as a wire.
    """
    shift = ctx.frac_bits if shift is None else shift
    if shift == 0:
        return share_of(ctx, z)
    return (await truncate(ctx, z, shift)).share(ctx)


async def beaver(ctx, x: torch.Tensor, y: torch.Tensor, fn) -> torch.Tensor:
    """z = fn(x, y) for a bilinear ``fn`` (product, matmul), no truncation: exact mod 2^64.

    Steps: dealer deals a, b (seeded) and c = fn(a, b) (stored); open
    e = x - a, d = y - b together; z = c + fn(e, b) + fn(a, d) + [p0] fn(e, d).
    Rounds 1; online bytes 8(|x| + |y|) both; offline 8|z| (stored c).
    (Beaver 1991; CrypTen's parameterisation by the bilinear function.)
    """
    out_shape = shape_of(fn, x, y)
    a = ctx.rand(x.shape)
    b = ctx.rand(y.shape)
    c = ctx.derive(fn, a, b, shape=out_shape)
    if ctx.meta:
        await ctx.exchange(x, y)
        return torch.empty(out_shape, dtype=torch.int64, device="meta")
    e_peer, d_peer = await ctx.exchange(x - a, y - b)
    e, d = x - a + e_peer, y - b + d_peer
    z = c + fn(e, b) + fn(a, d)
    if ctx.party == 0:
        z = z + fn(e, d)
    return z


async def mul(ctx, x, y, truncate: bool = True, shift: int | None = None):
    """Elementwise product of shares (broadcasting); truncate when both are reals,
    by ``shift`` bits (default f: operands with other scales, or a halving folded in).

    Domain: with truncation |x * y| < 2^(62 - 2f) (2^30 at f = 16), see ``trunc``;
    without (an integer operand), the product must be representable.
    """
    z = await beaver(ctx, x, y, torch.mul)
    return await trunc(ctx, z, shift) if truncate else z


async def square(ctx, x, truncate: bool = True):
    """x^2 with one opening: dealer deals a (seeded), c = a^2 (stored); open
    e = x - a; x^2 = c + 2ea + [p0] e^2. Rounds 1 (+1 trunc); bytes 8n both
    (+8n). Domain with truncation: x^2 < 2^(62 - 2f), |x| < 2^(31 - f) (32768
    at f = 16). (Beaver's trick specialised to squares, as in CrypTen.)"""
    a = ctx.rand(x.shape)
    c = ctx.derive(lambda a: a * a, a, shape=x.shape)
    if ctx.meta:
        await ctx.exchange(x)
        z = torch.empty(tuple(x.shape), dtype=torch.int64, device="meta")
        return await trunc(ctx, z) if truncate else z
    (e_peer,) = await ctx.exchange(x - a)
    e = x - a + e_peer
    z = c + 2 * e * a
    if ctx.party == 0:
        z = z + e * e
    return await trunc(ctx, z) if truncate else z


async def matmul_shares(ctx, x, y, truncate: bool = True):
    """x @ y of shares (Beaver) and one truncation. Domain: every entry of
    x @ y (a sum over the inner axis) |.| < 2^(62 - 2f), see ``trunc``."""
    z = await beaver(ctx, x, y, ctx.backend.matmul)
    return await trunc(ctx, z) if truncate else z


async def linear_server(ctx, x, weight, weight_shape, key: str, fn):
    """fn(x, W) for shared x and the server's plaintext W, no per-inference weight traffic.

    Steps: the dealer deals the client a fresh mask A (seeded, per inference),
    the server a mask B (seeded, per deployment) and shares of C = fn(A, B).
    Once per deployment the server sends D = W - B to the client. Per
    inference the client sends e = x0 - A; then client: z0 = fn(A, D) + C0,
    server: z1 = fn(e + x1, W) + C1, so z0 + z1 = fn(x, W).
    Security: e is masked by A (unknown to the server), D by B (unknown to the
    client), C0 is a PRG output; see docs/security.md.
    Rounds 1 (client -> server); online bytes 8|x| from the client only;
    offline 8|z| (C1); setup 8|W| once per deployment. Result has 2f bits;
    callers truncate it, so |fn(x, W)| < 2^(62 - 2f) (see ``trunc``).
    (Beaver with one operand known to one party; the once-per-deployment
    opening of W - B follows the "known weights" setting of REFERENCES.md.)
    """
    like_w = torch.empty(weight_shape, dtype=torch.int64, device="meta")
    out_shape = shape_of(fn, x, like_w)
    mask_a = ctx.rand(x.shape, holder="client")
    mask_b = ctx.rand(weight_shape, holder="server", scope=key)
    c = ctx.derive(fn, mask_a, mask_b, shape=out_shape)
    # the once-per-deployment D travels in the same step as the per-inference e
    d, received = await ctx.gather(_weight_minus_mask(ctx, key, weight, mask_b, like_w),
                                   ctx.transfer(x - mask_a if ctx.party == 0 else x, sender=0))
    if ctx.party == 0:
        return fn(mask_a, d) + c
    return fn(received[0] + x, weight) + c


def _weight_minus_mask(ctx, key, weight, mask_b, like_w):
    """D = W - B, sent by the server once per deployment (awaitable). Made in B's memory:
    the server drops B once D is sent (a BERT-base's worth of weights is 880 MB)."""
    return ctx.deployment(key, lambda: torch.sub(weight, mask_b, out=mask_b), like_w, sender=1)


def _client_part(shape, device, coefs, views, handles, shifts, masks):
    """What stands for the client's share of a wire in ``linear_server_wire``:
    sum c_j R_j0 over its integer parts plus sum 2^t A_j for its sent parts. The
    client computes it from its shares, the dealer from the values it made."""
    left = torch.zeros(shape, dtype=torch.int64, device=device) + dealt_sum(coefs, views, *handles)
    return left + sum(k * a for k, a in zip(shifts, masks))


async def linear_server_wire(ctx, x: Wire, weight, weight_shape, key: str, fn):
    """fn(x, W) for a wire x = P + sum c_j R_j and the server's W: the client's share
    of each part with a public integer coefficient is known to the dealer, so its
    product with W needs no message; a part with a coefficient tensor (a
    truncation's wrap term) is sent masked, on 64 - t bits where its coefficient
    is a multiple of 2^t (16 bits after a truncation by f = 16).

    Steps: the server computes fn(P + x1, W). The client computes c_j fn(R_j0, D)
    for integer parts and sends e_j = u_j - A_j for each tensor part, u_j = (c_j /
    2^t) R_j0 mod 2^(64-t) (A_j its fresh mask); the server adds 2^t fn(e_j, W),
    the client 2^t fn(A_j, D). The dealer deals shares of fn(sum_j c_j R_j0 +
    sum_j 2^t A_j, B), one product (it regenerates R_j0 from the client's seed).
    Security: e_j is masked by A_j (fresh, the client's only), as ``linear_server``.
    Rounds 1 (0 with no tensor part); offline 8|z|; setup as ``linear_server``.
    """
    like_w = torch.empty(weight_shape, dtype=torch.int64, device="meta")
    out_shape = shape_of(fn, torch.empty(x.shape, dtype=torch.int64, device="meta"), like_w)
    fixed, sent = x.split_parts()
    masks = []
    for part in sent:   # (a loop, not a comprehension: the view tests find draws by their protocol's frame)
        masks.append(ctx.rand(part_shape(part), holder="client"))
    mask_b = ctx.rand(weight_shape, holder="server", scope=key)
    views = [part.view for part in fixed]
    coefs = [part.coef for part in fixed]
    shifts = [1 << part.twos for part in sent]

    def dealer_product(b, *handles):   # fn(sum c_j R_j0 + sum 2^t A_j, B): one product
        return fn(_client_part(x.shape, b.device, coefs, views, handles, shifts, handles[len(coefs):]), b)
    c = ctx.derive(dealer_product, mask_b, *[ClientShare(part.handle) for part in fixed], *masks, shape=out_shape)
    # u_j: the part's share without its power of two. The client sends u_j - A_j; the server joins the
    # message with its own u_j in the views, so the opened value is (c_j / 2^t) R_j - A_j, uniform only
    # while A_j masks it
    unshifted = [part.unshifted() for part in sent]
    messages = [u - a for u, a in zip(unshifted, masks)] if ctx.party == 0 else unshifted
    deploy = _weight_minus_mask(ctx, key, weight, mask_b, like_w)
    if sent:
        d, received = await ctx.gather(deploy, ctx.transfer(*messages, sender=0,
                                                            bits=[64 - part.twos for part in sent]))
    else:
        d, received = await deploy, ()
    if ctx.party == 0:
        return fn(_client_part(x.shape, x.device, coefs, views, [p.handle for p in fixed], shifts, masks), d) + c
    left = x.public + x.share(ctx)   # P + the server's share of every part
    return fn(left + sum(k * e for k, e in zip(shifts, received or ())), weight) + c


def _wire_is_cheaper(x) -> bool:
    """Whether ``linear_server_wire`` sends fewer bits than one 64-bit share (a truncation's
    wire: 16 an element; a sum of two, less a row's mean: 32 and a few)."""
    return isinstance(x, Wire) and sent_bits(x) < 64 * math.prod(x.shape)


async def server_product(ctx, x, weight, weight_shape, key: str, fn):
    """fn(x, W) for the server's W, untruncated: ``linear_server_wire`` for a wire where it
    sends fewer bits, else ``linear_server`` on x's share."""
    if _wire_is_cheaper(x):
        return await linear_server_wire(ctx, x, weight, weight_shape, key, fn)
    return await linear_server(ctx, share_of(ctx, x), weight, weight_shape, key, fn)


def add_public(ctx, x, ring_value):
    return x + ring_value if ctx.party == 0 else x + torch.zeros_like(ring_value)


async def mul_public(ctx, x, ring_value, truncate: bool):
    """x times a public ring value (local), truncated for a real one: then
    |x * value| < 2^(62 - 2f) (see ``trunc``)."""
    z = x * ring_value
    return await trunc(ctx, z) if truncate else z


async def reveal(ctx, x, to: int):
    """Open a share to one party: the other sends its share. Rounds 1; 8n bytes
    one way; no randomness."""
    if ctx.party == to:
        (other,) = await ctx.transfer(x, sender=1 - to)
        return x + other
    await ctx.transfer(x, sender=1 - to)
    return None


# ----------------------------------------------------------------------------- IR records
def _mpc(name, params, reference, doc, protocol, wires: bool = False):
    return define(name, params, reference, doc, "mpc", protocol=protocol, wires=wires)


def _proto_share(ctx, x, masked=False):
    """Trivial shares of a public or one party's value (the holder's share is the value);
    ``masked`` (a client's value, ``mask_client_inputs``): a wire (``client_input``),
    one 8-byte message an element, after which the linears and products that read
    it send nothing of their own."""
    owner = ctx.operand_types["self"].vis
    kind = ctx.operand_types["self"].kind
    holder = {"public": 0, "client": 0, "server": 1}[owner]
    value = encode(ctx, x, kind, ctx.operand_names["self"]) if ctx.party == holder else None
    if masked:
        return client_input(ctx, value, ctx.out_type.shape)
    return value if value is not None else torch.zeros(ctx.out_type.shape, dtype=torch.int64, device=ctx.device)


def server_ring(ctx, param: str, value, transpose: bool = False):
    """The server's plaintext operand, encoded (once per deployment when it is a
    weight); ``transpose``: its last two axes swapped, laid out contiguously."""
    if value is None:
        return None
    name = ctx.operand_names[param]

    def make():
        return encode(ctx, value.transpose(-1, -2).contiguous() if transpose else value, "real", name)
    return ctx.encode_static(name, value, make, "^T" if transpose else "")


@dataclass(frozen=True)
class DeferredActivation:
    """An activation that a linear after it absorbs (``fuse_activation_linear``): its
    protocol returns (share, extra), the share carrying f + extra fractional bits
    (no truncation of its own); the linear's one truncation drops them too."""
    reference: Callable
    protocol: Callable   # async (ctx, x) -> (share, extra bits)
    extra_bits: Callable   # f -> extra fractional bits (for the range rule)


DEFERRED_ACTIVATIONS: dict[str, DeferredActivation] = {}   # filled by the modules that define them


async def _proto_linear(ctx, x, weight, bias, transpose, activation=None):
    """x @ W^T (+ b), as a wire: the server adds b with 2f bits before the
    truncation (a wire has no room for a term only the server knows). The
    server keeps W^T contiguous (a transposed view makes the int64 matmuls of
    the client, server and dealer ~40% slower). With an ``activation``,
    act(x) @ W^T + b: the activation's untruncated share goes into the linear
    (one 64-bit message, as for any share) and one truncation drops both
    scales: the activation's truncation round and its 16 bytes an element go."""
    shape = ctx.operand_types["weight"].shape
    if transpose:
        shape = shape[:-2] + (shape[-1], shape[-2])
    w_ring = server_ring(ctx, "weight", weight, transpose)
    key = ctx.operand_names["weight"] + ("^T" if transpose else "")
    extra = 0
    if activation is not None:
        x, extra = await DEFERRED_ACTIVATIONS[activation].protocol(ctx, x)
    z = await server_product(ctx, x, w_ring, shape, key, ctx.backend.matmul)
    if bias is not None and ctx.party == 1:
        z = z + (server_ring(ctx, "bias", bias) << (ctx.frac_bits + extra))
    return await truncate(ctx, z, ctx.frac_bits + extra)


def _add_wires(ctx, x, y, sign: int):
    """x + sign y: a wire when both are wires (the sum of two wires is one), else shares."""
    if isinstance(x, Wire) and isinstance(y, Wire):
        return x + (y if sign > 0 else -y)
    return share_of(ctx, x) + sign * share_of(ctx, y)


async def _proto_mul_server(ctx, x, other):
    w_ring = server_ring(ctx, "other", other)
    return await trunc(ctx, await linear_server(ctx, x, w_ring, ctx.operand_types["other"].shape,
                                                ctx.operand_names["other"], torch.mul))


def _linear_reference(x, weight, bias=None, transpose=True, activation=None):
    if activation is not None:
        x = DEFERRED_ACTIVATIONS[activation].reference(x)
    out = x @ (weight.transpose(-1, -2) if transpose else weight)
    return out if bias is None else out + bias


define("mpc.share", ("self", "masked"), lambda x, masked=False: x,
       "a public or one party's value as trivial shares (no messages); masked: the client's, sent masked once",
       "mpc", protocol=_proto_share, defaults={"masked": False})
_mpc("mpc.reveal", ("self", "to"), lambda x, to="client": x, "open a shared value to its owner",
     lambda ctx, x, to="client": reveal(ctx, x, {"client": 0, "server": 1}[to]))
_mpc("mpc.add", ("self", "other"), torch.add, "sum of shares (local)", lambda ctx, x, y: _add_wires(ctx, x, y, 1),
     wires=True)
_mpc("mpc.sub", ("self", "other"), torch.sub, "difference of shares (local)",
     lambda ctx, x, y: _add_wires(ctx, x, y, -1), wires=True)
_mpc("mpc.neg", ("self",), torch.neg, "negation (local)", lambda ctx, x: -x)
_mpc("mpc.add_public", ("self", "value"), lambda x, v: x + v, "add a public scalar (local, party 0)",
     lambda ctx, x, v: add_public(ctx, x, encode(ctx, torch.tensor(float(v), dtype=torch.float64), ctx.out_type.kind)))
_mpc("mpc.mul_public", ("self", "value", "truncate"), lambda x, v, truncate=True: x * v,
     "multiply by a public scalar or tensor (local, + truncation for fractional reals)",
     lambda ctx, x, v, truncate=True: mul_public(
         ctx, x, encode(ctx, torch.as_tensor(v, dtype=torch.float64), "real" if truncate else "int"), truncate))
_mpc("mpc.mul", ("self", "other", "truncate"), lambda x, y, truncate=True: x * y, "product of shares (Beaver)",
     lambda ctx, x, y, truncate=True: mul(ctx, x, y, truncate))
_mpc("mpc.square", ("self",), lambda x: x * x, "square of a share (one opening)", lambda ctx, x: square(ctx, x))
async def _proto_matmul(ctx, x, y, shift=0):
    """x @ y, then times 2^-shift in the same truncation (``fuse_scaled_matmul``);
    the result a wire (a linear after it sends 16 bits an element, not 64).
    Operands that are truncations' wires open 16 bits an element (``bilinear``)."""
    product = await bilinear(ctx, x, y, ctx.backend.matmul)
    return await truncate(ctx, product, ctx.frac_bits + shift)


_mpc("mpc.matmul", ("self", "other", "shift"), lambda x, y, shift=0: torch.matmul(x, y) * 2.0 ** -shift,
     "matrix product of shares (Beaver), times 2^-shift in its truncation", _proto_matmul, wires=True)
define("mpc.linear_server", ("input", "weight", "bias", "transpose", "activation"), _linear_reference,
       "act(x) @ W(^T) + b with the server's plaintext W, b (one message per inference); act: none, or an "
       "activation the linear absorbs", "mpc", protocol=_proto_linear, wires=True, defaults={"activation": None})
_mpc("mpc.mul_server", ("self", "other"), torch.mul, "elementwise product with the server's plaintext tensor",
     _proto_mul_server)
_mpc("mpc.trunc", ("self", "shift"), lambda x, shift: x, "fixed-point truncation (dealer-assisted)",
     lambda ctx, x, shift: trunc(ctx, x, shift))


def _proto_masked_fill(ctx, x, mask, value):
    """Public mask: x where not mask, the public value where mask. Local."""
    keep = (~mask.to(torch.bool)).to(torch.int64)
    fill = encode(ctx, (mask.to(torch.float64) * float(value)).expand(ctx.out_type.shape), ctx.out_type.kind)
    return x * keep + ctx.public_share(fill)


def _proto_where_public(ctx, condition, x, y):
    """Public condition: y + c (x - y) with c a public 0/1 integer. Local."""
    return y + condition.to(torch.int64) * (x - y)


_mpc("mpc.masked_fill_public", ("self", "mask", "value"), lambda x, mask, value: x.masked_fill(mask.bool(), value),
     "fill where a public mask holds (local)", _proto_masked_fill)
_mpc("mpc.where_public", ("condition", "self", "other"), lambda c, x, y: torch.where(c.bool(), x, y),
     "select by a public condition (local)", _proto_where_public)
