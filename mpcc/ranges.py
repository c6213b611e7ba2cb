"""Fixed-point domains: what each range-limited protocol needs, and a plaintext check against it.

Every value is a fixed-point number with ``f`` fractional bits in Z_2^64, and
several protocols are exact only on part of that range (docs/protocols.md,
"Domains"). This module keeps, for each lowered ``mpc.*`` op, a rule that
gives the domain of each operand or intermediate value it constrains, as
``Domain(low, high, what, limit)`` records (``low <= value < high``, in real
units), each paired with a probe that computes that value from the op's
plaintext arguments. ``domains_of`` lists them for a plan (the plan stores
them); ``check_ranges`` (in ``range_check.py``, re-exported here) interprets
the plan in float64 and reports every node whose values leave a domain, with
the margin::

    %gelu (encoder.layer.0.intermediate.intermediate_act_fn): input max |x| 3.51e4 exceeds
        the comparison domain 3.28e4 by 1.07x      (one line)

Besides the table, every shared real value must lie in the ring,
|x| < 2^(63 - f), and every real input in the comparison domain by default.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from .interpreter import weight_limit
from .ir import Graph, Node, TensorType
from .ops import get_op
from .ops.arith import DEFERRED_ACTIVATIONS, RING_SHIFT_LIMIT, _linear_reference
from .ops.compare import CMP_BITS
from .ops.fourier import FOURIER_HALF_RANGE, SEGMENT_FUZZ, SILU_HALF_RANGE
from .ops.attention import EXCLUDED, QUAD_SHIFT, QUAD_SUM_LOG2, attention_mask as _attention_mask, finite_part
from .ops.layer_norm import LN_BRACKETS_LOG2
from .ops.lookup import table_limit
from .ops.nonlinear import LAYER_NORM_FLOOR_LOG4, MASK_FILL, SCALAR_FRAC, reciprocal, rsqrt
from .ops.power import (CENTRE_LIMIT_LOG2, LN_NEWTON_LOG2, LN_OUT_BITS, POWER_P, POWER_SUM_LOG2,
                        gelu_quartic_bound, power_row_sums)

__all__ = ["Domain", "Check", "DOMAIN_RULES", "MissingDomainRule", "domains_of", "default_input_ranges",
           "check_ranges", "RangeReport", "RangeProblem", "comparison_bound", "product_bound"]

# the plaintext check lives in range_check.py (its report and the interpreter pass); re-exported here



@dataclass(frozen=True)
class Domain:
    """``low <= value < high`` (reals): where a protocol is exact.

    ``what`` names the value (``"input"``, ``"x @ W^T"``, ``"variance + eps"``),
    ``limit`` the protocol limit it comes from (``"the comparison domain"``).
    """
    low: float
    high: float
    what: str
    limit: str

    def __str__(self) -> str:
        if self.low == -self.high:
            return f"{self.what}: |x| < {_num(self.high, 6)} ({self.limit})"
        return f"{self.what}: [{_num(self.low, 6)}, {_num(self.high, 6)}) ({self.limit})"


@dataclass(frozen=True)
class Check:
    """A domain and the probe that computes its value: ``probe(args, out)``
    with the op's plaintext arguments by param name and its output."""
    domain: Domain
    probe: Callable[[dict, torch.Tensor], torch.Tensor]


class MissingDomainRule(KeyError):
    def __str__(self):
        return (f"no domain rule for {self.args[0]!r} in mpcc.ranges.DOMAIN_RULES: every mpc op must state its "
                f"domain (an empty list if it has none)")


# ----------------------------------------------------------------------------- the limits
def comparison_bound(frac_bits: int) -> float:
    """ltz_bits at CMP_BITS is exact for |x| < 2^(CMP_BITS - 1) ring units: 2^15 = 32768 at f = 16."""
    return 2.0 ** (CMP_BITS - 1 - frac_bits)


