"""Each protocol against its plaintext meaning, with the transport's counts
equal to the cost model's and the dealer's material equal to what was listed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from mpcc.ops import arith, compare, nonlinear as nl
from mpcc.runtime.harness import run_protocol

ULP = 2.0 ** -16


def shapes(max_dims=3, max_side=6):
    return st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims).map(tuple)


def reals(shape, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low)


def check_counts(run):
    assert run.rounds == run.cost_rounds, "rounds counted by the transport differ from cost()"
    assert run.bytes_sent == run.cost_bytes, "bytes counted by the transport differ from cost()"
    assert run.dealt_bytes == run.cost_offline, "dealer material differs from what the cost model listed"


seeds = st.integers(0, 2**31)



async def ltz_arith(ctx, a, **options):
    return await compare.b2a(ctx, await compare.ltz_bits(ctx, a, **options))


async def rsqrt_product(ctx, a):
    return await arith.mul(ctx, *(await nl.rsqrt(ctx, a)))

@given(shapes(), seeds)
def test_mul_and_square(shape, seed):
    x, y = reals(shape, -100, 100, seed), reals(shape, -100, 100, seed + 1)
    run = run_protocol(lambda ctx, a, b: arith.mul(ctx, a, b), x, y, seed=seed)
    check_counts(run)
    assert (run.decoded - x * y).abs().max() <= 4 * ULP * 100 + 2 * ULP
    run = run_protocol(lambda ctx, a: arith.square(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - x * x).abs().max() <= 4 * ULP * 100 + 2 * ULP


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 4), seeds)
def test_matmul_of_shares(m, k, n, seed):
    x, y = reals((2, m, k), -10, 10, seed), reals((2, k, n), -10, 10, seed + 1)
    run = run_protocol(lambda ctx, a, b: arith.matmul_shares(ctx, a, b), x, y, seed=seed)
    check_counts(run)
    assert (run.decoded - x @ y).abs().max() <= k * 20 * ULP + 2 * ULP


@given(shapes(), seeds, st.integers(1, 30))
def test_trunc_is_faithful(shape, seed, shift):
    x = torch.randint(-2**61, 2**61, shape, generator=torch.Generator().manual_seed(seed))
    run = run_protocol(lambda ctx, a: arith.trunc(ctx, a, shift), x, integer=True, seed=seed)
    check_counts(run)
    # only the high halves are opened: within 1.5 ulp of x / 2^s (integer arithmetic: no float rounding)
    assert (2 * (run.result * 2**shift - x).abs() < 3 * 2**shift).all()


def test_trunc_is_unbiased():
    """The dropped carry and r's borrow cancel on average (the 2^(s-1) added before the
    opening): a bias of half an ulp would add up along a model."""
    x = torch.randint(-2**40, 2**40, (20000,), generator=torch.Generator().manual_seed(3))
    run = run_protocol(lambda ctx, a: arith.trunc(ctx, a, 16), x, integer=True, seed=3)
    error = (run.result * 2**16 - x).double() / 2**16
    assert abs(float(error.mean())) < 0.02 and float(error.abs().max()) < 1.5


@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5), seeds)
def test_linear_with_server_weight(m, k, n, seed):
    x, w = reals((m, k), -5, 5, seed), reals((n, k), -1, 1, seed + 1)
    w_ring = torch.round(w * 2**16).to(torch.int64)

    async def protocol(ctx, a):
        if ctx.party == 0:
            weight = None
        else:
            weight = torch.empty((n, k), dtype=torch.int64, device="meta") if ctx.meta else w_ring
        fn = lambda p, q: p @ q.transpose(-1, -2)  # noqa: E731
        return await arith.trunc(ctx, await arith.linear_server(ctx, a, weight, (n, k), "w", fn))
    run = run_protocol(protocol, x, seed=seed)
    check_counts(run)
    assert run.bytes_sent[0] == 8 * m * k + math.ceil(6 * m * n), "x - A once, plus the truncation's 48 bits"
    assert (run.decoded - x @ w.T).abs().max() <= k * 6 * ULP + 4 * ULP


@given(shapes(), seeds)
def test_ltz_relu_select(shape, seed):
    x = reals(shape, -30000, 30000, seed)
    x.view(-1)[0] = 0.0
    run = run_protocol(lambda ctx, a: ltz_arith(ctx, a), x, seed=seed)
    check_counts(run)
    assert torch.equal(run.result, (x < 0).to(torch.int64) if x.numel() else run.result)
    run = run_protocol(lambda ctx, a: compare.relu(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - x.relu()).abs().max() <= ULP


@given(st.integers(1, 12), st.integers(1, 3), seeds)
def test_max_and_argmax(n, rows, seed):
    x = reals((rows, n), -1000, 1000, seed)
    run = run_protocol(lambda ctx, a: compare.max_last(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - x.amax(-1)).abs().max() <= ULP
    run = run_protocol(lambda ctx, a: compare.argmax_last(ctx, a), x, seed=seed)
    assert torch.equal(run.result, x.argmax(-1))


@given(shapes(2, 8), seeds)
def test_exp_on_non_positive_inputs(shape, seed):
    x = reals(shape, -40, 0, seed)
    run = run_protocol(lambda ctx, a: nl.exp(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - x.exp()).abs().max() <= 3e-5


def test_exp_near_its_cut_off():
    """exp's clip at -15 uses a fuzzy comparison: around it the result may be e^x or ~0 (both below
    fixed-point resolution); a value let through on the wrong side would wrap to about e."""
    x = torch.linspace(-16.5, -13.5, 3000, dtype=torch.float64).reshape(3, 1000)
    run = run_protocol(lambda ctx, a: nl.exp(ctx, a), x, seed=5)
    assert (run.decoded - x.exp()).abs().max() <= 2 * ULP


@given(shapes(2, 8), seeds)
def test_reciprocal_and_rsqrt(shape, seed):
    x = reals(shape, 1, 4000, seed)
    run = run_protocol(lambda ctx, a: nl.reciprocal(ctx, a), x, seed=seed)
    check_counts(run)
    assert ((run.decoded - 1 / x).abs() <= 4 * ULP + 1e-4 / x).all()
    v = reals(shape, 1e-3, 1e6, seed + 1)
    run = run_protocol(lambda ctx, a: rsqrt_product(ctx, a), v, seed=seed)
    check_counts(run)
    assert ((run.decoded - v.rsqrt()).abs() <= 1e-3 * v.rsqrt() + 4 * ULP).all()


@given(st.integers(1, 3), st.integers(1, 16), seeds, st.booleans())
def test_softmax_with_and_without_mask(rows, n, seed, masked):
    x = reals((rows, n), -20, 20, seed)
    mask = torch.ones(rows, n, dtype=torch.bool)
    if masked:
        mask = torch.rand(rows, n, generator=torch.Generator().manual_seed(seed)) > 0.3
        mask[:, 0] = True
    run = run_protocol(lambda ctx, a: nl.softmax_masked(ctx, a, mask.to(ctx.device) if masked else None), x, seed=seed)
    check_counts(run)
    expected = torch.softmax(x.masked_fill(~mask, float("-inf")), -1)
    assert (run.decoded - expected).abs().max() <= 2e-4


@given(shapes(2, 10), seeds, st.floats(1, 1000))
def test_gelu_and_tanh_on_all_reals(shape, seed, spread):
    x = reals(shape, -spread, spread, seed)
    run = run_protocol(lambda ctx, a: nl.gelu(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - F.gelu(x)).abs().max() <= 1e-3
    run = run_protocol(lambda ctx, a: nl.tanh(ctx, a), x, seed=seed)
    check_counts(run)
    assert (run.decoded - torch.tanh(x)).abs().max() <= 5e-3


def test_gelu_dense_grid_within_1e_2_of_exact():
    x = torch.linspace(-20, 20, 8001, dtype=torch.float64)
    run = run_protocol(lambda ctx, a: nl.gelu(ctx, a), x)
    assert (run.decoded - F.gelu(x)).abs().max() <= 1e-3
    assert nl.GELU_FIT_ERROR < 1e-4 and nl.TANH_FIT_ERROR < 2e-3


def test_integer_bit_select_needs_no_truncation():
    x = torch.tensor([1.5, -2.25, 3.0])
    bits = torch.tensor([1, 0, 1])
    async def protocol(ctx, a):
        mine = bits.to(ctx.device) if (ctx.party == 0 and not ctx.meta) else torch.zeros_like(a)
        return (await compare.select_bits(ctx, mine, [a]))[0]
    run = run_protocol(protocol, x)
    assert torch.equal(run.decoded, x * bits)
    assert run.rounds == (1, 1)
    assert math.isclose(run.bytes_sent[0], 3 * 8 + 1)


def test_op_cost_from_types_alone():
    from mpcc.ir import TensorType
    from mpcc.runtime.cost import op_cost
    shared = TensorType((4, 4), "real", "shared")
    cost = op_cost("mpc.mul", {"self": shared, "other": shared}, {"truncate": True})
    assert cost.rounds == 2 and cost.per_party[0].online_bytes == 2 * 16 * 8 + 16 * 6   # the truncation: 48 bits
    linear = op_cost("mpc.linear_server", {"input": TensorType((2, 8), "real", "shared"),
                                           "weight": TensorType((3, 8), "real", "server")},
                     {"bias": None, "transpose": True}, out_shape=(2, 3))
    assert linear.per_party[0].online_bytes == 2 * 8 * 8 + 2 * 3 * 6   # x - A, then the truncation's 48 bits
    assert linear.per_party[1].online_bytes == 2 * 3 * 6                # the truncation opening only
    assert linear.setup_bytes == 3 * 8 * 8                                # W - B, once per deployment


@given(shapes(2, 9), seeds, st.integers(1, 20))
def test_fuzzy_ltz_is_exact_away_from_zero(shape, seed, fuzz):
    x = torch.randint(-2**30, 2**30, shape, generator=torch.Generator().manual_seed(seed))
    run = run_protocol(lambda ctx, a: ltz_arith(ctx, a, fuzz_bits=fuzz), x, integer=True,
                       seed=seed)
    check_counts(run)
    far = x.abs() >= 2**fuzz
    assert torch.equal(run.result[far], (x[far] < 0).to(torch.int64))
    assert ((run.result == 0) | (run.result == 1)).all()


# --------------------------------------------------------------------------- lt_public's tree of 4-input ANDs
def tree_levels(bits: int) -> int:
    """ceil(log4 bits): the rounds of lt_public's tree (0 for one bit)."""
    levels = 0
    while 4 ** levels < bits:
        levels += 1
    return levels


