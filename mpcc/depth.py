"""Multiplicative depth of a compiled plan: the longest chain of products of two secrets.

A plan built only from comparison-free ops (the ``power`` preset) is a
polynomial circuit over the shared values, and its depth is the measure that
homomorphic encryption and round-bound MPC designs budget for. Here a level is
one product of two secret values in sequence on a data path: a product and its
truncation (or its Beaver opening) count once; two products chained locally
before one truncation count twice; a product with a public constant counts
nothing; the server's weights count as secrets (the client does not know
them). Each ``mpc.*`` op states in ``DEPTH_RULES`` how many levels it adds
from its operands to its output (one number, or one per operand); ops that
are not ``mpc.*`` (shapes, public values) add none. A missing rule is an error
naming the op. Ops built on comparisons (LTZ, B2A, brackets: the exact
softmax, GeLU and LayerNorm, the reciprocal, 2Quad's division...) are no
polynomials: a plan with one has no depth, and ``depths`` raises
``NotComparisonFree`` naming the node.

Example:
    >>> import torch, mpcc
    >>> from mpcc.bench import bert_layer
    >>> layer = bert_layer(hidden=32, heads=4, ffn=64)
    >>> plan = mpcc.compile(layer, {"hidden_states": torch.randn(1, 8, 32)}, approx="power")
    >>> multiplicative_depth(plan)
    60
"""
from __future__ import annotations

from typing import Callable

from .ir import Graph, Node
from .ops import get_op
from .ops.power import GELU_DEPTH, LAYER_NORM_DEPTH, POWER_P, softmax_depth

__all__ = ["DEPTH_RULES", "SOFTMAX_DEPTHS", "multiplicative_depth", "depths", "NotComparisonFree",
           "MissingDepthRule"]


class NotComparisonFree(ValueError):
    """A node whose protocol compares: the plan is no polynomial circuit."""


class MissingDepthRule(KeyError):
    def __str__(self):
        return f"no depth rule for {self.args[0]!r} in mpcc.depth.DEPTH_RULES"


Rule = Callable[[Node], "int | dict[str, int]"]


def _levels(count: int) -> Rule:
    return lambda node: count


def _compares(node: Node):
    raise NotComparisonFree(f"%{node.name} = {node.op}(...) uses comparisons: a plan has a multiplicative depth "
                            f"only when it is comparison-free (approx='power')")


# the softmax variants of ``mpc.sdpa`` that are polynomial, and their depth (scores to probabilities)
SOFTMAX_DEPTHS: dict[str, Callable[[], int]] = {"power": lambda: softmax_depth(POWER_P)}


def _sdpa(node: Node) -> dict[str, int]:
    """q k^T (1), the softmax variant, p v (1); from v only the last product."""
    variant = node.attrs.get("softmax", "exact")
    if variant not in SOFTMAX_DEPTHS:
        raise NotComparisonFree(f"%{node.name} = mpc.sdpa(..., softmax={variant!r}) uses comparisons: a plan has a "
                                f"multiplicative depth only when it is comparison-free (approx='power')")
    inner = SOFTMAX_DEPTHS[variant]()
    return {"query": inner + 2, "key": inner + 2, "value": 1, "attn_mask": 0}


def _linear(node: Node) -> int:
    """x W (1), after the activation it absorbs (``fuse_activation_linear``), if any."""
    activation = node.attrs.get("activation")
    if activation is None:
        return 1
    inner = _rule(Node(node.name, "mpc." + activation, node.operands[:1], {}, node.type))
    return 1 + (inner if isinstance(inner, int) else max(inner.values()))


DEPTH_RULES: dict[str, Rule] = {
    **{op: _levels(0) for op in ("mpc.share", "mpc.reveal", "mpc.add", "mpc.sub", "mpc.neg", "mpc.add_public",
                                 "mpc.masked_fill_public", "mpc.where_public", "mpc.mul_public", "mpc.mul_scalar",
                                 "mpc.trunc")},
    # one product of two secrets (a shared condition times x - y for ``where``)
    **{op: _levels(1) for op in ("mpc.mul", "mpc.square", "mpc.matmul", "mpc.mul_server", "mpc.where",
                                 "mpc.gelu_quad", "mpc.lookup_server")},
    "mpc.linear_server": _linear,
    "mpc.sdpa": _sdpa,
    "mpc.softmax_power": lambda node: softmax_depth(node.attrs.get("p", POWER_P)),
    "mpc.gelu_quartic": _levels(GELU_DEPTH),
    # (x - mean) gamma is one product; the weight reaches the output through it and y's
    "mpc.layer_norm_newton": lambda node: {"input": LAYER_NORM_DEPTH, "weight": 2, "bias": 0},
    **{op: _compares for op in ("mpc.ltz", "mpc.relu", "mpc.amax", "mpc.argmax", "mpc.softmax", "mpc.exp",
                                "mpc.reciprocal", "mpc.rsqrt", "mpc.gelu", "mpc.tanh", "mpc.layer_norm",
                                "mpc.layer_norm_goldschmidt", "mpc.softmax_2quad", "mpc.softmax_2quad_goldschmidt",
                                "mpc.gelu_secformer", "mpc.gelu_puma", "mpc.softmax_puma", "mpc.silu",
                                "mpc.rms_norm", "mpc.softmax_masked")},
}


def _rule(node: Node):
    if not node.op.startswith("mpc."):
        return 0
    try:
        rule = DEPTH_RULES[node.op]
    except KeyError:
        raise MissingDepthRule(node.op) from None
    return rule(node)


def depths(plan_or_graph) -> dict[str, int]:
    """Each value's depth: the most products of two secrets in sequence on a path from the inputs."""
    graph: Graph = plan_or_graph if isinstance(plan_or_graph, Graph) else plan_or_graph.graph
    out: dict[str, int] = {}
    for node in graph.nodes:
        added = _rule(node)
        params = get_op(node.op).operand_params(node.attrs) if node.operands else []
        out[node.name] = max((out[name] + (added if isinstance(added, int) else added.get(param, 0))
                              for name, param in zip(node.operands, params)), default=0)
    return out


def multiplicative_depth(plan_or_graph) -> int:
    """The plan's depth: the deepest of its outputs (see the module's docstring)."""
    graph: Graph = plan_or_graph if isinstance(plan_or_graph, Graph) else plan_or_graph.graph
    found = depths(graph)
    return max((found[name] for name in graph.outputs), default=0)