def product_bound(frac_bits: int) -> float:
    """A product of reals (2f fractional bits) is truncated, which needs |z| < 2^62 ring
    units: |x * y| < 2^(62 - 2f) = 2^30 at f = 16, summed over a matmul's inner axis."""
    return 2.0 ** (RING_SHIFT_LIMIT - 2 * frac_bits)


def _encode_bound(frac_bits: int) -> float:
    return 2.0 ** (RING_SHIFT_LIMIT - frac_bits)   # the backend's encode refuses |x| >= this


def _ring_bound(frac_bits: int) -> float:
    return 2.0 ** (63 - frac_bits)


def _scalar_bound(frac_bits: int, value: float) -> float | None:
    """mul_scalar multiplies by round(c 2^24) and truncates by 24: |x| 2^f |round(c 2^24)| < 2^62."""
    scaled = abs(round(value * 2 ** SCALAR_FRAC))
    return None if scaled == 0 else _encode_bound(frac_bits) / scaled


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default   # the protocol's own default: one source


RECIPROCAL_DOMAIN = (2.0 ** _default(reciprocal, "low_log2"), 2.0 ** _default(reciprocal, "high_log2"))
RSQRT_DOMAIN = (4.0 ** _default(rsqrt, "low_log4"), 4.0 ** _default(rsqrt, "high_log4"))


# ----------------------------------------------------------------------------- probes
def _arg(name):
    return lambda args, out: args[name]


def _out(args, out):
    return out


def _spread(x, dim):
    """max - min along an axis: a max tournament compares differences of two entries."""
    return x.amax(dim) - x.amin(dim)


def _symmetric(bound, what, limit):
    return Domain(-bound, bound, what, limit)


# ----------------------------------------------------------------------------- the rules
def _none(node, types, f):
    return []


def _share(node, types, f):
    if node.type.kind != "real":
        return []
    return [Check(_symmetric(_encode_bound(f), "value to share", "the encoding range"), _arg("self"))]


def _product(what, fn):
    def rule(node, types, f):
        if not node.attrs.get("truncate", True) or node.type.kind != "real":
            return []
        return [Check(_symmetric(product_bound(f), what, "the truncation range"), fn)]
    return rule


def _linear(node, types, f):
    """x @ W^T before its truncation; with an absorbed activation, act(x) @ W^T, whose
    share carries the activation's extra bits (``DEFERRED_ACTIVATIONS``)."""
    activation = node.attrs.get("activation")
    extra = 0 if activation is None else DEFERRED_ACTIVATIONS[activation].extra_bits(f)
    probe = lambda a, out: _linear_reference(a["input"], a["weight"], None, a["transpose"], activation)  # noqa: E731
    what = "x @ W^T" if node.attrs.get("transpose") else "x @ W"
    what = what if activation is None else f"{activation}(x) {what[2:]}"
    checks = [Check(_symmetric(product_bound(f) / 2.0 ** extra, what, "the truncation range"), probe)]
    if activation is not None:   # the activation's own domain, on the linear's input
        for check in DOMAIN_RULES[f"mpc.{activation}"](node, {"self": types["input"]}, f):
            checks.append(Check(check.domain, functools.partial(_on_input, check.probe)))
    return checks


def _lookup(node, types, f):
    """A row of the server's table, formed in the lookup's (f + 16)-bit ring."""
    return [Check(_symmetric(table_limit(f), "one_hot @ T", "the lookup's ring"), _out)]


def _on_input(probe, a, out):
    """An absorbed activation's probe, on the linear's input."""
    return probe({"self": a["input"]}, None)


def _trunc(node, types, f):
    bound = 2.0 ** (RING_SHIFT_LIMIT - f - node.attrs["shift"])
    return [Check(_symmetric(bound, "input", "the truncation range"), _arg("self"))]


def _mul_scalar(node, types, f):
    bound = _scalar_bound(f, node.attrs["value"])
    return [] if bound is None else [Check(_symmetric(bound, "input", "the truncation range of x * c"), _arg("self"))]