def int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def run_lt_public(bits: int, pairs: list, seed: int = 0, record: bool = False):
    """[c < r] for public c and XOR-shared r (random bits above ``bits`` in c and in both shares)."""
    g = torch.Generator().manual_seed(seed)
    noise = lambda: torch.randint(-2**63, 2**63 - 1, (len(pairs),), generator=g)  # noqa: E731
    above = ~((1 << bits) - 1) if bits < 64 else 0
    c = torch.tensor([int64(c) for c, _ in pairs], dtype=torch.int64) | (noise() & above)
    r = torch.tensor([int64(r) for _, r in pairs], dtype=torch.int64)
    mask = noise()

    async def protocol(ctx, c_meta, r_meta):
        if ctx.meta:
            return await compare.lt_public(ctx, c_meta, r_meta, bits)
        share = mask if ctx.party == 0 else mask ^ r
        return await compare.lt_public(ctx, c, share, bits)
    return run_protocol(protocol, c, r, integer=True, xor_result=True, seed=seed, record=record)


@st.composite
def comparisons(draw):
    bits = draw(st.integers(1, 64))
    top = (1 << bits) - 1
    word = st.one_of(st.integers(0, top), st.sampled_from([0, 1, top, top - 1, top >> 1, (top >> 1) + 1]))
    pairs = draw(st.lists(st.tuples(word, word, st.booleans()), min_size=1, max_size=40))
    return bits, [(c, c if equal else r) for c, r, equal in pairs]


