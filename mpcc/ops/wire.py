"""Wires: a value held as a public part plus dealt randomness with public coefficients.

After an opening, a value is often known as  v = P + sum_i c_i R_i : P public
(both parties know it), R_i values the dealer made (each party holds a share),
c_i public coefficients. A truncation leaves its output in this form
(P = c >> s, R = r >> s and msb(r)), a Beaver mask opening does too
(x = (x - a) + a), and so does a dealer-assisted B2A. Two wires multiply with
no message: P P' and c_i R_i P' are local, and the dealer deals the cross terms
R_i R'_j, which it can compute because it made both. A chain of products then
costs one round per truncation instead of two (a product's opening and its
truncation's), and the product's opening bytes disappear; the price is one
stored dealt tensor per cross term (offline bytes).
(Beaver 1991 with masks reused across products, as in ABY2.0's preprocessed
masks, Patra et al. 2021, and Turbospeedz; here the masks come for free from
the truncation's opening.)

Products are elementwise (broadcasting): a matmul's cross terms would need
the dealer to know the public coefficients, which only the run learns, so a
matmul first opens its operands' tensor-coefficient parts (``narrowed``, a
few bits an element) and then deals one product of what is left (``bilinear``).
Security: a wire adds no message; every cross term is a fresh dealt sharing
(docs/security.md, "Wires"). Ops flagged ``wires=True`` pass wires between
nodes: the dealer keeps the values of wires a node returns, for later nodes'
cross terms.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["Wire", "Part", "ClientShare", "mask", "narrowed", "bilinear", "client_input", "part_shape", "broadcast",
           "cross_terms", "product", "truncate", "public_wire", "dealt", "dealt_sum", "share_of", "sent_bits",
           "MAX_CROSS_TERMS"]

RING_SHIFT_LIMIT = 62
HIGH_HALF_MAX_SHIFT = 48   # truncations by at most this many bits open only the high halves (``truncate``)
MAX_CROSS_TERMS = 16   # a product with more cross terms than this is a bug in the caller, not a plan


@dataclass(frozen=True)
class Part:
    coef: object            # int or int64 tensor (public, broadcasts against the handle)
    handle: torch.Tensor    # this party's share of a dealt value (a ``rand``/``derive`` result)
    twos: int               # the coefficient is a multiple of 2^twos (cross terms past 2^64 vanish)
    view: tuple = ()        # ("method", args...) or layout functions on the handle, in order (the dealer too)

    def value(self) -> torch.Tensor:
        """coef times the (viewed) handle: this part of a party's share."""
        viewed = _viewed(self.handle, self.view)
        if isinstance(self.coef, int) and self.coef in (1, -1):   # (most parts: no product to make)
            return viewed if self.coef == 1 else -viewed
        return self.coef * viewed

    def key(self) -> tuple:
        return (id(self.handle), self.view)

    def unshifted(self) -> torch.Tensor:
        """coef / 2^twos times the (viewed) handle: what opening a tensor-coefficient part
        sends, on 64 - twos bits (the 2^twos comes back when the opening is used)."""
        return (self.coef >> self.twos) * _viewed(self.handle, self.view)


def _viewed_product(left_view: tuple, right_view: tuple, left, right):
    """The dealer's cross term: the two dealt values, each under its view, multiplied."""
    return _viewed(left, left_view) * _viewed(right, right_view)


def _viewed(tensor, view: tuple):
    for step in view:   # ("method", args...) or a layout function (``Wire.relaid``)
        tensor = step(tensor) if callable(step) else getattr(tensor, step[0])(*step[1:])
    return tensor