def _compare(node, types, f):
    return [Check(_symmetric(comparison_bound(f), "input", "the comparison domain"), _arg("self"))]


def _tournament(node, types, f):
    return [Check(Domain(0.0, comparison_bound(f), f"spread (max - min) along axis {node.attrs['dim']}",
                         "the comparison domain"), lambda a, out: _spread(a["self"], a["dim"]))]


def _exp(node, types, f):
    return [Check(Domain(-comparison_bound(f), 1.0, "input", "exp's domain"), _arg("self"))]


def _bracketed(domain, name):
    def rule(node, types, f):
        return [Check(Domain(*domain, "input", f"{name}'s domain"), _arg("self"))]
    return rule


def _segments(node, types, f, half_range: float = FOURIER_HALF_RANGE):
    """The segment tests compare x + 4 and 4 - x by an LTZ that skips the low f - 1
    bits, exact only for |.| <= 2^15 - 1/2: so |x| <= 2^15 - 4.5 (stated one ulp narrower).
    SiLU's segments end at +-12: |x| <= 2^15 - 12.5."""
    bound = comparison_bound(f) - half_range - 2.0 ** -SEGMENT_FUZZ
    return [Check(_symmetric(bound, "input", "the comparison domain"), _arg("self"))]


def _layer_norm(node, types, f):
    """``ops/layer_norm.py``: the mean is a sum times the 24-bit 1/n, truncated; the sum of
    the untruncated squares S = n (var + eps) is truncated (so S < 2^(62-2f)) and
    bracketed on [2^-16, 2^30); gamma's product carries 3f bits."""
    (n,) = node.attrs["normalized_shape"]
    by_n = _scalar_bound(f, 1.0 / n) / n   # the mean: a sum times round(2^24 / n), truncated
    squares_bound = min(2.0 ** (62 - 2 * f), 2.0 ** LN_BRACKETS_LOG2[1])

    def centred(a, out):
        x = a["input"]
        return x - x.mean(-1, keepdim=True)

    def variance(a, out):
        return centred(a, out).square().mean(-1) + a["eps"]
    checks = [
        Check(_symmetric(by_n, "mean", "the truncation range of sum * (1/n)"), lambda a, out: a["input"].mean(-1)),
        Check(Domain(4.0 ** LAYER_NORM_FLOOR_LOG4, squares_bound / n, "variance + eps",
                     "LayerNorm's variance domain (n (var + eps) is truncated and bracketed)"), variance),
    ]
    if node.attrs.get("weight", "operand") is not None:
        def scaled(a, out):
            return F.layer_norm(a["input"], a["normalized_shape"], a["weight"], None, a["eps"])
        checks.append(Check(_symmetric(2.0 ** (62 - 3 * f), "normalised values * weight",
                                       "the truncation range (3f fractional bits)"), scaled))
    return checks


def _rms_norm(node, types, f):
    """``ops/layer_norm.py`` with ``center=False``: S = sum x^2 + n eps, truncated and
    bracketed as LayerNorm's; the weight's product carries 3f bits."""
    (n,) = node.attrs["normalized_shape"]
    squares_bound = min(2.0 ** (62 - 2 * f), 2.0 ** LN_BRACKETS_LOG2[1])
    checks = [Check(Domain(4.0 ** LAYER_NORM_FLOOR_LOG4, squares_bound / n, "mean square + eps",
                           "RMSNorm's domain (n (mean x^2 + eps) is truncated and bracketed)"),
                    lambda a, out: a["input"].square().mean(-1) + a["eps"])]
    if node.attrs.get("weight", "operand") is not None:
        checks.append(Check(_symmetric(2.0 ** (62 - 3 * f), "normalised values * weight",
                                       "the truncation range (3f fractional bits)"), lambda a, out: out))
    return checks