@given(comparisons(), seeds)
def test_lt_public_against_plaintext(case, seed):
    bits, pairs = case
    run = run_lt_public(bits, pairs, seed)
    check_counts(run)
    assert run.rounds == (tree_levels(bits),) * 2
    assert run.result.tolist() == [int(c < r) for c, r in pairs]


def test_lt_public_every_width():
    """Widths 1..64 (powers of 4 or not: trees of arities 4, 3 and 2): 0, all ones, equal and adjacent values."""
    for bits in range(1, 65):
        top = (1 << bits) - 1
        edges = [0, 1, top, top - 1, top >> 1, (top >> 1) + 1, 0x5555555555555555 & top]
        pairs = [(c, r) for c in edges for r in edges]
        run = run_lt_public(bits, pairs, seed=bits)
        check_counts(run)
        assert run.rounds == (tree_levels(bits),) * 2, bits
        assert run.result.tolist() == [int(c < r) for c, r in pairs], bits


@pytest.mark.parametrize("bits, fuzz, rounds, online, stored", [(32, 0, 3, 6.25, 23), (48, 0, 3, 9.25, 40.67),
                                                                  (64, 0, 3, 12.25, 46), (32, 15, 2, 4.75, 16),
                                                                  (16, 0, 2, 2.75, 16)])
