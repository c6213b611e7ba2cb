"""The ``power`` preset's substitutes: softmax, GeLU and LayerNorm with no comparison.

Every step is a product of wires (``wire.py``) with its truncation, or a
map with public coefficients: no LTZ, B2A or bracket anywhere, so a plan made
of them has a multiplicative depth (``mpcc.depth``; ``*_depth`` below count
each op's, from the same chains and schedules the protocols run).

- ``softmax_power`` (also the ``power`` variant of ``mpc.sdpa``): power-softmax,
  t_i / sum_j t_j with t = (1 + (x - mean(x)) / p)^p, p even (default 4). The
  row mean is a linear map, so the shift costs nothing; since (1 + u/p)^p -> e^u
  it approaches softmax as p grows, and by Jensen each row's mean of t is at
  least 1, which bounds the division from below with no comparison.
  (Power-softmax: x^p / sum x^p, arXiv 2410.09457; here shifted and centred.)
- ``gelu_quartic``: 0.5 x + c0 + c2 x^2 + c4 x^4 (GeLU minus x/2 is even), the
  minimax quartic on [-4, 4]: within 0.0854 of GeLU there, diverging outside.
- ``layer_norm_newton``: LayerNorm, its 1/sqrt(var + eps) by scaled Newton
  steps from a fixed start over the public domain var + eps in [2^-11, 2^8).

The divisions use scaled Newton steps (``scaled_newton.py``) with fixed
coefficients over a public domain, so the errors stated below are those of
the coefficients the protocols use.
"""
from __future__ import annotations

import math

import torch

from .arith import DEFERRED_ACTIVATIONS, DeferredActivation, add_public, encode, server_product, server_ring
from .attention import SOFTMAX_VARIANTS, SoftmaxVariant, _moved
from .base import define
from .scaled_newton import NewtonStep, grid, scaled_newton
from .wire import Wire, mask, product, share_of, truncate

__all__ = ["POWER_P", "POWER_SUM_LOG2", "GELU_QUARTIC", "LN_NEWTON_LOG2",
           "RECIPROCAL_STEPS", "RSQRT_STEPS", "power_chain", "softmax_power", "gelu_quartic", "layer_norm_newton",
           "softmax_depth", "GELU_DEPTH", "LAYER_NORM_DEPTH", "power_reference", "power_row_sums",
           "gelu_quartic_reference", "gelu_quartic_bound", "CENTRE_LIMIT_LOG2", "LN_OUT_BITS", "LN_SCALE",
           "RSQRT_ERROR", "RECIPROCAL_LEFT", "RSQRT_LEFT"]

POWER_P = 4              # the default exponent (even)
POWER_SUM_LOG2 = 12      # per row, sum_j t_j / 2^ceil(log2 n) lies in [1/2, 2^12) (the division's domain)
CENTRE_BITS = 30         # 1/p and 1/(p n) carry 30 bits in the centring's one truncation
CENTRE_LIMIT_LOG2 = 10   # |x| < 2^10 keeps that truncation's input below 2^61 (f <= 20)
F_Z, F_Y, F_P = 24, 16, 24   # fractional bits of z, of y = 1/z (in [1, 2^13]) and of the last step's factors
COEF_BITS = 6            # the steps' a and b are multiples of 2^-6: y (a - b z) with y, z wires fits the ring
RECIPROCAL_STEPS_COUNT = 9   # scaled Newton steps for 1/z, z in [2^-13, 1): 8 coupled, the last self-correcting
LN_NEWTON_LOG2 = (-11, 8)   # var + eps in [2^-11, 2^8)
LN_NEWTON_STEPS = 10     # y_1 from the fixed start 2^-4, then 9 Newton steps of two rounds
LN_START_LOG2 = -LN_NEWTON_LOG2[1] // 2   # y_0 = 2^-4 = 1/sqrt(2^8): z_0 = (var + eps) y_0^2 in [2^-19, 1)
F_V, F_L = 26, 22        # fractional bits of var + eps and of y (and of the step's products P, Q): y^2 < 2^11
LN_OUT_BITS = F_L        # the output's product carries f + 22 bits: |normalised gamma| < 2^(62 - f - 22)

