"""Linears that read the same secret input with the server's weights (attention's
query, key and value) become one linear over the weights concatenated, its
output sliced: the client masks and sends the input's parts once instead of
once per linear (two fewer messages of 24 bits an element per BERT layer), and
the three products are one matmul.

    %q = linear(%x, %p_wq, %p_bq)  %k = linear(%x, %p_wk, %p_bk)
      ->  %q_weights = cat(%p_wq, %p_wk, ...)  %q_biases = cat(%p_bq, %p_bk, ...)
          %q_fused = linear(%x, %q_weights, %q_biases)
          %q = slice(%q_fused, dim=-1, start=0, end=64)  %k = slice(%q_fused, dim=-1, start=64, end=128)

The concatenations are the server's, of weights fixed for the deployment: masked
and sent once per deployment like any weight. The meaning is kept (the slices
are the linears' outputs), so ``mpcc.interpret`` gives the same values.
"""
from __future__ import annotations

from ..ir import Graph, Node, TensorType
from ..ops import MARK
from .names import fresh_name
from .registry import register_pass

__all__ = ["fuse_sibling_linears"]


def _fusable(graph: Graph, node: Node, static: frozenset) -> bool:
    """A shared linear whose weight (and bias, if any) are the server's deployment weights."""
    return node.op == "linear" and node.type.vis == "shared" and node.type.kind == "real" \
        and all(graph[o].type.vis == "server" and o in static for o in node.operands[1:])


def _sibling_groups(graph: Graph) -> list[list[Node]]:
    """Groups of two or more fusable linears with one input, all with a bias or none, whose
    weights and biases are all defined before the first of them (where the fused one stands)."""
    static = graph.static_values()
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if _fusable(graph, node, static):
            groups.setdefault((node.operands[0], len(node.operands)), []).append(node)
    return [group for group in groups.values() if len(group) > 1
            and all(position[o] < position[group[0].name] for node in group for o in node.operands[1:])]


def _concatenated(graph: Graph, names: list[str], base: str, taken: set, origin: str) -> Node:
    """cat(names, dim=0): the server's weights (or biases) stacked along the output axis."""
    types = [graph[n].type for n in names]
    shape = (sum(t.shape[0] for t in types),) + types[0].shape[1:]
    return Node(fresh_name(base, taken), "cat", tuple(names), {"tensors": [MARK] * len(names), "dim": 0},
                TensorType(shape, "real", "server"), origin)


@register_pass("fuse_sibling_linears")
def fuse_sibling_linears(graph: Graph) -> Graph:
    taken = {n.name for n in graph.nodes}
    replacements: dict[str, tuple[Node, ...]] = {}
    for group in _sibling_groups(graph):
        first = group[0]
        weights = _concatenated(graph, [n.operands[1] for n in group], f"{first.name}_weights", taken, first.origin)
        added = [weights]
        operands = [first.operands[0], weights.name]
        if len(first.operands) == 3:
            biases = _concatenated(graph, [n.operands[2] for n in group], f"{first.name}_biases", taken, first.origin)
            added.append(biases)
            operands.append(biases.name)
        widths = [n.type.shape[-1] for n in group]
        fused_type = TensorType(first.type.shape[:-1] + (sum(widths),), "real", "shared")
        fused = Node(fresh_name(f"{first.name}_fused", taken), "linear", tuple(operands), dict(first.attrs),
                     fused_type, first.origin)
        start = 0
        for node, width in zip(group, widths):
            sliced = Node(node.name, "slice", (fused.name,), {"dim": -1, "start": start, "end": start + width,
                                                             "step": 1}, node.type, node.origin)
            replacements[node.name] = (sliced,) if node is not first else (*added, fused, sliced)
            start += width
    return graph.fused((), replacements) if replacements else graph