def test_ltz_rounds(bits, fuzz, rounds, online, stored):
    """One opening, then ceil(log4(bits - 1 - fuzz)) - 1 rounds of 4-input ANDs: the dealer knows r and deals
    the leaf's ANDs of bits of r (as many words as it dealt ANDs of masks), so the leaf opens nothing.
    Bytes sent and stored per element (96: whole words at every level)."""
    n = 96
    x = torch.randint(-2**(bits - 1), 2**(bits - 1) - 1, (n,), generator=torch.Generator().manual_seed(bits))
    run = run_protocol(lambda ctx, a: compare.ltz_bits(ctx, a, bits, fuzz), x, integer=True, xor_result=True)
    check_counts(run)
    assert run.rounds == (rounds, rounds)
    assert run.bytes_sent[0] / n == online and math.isclose(run.dealt_bytes[1] / n, stored, abs_tol=0.01)
    far = x.abs() >= 2 ** fuzz
    assert torch.equal(run.result[far], (x[far] < 0).to(torch.int64))


@st.composite
def ltz_cases(draw):
    """A width, a fuzz and values in the domain, with its edges, 0, -1 and the edges of the fuzzy bands."""
    bits = draw(st.integers(2, 64))
    fuzz = draw(st.integers(0, bits - 2))
    half, step = 1 << (bits - 1), 1 << fuzz
    edges = [0, 1, -1, -half, -half + 1, half - 1, half - 2, step, -step, step - 1, -step + 1, half - step,
             half - step + 1, -half + step]
    edges = [e for e in edges if -half <= e < half]
    values = draw(st.lists(st.one_of(st.integers(-half, half - 1), st.sampled_from(edges)), min_size=1, max_size=40))
    return bits, fuzz, values


@given(ltz_cases(), seeds)
def test_ltz_with_a_dealt_leaf(case, seed):
    """ltz_bits at every width and fuzz (its tree's leaf dealt from r): exact on the stated domain, a 0/1 word in
    the fuzzy bands; rounds, bytes and material are the cost model's."""
    bits, fuzz, values = case
    half = 1 << (bits - 1)
    x = torch.tensor([int64(v) for v in values], dtype=torch.int64)
    run = run_protocol(lambda ctx, a: compare.ltz_bits(ctx, a, bits, fuzz), x, integer=True, xor_result=True,
                       seed=seed)
    check_counts(run)
    assert run.rounds == (1 + max(tree_levels(bits - 1 - fuzz) - 1, 0),) * 2
    for value, bit in zip(values, run.result.tolist()):
        exact = fuzz == 0 or -half <= value <= -(1 << fuzz) or 0 <= value <= half - (1 << fuzz)
        assert bit == int(value < 0) if exact else bit in (0, 1), (bits, fuzz, value)


