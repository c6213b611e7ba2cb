"""The run-time overflow flag's building blocks, run by both parties on real shares."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from mpcc.ops.overflow import any_bits, out_of_range_bits
from mpcc.runtime.harness import run_protocol

RING_MIN, RING_MAX = -2 ** 63, 2 ** 63 - 1


def check_counts(run):
    assert run.rounds == run.cost_rounds, "rounds counted by the transport differ from cost()"
    assert run.bytes_sent == run.cost_bytes, "bytes counted by the transport differ from cost()"
    assert run.dealt_bytes == run.cost_offline, "dealer material differs from what the cost model listed"


def flags(x: torch.Tensor, bound_log2: int, seed: int = 0, record: bool = False):
    return run_protocol(lambda ctx, v: out_of_range_bits(ctx, v, bound_log2), x, integer=True, xor_result=True,
                        seed=seed, record=record)


def assert_exact_outside_band(x: torch.Tensor, result: torch.Tensor, bound_log2: int):
    values = [int(v) for v in x.tolist()]
    for value, bit in zip(values, result.tolist()):
        assert bit in (0, 1), f"{value}: not a 0/1 word ({bit})"
        if abs(value) >= 2 ** bound_log2:
            assert bit == 1, f"|{value}| >= 2^{bound_log2} not flagged"
        elif abs(value) < 2 ** (bound_log2 - 1):
            assert bit == 0, f"|{value}| < 2^{bound_log2 - 1} flagged"


def edge_values(bound_log2: int) -> torch.Tensor:
    b, third = bound_log2, 3 << (bound_log2 - 2)
    values = [0, 1, -1, 2 ** b, -2 ** b, 2 ** b + 1, -2 ** b - 1, 2 ** (b - 1) - 1, -(2 ** (b - 1) - 1),
              third, -third, RING_MIN, RING_MAX, RING_MIN + 1, RING_MIN + third, RING_MAX - third,
              RING_MIN + 2 * third, RING_MAX - 2 * third, 2 ** 62, -2 ** 62]
    return torch.tensor([v for v in values if RING_MIN <= v <= RING_MAX], dtype=torch.int64)


@pytest.mark.parametrize("bound_log2", [2, 31, 33, 47, 62])
def test_out_of_range_bits_on_the_whole_ring(bound_log2):
    """Uniform ring elements (nearly all huge), values inside the band's lower
    edge, and the edges: the band, the thresholds, +-2^63."""
    g = torch.Generator().manual_seed(bound_log2)
    inside = 2 ** (bound_log2 - 1)
    x = torch.cat([torch.randint(RING_MIN, RING_MAX, (300,), dtype=torch.int64, generator=g),
                   torch.randint(-inside + 1, inside, (300,), dtype=torch.int64, generator=g),
                   edge_values(bound_log2)])
    run = flags(x, bound_log2)
    check_counts(run)
    assert_exact_outside_band(x, run.result, bound_log2)


@given(st.integers(2, 62), st.lists(st.integers(RING_MIN, RING_MAX), min_size=1, max_size=16), st.integers(0, 2**31))
def test_out_of_range_bits_hypothesis(bound_log2, values, seed):
    x = torch.tensor(values, dtype=torch.int64)
    near = [v >> (63 - bound_log2) for v in values]   # the same draws scaled to [-2^bound_log2, 2^bound_log2)
    x = torch.cat([x, torch.tensor(near, dtype=torch.int64)])
    assert_exact_outside_band(x, flags(x, bound_log2, seed=seed).result, bound_log2)


def test_out_of_range_bits_cost_table():
    """The docstring's table: rounds and bytes per element for a few bounds."""
    x = torch.zeros(64, dtype=torch.int64)
    for bound_log2, rounds, online in [(31, 4, 21.15625), (40, 4, 20.75), (62, 2, 16.25)]:
        run = flags(x, bound_log2)
        assert run.rounds == (rounds, rounds)
        assert run.bytes_sent[0] / 64 == online


def xor_shares(ctx, values: list[torch.Tensor], seed: int = 7):
    """XOR shares of 0/1 words with random high bits (equal in both shares)."""
    if ctx.meta:
        return [torch.empty(v.shape, dtype=torch.int64, device="meta") for v in values]
    g = torch.Generator().manual_seed(seed)
    masks = [torch.randint(RING_MIN, RING_MAX, tuple(v.shape), dtype=torch.int64, generator=g) for v in values]
    return masks if ctx.party == 0 else [m ^ v for m, v in zip(masks, values)]


def reduce_all(values: list[torch.Tensor], record: bool = False, seed: int = 0):
    dummy = torch.zeros(1)

    def protocol(ctx, _):
        return any_bits(ctx, xor_shares(ctx, values, seed))
    return run_protocol(protocol, dummy, integer=True, xor_result=True, record=record, seed=seed)