def _masked_scores(a, fill=True):
    q, k = a["query"], a["key"]
    if k.shape[-3] != q.shape[-3]:   # grouped-query attention
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    product = q @ k.transpose(-1, -2)
    scores = product * scale
    if a.get("bias") is not None:
        scores = scores + a["bias"]
    mask = a["attn_mask"]
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + finite_part(mask).to(scores.dtype)
    keep = _attention_mask(mask, a["is_causal"], tuple(scores.shape), scores.device)
    if not fill:
        return product, scores, keep
    if keep is not None:
        scores = torch.where(keep, scores, torch.full_like(scores, MASK_FILL))
    return product, scores


def _quad_sums(scores, keep):
    squares = (scores + QUAD_SHIFT) ** 2
    return (squares if keep is None else squares * keep).sum(-1)


def _quad_checks(f, scores_of):
    """2Quad: (x + 5)^2 is truncated; each row's sum lies in the division's domain."""
    return [Check(_symmetric(math.sqrt(product_bound(f)), "x + 5", "the truncation range of its square"),
                  lambda a, out: scores_of(a)[0] + QUAD_SHIFT),
            Check(Domain(2.0 ** QUAD_SUM_LOG2[0], 2.0 ** QUAD_SUM_LOG2[1], "sum of (x + 5)^2 per row",
                         "the division's domain"), lambda a, out: _quad_sums(*scores_of(a)))]


def _softmax_2quad(node, types, f):
    def rows(a):
        return a["self"].movedim(a["dim"], -1), None
    return _quad_checks(f, rows)


def _sdpa(node, types, f):
    scale = node.attrs.get("scale")
    scale = 1.0 / math.sqrt(types["query"].shape[-1]) if scale is None else scale
    scaled = _scalar_bound(f, scale)
    bound = product_bound(f) if scaled is None else min(product_bound(f), scaled)
    def scores(a):
        unmasked = _masked_scores(a, fill=False)
        return unmasked[1], unmasked[2]
    if node.attrs.get("softmax", "exact") in ("2quad", "2quad_goldschmidt"):
        softmax_checks = _quad_checks(f, scores)
    elif node.attrs.get("softmax") == "power":
        softmax_checks = _power_checks(POWER_P, scores)
    else:
        softmax_checks = [Check(Domain(0.0, comparison_bound(f), f"score spread (max - min per row, masked at "
                                                                 f"{MASK_FILL:g})", "the comparison domain"),
                                lambda a, out: _spread(_masked_scores(a)[1], -1))]
    return [Check(_symmetric(bound, "q @ k^T", "the truncation range"), lambda a, out: _masked_scores(a)[0]),
            *softmax_checks,
            Check(_symmetric(product_bound(f), "probabilities @ v", "the truncation range"), _out)]


def _power_checks(p, rows_of):
    """power-softmax (``ops/power.py``): the centring's truncation takes |x| < 2^10; each
    row's sum of t = (1 + (x - mean)/p)^p over 2^ceil(log2 n_kept) is in the division's
    [1/2, 2^12) (at least 1/2 always, by Jensen)."""
    return [Check(_symmetric(2.0 ** CENTRE_LIMIT_LOG2, "scores", "the power-softmax centring's truncation range"),
                  lambda a, out: rows_of(a)[0]),
            Check(Domain(0.5, 2.0 ** POWER_SUM_LOG2, f"sum of (1 + (x - mean)/{p})^{p} per row / 2^ceil(log2 n)",
                         "the power-softmax division's domain"), lambda a, out: power_row_sums(*rows_of(a), p)[1])]


def _masked_softmax(node, types, f):
    """A softmax variant on x + the mask's finite part, over the kept entries only."""
    def rows(a):
        mask = a["mask"]
        scores = a["self"] + finite_part(mask).to(a["self"].dtype)
        return scores, (mask > EXCLUDED).expand(scores.shape)
    variant = node.attrs.get("softmax", "exact")
    if variant in ("2quad", "2quad_goldschmidt"):
        return _quad_checks(f, rows)
    if variant == "power":
        return _power_checks(POWER_P, rows)

    def kept_spread(a, out):
        scores, keep = rows(a)
        return scores.masked_fill(~keep, -torch.inf).amax(-1) - scores.masked_fill(~keep, torch.inf).amin(-1)
    return [Check(Domain(0.0, comparison_bound(f), "spread (max - min) of the kept entries", "the comparison domain"),
                  kept_spread)]