@dataclass(frozen=True)
class Wire:
    """v = public + sum(part.coef * R_part); ``public`` is known to both parties
    (``zero``: it is 0, so a product skips the other operand's parts times it)."""
    public: torch.Tensor
    parts: tuple[Part, ...]
    zero: bool = False

    def share(self, ctx) -> torch.Tensor:
        """This party's additive share of v (party 0 carries the public part)."""
        out = self.dealt_share()
        if ctx.party == 0:
            out += self.public
        return out

    def dealt_share(self) -> torch.Tensor:
        """This party's share of the dealt part sum c_j R_j alone (no public part)."""
        out = torch.zeros_like(self.public)
        for part in self.parts:
            out += part.value()   # (in place: one tensor for the sum, not one per part)
        return out

    def split_parts(self) -> tuple[list[Part], list[Part]]:
        """(parts with integer coefficients, which the dealer knows whole; parts with
        coefficient tensors, which only the run knows)."""
        fixed = [part for part in self.parts if isinstance(part.coef, int)]
        return fixed, [part for part in self.parts if not isinstance(part.coef, int)]

    @property
    def device(self) -> torch.device:
        return self.public.device

    @property
    def shape(self) -> tuple[int, ...]:
        """The value's shape: the public part's (every construction keeps it full-sized;
        ``product`` expands it), so no part is computed to learn it."""
        return tuple(self.public.shape)

    def scaled(self, factor: int) -> "Wire":
        """v * factor for a public integer (a power of two keeps the coefficients' twos)."""
        twos = _twos(factor)
        return Wire(self.public * factor, tuple(Part(_ring(p.coef * factor), p.handle, p.twos + twos, p.view)
                                                for p in self.parts), self.zero)

    def masked(self, keep: torch.Tensor) -> "Wire":
        """v * keep for a public integer tensor (e.g. a 0/1 mask)."""
        return Wire(self.public * keep, tuple(Part(p.coef * keep, p.handle, p.twos, p.view) for p in self.parts),
                    self.zero)

    def unsqueeze(self, dim: int) -> "Wire":
        """v with a new axis of size 1 at ``dim``."""
        return self.relaid(functools.partial(torch.unsqueeze, dim=dim))

    def split(self, dim: int = -1) -> tuple["Wire", ...]:
        """The wire's slices along ``dim``, each a wire of its own."""
        return tuple(self.relaid(functools.partial(torch.select, dim=dim, index=index))
                     for index in range(self.shape[dim]))

    def relaid(self, layout) -> "Wire":
        """``layout(v)`` for a function that only moves elements (view, permute,
        transpose...): applied to the public part and to each part's coefficient
        and handle (the dealer applies it too), after broadcasting both to v's shape."""
        shape = self.shape
        parts = []
        for part in self.parts:
            coef = part.coef.expand(shape) if isinstance(part.coef, torch.Tensor) else part.coef
            coef = layout(coef) if isinstance(coef, torch.Tensor) else coef
            parts.append(Part(coef, part.handle, part.twos, part.view + (("expand", shape), layout)))
        return Wire(layout(self.public.expand(shape)), tuple(parts), self.zero)

    def plus(self, public: torch.Tensor) -> "Wire":
        """v + a public ring value."""
        return Wire(self.public + public, self.parts)

    def __neg__(self) -> "Wire":
        return self.scaled(-1)

    def __add__(self, other: "Wire") -> "Wire":
        return Wire(self.public + other.public, _merge(self.parts + other.parts), self.zero and other.zero)

    def __sub__(self, other: "Wire") -> "Wire":
        return self + (-other)


@dataclass(frozen=True)
class ClientShare:
    """An argument of ``ctx.derive``: the client's (party 0's) share of a dealt value
    shared by both, which the dealer regenerates from the client's seed."""
    handle: torch.Tensor


def _ring(coef):
    """A coefficient reduced into the signed 64-bit ring (Python ints never wrap by themselves)."""
    if isinstance(coef, int):
        return (coef + (1 << 63)) % (1 << 64) - (1 << 63)
    return coef


def _twos(value) -> int:
    """Largest t with 2^t dividing a public integer (0 for tensors and for 0: no claim)."""
    if isinstance(value, int) and value != 0:
        return (value & -value).bit_length() - 1
    return 0