# GeLU: 0.5 x + c0 + beta q - q^2 with q = alpha x^2: c2 = alpha beta, c4 = -alpha^2, alpha and beta on
# grids of 2^-20 and 2^-12 (the protocol's exact constants, so the reference is the protocol's polynomial)
GELU_ALPHA_BITS, GELU_BETA_BITS = 20, 12
# (the minimax fit on [-4, 4] searched over those grids, c0 centring the error: 0.08539 at most)
GELU_QUARTIC = {"c0": 0.0853852024711046, "alpha": 89186 / 2 ** GELU_ALPHA_BITS,
                "beta": 11080 / 2 ** GELU_BETA_BITS, "fit": (-4.0, 4.0), "error": 0.08539}


# ----------------------------------------------------------------------------- the schedules (``scaled_newton``)
# 1/z for z = (row sum / 2^ceil(log2 n)) / 2^12 in [2^-13, 1): coupled steps, the last one self-correcting
RECIPROCAL_STEPS, RECIPROCAL_LEFT = scaled_newton(1, 2.0 ** (-POWER_SUM_LOG2 - 1), RECIPROCAL_STEPS_COUNT,
                                                  [(COEF_BITS, COEF_BITS)])
# 1/sqrt(v) for v = var + eps: z_0 = v 2^-8 in [2^-19, 1); the first step's b is an integer (it multiplies
# the variance with 2f + log2 N bits), its a has 24 bits (a constant term)
RSQRT_STEPS, RSQRT_LEFT = scaled_newton(2, 2.0 ** (LN_NEWTON_LOG2[0] - LN_NEWTON_LOG2[1]), LN_NEWTON_STEPS,
                                        [(24, 0), (COEF_BITS, COEF_BITS)])
# the steps' grid leaves z near, not at, 1: the output's public factor (gamma's, or the centring's) takes
# 1/sqrt of the interval's middle, so y LN_SCALE is within RSQRT_ERROR of 1/sqrt(v)
LN_SCALE = 2 / (math.sqrt(RSQRT_LEFT[0]) + math.sqrt(RSQRT_LEFT[1]))
RSQRT_ERROR = max(abs(LN_SCALE * math.sqrt(z) - 1) for z in RSQRT_LEFT)


# ----------------------------------------------------------------------------- power-softmax
def power_chain(p: int) -> list[tuple[int, int]]:
    """u^p as products (i, j) of earlier values (value 0 is u, value k + 1 the k-th
    product): squarings to the top bit of p, then the other set bits, highest first."""
    if p < 2 or p % 2:
        raise ValueError(f"power-softmax needs an even exponent p >= 2, not {p}")
    chain, squares = [], [0]
    for _ in range(p.bit_length() - 1):
        chain.append((squares[-1], squares[-1]))
        squares.append(len(chain))
    bits = [j for j in range(p.bit_length()) if p >> j & 1]
    acc = squares[bits[-1]]
    for j in reversed(bits[:-1]):
        chain.append((acc, squares[j]))
        acc = len(chain)
    return chain


def _chain_depth(p: int) -> int:
    depths = [0]
    for i, j in power_chain(p):
        depths.append(max(depths[i], depths[j]) + 1)
    return depths[-1]


def softmax_depth(p: int = POWER_P) -> int:
    """Products in sequence in ``softmax_power``: u^p's chain, one per coupled step
    (the first, y_1 = g(z_0), has none), then t y and p~ g(w)."""
    return _chain_depth(p) + (len(RECIPROCAL_STEPS) - 1) + 2