def _softmax_power(node, types, f):
    return _power_checks(node.attrs.get("p", POWER_P), lambda a: (a["self"].movedim(a["dim"], -1), None))


def _layer_norm_newton(node, types, f):
    """``ops/power.py``: var + eps in the Newton schedule's [2^-11, 2^8); n (x - mean) times a
    28-bit factor is truncated; (x - mean) gamma and the output (f + 22 bits) likewise."""
    def centred(a, out):
        return a["input"] - a["input"].mean(-1, keepdim=True)
    checks = [Check(Domain(2.0 ** LN_NEWTON_LOG2[0], 2.0 ** LN_NEWTON_LOG2[1], "variance + eps",
                           "the Newton rsqrt's domain"),
                    lambda a, out: centred(a, out).square().mean(-1) + a["eps"]),
              Check(_symmetric(2.0 ** (RING_SHIFT_LIMIT - f - 28) / math.sqrt(2), "x - mean",
                               "the centring's truncation range"), centred)]
    if node.attrs.get("weight", "operand") is not None:
        checks.append(Check(_symmetric(product_bound(f), "(x - mean) * weight", "the truncation range"),
                            lambda a, out: centred(a, out) * a["weight"]))
    checks.append(Check(_symmetric(2.0 ** (RING_SHIFT_LIMIT - f - LN_OUT_BITS), "normalised values * weight",
                                   "the truncation range (f + 22 fractional bits)"),
                        lambda a, out: out if a.get("bias") is None else out - a["bias"]))
    return checks


Rule = Callable[[Node, dict, int], list]

DOMAIN_RULES: dict[str, Rule] = {
    "mpc.share": _share,
    "mpc.reveal": _none,
    "mpc.add": _none,
    "mpc.sub": _none,
    "mpc.neg": _none,
    "mpc.add_public": _none,
    "mpc.masked_fill_public": _none,
    "mpc.where_public": _none,
    "mpc.where": _none,            # a 0/1 condition times x - y: no truncation
    "mpc.mul_public": _product("x * value", lambda a, out: a["self"] * a["value"]),
    "mpc.mul": _product("x * y", lambda a, out: a["self"] * a["other"]),
    "mpc.mul_server": _product("x * w", lambda a, out: a["self"] * a["other"]),
    "mpc.square": _product("x * x", lambda a, out: a["self"] * a["self"]),
    "mpc.matmul": _product("x @ y", lambda a, out: a["self"] @ a["other"]),
    "mpc.linear_server": _linear,
    "mpc.lookup_server": _lookup,
    "mpc.trunc": _trunc,
    "mpc.mul_scalar": _mul_scalar,
    "mpc.ltz": _compare,
    "mpc.relu": _compare,
    "mpc.amax": _tournament,
    "mpc.argmax": _tournament,
    "mpc.softmax": _tournament,   # the max tournament; exp then sees x - max in (-2^15, 0]
    "mpc.exp": _exp,
    "mpc.reciprocal": _bracketed(RECIPROCAL_DOMAIN, "reciprocal"),
    "mpc.rsqrt": _bracketed(RSQRT_DOMAIN, "rsqrt"),
    "mpc.gelu": _segments,
    "mpc.tanh": _segments,
    "mpc.silu": functools.partial(_segments, half_range=SILU_HALF_RANGE),
    "mpc.layer_norm": _layer_norm,
    "mpc.layer_norm_goldschmidt": _layer_norm,
    "mpc.rms_norm": _rms_norm,
    "mpc.sdpa": _sdpa,
    "mpc.softmax_masked": _masked_softmax,
    "mpc.softmax_2quad": _softmax_2quad,
    "mpc.softmax_2quad_goldschmidt": _softmax_2quad,
    "mpc.gelu_quad": _product("x * x", lambda a, out: a["self"] * a["self"]),
    "mpc.gelu_secformer": _segments,
    "mpc.gelu_puma": _segments,
    "mpc.softmax_puma": _tournament,
    "mpc.softmax_power": _softmax_power,
    "mpc.gelu_quartic": lambda node, types, f: [Check(_symmetric(gelu_quartic_bound(f), "input",
                                                                 "the quartic's truncation range"), _arg("self"))],
    "mpc.layer_norm_newton": _layer_norm_newton,
}