def _merge(parts) -> tuple[Part, ...]:
    """Parts over the same dealt value joined (fewer cross terms in a product)."""
    merged: dict[tuple, Part] = {}
    for part in parts:
        seen = merged.get(part.key())
        merged[part.key()] = part if seen is None else Part(_ring(seen.coef + part.coef), part.handle,
                                                            min(seen.twos, part.twos), part.view)
    return tuple(merged.values())


def public_wire(public: torch.Tensor) -> Wire:
    """A public ring value as a wire: no dealt part."""
    return Wire(public, ())


def dealt(handle: torch.Tensor) -> Wire:
    """A value the dealer made (a ``rand``/``derive`` result) as a wire: public part 0."""
    return Wire(torch.zeros_like(handle), (Part(1, handle, 0),), zero=True)


def share_of(ctx, value) -> torch.Tensor:
    """A plain share of a wire or of a share."""
    return value.share(ctx) if isinstance(value, Wire) else value


async def mask(ctx, x) -> Wire:
    """x as a wire: open e = x - a for a fresh dealt a (seeded): x = e + a.
    Rounds 1; 8 bytes per element each way (half of a Beaver product's opening)."""
    if isinstance(x, Wire):
        return x
    a = ctx.rand(x.shape)
    e = await ctx.open(x - a)
    return Wire(e, (Part(1, a, 0),))


async def client_input(ctx, x, shape) -> Wire:
    """A value the client holds whole (its input; the server passes None), as a wire:
    the client sends e = x - a for a fresh a of its own, which the dealer can
    regenerate (it made it), so x = e + a with the server's share of a 0. Every
    reader then multiplies or takes a linear of x with no message of its own.
    Rounds 1; 8 bytes an element, client to server only."""
    a = ctx.rand(shape, holder="client")   # the server's share of a is 0 (it gets None, or a shape)
    theirs = a is None or (a.is_meta and not ctx.meta)
    own = torch.zeros(shape, dtype=torch.int64, device="meta" if ctx.meta else ctx.device) if theirs else a
    if ctx.party == 0:
        opened = x - own
        await ctx.transfer(opened, sender=0)
    else:
        (opened,) = await ctx.transfer(own, sender=0)
    return Wire(opened, (Part(1, own, 0),))


async def narrowed(ctx, x) -> Wire:
    """x as a wire whose coefficients are all integers (the dealer knows every part
    then): each part c R with a coefficient tensor c, a multiple of 2^t (a
    truncation's wrap term), is opened as e = (c / 2^t) R - A mod 2^(64-t) for a
    fresh dealt A, so that c R = 2^t e + 2^t A. A share is masked in full (``mask``),
    and so is a wire whose parts would send more than a share's 64 bits.
    Rounds 1 (0 when every coefficient is an integer already); 64 - t bits an
    element each way, 16 after a truncation by f = 16 (a 64-bit mask: 64)."""
    x = await mask(ctx, x)
    kept, sent = x.split_parts()
    if not sent:
        return x
    if sent_bits(x) >= 64 * math.prod(x.shape):
        return await mask(ctx, x.share(ctx))   # (a product's wire: its public part times a dealt one)
    unshifted = [part.unshifted() for part in sent]
    masks = []
    for message in unshifted:   # (a loop, not a comprehension: the view tests find draws by their protocol's frame)
        masks.append(ctx.rand(message.shape))
    messages = [u - a for u, a in zip(unshifted, masks)]
    peers = await ctx.exchange(*messages, bits=[64 - part.twos for part in sent])
    public = x.public
    for part, message, peer in zip(sent, messages, peers):
        public = public + ((message + peer) << part.twos)
    return Wire(public, tuple(kept) + tuple(Part(1 << part.twos, a, part.twos) for part, a in zip(sent, masks)),
                x.zero)