def power_row_sums(x: torch.Tensor, keep: torch.Tensor | None = None,
                   p: int = POWER_P) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, sum_j t_j / 2^ceil(log2 n_kept)) for rows on the last axis (plaintext; the
    division's domain is the second in [1/2, 2^12))."""
    weights = torch.ones_like(x) if keep is None else keep.to(x.dtype).expand(x.shape)
    kept = weights.sum(-1, keepdim=True).clamp(min=1)
    mean = (x * weights).sum(-1, keepdim=True) / kept
    t = (1 + (x - mean) / p) ** p * weights
    return t, t.sum(-1, keepdim=True) / 2 ** torch.ceil(torch.log2(kept))


def power_reference(x: torch.Tensor, keep: torch.Tensor | None = None, p: int = POWER_P) -> torch.Tensor:
    """t_i / sum_j t_j, t = (1 + (x - mean) / p)^p over the kept entries of the last axis."""
    t, _ = power_row_sums(x, keep, p)
    return t / t.sum(-1, keepdim=True)


def _const(like: torch.Tensor, value: int) -> torch.Tensor:
    return torch.full(tuple(like.shape), value, dtype=torch.int64, device=like.device)


def _times(wire: Wire, factor) -> Wire:
    """A wire times a public integer or integer tensor."""
    return wire.scaled(factor) if isinstance(factor, int) else wire.masked(factor)


async def _power(ctx, u: Wire, p: int) -> Wire:
    """u^p along ``power_chain``, each product truncated but the last, returned with 2f bits."""
    values = [u]
    chain = power_chain(p)
    for i, j in chain[:-1]:
        values.append(await truncate(ctx, product(ctx, values[i], values[j]), ctx.frac_bits))
    i, j = chain[-1]
    return product(ctx, values[i], values[j])


async def softmax_power(ctx, x, keep, p: int = POWER_P):
    """Power-softmax over the last axis (``power_reference``), masked entries (keep 0) exactly 0.

    Steps (n entries, n_k kept in a row, e = ceil(log2 n_k), E = ceil(log2 n)):
    1. u = 1 + (x - mean) / p: x times round(2^30 / p) minus the row's sum times
       round(2^30 / (p n_k)) (public per row), one truncation; u a wire.
    2. t = u^p by ``power_chain`` (p = 4: two squarings); the last product,
       untruncated, also gives the row sum s = sum t with 2f bits, so t, m = s / 2^e
       (f bits) and z_0 = m / 2^12 (24 bits) are three truncations of one round.
    3. 1/z_0 by ``RECIPROCAL_STEPS``: eight coupled steps, g = a - b z a public
       line of the wire z, z <- z g and y <- y g two products of wires truncated
       together (one round a step; z at 24 bits drifts from m y 2^-12 by up to
       2^-11 relative, y in [1, 2^13] at 16 bits).
    4. The ninth step from z afresh, joined with the output: p~ = t y 2^-(12+e) and
       w = m y 2^-12 (24 bits each) together, then p = p~ (a - b w): self-correcting,
       the drift goes.
    Rounds: 1 + len(chain) + 8 + 2 = 13 for p = 4, each a truncation; bytes 16
    per element per round but the coupled steps' (per row). Randomness: the
    truncations' and the wire products' dealt cross terms. No comparison: depth
    ``softmax_depth(p)`` (12 for p = 4).
    Domain: |x| < 2^10; per row s / 2^e < 2^12 (s / 2^e > 1/2 by Jensen, so there
    is no floor); every row keeps an entry. Error: the steps leave y within
    ``RECIPROCAL_LEFT`` (6.2e-5) relative of 1/z_0; with the truncations of t, m
    and p, within 1e-4 absolute of ``power_reference`` (5e-5 measured).
    """
    f = ctx.frac_bits
    power_chain(p)   # an odd p is refused before any message
    xs = share_of(ctx, x)
    n = xs.shape[-1]
    top = max(0, (n - 1).bit_length())
    if keep is None:   # every row keeps n = 2^top or fewer: e = top
        shift, rows, total = 1, round(2 ** CENTRE_BITS / (p * n)), xs.sum(-1, keepdim=True)
    else:
        keep = keep.to(device=xs.device, dtype=torch.int64)
        kept = keep.expand(xs.shape).sum(-1, keepdim=True).clamp(min=1)
        exponent = torch.ceil(torch.log2(kept.to(torch.float64))).to(torch.int64)
        shift = 2 ** (top - exponent)
        rows = torch.round(2.0 ** CENTRE_BITS / (p * kept.to(torch.float64))).to(torch.int64)
        total = (xs * keep).sum(-1, keepdim=True)
    numerator = add_public(ctx, xs * round(2 ** CENTRE_BITS / p) - total * rows, _const(xs, 1 << (f + CENTRE_BITS)))
    u = await truncate(ctx, numerator, CENTRE_BITS)
    last = await _power(ctx, u, p)
    if keep is not None:
        last = last.masked(keep)
    sums = last.share(ctx).sum(-1, keepdim=True) * shift       # s / 2^e with 2f + E bits
    ctx.check_range(sums, 2 * f + top + POWER_SUM_LOG2)
    t, m, z = await ctx.gather(truncate(ctx, last, f), truncate(ctx, sums, f + top),
                               truncate(ctx, sums, 2 * f + top + POWER_SUM_LOG2 - F_Z))
    y = None
    for step in RECIPROCAL_STEPS[:-1]:   # coupled: z <- z g(z), y <- y g(z)
        line = _line(z, step, F_Z)
        y_next = truncate(ctx, line, F_Z + COEF_BITS - F_Y) if y is None else \
            truncate(ctx, product(ctx, y, line), F_Z + COEF_BITS)
        z, y = await ctx.gather(truncate(ctx, product(ctx, z, line), F_Z + COEF_BITS), y_next)
    # the last step from z afresh, w = m y 2^-12 (self-correcting: the coupled steps' drift goes), with the output
    scaled_t = t if keep is None else t.masked(keep)
    approx, w = await ctx.gather(
        truncate(ctx, _times(product(ctx, scaled_t, y), shift), f + F_Y + POWER_SUM_LOG2 + top - F_P),
        truncate(ctx, product(ctx, m, y), f + F_Y + POWER_SUM_LOG2 - F_P))
    return await truncate(ctx, product(ctx, approx, _line(w, RECIPROCAL_STEPS[-1], F_P)), 2 * F_P + COEF_BITS - f)


def _line(z: Wire, step: NewtonStep, frac: int) -> Wire:
    """a - b z with frac + COEF_BITS fractional bits, for z with frac (a, b on the 2^-6 grid)."""
    return _times(z, -grid(step.b, COEF_BITS)).plus(_const(z.public, grid(step.a, COEF_BITS) << frac))


SOFTMAX_VARIANTS["power"] = SoftmaxVariant(
    "power", power_reference, softmax_power,
    f"power-softmax (1 + (x - mean)/{POWER_P})^{POWER_P} / sum, comparison-free (scaled Newton division)")


async def _softmax_op(ctx, x, dim, p=POWER_P):
    return _moved(await softmax_power(ctx, _moved(x, dim, -1), None, p), -1, dim)


def _softmax_reference(x, dim, p=POWER_P):
    return power_reference(x.movedim(dim, -1), None, p).movedim(-1, dim)


# ----------------------------------------------------------------------------- GeLU
GELU_DEPTH = 2   # q = alpha x^2, then q^2


def gelu_quartic_reference(x: torch.Tensor) -> torch.Tensor:
    """0.5 x + c0 + beta q - q^2, q = alpha x^2 (the protocol's constants, exactly)."""
    q = GELU_QUARTIC["alpha"] * x * x
    return 0.5 * x + GELU_QUARTIC["c0"] + GELU_QUARTIC["beta"] * q - q * q


def _quartic_bits(frac_bits: int) -> int:
    """The fractional bits of the quartic's sum: 2f (f >= 12: beta's 12 bits fit in q's f)."""
    return 2 * frac_bits + max(0, GELU_BETA_BITS - frac_bits)


def gelu_quartic_bound(frac_bits: int) -> float:
    """|x| below which the truncations stay under 2^62 ring units: q's, x^2 alpha
    2^(2f + 20), and the sum's, q^2 2^(2f) (f >= 12)."""
    alpha = GELU_QUARTIC["alpha"]
    first = math.sqrt(2.0 ** (62 - 2 * frac_bits - GELU_ALPHA_BITS) / alpha)
    second = math.sqrt(2.0 ** ((62 - _quartic_bits(frac_bits)) / 2) / alpha)
    return min(first, second)


async def _quartic(ctx, x) -> tuple[Wire, int]:
    """The quartic untruncated, as a wire, and its fractional bits (``_quartic_bits``)."""
    f = ctx.frac_bits
    bits = _quartic_bits(f)
    x = await mask(ctx, x)
    alpha = grid(GELU_QUARTIC["alpha"], GELU_ALPHA_BITS)
    beta = grid(GELU_QUARTIC["beta"], GELU_BETA_BITS)
    q = await truncate(ctx, product(ctx, x, x).scaled(alpha), f + GELU_ALPHA_BITS)
    acc = product(ctx, q, q).scaled(-(1 << (bits - 2 * f))) + q.scaled(beta << (bits - f - GELU_BETA_BITS)) + \
        x.scaled(1 << (bits - f - 1))
    return acc.plus(_const(acc.public, round(GELU_QUARTIC["c0"] * 2.0 ** bits))), bits


async def gelu_quartic(ctx, x):
    """The minimax quartic for GeLU on [-4, 4] (``gelu_quartic_reference``): within
    0.0854 of GeLU there; outside, the x^4 term takes over (18.8 off at |x| = 8).

    Steps: x's mask (none when x is a wire: a linear's output); q = alpha x^2, a
    local product of wires times the 20-bit alpha, one truncation; then q^2,
    beta q (12-bit beta), x / 2 and c0 with 2f bits, one truncation. Before a
    server linear (BERT's FFN) the linear absorbs the second truncation
    (``gelu_quartic_deferred``, ``fuse_activation_linear``).
    Rounds 2, bytes 16 per element both (and 16 more to mask a share);
    depth 2. Domain: |x| < ``gelu_quartic_bound(f)`` (109 at f = 16). Error
    against its formula: 1.5 (beta + 2q + 1) 2^-f (q's and the sum's truncations, each
    within 1.5 ulp; 1.2e-4 on [-4, 4]).
    """
    acc, bits = await _quartic(ctx, x)
    return await truncate(ctx, acc, bits - ctx.frac_bits)


async def gelu_quartic_deferred(ctx, x):
    """The quartic's share with 2f fractional bits, untruncated, for the server linear
    that absorbs it (one truncation for both): one round (q's), 16 bytes an element."""
    acc, bits = await _quartic(ctx, x)
    return acc.share(ctx), bits - ctx.frac_bits


DEFERRED_ACTIVATIONS["gelu_quartic"] = DeferredActivation(gelu_quartic_reference, gelu_quartic_deferred,
                                                          lambda f: _quartic_bits(f) - f)


# ----------------------------------------------------------------------------- LayerNorm
LAYER_NORM_DEPTH = 2 * len(RSQRT_STEPS)   # c^2 (1); y_1 affine in it; 2 a later step; the output's product


def _layer_norm_reference(x, weight, bias, normalized_shape, eps):
    return torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)


