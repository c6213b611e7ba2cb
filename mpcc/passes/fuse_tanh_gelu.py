"""Recognise the tanh form of GeLU written out elementwise (GPT-2's
``NewGELUActivation``) and replace it by one ``gelu`` node, so that it gets
the GeLU protocol instead of a pow, a tanh and four products.

    %mul = mul(%x, other=0.5)  %pow = pow(%x, exponent=3.0) ... %mul_3 = mul(%mul, %add_6)
      ->  %mul_3 = gelu(%x, approximate='tanh')
"""
from __future__ import annotations

import math

from ..ir import Graph, Node
from .eliminate_dead_code import eliminate_dead_code
from .registry import register_pass

__all__ = ["fuse_tanh_gelu", "match_tanh_gelu"]


def _scalar_op(graph: Graph, name: str, op: str, key: str, value: float):
    node = graph[name]
    if node.op != op or len(node.operands) != 1 or not isinstance(node.attrs.get(key), (int, float)):
        return None
    if not math.isclose(node.attrs[key], value, rel_tol=1e-6):
        return None
    if op == "add" and node.attrs.get("alpha", 1) != 1:
        return None
    return node.operands[0]


def match_tanh_gelu(graph: Graph, node: Node) -> str | None:
    """The x of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) rooted at ``node``, or None."""
    if node.op != "mul" or len(node.operands) != 2:
        return None
    for half, outer in (node.operands, node.operands[::-1]):
        x = _scalar_op(graph, half, "mul", "other", 0.5)
        tanh_name = _scalar_op(graph, outer, "add", "other", 1.0)
        if x is None or tanh_name is None or graph[tanh_name].op != "tanh":
            continue
        inner = _scalar_op(graph, graph[tanh_name].operands[0], "mul", "other", math.sqrt(2 / math.pi))
        if inner is None or graph[inner].op != "add" or len(graph[inner].operands) != 2:
            continue
        left, right = graph[inner].operands
        cube = _scalar_op(graph, right, "mul", "other", 0.044715)
        if left == x and cube is not None and graph[cube].op == "pow" and graph[cube].operands == (x,) \
                and graph[cube].attrs.get("exponent") == 3:
            return x
    return None


@register_pass("fuse_tanh_gelu")
def fuse_tanh_gelu(graph: Graph) -> Graph:
    nodes = []
    changed = False
    for node in graph.nodes:
        x = match_tanh_gelu(graph, node)
        if x is None:
            nodes.append(node)
        else:
            nodes.append(node.with_(op="gelu", operands=(x,), attrs={"approximate": "tanh"}))
            changed = True
    return eliminate_dead_code(graph.replace_nodes(nodes)) if changed else graph