def sent_bits(x: Wire) -> int:
    """Bits that opening x's tensor-coefficient parts sends per party (``narrowed``,
    ``arith.linear_server_wire``): 64 - twos an element of each, at the part's own shape."""
    return sum((64 - part.twos) * math.prod(part_shape(part)) for part in x.split_parts()[1])


def part_shape(part: Part) -> tuple[int, ...]:
    """The shape of a part's value before it broadcasts into the wire's (a row's mean: one per row)."""
    coef_shape = tuple(part.coef.shape) if isinstance(part.coef, torch.Tensor) else ()
    return broadcast(coef_shape, tuple(_viewed(part.handle, part.view).shape))


def broadcast(*shapes: tuple) -> tuple[int, ...]:
    """The broadcast of int shapes (``torch.broadcast_shapes`` without its symbolic-shape
    machinery, a tenth of a second a BERT-base run); raises on shapes that do not broadcast."""
    rank = max(len(shape) for shape in shapes)
    out = []
    for axis in range(-rank, 0):
        sides = {shape[axis] for shape in shapes if len(shape) >= -axis} - {1}
        if len(sides) > 1:
            raise RuntimeError(f"shapes {shapes} do not broadcast")
        out.append(sides.pop() if sides else 1)
    return tuple(out)


def dealt_sum(coefs, views, *handles):
    """sum c_j R_j for integer coefficients and handles under their views: a wire's dealt
    part as the dealer computes it from the values it made (or the client from its shares);
    0 for no parts."""
    return sum(c * _viewed(h, v) for c, h, v in zip(coefs, handles, views))


async def bilinear(ctx, x, y, fn) -> torch.Tensor:
    """fn(x, y) for a bilinear fn (a matmul), untruncated, as a share: both operands
    ``narrowed`` (together), so x = P + M and y = Q + N with M, N dealt; then
    fn(P, Q) + fn(P, N) + fn(M, Q) are local and the dealer deals fn(M, N).
    Beaver's product with the masks taken from the wires: after truncations it
    opens 16 bits an element of each operand, not 64. Rounds 1 (0 when both
    are narrow already)."""
    x, y = await ctx.gather(narrowed(ctx, x), narrowed(ctx, y))
    shape = tuple(fn(torch.empty(x.shape, dtype=torch.int64, device="meta"),
                     torch.empty(y.shape, dtype=torch.int64, device="meta")).shape)
    left, right = x.dealt_share(), y.dealt_share()   # this party's shares of M and N
    cross = ctx.derive(functools.partial(_dealt_matmul, fn, [p.coef for p in x.parts], [p.view for p in x.parts],
                                         [p.coef for p in y.parts], [p.view for p in y.parts], len(x.parts)),
                       *[p.handle for p in x.parts], *[p.handle for p in y.parts], shape=shape)
    out = cross + fn(x.public, right) + fn(left, y.public)
    return out + fn(x.public, y.public) if ctx.party == 0 else out


def _dealt_matmul(fn, left_coefs, left_views, right_coefs, right_views, split, *handles):
    """The dealer's fn(M, N) from the two wires' dealt parts."""
    return fn(dealt_sum(left_coefs, left_views, *handles[:split]),
              dealt_sum(right_coefs, right_views, *handles[split:]))


def _pair_key(left: Part, right: Part) -> tuple:
    """One key for the cross term of two parts, whichever comes first."""
    return tuple(sorted((left.key(), right.key()), key=repr))


def cross_terms(x: Wire, y: Wire) -> int:
    """How many dealt cross terms ``product(x, y)`` makes (pairs of parts whose
    coefficients do not multiply to a multiple of 2^64, a pair over the same values once)."""
    return len({_pair_key(left, right) for left in x.parts for right in y.parts if left.twos + right.twos < 64})


