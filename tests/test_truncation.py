"""The truncation that opens only the high halves of c's shares, at the cases a
random run almost never reaches (probability 2^-47 an element): c next to a wrap
boundary, with and without the low halves' carry that the opening drops. A
scripted two-party context chooses the shares of z and r, so c and the carry
are set by hand."""
from __future__ import annotations

import asyncio

import pytest
import torch

from mpcc.backends import get_backend
from mpcc.ops.borrow_tree import _signed
from mpcc.ops.wire import RING_SHIFT_LIMIT, truncate

SHIFT = 16
MASK64 = (1 << 64) - 1


class _Recorded(Exception):
    pass


class _ScriptedContext:
    """One party's context for ``truncate``: r's share is given, derived values are
    party 0's whole (party 1 holds 0), and the opening returns this share plus the
    peer's recorded one (the first pass records, the second answers)."""
    meta = False

    def __init__(self, party: int, r_share: int, r_whole: int, peer_sent=None):
        self.party, self.backend = party, get_backend("cpu")
        self.r_share, self.r_whole, self.peer_sent, self.sent = r_share, r_whole, peer_sent, None

    def rand(self, shape):
        return torch.full(tuple(shape), _signed(self.r_share), dtype=torch.int64)

    def derive(self, fn, r, shape):
        whole = fn(torch.full(tuple(shape), _signed(self.r_whole), dtype=torch.int64))
        return whole if self.party == 0 else torch.zeros_like(whole)

    async def open(self, share, bits):
        self.sent = share
        if self.peer_sent is None:
            raise _Recorded
        return share + self.peer_sent


def _truncate(z_shares: tuple[int, int], r_shares: tuple[int, int]) -> int:
    """truncate(z) with the given shares of z and r: the output's value (mod 2^64, signed)."""
    r_whole = sum(r_shares)
    sent = []
    for party in (0, 1):
        ctx = _ScriptedContext(party, r_shares[party], r_whole)
        with pytest.raises(_Recorded):
            asyncio.run(truncate(ctx, torch.tensor([_signed(z_shares[party])]), SHIFT))
        sent.append(ctx.sent)
    total = 0
    for party in (0, 1):
        ctx = _ScriptedContext(party, r_shares[party], r_whole, peer_sent=sent[1 - party])
        wire = asyncio.run(truncate(ctx, torch.tensor([_signed(z_shares[party])]), SHIFT))
        total += int(wire.share(ctx)[0])
    return _signed(total)


def _shares_for(z: int, c: int, carry: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shares of z and r with c = z + 2^62 + 1.5 2^s + r equal to ``c`` (mod 2^64) and the
    low halves of c's shares carrying into bit s or not."""
    centre = (1 << RING_SHIFT_LIMIT) + (1 << SHIFT) + (1 << (SHIFT - 1))
    r = (c - z - centre) & MASK64
    low = c & ((1 << SHIFT) - 1)
    c0 = ((1 << SHIFT) - 1) if carry else 0          # party 0's share of c: its low half all ones, or zero
    c0 |= 12345 << (SHIFT + 3)
    # party 1's share of c is c - c0: its low half is (low - c0) mod 2^s, which carries with c0's iff low < c0's
    assert carry == (((low - c0) & ((1 << SHIFT) - 1)) + (c0 & ((1 << SHIFT) - 1)) >= 1 << SHIFT)
    z0 = 777 << 20
    r0 = (c0 - z0 - centre) & MASK64
    return (z0, (z - z0) & MASK64), (r0, (r - r0) & MASK64)


@pytest.mark.parametrize("z", [5 << 20, -(5 << 20), (1 << 61) - 3, -(1 << 61) + 7, 0,
                               (1 << 62) - 3 * (1 << (SHIFT - 1)) - 1, -(1 << 62)])
@pytest.mark.parametrize("c_high", [(1 << 47) - 2, (1 << 47) - 1, 1 << 47, (1 << 47) + 1,
                                    0, 1, (1 << 48) - 2, (1 << 48) - 1])
@pytest.mark.parametrize("c_low", [0x0003, 0x1234, 0x9000, 0xFFF0])
@pytest.mark.parametrize("carry", [False, True])
def test_high_halves_truncate_faithfully_next_to_the_boundaries(z, c_high, c_low, carry):
    """c >> s next to 2^(63-s) and to 0 / 2^(64-s), with and without the dropped carry,
    z across its whole domain [-2^62, 2^62 - 1.5 2^s): within 1.5 ulp of z / 2^s (r is
    set to c - z', so every case is one a run can meet)."""
    c = (c_high << SHIFT) | c_low
    z_shares, r_shares = _shares_for(z, c, carry)
    out = _truncate(z_shares, r_shares)
    assert abs(2 * (out * 2**SHIFT - z)) < 3 * 2**SHIFT, (out, z / 2**SHIFT)