def _operand_types(graph: Graph, node: Node) -> dict[str, TensorType]:
    params = get_op(node.op).operand_params(node.attrs)
    return {p: graph[name].type for p, name in zip(params, node.operands)}


def _checks(graph: Graph, node: Node, frac_bits: int, input_ranges: Mapping) -> list[Check]:
    if node.op == "input":
        if node.name not in input_ranges:
            return []
        low, high = input_ranges[node.name]
        return [Check(Domain(low, high + 2.0 ** -frac_bits if node.type.kind == "real" else high + 1, "input",
                             "its input range"), _out)]
    if node.op == "param":
        if node.type.kind != "real":
            return []
        return [Check(_symmetric(weight_limit(frac_bits), "weight", "the weight limit"), _out)]
    if not node.op.startswith("mpc."):
        return []
    try:
        rule = DOMAIN_RULES[node.op]
    except KeyError:
        raise MissingDomainRule(node.op) from None
    return rule(node, _operand_types(graph, node), frac_bits)


def _graph_and_bits(plan_or_graph, frac_bits):
    if isinstance(plan_or_graph, Graph):
        if frac_bits is None:
            raise TypeError("domains_of(graph, frac_bits): a graph needs frac_bits (a plan carries its own)")
        return plan_or_graph, frac_bits
    return plan_or_graph.graph, plan_or_graph.frac_bits if frac_bits is None else frac_bits


def default_input_ranges(graph: Graph, frac_bits: int) -> dict[str, tuple[float, float]]:
    """``{name: (low, high)}`` (closed) for the real inputs: the comparison domain,
    |x| < 2^(CMP_BITS - 1 - f), as the largest encodable values inside it.
    Token ids (``int`` inputs) are checked against the vocabulary elsewhere.

    Example:
        >>> import torch, mpcc
        >>> g = mpcc.trace(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
        >>> default_input_ranges(g, 16)
        {'input': (-32768.0, 32767.99998474121)}
    """
    bound = comparison_bound(frac_bits)
    return {n.name: (-bound, bound - 2.0 ** -frac_bits) for n in graph.inputs if n.type.kind == "real"}


def domains_of(plan_or_graph, frac_bits: int | None = None) -> dict[str, list[Domain]]:
    """For each node with a domain, its domains (inputs, weights, every range-limited mpc op).

    Raises ``MissingDomainRule`` for an ``mpc.*`` op the table does not know.

    Example:
        >>> import torch, mpcc
        >>> plan = mpcc.compile(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()), (torch.zeros(1, 4),))
        >>> [str(d) for d in domains_of(plan)["gelu"]]
        ['input: |x| < 32763.5 (the comparison domain)']
    """
    graph, frac_bits = _graph_and_bits(plan_or_graph, frac_bits)
    ranges = default_input_ranges(graph, frac_bits)
    out = {}
    for node in graph.nodes:
        domains = [c.domain for c in _checks(graph, node, frac_bits, ranges)]
        if domains:
            out[node.name] = domains
    return out


def _num(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, exponents without '+' or leading zeros: 41000 -> '4.1e4'."""
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


from .range_check import RangeProblem, RangeReport, check_ranges  # noqa: E402  (it imports this module's table)