def test_any_bits_reduces_every_entry_of_the_list():
    sizes = [0, 1, 63, 64, 65, 130, 1000, 4097]
    g = torch.Generator().manual_seed(0)
    values, expected = [], []
    for n in sizes:
        values.append(torch.zeros(n, dtype=torch.int64))
        expected.append(0)
        if n:
            for position in {0, n - 1, int(torch.randint(n, (1,), generator=g))}:
                one = torch.zeros(n, dtype=torch.int64)
                one[position] = 1
                values.append(one)
                expected.append(1)
            values.append(torch.ones(n, dtype=torch.int64))
            expected.append(1)
    values.append(torch.zeros(2, 3, 5, dtype=torch.int64))
    values[-1][1, 2, 4] = 1
    expected.append(1)
    run = reduce_all(values)
    check_counts(run)
    assert run.result.tolist() == expected


@pytest.mark.parametrize("n", [64, 4096, 65536])
def test_any_bits_rounds_are_log_of_the_bits(n):
    """ceil(log2(words)) AND levels across words, then 6 within a word: log2(n)
    rounds for n bits; smaller tensors beside the largest add none."""
    run = reduce_all([torch.zeros(n, dtype=torch.int64), torch.zeros(n // 3, dtype=torch.int64)])
    words = math.ceil(n / 64)
    assert run.rounds == (math.ceil(math.log2(words)) + 6,) * 2
    assert run.rounds[0] <= math.ceil(math.log2(n)) + 1
    in_word = sum(2 * math.ceil(2 * width / 8) for width in (32, 16, 8, 4, 2, 1))   # two tensors' words
    assert run.bytes_sent[0] == 16 * (words - 1) + 16 * (math.ceil(n // 3 / 64) - 1) + in_word


def test_overflow_flag_end_to_end():
    """out_of_range_bits then any_bits: only the tensor with a large value is flagged."""
    g = torch.Generator().manual_seed(3)
    small = [torch.randint(-2 ** 29, 2 ** 29, (40,), generator=g) for _ in range(3)]
    bad = small[1].clone()
    bad[17] = -2 ** 40

    async def protocol(ctx, a, b, c):
        return await any_bits(ctx, [await out_of_range_bits(ctx, t, 31) for t in (a, b, c)])
    run = run_protocol(protocol, small[0], bad, small[2], integer=True, xor_result=True)
    check_counts(run)
    assert run.result.tolist() == [0, 1, 0]


def _looks_uniform(messages) -> bool:
    """Every bit position of the messages (within its width) is one about half the time."""
    counts, totals = torch.zeros(64), torch.zeros(64)
    for tensor, width in messages:
        width = width or 64
        bits = (tensor.reshape(-1, 1) >> torch.arange(width)) & 1
        counts[:width] += bits.sum(0).float()
        totals[:width] += bits.shape[0]
    used = totals > 0
    return bool(((counts[used] / totals[used] - 0.5).abs() < 6 * (0.25 / totals[used]).sqrt()).all())


def _masked(view_a, view_b) -> bool:
    """Two runs share the inputs with the same masks (same seed), secrets differ, the
    dealer's randomness is fresh: every received message must differ by a uniform
    word. A message masked only by the input sharing differs by a function of the
    secrets (or not at all)."""
    assert [t.shape for t, _ in view_a] == [t.shape for t, _ in view_b]
    return _looks_uniform([(a ^ b, width) for (a, width), (b, _) in zip(view_a, view_b)])


@pytest.mark.parametrize("party", [0, 1])
def test_received_messages_are_masked(party):
    inside = torch.zeros(2000, dtype=torch.int64)
    outside = torch.full((2000,), 2 ** 45, dtype=torch.int64)
    assert _masked(flags(inside, 31, seed=1, record=True).received[party],
                   flags(outside, 31, seed=1, record=True).received[party])
    zeros, ones = torch.zeros(64 * 400, dtype=torch.int64), torch.ones(64 * 400, dtype=torch.int64)
    assert _masked(reduce_all([zeros], record=True, seed=1).received[party],
                   reduce_all([ones], record=True, seed=1).received[party])


def test_the_masking_test_can_fail():
    """An opening without the dealer's mask is caught."""
    async def unmasked(ctx, a):
        await ctx.open(a)
        return a
    for party in (0, 1):
        view_a = run_protocol(unmasked, torch.zeros(2000, dtype=torch.int64), integer=True, record=True, seed=1)
        view_b = run_protocol(unmasked, torch.full((2000,), 2 ** 45, dtype=torch.int64), integer=True, record=True,
                              seed=1)
        assert not _masked(view_a.received[party], view_b.received[party])