def run_dealt_lt_public(bits: int, shift: int, deltas: list, seed: int = 0):
    """``lt_public(..., dealt=v, shift=shift)`` with r = bits shift .. shift + bits - 1 of a value v the dealer
    dealt, for c = r ^ delta (opened first). Returns [c < r] XOR its expected value, r's bit at delta's highest
    one (0 where delta = 0), XOR-linear in r: all zeros when right."""
    low = (1 << bits) - 1 if bits < 64 else -1
    delta = torch.tensor([int64(d) for d in deltas], dtype=torch.int64)
    highest = torch.tensor([max(d.bit_length() - 1, 0) for d in deltas], dtype=torch.int64)
    nonzero = torch.tensor([int(d != 0) for d in deltas], dtype=torch.int64)

    async def protocol(ctx, dummy):
        v = ctx.rand(dummy.shape)
        r = ctx.derive(lambda v: (v >> shift) & low, v, shape=dummy.shape, kind="xor")
        if ctx.meta:
            return await compare.lt_public(ctx, await ctx.open_xor(r, bits=bits), r, bits, dealt=v, shift=shift)
        c = await ctx.open_xor(r ^ delta if ctx.party == 0 else r, bits=bits) & low
        lt = await compare.lt_public(ctx, c, r, bits, dealt=v, shift=shift)
        return lt ^ ((r >> highest) & nonzero)
    return run_protocol(protocol, delta, integer=True, xor_result=True, seed=seed)


@st.composite
def dealt_comparisons(draw):
    bits = draw(st.integers(1, 64))
    shift = draw(st.integers(0, 64 - bits))
    top = (1 << bits) - 1
    edges = [0, 1, top, 1 << (bits - 1), top >> 1, 0x5555555555555555 & top] + [1 << j for j in range(bits)]
    deltas = draw(st.lists(st.one_of(st.integers(0, top), st.sampled_from(edges)), min_size=1, max_size=40))
    return bits, shift, deltas


@given(dealt_comparisons(), seeds)
def test_lt_public_with_a_dealt_r(case, seed):
    """Where the dealer dealt r, the leaf opens nothing: one round fewer (after the opening of c)."""
    bits, shift, deltas = case
    run = run_dealt_lt_public(bits, shift, deltas, seed)
    check_counts(run)
    assert run.rounds == (1 + max(tree_levels(bits) - 1, 0),) * 2
    assert run.result.tolist() == [0] * len(deltas)


def test_ltz_openings_are_uniform():
    """Each value a party reconstructs from ltz_bits's openings (c = y + r, 32 bits, then the bits the tree's G
    and E words carry) is uniform, for x = 0 everywhere as for random x: the dealt leaf opens nothing and every level
    above masks afresh."""
    n = 4096
    g = torch.Generator().manual_seed(4)
    for x in (torch.zeros(n, dtype=torch.int64), torch.randint(-2**31, 2**31, (n,), generator=g)):
        run = run_protocol(lambda ctx, a: compare.ltz_bits(ctx, a), x, integer=True, xor_result=True, record=True)
        assert len(run.received[0]) == 1 + 2 * (tree_levels(31) - 1)   # c, then (G ^ a_G, E ^ a_E) per level
        for i, ((mine, width), (theirs, _)) in enumerate(zip(*run.received)):
            words = (mine + theirs) & ((1 << width) - 1) if i == 0 else mine ^ theirs
            ones = ((words.unsqueeze(-1) >> torch.arange(width)) & 1).double().mean(0)
            assert ((ones - 0.5).abs() <= 6 * (0.25 / words.numel()) ** 0.5).all(), (i, ones)


def test_lt_public_openings_are_uniform():
    """Each word a party reconstructs from one of lt_public's openings (its message XOR the peer's) is
    uniform in every bit the opening carries (its layout's, compacted by the record), for r = c as for
    random r: every input of every level is masked afresh."""
    n, bits = 4096, 31
    g = torch.Generator().manual_seed(3)
    c = torch.randint(0, 2**bits, (n,), generator=g).tolist()
    other = torch.randint(0, 2**bits, (n,), generator=g).tolist()
    for pairs in ([(v, v) for v in c], list(zip(c, other))):
        run = run_lt_public(bits, pairs, record=True)
        assert len(run.received[0]) == 2 * tree_levels(bits) - 1   # r ^ a, then (G ^ a_G, E ^ a_E) per level
        for (mine, width), (theirs, _) in zip(*run.received):
            words = mine ^ theirs
            ones = ((words.unsqueeze(-1) >> torch.arange(width or 64)) & 1).double().mean(0)
            assert ((ones - 0.5).abs() <= 6 * (0.25 / words.numel()) ** 0.5).all(), ones