def product(ctx, x: Wire, y: Wire) -> Wire:
    """x * y (elementwise, broadcasting), untruncated, with no message: the cross
    terms R_i R'_j are dealt (stored), one per pair of parts whose coefficients
    do not multiply to a multiple of 2^64."""
    shape = broadcast(x.shape, y.shape)
    parts = [] if x.zero else [Part(x.public * p.coef, p.handle, p.twos, p.view) for p in y.parts]
    parts += [] if y.zero else [Part(y.public * p.coef, p.handle, p.twos, p.view) for p in x.parts]
    cross: dict[tuple, Part] = {}
    for left in x.parts:
        for right in y.parts:
            twos = left.twos + right.twos
            if twos >= 64:
                continue
            key = _pair_key(left, right)
            coef = _ring(left.coef * right.coef)
            if key in cross:
                seen = cross[key]
                cross[key] = Part(_ring(seen.coef + coef), seen.handle, min(seen.twos, twos))
                continue
            if len(cross) == MAX_CROSS_TERMS:
                raise ValueError(f"wire product with more than {MAX_CROSS_TERMS} cross terms: mask an operand")
            dealt_shape = broadcast(tuple(_viewed(left.handle, left.view).shape),
                                    tuple(_viewed(right.handle, right.view).shape))
            # the views bound now: the dealer calls the function later, after this loop has moved on
            term = ctx.derive(functools.partial(_viewed_product, left.view, right.view),
                              left.handle, right.handle, shape=dealt_shape)
            cross[key] = Part(coef, term, twos)
    public = x.public * y.public
    if tuple(public.shape) != shape:
        public = public.expand(shape)
    return Wire(public, _merge(parts) + tuple(cross.values()), x.zero or y.zero)


async def truncate(ctx, z, shift: int) -> Wire:
    """Faithful truncation by ``shift`` bits (see ``arith.trunc`` for the domain), its
    output left as a wire: h - (o >> s) public, minus the dealt r >> s, plus the dealt
    msb(r) times the public (1 - msb(h)) 2^(64-s), where h is c >> s or one less.

    Each party sends only the high 64 - s bits of its share of c = z + o + r, o = 2^62
    + 2^s + 2^(s-1): h = (c0 >> s) + (c1 >> s) mod 2^(64-s) drops the carry out of the
    low halves. That costs up to 1 ulp more (the 2^(s-1) keeps the error centred: within
    1.5 ulp of z / 2^s, mean 0). The dropped carry could change msb(h) against msb(c)
    only where c lies within 2^s above 2^63 or above 0, and both need z + o < 2^s (c =
    z + o + r with the wrap the msb test assumes), which the 2^s in o excludes for z >=
    -2^62 (tests/test_truncation.py sets c and the carry by hand there). Each half is
    uniform to the peer: its share of r masks it. Past HIGH_HALF_MAX_SHIFT bits (o would
    eat the domain) both halves are sent, o = 2^62, and the result is floor(z / 2^s) or
    one more.
    Rounds 1; (64 - s)/8 bytes per element each way (6 at s = 16)."""
    z = share_of(ctx, z)
    rshift = ctx.backend.rshift_logical
    r = ctx.rand(z.shape)
    r_high = ctx.derive(lambda r: rshift(r, shift), r, shape=z.shape)
    r_msb = ctx.derive(lambda r: rshift(r, 63), r, shape=z.shape)
    halves = 0 < shift <= HIGH_HALF_MAX_SHIFT   # (by 0: the whole c, an exact identity, as before)
    offset = (1 << RING_SHIFT_LIMIT) + (((1 << shift) + (1 << (shift - 1))) if halves else 0)
    bits = 64 - shift if halves else 64
    sent = z + r + (offset if ctx.party == 0 else 0)
    high = await ctx.open(rshift(sent, shift) if halves else sent, bits=bits)
    if halves:
        high = high & ((1 << bits) - 1)
    else:
        high = rshift(high, shift)
    public = high - (offset >> shift)
    wrap = (1 - rshift(high, 63 - shift)) << (64 - shift)
    return Wire(public, (Part(-1, r_high, 0), Part(wrap, r_msb, 64 - shift)))