async def _times_gamma(ctx, centred: Wire, weight, factor: float) -> Wire:
    """factor * centred * gamma: the server's gamma times the public factor, encoded once
    per deployment (its own scope: D = gamma factor - B), by ``server_product`` (one
    client message), truncated."""
    name = ctx.operand_names["weight"]
    shape = ctx.operand_types["weight"].shape
    ring = None
    if weight is not None:
        ring = ctx.encode_static(name, weight, lambda: encode(ctx, weight * factor, "real", name), "^newton")
    z = await server_product(ctx, centred, ring, shape, name + "^newton", torch.mul)
    return await truncate(ctx, z, ctx.frac_bits)


async def layer_norm_newton(ctx, x, weight, bias, normalized_shape, eps):
    """LayerNorm over the last axis with 1/sqrt(var + eps) by scaled Newton (no comparison).

    Steps (n entries, N = 2^ceil(log2 n)):
    1. c = sqrt(N/n) (x - mean): n x - sum x times round(2^28 sqrt(N/n) / n), one
       truncation (the factor's rounding scales c, which the normalisation
       cancels); without gamma, LN_SCALE (x - mean) beside it.
    2. sum c^2 = N var (local, 2f bits), plus N eps; v = var + eps with 26 bits and
       y_1 = a_0 y_0 - b_0 y_0^3 v (y_0 = 2^-4, b_0 an integer) are two truncations
       of it in one round. Beside steps 2 and 3 the server's gamma times
       LN_SCALE sqrt(n/N) (its plaintext, encoded once per deployment) multiplies c
       (the client's one message: 2 bytes an element for a truncation's wire) and
       is truncated.
    3. Nine more steps of ``RSQRT_STEPS``: P = v y and Q = y^2 (22 bits each), then
       y <- a y - b P Q (a, b on the 2^-6 grid): two rounds a step, z = v y^2 made
       afresh each time (self-correcting).
    4. (x - mean) gamma y (+ beta, the server's, with f + 22 bits), one truncation.
    Rounds 1 + 1 + 18 + 1 = 21; bytes per element: 16 (c), 2 (gamma's message),
    16 (its truncation), 16 (the output's); the steps' are per row. Depth
    ``LAYER_NORM_DEPTH`` (20). Randomness: the truncations', gamma's masks (A per
    inference, B per deployment) and the wire products' cross terms.
    Domain: var + eps in [2^-11, 2^8) (z_0 = v 2^-8 in [2^-19, 1)); |x - mean| <
    2^(62 - f - 28) / sqrt 2; |(x - mean) gamma| < 2^(62 - 2f); |normalised gamma| <
    2^(62 - f - 22); 2f + ceil(log2 n) <= 50. Error: y LN_SCALE is within
    ``RSQRT_ERROR`` (5.4e-7) relative of 1/sqrt(v) on the domain, and v is exact to
    2^-26, so the output is off by its truncations' few ulps and c's, 2^-f / sigma
    relative (as for the exact LayerNorm).
    (Newton for rsqrt as in CrypTen, with minimax-scaled steps from a fixed start
    instead of an exp or a bracket: see the module's docstring.)
    """
    if len(normalized_shape) != 1:
        raise NotImplementedError("layer_norm over more than one axis")
    f = ctx.frac_bits
    n = normalized_shape[0]
    log_n = max(0, (n - 1).bit_length())
    if 2 * f + log_n > 50:
        raise ValueError(f"layer_norm_newton: 2f + ceil(log2 n) = {2 * f + log_n} > 50 (f = {f}, n = {n})")
    xs = share_of(ctx, x)
    spread = xs * n - xs.sum(-1, keepdim=True)    # n (x - mean), f bits
    centre_bits = CENTRE_BITS - 2
    with_gamma = weight is not None or "weight" in ctx.operand_types
    parts = [truncate(ctx, spread * round(2 ** centre_bits * math.sqrt((1 << log_n) / n) / n), centre_bits)]
    if not with_gamma:
        parts.append(truncate(ctx, spread * round(2 ** centre_bits * LN_SCALE / n), centre_bits))
    c, *plain = await ctx.gather(*parts)
    total = product(ctx, c, c).share(ctx).sum(-1, keepdim=True)     # N var with 2f bits
    total = add_public(ctx, total, _const(total, round(eps * 2.0 ** (2 * f + log_n))))
    ctx.check_range(total, 2 * f + log_n + LN_NEWTON_LOG2[1])
    async def rsqrt():   # 1/sqrt(var + eps): v and y_1 from the sum of squares, then the steps
        first = RSQRT_STEPS[0]
        shift = 2 * f + log_n - 3 * LN_START_LOG2 - F_L      # y_1 = a_0 y_0 - b_0 y_0^3 v, y_0 = 2^-4
        start = add_public(ctx, -total * grid(first.b, 0),
                           _const(total, round(first.a * 2.0 ** (shift + F_L + LN_START_LOG2))))
        v, y = await ctx.gather(truncate(ctx, total, 2 * f + log_n - F_V), truncate(ctx, start, shift))
        for step in RSQRT_STEPS[1:]:   # z = v y^2 afresh: P = v y, Q = y^2, then y (a - b z) = a y - b P Q
            p_wire, q_wire = await ctx.gather(truncate(ctx, product(ctx, v, y), F_V),
                                              truncate(ctx, product(ctx, y, y), F_L))
            acc = y.scaled(grid(step.a, COEF_BITS) << F_L) - \
                product(ctx, p_wire, q_wire).scaled(grid(step.b, COEF_BITS))
            y = await truncate(ctx, acc, F_L + COEF_BITS)
        return y
    if with_gamma:   # gamma's message and truncation beside the steps
        y, normalised = await ctx.gather(rsqrt(), _times_gamma(ctx, c, weight,
                                                               LN_SCALE * math.sqrt(n / (1 << log_n))))
    else:
        y, normalised = await rsqrt(), plain[0]
    out = product(ctx, normalised, y).share(ctx)     # f + 22 bits
    if bias is not None and ctx.party == 1:
        out = out + (server_ring(ctx, "bias", bias) << F_L)
    return await truncate(ctx, out, F_L)


