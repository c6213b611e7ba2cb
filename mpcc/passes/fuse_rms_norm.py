"""RMSNorm written out (Llama, Qwen2, Mistral, T5) becomes one ``rms_norm``, so it
gets LayerNorm's protocol without the mean: one bracketed rsqrt of the row's sum
of squares plus n eps (10 rounds), instead of a square, a generic rsqrt and two
products, whose rsqrt domain a zero row's variance (eps alone) falls below.

    %pow = pow(%x, exponent=2)  %mean = mean(%pow, dim=[-1], keepdim=True)
    %add = add(%mean, other=1e-06)  %rsqrt = rsqrt(%add)  %mul = mul(%x, %rsqrt)
    %out = mul(%p_weight, %mul)
      ->  %out = rms_norm(%x, %p_weight, normalized_shape=[32], eps=1e-06)
"""
from __future__ import annotations

from ..ir import Graph, Node
from .registry import register_pass

__all__ = ["fuse_rms_norm"]



def _other(node: Node | None, name: str) -> str | None:
    """The operand of the two-operand product ``node`` that is not ``name``."""
    if node is None or node.op != "mul" or len(node.operands) != 2 or name not in node.operands:
        return None
    return node.operands[1] if node.operands[0] == name else node.operands[0]


def _match(graph: Graph, users: dict, rsqrt: Node, static: frozenset):
    """(x, weight or None, eps, the nodes it replaces, last the one that stands) for the RMSNorm at ``rsqrt``."""
    add = graph[rsqrt.operands[0]]
    if add.op != "add" or len(add.operands) != 1 or add.attrs.get("alpha", 1) != 1 \
            or not isinstance(add.attrs.get("other"), (int, float)) or add.attrs["other"] <= 0:
        return None
    mean = graph[add.operands[0]]
    if mean.op != "mean" or not mean.attrs.get("keepdim") \
            or mean.attrs.get("dim") not in ([-1], [len(mean.type.shape) - 1]):
        return None
    square = graph[mean.operands[0]]
    if square.op != "pow" or square.attrs.get("exponent") != 2 or len(square.operands) != 1:
        return None
    x = square.operands[0]
    scaled = graph.sole_reader(rsqrt.name, users)
    if _other(scaled, rsqrt.name) != x:
        return None
    chain = [square, mean, add, rsqrt, scaled]
    if any(graph.sole_reader(n.name, users) is None for n in chain[:-1]):
        return None
    weighted = graph.sole_reader(scaled.name, users)
    weight = _other(weighted, scaled.name)
    fixed = weight is not None and (graph[weight].type.vis == "public" or
                                    (graph[weight].type.vis == "server" and weight in static))
    if fixed and graph[weight].type.shape == (graph[x].type.shape[-1],):   # a server input stays a product
        chain.append(weighted)
    else:
        weight = None
    return x, weight, float(add.attrs["other"]), chain


@register_pass("fuse_rms_norm")
def fuse_rms_norm(graph: Graph) -> Graph:
    users, static = graph.users(), graph.static_values()
    replacements: dict[str, tuple[Node, ...]] = {}
    dropped: set[str] = set()
    for node in graph.nodes:
        if node.op != "rsqrt" or node.type.vis != "shared":
            continue
        found = _match(graph, users, node, static)
        if found is None:
            continue
        x, weight, eps, chain = found
        last = chain[-1]
        attrs = {"normalized_shape": [graph[x].type.shape[-1]], "eps": eps}
        attrs.update({"weight": None} if weight is None else {})
        replacements[last.name] = (last.with_(op="rms_norm", operands=(x,) + ((weight,) if weight else ()),
                                              attrs=attrs),)
        dropped.update(n.name for n in chain[:-1])
    return graph.fused(dropped, replacements) if replacements else graph