# ----------------------------------------------------------------------------- the op records
define("softmax_power", ("self", "dim", "p"), _softmax_reference,
       "power-softmax (1 + (x - mean)/p)^p / sum (a substitute for softmax; p even, default 4)", "nn",
       defaults={"p": POWER_P})
define("mpc.softmax_power", ("self", "dim", "p"), _softmax_reference,
       "power-softmax: centring, u^p, scaled Newton division (no comparison)", "mpc", protocol=_softmax_op,
       wires=True, defaults={"p": POWER_P})
define("gelu_quartic", ("self",), gelu_quartic_reference,
       "the minimax quartic for GeLU on [-4, 4] (a substitute; within 0.0854 there)", "nn")
define("mpc.gelu_quartic", ("self",), gelu_quartic_reference, "quartic GeLU (x^2, then q^2: two truncations)",
       "mpc", protocol=gelu_quartic, wires=True)
define("layer_norm_newton", ("input", "normalized_shape", "weight", "bias", "eps"),
       lambda x, shape, w=None, b=None, eps=1e-5: _layer_norm_reference(x, w, b, shape, eps),
       "LayerNorm by scaled Newton rsqrt from a fixed start (a substitute: the same function on its domain)", "nn")
define("mpc.layer_norm_newton", ("input", "weight", "bias", "normalized_shape", "eps"), _layer_norm_reference,
       "LayerNorm, 1/sqrt(var + eps) by scaled Newton on [2^-11, 2^8) (no comparison)", "mpc",
       protocol=layer_norm_newton, wires=True)
